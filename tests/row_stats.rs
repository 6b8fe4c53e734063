//! The row_stats kernel against its CPU mirror, stage by stage (DESIGN.md section 4):
//! boundary sizes, temperatures from 1e-3 to 1e3, tied (quantised) logits, unknown labels,
//! many thresholds (more than one pass), and small bindings that force chunking.
#![cfg(feature = "gpu")]

mod common;

use common::*;
use conformal_gpu::backend::{Backend, CpuBackend, GpuBackend};
use conformal_gpu::cpu::row_stats::col;
use conformal_gpu::gpu::GpuOptions;
use rand::Rng;

/// Rows whose comparisons can legitimately differ: some `r_k` within 1e-5 of a threshold
/// (WGSL exp/div are a few ulp off the CPU's).
fn near_threshold(logits: &[f32], k: usize, t: f32, qhats: &[f32], row: usize) -> bool {
    let p = conformal_gpu::cpu::softmax::softmax(&logits[row * k..(row + 1) * k], k, t);
    p.iter()
        .any(|&pk| qhats.iter().any(|&q| ((1.0 - pk) - q).abs() <= 1e-5))
}

fn check(
    ctx: &conformal_gpu::gpu::GpuContext,
    n: usize,
    k: usize,
    t: f32,
    quantise: bool,
    seed: u64,
) {
    let mut r = rng(seed);
    let mut logits = random_logits(seed, n, k, 6.0);
    if quantise {
        logits
            .iter_mut()
            .for_each(|z| *z = (*z * 4.0).round() / 4.0);
    }
    let labels: Vec<i32> = (0..n).map(|_| r.random_range(-1..k as i32)).collect();
    // 40 thresholds: two passes of the kernel (31 per pass), +inf among them.
    let qhats: Vec<Option<f32>> = (0..40)
        .map(|i| if i == 7 { None } else { Some(i as f32 / 40.0) })
        .collect();
    let q32: Vec<f32> = qhats.iter().map(|q| q.unwrap_or(2.0)).collect();
    let gb = GpuBackend::new(ctx);
    let g = gb
        .row_stats(&gb.prepare(&logits, &labels, k).unwrap(), t, &qhats)
        .unwrap();
    let c = CpuBackend
        .row_stats(&CpuBackend.prepare(&logits, &labels, k).unwrap(), t, &qhats)
        .unwrap();
    let what = format!("row_stats n={n} k={k} t={t} quantised={quantise}");
    assert_eq!(g.len(), n, "{what}");
    assert_eq!(g.n_alpha, 40);
    for (i, &y) in labels.iter().enumerate() {
        // yhat is the logits' argmax: exact.
        assert_eq!(g.yhat(i), c.yhat(i), "{what} row {i} yhat");
        let (gs, cs) = (g.stats[i], c.stats[i]);
        for j in [col::P1, col::LAC, col::R1, col::R2] {
            assert!(
                (gs[j] - cs[j]).abs() <= 1e-6,
                "{what} row {i} col {j}: {} vs {}",
                gs[j],
                cs[j]
            );
        }
        // Negative entropy: a sum of K terms, each a few ulp off.
        assert!(
            (gs[col::NE] - cs[col::NE]).abs() <= 1e-5 * (1.0 + cs[col::NE].abs()),
            "{what} row {i} ne"
        );
        if y < 0 {
            assert_eq!(gs[col::LAC], -1.0, "{what} row {i}: unknown label");
        }
        let sizes_equal = (0..40).all(|a| g.set_size(i, a) == c.set_size(i, a));
        assert!(
            sizes_equal || near_threshold(&logits, k, t, &q32, i),
            "{what} row {i} set sizes"
        );
        assert_eq!(
            g.set_size(i, 7),
            k as u32,
            "{what}: qhat = +inf admits every class"
        );
    }
}

#[test]
fn row_stats_matches_mirror_at_boundaries() {
    let Some(ctx) = shared_gpu() else { return };
    // 0: no dispatch; 1: one row; 255/256/257: a workgroup -1, exact, +1.
    for &n in &[0usize, 1, 255, 256, 257] {
        for &k in &[2usize, 3, 10, 100] {
            for &t in &[1e-3f32, 1.0, 7.3, 1e3] {
                check(ctx, n, k, t, n % 2 == 1, (n * 7 + k) as u64);
            }
        }
    }
}

#[test]
fn row_stats_crosses_chunks() {
    // 4 KiB bindings hold 32 rows at the 128-byte output budget: 1000 rows cross ~30 chunks.
    let Some(ctx) = gpu_with(GpuOptions {
        max_binding_bytes: Some(4096),
        ..Default::default()
    }) else {
        return;
    };
    check(&ctx, 1000, 3, 0.8, true, 5);
    check(&ctx, 1000, 2, 2.0, false, 6);
}
