//! Temperature fit (DESIGN.md 2.2) against an independent f64 golden-section minimiser,
//! on the CPU path (1e-7 relative) and the GPU path (1e-5 relative); kernel partials
//! against their CPU mirrors; the unbounded cases.

mod common;

use common::*;
use conformal_gpu::backend::{labels_i32, Backend, CpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::methods::temperature::{fit_temperature, temperature_report, T_MAX, T_MIN};
use ndarray::{Array1, Array2};
use rand::Rng;

/// Mean NLL at temperature t in plain f64 (the oracle; independent of the crate's code).
fn nll(logits: &[f32], labels: &[i64], k: usize, t: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        let u: Vec<f64> = row.iter().map(|&z| z as f64 / t).collect();
        let m = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + u.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - u[y as usize];
    }
    total / labels.len() as f64
}

/// Golden-section search for argmin over log T in [ln lo, ln hi].
fn golden(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo.ln(), hi.ln());
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c.exp()), f(d.exp()));
    while (b - a).abs() > 1e-12 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c.exp());
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d.exp());
        }
    }
    ((a + b) / 2.0).exp()
}

/// Overconfident synthetic set: logits = scale * (clean signal + noise), some mistakes.
fn overconfident(seed: u64, n: usize, k: usize, scale: f32) -> PredictionSet {
    let mut r = rng(seed);
    let mut logits = Array2::<f32>::zeros((n, k));
    let mut labels = Array1::<i64>::zeros(n);
    for i in 0..n {
        let y = r.random_range(0..k);
        labels[i] = y as i64;
        for j in 0..k {
            let signal = if j == y { 1.5 } else { 0.0 };
            logits[[i, j]] = scale * (signal + r.random_range(-1.5f32..1.5));
        }
    }
    PredictionSet::new("synthetic", logits).with_labels(labels)
}

fn cpu_fit(set: &PredictionSet) -> conformal_gpu::methods::temperature::TemperatureFit {
    let (l, y) = (set.logits_slice(), labels_i32(set));
    let rows = CpuBackend.prepare(&l, &y, set.k()).unwrap();
    fit_temperature(&CpuBackend, &rows).unwrap()
}

fn oracle_t(set: &PredictionSet) -> f64 {
    let l = set.logits_slice();
    let y = set.labels.as_ref().unwrap().to_vec();
    golden(|t| nll(&l, &y, set.k(), t), 0.05, 50.0)
}

#[test]
fn cpu_fit_matches_golden_section_to_1e7() {
    for (seed, n, k, scale) in [
        (1u64, 2000usize, 2usize, 3.0f32),
        (2, 1500, 10, 2.0),
        (3, 800, 3, 0.4),
    ] {
        let set = overconfident(seed, n, k, scale);
        let want = oracle_t(&set);
        let (l, y) = (set.logits_slice(), labels_i32(&set));
        let rows = CpuBackend.prepare(&l, &y, k).unwrap();
        let fit = fit_temperature(&CpuBackend, &rows).unwrap();
        assert!(fit.converged, "{fit:?}");
        let rel = (fit.temperature - want).abs() / want;
        assert!(
            rel <= 1e-7,
            "seed {seed}: T = {} vs oracle {want} (rel {rel:e})",
            fit.temperature
        );
        // The fitted T is a minimum: NLL does not drop either side.
        let l = set.logits_slice();
        let y = set.labels.as_ref().unwrap().to_vec();
        let f0 = nll(&l, &y, k, fit.temperature);
        assert!(f0 <= nll(&l, &y, k, fit.temperature * 1.001));
        assert!(f0 <= nll(&l, &y, k, fit.temperature / 1.001));
        let rep = temperature_report(&CpuBackend, &set).unwrap();
        assert!(rep.nll_after <= rep.nll_before);
        assert!(
            (rep.nll_after - f0).abs() < 1e-9,
            "{} vs {f0}",
            rep.nll_after
        );
    }
}

#[test]
fn separable_data_returns_t_min_unconverged() {
    // Every row correct with a margin: NLL keeps falling as T -> 0.
    let logits = Array2::from_shape_fn((300, 2), |(i, j)| if (i % 2) == j { 5.0 } else { -5.0 });
    let labels = Array1::from_shape_fn(300, |i| (i % 2) as i64);
    let set = PredictionSet::new("separable", logits).with_labels(labels);
    let fit = cpu_fit(&set);
    assert!(!fit.converged);
    assert_eq!(fit.temperature, T_MIN);
    assert!(fit.warning.is_some());
}

#[test]
fn worse_than_chance_returns_t_max_unconverged() {
    // Every prediction wrong: b* < 0, so the fit stops at T_MAX.
    let logits = Array2::from_shape_fn((300, 2), |(i, j)| if (i % 2) == j { 2.0 } else { -1.0 });
    let labels = Array1::from_shape_fn(300, |i| ((i + 1) % 2) as i64);
    let set = PredictionSet::new("wrong", logits).with_labels(labels);
    let fit = cpu_fit(&set);
    assert!(!fit.converged);
    assert_eq!(fit.temperature, T_MAX);
}

#[test]
fn unlabelled_source_is_rejected() {
    let set = overconfident(4, 10, 2, 1.0);
    let mut labels = set.labels.clone().unwrap();
    labels[7] = -1;
    let set = PredictionSet {
        labels: Some(labels),
        ..set
    };
    let err = temperature_report(&CpuBackend, &set).unwrap_err();
    assert!(
        matches!(err, conformal_gpu::Error::UnlabelledSource { row: 7, .. }),
        "{err}"
    );
}

#[cfg(feature = "gpu")]
mod gpu_path {
    use super::*;
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::cpu;
    use conformal_gpu::gpu::{self, GpuOptions};

    #[test]
    fn gpu_fit_matches_golden_section_to_1e5() {
        let Some(ctx) = shared_gpu() else { return };
        let gb = GpuBackend::new(ctx);
        for (seed, n, k, scale) in [
            (1u64, 2000usize, 2usize, 3.0f32),
            (2, 1500, 10, 2.0),
            (5, 257, 3, 6.0),
        ] {
            let set = overconfident(seed, n, k, scale);
            let want = oracle_t(&set);
            let (l, y) = (set.logits_slice(), labels_i32(&set));
            let rows = gb.prepare(&l, &y, k).unwrap();
            let fit = fit_temperature(&gb, &rows).unwrap();
            assert!(fit.converged);
            let rel = (fit.temperature - want).abs() / want;
            assert!(
                rel <= 1e-5,
                "seed {seed}: GPU T = {} vs oracle {want} (rel {rel:e})",
                fit.temperature
            );
            let g = temperature_report(&gb, &set).unwrap();
            let c = temperature_report(&CpuBackend, &set).unwrap();
            assert!((g.nll_before - c.nll_before).abs() <= 1e-5);
            assert!((g.nll_after - c.nll_after).abs() <= 1e-5);
            assert!(
                (g.ece_before - c.ece_before).abs() <= 1e-5,
                "{} vs {}",
                g.ece_before,
                c.ece_before
            );
            assert!((g.ece_after - c.ece_after).abs() <= 1e-5);
            assert_eq!(g.accuracy, c.accuracy);
            assert!(g.device.starts_with("gpu: "));
        }
    }

    #[test]
    fn gpu_unbounded_cases() {
        let Some(ctx) = shared_gpu() else { return };
        let gb = GpuBackend::new(ctx);
        let logits =
            Array2::from_shape_fn((300, 2), |(i, j)| if (i % 2) == j { 5.0 } else { -5.0 });
        let labels = Array1::from_shape_fn(300, |i| (i % 2) as i64);
        let sep = PredictionSet::new("separable", logits.clone()).with_labels(labels.clone());
        let gpu_fit = |set: &PredictionSet| {
            let (l, y) = (set.logits_slice(), labels_i32(set));
            fit_temperature(&gb, &gb.prepare(&l, &y, 2).unwrap()).unwrap()
        };
        let fit = gpu_fit(&sep);
        assert!(!fit.converged);
        assert_eq!(fit.temperature, T_MIN);
        let wrong = PredictionSet::new("wrong", logits).with_labels(labels.mapv(|y| 1 - y));
        let fit = gpu_fit(&wrong);
        assert!(!fit.converged);
        assert_eq!(fit.temperature, T_MAX);
    }

    #[test]
    fn nll_and_calibration_partials_match_mirrors() {
        // Sizes around the workgroup (255, 256, 257) and a small binding limit so the
        // per-chunk partial lists concatenate across chunk boundaries.
        let Some(ctx) = gpu_with(GpuOptions {
            max_binding_bytes: Some(4096),
            ..Default::default()
        }) else {
            return;
        };
        for &(n, k) in &[(1usize, 2usize), (255, 3), (256, 2), (257, 10), (1000, 4)] {
            let set = overconfident(n as u64, n, k, 2.0);
            let labels = labels_i32(&set);
            let l = set.logits_slice();
            let rows = ctx.upload_rows(&l, &labels, k).unwrap();
            for &b in &[1e-3f32, 0.7, 1.0, 3.0, 1e3] {
                let g = gpu::temperature_nll::temperature_nll(&ctx, &rows, b).unwrap();
                // Each chunk's partials are mirrored on its own rows.
                let mut c = Vec::new();
                for (start, rows_in, _, _) in &rows.chunks {
                    c.extend(cpu::temperature_nll::temperature_nll(
                        &l[start * k..(start + rows_in) * k],
                        &labels[*start..start + rows_in],
                        k,
                        b,
                    ));
                }
                assert_eq!(g.len(), c.len());
                for (i, (gp, cp)) in g.iter().zip(&c).enumerate() {
                    assert_eq!(gp[3], cp[3], "labelled count, group {i}");
                    for j in 0..3 {
                        let tol = 1e-4 * (cp[j].abs() as f64).max(1.0);
                        assert!(
                            ((gp[j] - cp[j]) as f64).abs() <= tol,
                            "n={n} k={k} b={b} group {i} term {j}: {} vs {}",
                            gp[j],
                            cp[j]
                        );
                    }
                }
            }
            for &t in &[1e-3f32, 0.5, 1.0, 7.3, 1e3] {
                let g = gpu::calibration::calibration(&ctx, &rows, t).unwrap();
                let mut c = Vec::new();
                for (start, rows_in, _, _) in &rows.chunks {
                    c.extend(cpu::calibration::calibration(
                        &l[start * k..(start + rows_in) * k],
                        &labels[*start..start + rows_in],
                        k,
                        t,
                    ));
                }
                assert_eq!(g.len(), c.len());
                let gs = cpu::calibration::CalibrationStats::from_partials(&g);
                let cs = cpu::calibration::CalibrationStats::from_partials(&c);
                // A confidence within an ulp of a bin edge may land in the next bin.
                let moved: u64 = gs
                    .bin_count
                    .iter()
                    .zip(&cs.bin_count)
                    .map(|(a, b)| a.abs_diff(*b))
                    .sum();
                assert!(moved <= 4, "n={n} t={t}: {moved} rows changed bins");
                assert_eq!(gs.correct, cs.correct);
                assert_eq!(gs.labelled, cs.labelled);
                assert!((gs.ece() - cs.ece()).abs() <= 1e-5 + moved as f64 / n as f64);
            }
        }
    }
}
