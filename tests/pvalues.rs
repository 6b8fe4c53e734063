//! Conformal p-values and LAC scores: GPU == CPU mirror bit for bit on the same
//! probabilities (numerators, top/second, set sizes, yhat), chunked calibration scores,
//! logits mode within the threshold tolerance, validation.

mod common;

use common::{random_logits, rng};
use conformal_gpu::backend::{labels_i32, Backend, CpuBackend};
use conformal_gpu::cpu::pvalues::{count_ge, pvalues as mirror};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::Error;
use ndarray::{Array1, Array2};
use rand::Rng;

/// Sorted calibration scores with ties, +-0, exact copies of some target `1 - p` values.
fn cal_scores(n: usize, probs: &[f32], seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut s: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 if !probs.is_empty() => 1.0 - probs[r.random_range(0..probs.len())],
            1 => (r.random_range(0..20) as f32) / 20.0,
            2 => [0.0f32, -0.0, 1.0][r.random_range(0..3)],
            _ => r.random_range(0.0f32..1.0),
        })
        .collect();
    s.sort_by(f32::total_cmp);
    s
}

/// Rows as `Backend::prepare` takes them.
struct Rows {
    logits: Vec<f32>,
    labels: Vec<i32>,
    k: usize,
}

fn set(logits: Vec<f32>, k: usize, labels: Option<Vec<i64>>) -> Rows {
    let n = logits.len() / k;
    let s = PredictionSet::new("t", Array2::from_shape_vec((n, k), logits).unwrap());
    let s = match labels {
        Some(l) => s.with_labels(Array1::from(l)),
        None => s,
    };
    Rows {
        logits: s.logits_slice().into_owned(),
        labels: labels_i32(&s),
        k,
    }
}

#[test]
fn cpu_pvalues_match_brute_force() {
    let k = 4;
    let logits = random_logits(1, 300, k, 5.0);
    let probs = conformal_gpu::cpu::softmax::softmax(&logits, k, 1.0);
    let sorted = cal_scores(500, &probs, 2);
    let q = [0.3f32, 0.9, f32::INFINITY];
    let p = mirror(&probs, k, 1.0, true, &sorted, &q, true);
    let nums = p.numerators.as_ref().unwrap();
    for i in 0..300 {
        let mut row: Vec<u32> = (0..k)
            .map(|j| {
                1 + sorted
                    .iter()
                    .filter(|&&s| s >= 1.0 - probs[i * k + j])
                    .count() as u32
            })
            .collect();
        assert_eq!(&nums[i * k..(i + 1) * k], &row[..]);
        row.sort_unstable();
        assert_eq!(p.top[i], row[k - 1]);
        assert_eq!(p.second[i], row[k - 2]);
        assert_eq!(p.credibility(i), row[k - 1] as f64 / 501.0);
        assert_eq!(p.confidence(i), 1.0 - row[k - 2] as f64 / 501.0);
        for (a, &qa) in q.iter().enumerate() {
            let size = (0..k).filter(|&j| 1.0 - probs[i * k + j] <= qa).count() as u32;
            assert_eq!(p.set_size(i, a), size);
        }
        assert_eq!(p.set_size(i, 2), k as u32);
    }
    // Through the backend (logits mode): yhat is the logits' argmax.
    let s = set(logits.clone(), k, None);
    let rows = CpuBackend.prepare(&s.logits, &s.labels, s.k).unwrap();
    let b = CpuBackend.pvalues(&rows, 1.0, &sorted, &q, false).unwrap();
    for i in 0..300 {
        let row = &logits[i * k..(i + 1) * k];
        let am = (0..k).fold(0, |m, j| if row[j] > row[m] { j } else { m });
        assert_eq!(b.yhat[i] as usize, am);
    }
    assert!(b.numerators.is_none());
}

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use common::{gpu_with, shared_gpu};
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::gpu::pvalues::pvalues as gpu_pvalues;
    use conformal_gpu::gpu::{GpuContext, GpuOptions};

    fn same_probs(ctx: &GpuContext, rows_n: usize, k: usize, n_cal: usize, seed: u64) {
        let logits = random_logits(seed, rows_n, k, 6.0);
        // The same probability buffer for both: the GPU's own softmax.
        let probs = GpuBackend::new(ctx).softmax(&logits, k, 0.7).unwrap();
        let sorted = cal_scores(n_cal, &probs, seed + 1);
        let mut q = vec![f32::INFINITY, 0.5, -0.0];
        if !probs.is_empty() {
            q.push(1.0 - probs[0]);
        }
        let dev = ctx.upload_rows(&probs, &[], k).unwrap();
        let g = gpu_pvalues(ctx, &dev, 1.0, true, &sorted, &q, true).unwrap();
        let c = mirror(&probs, k, 1.0, true, &sorted, &q, true);
        assert_eq!(g, c, "rows={rows_n} k={k} n_cal={n_cal}");
    }

    #[test]
    fn gpu_pvalues_match_mirror_bit_for_bit() {
        let Some(ctx) = shared_gpu() else { return };
        for rows_n in [0usize, 1, 255, 256, 257, 4097] {
            for k in [2usize, 4, 10] {
                same_probs(ctx, rows_n, k, 1000, (rows_n * 10 + k) as u64);
            }
        }
        same_probs(ctx, 300, 3, 1, 7);
        same_probs(ctx, 300, 3, 100_000, 8);
    }

    #[test]
    fn gpu_pvalues_cross_chunks() {
        // 1 KiB bindings: 256 scores per chunk (4+ chunks), rows split by counts/outputs.
        let Some(ctx) = gpu_with(GpuOptions {
            max_binding_bytes: Some(1024),
            ..Default::default()
        }) else {
            return;
        };
        for (rows_n, k, n_cal) in [(600usize, 2usize, 1025usize), (257, 5, 256), (100, 3, 257)] {
            same_probs(&ctx, rows_n, k, n_cal, rows_n as u64);
        }
    }

    #[test]
    fn gpu_pvalues_logits_mode_within_threshold_tolerance() {
        let Some(ctx) = shared_gpu() else { return };
        let k = 4;
        let logits = random_logits(11, 5000, k, 8.0);
        let probs = conformal_gpu::cpu::softmax::softmax(&logits, k, 1.5);
        let sorted = cal_scores(3000, &probs, 12);
        let q = [0.2f32, f32::INFINITY];
        let s = set(logits, k, None);
        let g = GpuBackend::new(ctx);
        let gr = g.prepare(&s.logits, &s.labels, s.k).unwrap();
        let gp = g.pvalues(&gr, 1.5, &sorted, &q, true).unwrap();
        let cr = CpuBackend.prepare(&s.logits, &s.labels, s.k).unwrap();
        let cp = CpuBackend.pvalues(&cr, 1.5, &sorted, &q, true).unwrap();
        assert_eq!(gp.yhat, cp.yhat);
        let (gn, cn) = (gp.numerators.unwrap(), cp.numerators.unwrap());
        for i in 0..gn.len() {
            // A GPU exp a few ulp off may move 1 - p across scores within 1e-6 of it.
            let v = 1.0 - probs[i];
            let near = count_ge(&sorted, v - 1e-6) - count_ge(&sorted, v + 1e-6);
            assert!(
                gn[i].abs_diff(cn[i]) as usize <= near,
                "({i}) {} vs {}",
                gn[i],
                cn[i]
            );
        }
    }

    #[test]
    fn gpu_lac_scores_match_cpu() {
        let Some(ctx) = shared_gpu() else { return };
        let g = GpuBackend::new(ctx);
        for (k, scale, t) in [
            (2usize, 4.0f32, 1.0f32),
            (10, 30.0, 0.001),
            (3, 1.0, 1000.0),
        ] {
            let n = 4097;
            let mut logits = random_logits(k as u64, n, k, scale);
            // Row 1 = row 0 + 3: equal up to a shift, so bit-identical scores.
            for j in 0..k {
                logits[k + j] = logits[j] + 3.0;
            }
            let mut r = rng(3);
            let labels: Vec<i64> = (0..n)
                .map(|i| {
                    if i < 2 {
                        0
                    } else {
                        r.random_range(0..k as i64)
                    }
                })
                .collect();
            let s = set(logits, k, Some(labels));
            let gs = g
                .lac_scores(&g.prepare(&s.logits, &s.labels, s.k).unwrap(), t)
                .unwrap();
            let cs = CpuBackend
                .lac_scores(&CpuBackend.prepare(&s.logits, &s.labels, s.k).unwrap(), t)
                .unwrap();
            common::assert_close_by("lac", &gs, &cs, |_, _, _| 1e-6);
            assert_eq!(gs[0].to_bits(), gs[1].to_bits());
        }
        let s = set(vec![0.0, 1.0, 2.0, 0.0], 2, Some(vec![1, -1]));
        assert!(matches!(
            g.lac_scores(&g.prepare(&s.logits, &s.labels, s.k).unwrap(), 1.0),
            Err(Error::UnlabelledSource { row: 1, .. })
        ));
        assert!(matches!(
            g.lac_scores(&g.prepare(&s.logits, &s.labels, s.k).unwrap(), 0.0),
            Err(Error::BadTemperature(_))
        ));
    }
}

#[test]
fn pvalues_and_lac_validate_input() {
    let s = set(vec![0.0, 1.0, 2.0, 0.0], 2, Some(vec![1, -1]));
    let rows = CpuBackend.prepare(&s.logits, &s.labels, s.k).unwrap();
    assert!(matches!(
        CpuBackend.pvalues(&rows, 1.0, &[], &[], false),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        CpuBackend.pvalues(&rows, 1.0, &[0.5, 0.1], &[], false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        CpuBackend.pvalues(&rows, 1.0, &[f32::NAN], &[], false),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        CpuBackend.pvalues(&rows, -1.0, &[0.1], &[], false),
        Err(Error::BadTemperature(_))
    ));
    assert!(matches!(
        CpuBackend.lac_scores(&rows, 1.0),
        Err(Error::UnlabelledSource { row: 1, .. })
    ));
}
