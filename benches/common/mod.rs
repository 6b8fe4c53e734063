//! Shared by the criterion benches: sizes from the environment, a timed GPU context,
//! the copy-kernel bandwidth ceiling.
#![allow(dead_code)]

use std::time::Duration;

use conformal_gpu::gpu::{GpuContext, GpuOptions};

/// Sizes to bench at: `CONFORMAL_BENCH_SIZES` (comma-separated), default 1M and 10M.
pub fn sizes() -> Vec<usize> {
    std::env::var("CONFORMAL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

/// Largest `rows * K` benched (`CONFORMAL_BENCH_MAX_ELEMS`, default 1e8 = 400 MB of f32):
/// bigger cases are skipped with a note, so the default run fits a 24 GiB machine.
pub fn max_elems() -> usize {
    std::env::var("CONFORMAL_BENCH_MAX_ELEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000_000)
}

/// Any adapter (software included: the bench says which), timestamps on when supported.
pub fn gpu() -> Option<GpuContext> {
    match GpuContext::new(GpuOptions {
        allow_software: true,
        timestamps: true,
        ..Default::default()
    }) {
        Ok(ctx) => {
            eprintln!(
                "GPU: {} (timestamps: {})",
                ctx.adapter_name(),
                ctx.timestamps_enabled()
            );
            Some(ctx)
        }
        Err(e) => {
            eprintln!("no GPU: {e}; GPU benches skipped");
            None
        }
    }
}

/// `n` pseudo-random scores in [0, 1) with some ties (xorshift; no NaN).
pub fn scores(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as u32 % (1 << 22)) as f32 / (1 << 22) as f32
        })
        .collect()
}

/// Seeded logits without pulling the test helpers into benches.
pub fn logits(n: usize, k: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n * k)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 16.0
        })
        .collect()
}

/// Kernel time per iteration from timestamp queries, or None without them.
pub fn kernel_time(ctx: &GpuContext, iters: u64, mut f: impl FnMut()) -> Option<Duration> {
    if !ctx.timestamps_enabled() {
        return None;
    }
    ctx.take_kernel_ns();
    for _ in 0..iters {
        f();
    }
    Some(Duration::from_nanos(ctx.take_kernel_ns()))
}

/// Measures the copy kernel on `bytes` resident bytes and prints its bandwidth: the
/// ceiling each streaming kernel's fraction is computed against. Returns bytes/s
/// (read + write), from timestamps when available.
pub fn copy_ceiling(ctx: &GpuContext, bytes: u64) -> Option<f64> {
    let bytes = (bytes.min(ctx.limits().max_binding_bytes) / 16) * 16;
    let src = ctx.storage("bench-src", bytes).ok()?;
    let dst = ctx.storage("bench-dst", bytes).ok()?;
    conformal_gpu::gpu::copy::copy(ctx, &src, &dst, bytes).ok()?; // warm-up
    let reps = 10u32;
    let t = kernel_time(ctx, reps as u64, || {
        let _ = conformal_gpu::gpu::copy::copy(ctx, &src, &dst, bytes);
    })?;
    let bw = 2.0 * bytes as f64 * reps as f64 / t.as_secs_f64();
    eprintln!(
        "copy ceiling: {:.1} GB/s over {} MB (kernel time from timestamps)",
        bw / 1e9,
        bytes >> 20
    );
    Some(bw)
}
