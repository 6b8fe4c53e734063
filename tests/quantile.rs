//! Conformal quantile (DESIGN.md 2.5): k on the decimal alpha, qhat = sorted[k - 1],
//! +inf past n; every n in 1..=2000 on an alpha grid, including every level where
//! (n+1) alpha is an integer; GPU == CPU; validation and the JSON report.

mod common;

use common::rng;
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::methods::quantile::{
    conformal_k, conformal_rank, parse_alphas, qhat, qhat_with, quantile_json, QuantileMethod,
};
use conformal_gpu::Error;
use rand::Rng;

/// ceil((n+1)(D-j)/D) in exact integers: k for alpha = j/D.
fn exact_k(n: usize, j: usize, d: usize) -> usize {
    ((n + 1) * (d - j)).div_ceil(d)
}

#[test]
fn conformal_k_examples() {
    assert_eq!(conformal_k(9, 0.7), Some(3));
    assert_eq!(conformal_k(9, 0.1), Some(9));
    assert_eq!(conformal_k(9, 0.05), None);
    assert_eq!(conformal_rank(9, 0.05), 10);
    assert_eq!(conformal_k(19, 0.05), Some(19));
    assert_eq!(conformal_k(99, 0.1), Some(90));
    assert_eq!(conformal_k(1, 0.5), Some(1));
    assert_eq!(conformal_k(10, 0.0), None);
    assert_eq!(conformal_k(10, f64::NAN), None);
}

#[test]
fn conformal_k_is_exact_on_decimal_grids() {
    for n in 1..=2000usize {
        for (d, step) in [(1000usize, 1usize), (10_000, 7)] {
            let mut j = step;
            while j < d {
                let alpha: f64 = format!("{}", j as f64 / d as f64).parse().unwrap();
                let k = exact_k(n, j, d);
                assert_eq!(conformal_rank(n, alpha), k, "n={n} alpha={alpha}");
                assert_eq!(conformal_k(n, alpha), (k <= n).then_some(k));
                j += step;
            }
        }
        // Every level with (n+1) alpha an integer: alpha = m / (n+1).
        for m in 1..=n {
            let alpha = m as f64 / (n + 1) as f64;
            assert_eq!(conformal_rank(n, alpha), n + 1 - m, "n={n} m={m}");
        }
    }
}

#[test]
fn qhat_equals_sorted_k_for_every_n_up_to_2000() {
    let mut r = rng(5);
    let grid: Vec<usize> = (1..200).collect(); // alpha = j / 200
    let alphas: Vec<f64> = grid.iter().map(|&j| j as f64 / 200.0).collect();
    for n in 1..=2000usize {
        // Scores with ties (a quantised half) and +-0.
        let scores: Vec<f32> = (0..n)
            .map(|i| match i % 3 {
                0 => (r.random_range(0..50) as f32) / 50.0,
                1 => r.random_range(0.0f32..1.0),
                _ => [0.0f32, -0.0, 1.0][r.random_range(0..3)],
            })
            .collect();
        let mut sorted = scores.clone();
        sorted.sort_by(f32::total_cmp);
        let want: Vec<Option<u32>> = grid
            .iter()
            .map(|&j| {
                let k = exact_k(n, j, 200);
                (k <= n).then(|| sorted[k - 1].to_bits())
            })
            .collect();
        let bits = |v: Vec<Option<f32>>| -> Vec<Option<u32>> {
            v.into_iter().map(|x| x.map(f32::to_bits)).collect()
        };
        let sort = qhat_with(&CpuBackend, &scores, &alphas, QuantileMethod::Sort).unwrap();
        assert_eq!(bits(sort), want, "sort n={n}");
        // Selection on a few levels at a time (the Auto choice) and all at once.
        if n % 7 == 0 || n < 50 {
            let sel = qhat_with(&CpuBackend, &scores, &alphas, QuantileMethod::Select).unwrap();
            assert_eq!(bits(sel), want, "select n={n}");
        }
        let few = [alphas[19], alphas[9], alphas[139]];
        let fw: Vec<Option<u32>> = vec![want[19], want[9], want[139]];
        assert_eq!(
            bits(qhat(&CpuBackend, &scores, &few).unwrap()),
            fw,
            "auto n={n}"
        );
    }
}

#[test]
fn qhat_validates_input() {
    let s = [0.1f32, 0.2, 0.3];
    for a in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(qhat(&CpuBackend, &s, &[0.1, a]), Err(Error::BadAlpha(_))),
            "{a}"
        );
    }
    assert!(matches!(
        qhat(&CpuBackend, &[], &[0.1]),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        qhat(&CpuBackend, &[0.1, f32::NAN], &[0.9]),
        Err(Error::NonFinite { row: 1, .. })
    ));
    assert!(matches!(parse_alphas("0.1,x"), Err(Error::Invalid(_))));
    assert!(matches!(parse_alphas("0.1,1"), Err(Error::BadAlpha(_))));
    assert_eq!(parse_alphas("0.1, 0.05").unwrap(), vec![0.1, 0.05]);
}

#[test]
fn quantile_json_report() {
    let scores: Vec<f32> = (1..=9).map(|i| i as f32 / 10.0).rev().collect();
    let json = quantile_json(&CpuBackend, &scores, &[0.7, 0.05, 0.1]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["n"], 9);
    assert_eq!(v["alphas"], serde_json::json!([0.7, 0.05, 0.1]));
    assert_eq!(v["k"], serde_json::json!([3, 10, 9]));
    assert_eq!(v["qhat"][0].as_f64().unwrap() as f32, 0.3f32);
    assert!(v["qhat"][1].is_null());
    assert_eq!(v["qhat"][2].as_f64().unwrap() as f32, 0.9f32);
    assert_eq!(v["device"], "cpu");
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_qhat_equals_cpu() {
    use conformal_gpu::backend::GpuBackend;
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    let g = GpuBackend::new(ctx);
    let alphas: Vec<f64> = (1..100).map(|j| j as f64 / 100.0).collect();
    let mut r = rng(9);
    for n in [1usize, 2, 9, 255, 256, 257, 4097, 100_000] {
        let scores: Vec<f32> = (0..n)
            .map(|_| (r.random_range(0..1000) as f32) / 999.0)
            .collect();
        let cpu = qhat(&CpuBackend, &scores, &alphas).unwrap();
        for m in [
            QuantileMethod::Sort,
            QuantileMethod::Select,
            QuantileMethod::Auto,
        ] {
            assert_eq!(
                qhat_with(&g, &scores, &alphas, m).unwrap(),
                cpu,
                "n={n} {m:?}"
            );
        }
        assert_eq!(qhat(&g, &scores, &alphas[..3]).unwrap(), cpu[..3].to_vec());
    }
    assert!(g.device_name().starts_with("gpu: "));
}
