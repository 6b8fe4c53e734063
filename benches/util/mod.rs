//! Shared by the sort, select and p-value benches: sizes and seeded keys.
#![allow(dead_code)]

/// Sizes from `CONFORMAL_BENCH_SIZES` (comma-separated), default 1M and 10M.
pub fn sizes() -> Vec<usize> {
    std::env::var("CONFORMAL_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
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

/// A GPU context (software adapters allowed), or `None` with a notice.
#[cfg(feature = "gpu")]
pub fn gpu() -> Option<conformal_gpu::gpu::GpuContext> {
    match conformal_gpu::gpu::GpuContext::new(conformal_gpu::gpu::GpuOptions {
        allow_software: true,
        ..Default::default()
    }) {
        Ok(c) => {
            eprintln!("GPU: {}", c.adapter_name());
            Some(c)
        }
        Err(e) => {
            eprintln!("GPU benches skipped: {e}");
            None
        }
    }
}
