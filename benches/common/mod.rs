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

/// `CONFORMAL_BENCH_DATA`: a prediction set `.npz` whose rows (the first n, or the file
/// tiled in order up to n rows, as `benches/peers/*_kernels.py --data` do) replace the
/// synthetic inputs, so the benches and the peer scripts time the same numbers.
pub fn data() -> Option<&'static conformal_gpu::data::PredictionSet> {
    static DATA: std::sync::OnceLock<Option<conformal_gpu::data::PredictionSet>> =
        std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let path = std::env::var("CONFORMAL_BENCH_DATA").ok()?;
        match conformal_gpu::data::load_npz(std::path::Path::new(&path)) {
            Ok(set) => {
                eprintln!(
                    "bench data: {path} ({} rows, K = {}), tiled",
                    set.n(),
                    set.k()
                );
                Some(set)
            }
            Err(e) => {
                eprintln!("CONFORMAL_BENCH_DATA={path}: {e}");
                std::process::exit(2)
            }
        }
    })
    .as_ref()
}

/// The first `n` values of `a` repeated in order.
fn tile<T: Copy>(a: &[T], n: usize) -> Vec<T> {
    a.iter().copied().cycle().take(n).collect()
}

/// Labels of the data file's rows tiled to `n` (unknown labels replaced by the argmax,
/// for timing only, as the peer scripts do); `None` without a data file or when its K is
/// not `k` (the logits are synthetic then, see [`logits`]).
pub fn data_labels(n: usize, k: usize) -> Option<Vec<i32>> {
    let set = data().filter(|s| s.k() == k)?;
    let z = set.logits_slice();
    let y = conformal_gpu::backend::labels_i32(set);
    let fixed: Vec<i32> = y
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y >= 0 {
                return y;
            }
            let row = &z[i * k..(i + 1) * k];
            (0..k).fold(0, |a, j| if row[j] > row[a] { j } else { a }) as i32
        })
        .collect();
    Some(tile(&fixed, n))
}

/// `n` scores in [0, 1]: with a data file, its LAC scores `1 - p_y` at T = 1 (rows tiled
/// to `n`, what the peers sort and select); otherwise pseudo-random with some ties
/// (xorshift; no NaN).
pub fn scores(n: usize, seed: u64) -> Vec<f32> {
    if let Some((set, y)) = data().and_then(|s| Some((s, data_labels(n, s.k())?))) {
        let z = tile(&set.logits_slice(), n * set.k());
        return conformal_gpu::cpu::lac_scores::lac_scores(&z, &y, set.k(), 1.0);
    }
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

/// `n * k` logits: the data file's rows tiled (when its K is `k`), otherwise seeded
/// pseudo-random values in [-8, 8).
pub fn logits(n: usize, k: usize) -> Vec<f32> {
    if let Some(set) = data().filter(|s| s.k() == k) {
        return tile(&set.logits_slice(), n * k);
    }
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
