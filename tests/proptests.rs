//! Property tests (DESIGN.md section 4) on the CPU path: softmax rows are distributions
//! that sum to one, and the fitted temperature is a minimum of the NLL. (Sorting,
//! selection and quantile properties live in tests/sort.rs, select.rs, quantile.rs.)

use conformal_gpu::backend::{labels_i32, Backend, CpuBackend};
use conformal_gpu::cpu;
use conformal_gpu::data::PredictionSet;
use conformal_gpu::methods::temperature::fit_temperature;
use ndarray::{Array1, Array2};
use proptest::prelude::*;

fn nll(logits: &[f32], labels: &[i32], k: usize, t: f64) -> f64 {
    let s = cpu::temperature_nll::nll_sums_f64(logits, labels, k, 1.0 / t);
    s[0] / s[3]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn softmax_rows_sum_to_one(
        k in 2usize..40,
        rows in prop::collection::vec(prop::collection::vec(-1e4f32..1e4, 40), 1..20),
        t in prop::sample::select(vec![1e-3f32, 0.05, 0.5, 1.0, 7.3, 1e3]),
    ) {
        let logits: Vec<f32> = rows.iter().flat_map(|r| r[..k].iter().copied()).collect();
        let p = cpu::softmax::softmax(&logits, k, t);
        for row in p.chunks_exact(k) {
            prop_assert!(row.iter().all(|&v| (0.0..=1.0).contains(&v)));
            let s: f64 = row.iter().map(|&v| v as f64).sum();
            prop_assert!((s - 1.0).abs() <= 1e-5, "sum {}", s);
        }
    }

    #[test]
    fn fitted_temperature_is_a_minimum(
        seed in 0u64..1000,
        n in 20usize..300,
        k in 2usize..6,
        scale in 0.2f32..6.0,
    ) {
        // Noisy labels keep the data non-separable, so the minimum is interior.
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
        let mut next = move || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; (x >> 40) as f32 / (1u64 << 24) as f32 };
        let labels = Array1::from_shape_fn(n, |i| (i % k) as i64);
        let logits = Array2::from_shape_fn((n, k), |(i, j)| scale * ((j == i % k) as i32 as f32 + 2.0 * next() - 1.0));
        let mut set = PredictionSet::new("p", logits).with_labels(labels);
        // Two rows predicted wrong with a wide margin: no separable data.
        set.logits[[0, 0]] = -3.0 * scale;
        set.logits[[0, 1]] = 3.0 * scale;
        set.logits[[1, 1]] = -3.0 * scale;
        set.logits[[1, 0]] = 3.0 * scale;
        set.labels.as_mut().unwrap()[1] = 1;
        let (l, y) = (set.logits_slice().into_owned(), labels_i32(&set));
        let fit = fit_temperature(&CpuBackend, &CpuBackend.prepare(&l, &y, k).unwrap()).unwrap();
        if fit.converged {
            let f0 = nll(&l, &y, k, fit.temperature);
            for step in [1.0001, 1.01, 1.5] {
                prop_assert!(f0 <= nll(&l, &y, k, fit.temperature * step) + 1e-12);
                prop_assert!(f0 <= nll(&l, &y, k, fit.temperature / step) + 1e-12);
            }
        }
    }
}
