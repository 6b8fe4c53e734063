//! GPU softmax against its CPU mirror and an f64 oracle (DESIGN.md 2.1, section 4).
#![cfg(feature = "gpu")]

mod common;

use common::*;
use conformal_gpu::cpu;
use conformal_gpu::gpu::{self, GpuOptions};

/// f64 oracle: shift, then scale.
fn oracle(logits: &[f32], k: usize, t: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(k) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &z| a.max(z as f64));
        let e: Vec<f64> = row
            .iter()
            .map(|&z| ((z as f64 - m) / t as f64).exp())
            .collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// GPU vs mirror: WGSL exp/div are not correctly rounded, so allow a few ulp of the
/// value plus an absolute floor for tiny probabilities, whose relative error grows with
/// the exp argument (WGSL: 3 + 2|x| ulp).
fn mirror_tol(_: usize, a: f32, b: f32) -> f64 {
    16.0 * ulp(a.abs().max(b.abs())) + 2e-7
}

fn check(ctx: &gpu::GpuContext, n: usize, k: usize, t: f32, scale: f32, seed: u64) {
    let logits = random_logits(seed, n, k, scale);
    let g = gpu::softmax::softmax(ctx, &logits, k, t).unwrap();
    let c = cpu::softmax::softmax(&logits, k, t);
    let what = format!("softmax n={n} k={k} t={t} scale={scale}");
    assert_close_by(&what, &g, &c, mirror_tol);
    let o = oracle(&logits, k, t);
    let o32: Vec<f32> = o.iter().map(|&v| v as f32).collect();
    assert_close_by(&format!("{what} vs f64 oracle"), &g, &o32, |i, a, _| {
        // 1e-6 absolute against the f64 value itself (not its f32 rounding).
        if (a as f64 - o[i]).abs() <= 1e-6 {
            f64::INFINITY
        } else {
            0.0
        }
    });
    // Rows sum to one.
    for (r, row) in g.chunks_exact(k).enumerate() {
        let s: f64 = row.iter().map(|&p| p as f64).sum();
        assert!(
            (s - 1.0).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
            "{what}: row {r} sums to {s}"
        );
    }
}

#[test]
fn softmax_boundary_sizes_and_temperatures() {
    let Some(ctx) = shared_gpu() else { return };
    // 0: empty dispatch; 1: single row; 255/256/257: one workgroup -1, exact, +1.
    for &n in &[0usize, 1, 255, 256, 257] {
        for &k in &[2usize, 3, 10, 1000] {
            for &t in &[1e-3f32, 0.5, 1.0, 7.3, 1e3] {
                check(ctx, n, k, t, 10.0, (n * 31 + k) as u64);
            }
        }
    }
}

#[test]
fn softmax_huge_logits() {
    let Some(ctx) = shared_gpu() else { return };
    // Logits up to +-1e4: the shift keeps exp in range at every temperature.
    for &t in &[1e-3f32, 1.0, 1e3] {
        check(ctx, 257, 3, t, 1e4, 7);
    }
}

#[test]
fn softmax_shifted_rows_are_bit_identical() {
    let Some(ctx) = shared_gpu() else { return };
    // Rows equal up to a shift (quantised logits) must tie exactly: shift, then scale.
    let base = [0.125f32, -2.5, 3.0, 0.0];
    let mut logits = Vec::new();
    for s in [0.0f32, 1.0, -64.0, 1024.0] {
        logits.extend(base.iter().map(|z| z + s));
    }
    for &t in &[0.3f32, 1.0, 7.3] {
        let g = gpu::softmax::softmax(ctx, &logits, 4, t).unwrap();
        for r in 1..4 {
            assert_eq!(&g[0..4], &g[4 * r..4 * r + 4], "row {r} at t={t}");
        }
    }
}

#[test]
fn softmax_chunked_by_small_binding_limit() {
    // A 1 KiB binding holds 128 rows of K=2 and 25 rows of K=10: 1000 rows cross many
    // chunk boundaries, including a partial last chunk.
    let Some(ctx) = gpu_with(GpuOptions {
        max_binding_bytes: Some(1024),
        ..Default::default()
    }) else {
        return;
    };
    for &k in &[2usize, 10] {
        check(&ctx, 1000, k, 0.7, 5.0, 99);
    }
}

#[test]
fn softmax_past_binding_limit_and_65535_workgroups() {
    // Pin the binding limit at 128 MiB: some adapters allow more, and the point is to cross it.
    let Some(ctx) = gpu_with(GpuOptions {
        max_binding_bytes: Some(128 << 20),
        ..Default::default()
    }) else {
        return;
    };
    let ctx = &ctx;
    // 2^24 + 1 rows of K = 2 is 128 MiB + 8 bytes (past the default 128 MiB binding
    // limit) and 65537 workgroups of 256 (past 65535 per dimension).
    let n = (1usize << 24) + 1;
    let logits = random_logits(5, n, 2, 8.0);
    let g = gpu::softmax::softmax(ctx, &logits, 2, 1.3).unwrap();
    let c = cpu::softmax::softmax(&logits, 2, 1.3);
    assert_close_by("softmax 2^24+1", &g, &c, mirror_tol);
}
