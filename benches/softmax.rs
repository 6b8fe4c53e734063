//! Softmax at T: GPU and CPU side by side, 1M and 10M rows, K = 2 and K = 100.
//! `gpu-total` includes upload and readback; `gpu-kernel` is the kernel alone from
//! timestamp queries, and its bandwidth is printed as a fraction of the copy kernel's.
//!
//! `cargo bench --bench softmax -- --sample-size 10`
//! (sizes: `CONFORMAL_BENCH_SIZES=1000000,10000000`, cap: `CONFORMAL_BENCH_MAX_ELEMS`).

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let ceiling = gpu
        .as_ref()
        .and_then(|ctx| common::copy_ceiling(ctx, 256 << 20));
    let mut group = c.benchmark_group("softmax");
    group.sample_size(10);
    for n in common::sizes() {
        for k in [2usize, 100] {
            if n * k > common::max_elems() {
                eprintln!("skipped softmax n={n} K={k}: over CONFORMAL_BENCH_MAX_ELEMS");
                continue;
            }
            let logits = common::logits(n, k);
            let id = format!("n={n}/K={k}");
            // Bytes moved by the kernel: read logits, write probabilities.
            group.throughput(Throughput::Bytes((8 * n * k) as u64));
            group.bench_function(BenchmarkId::new("cpu", &id), |b| {
                b.iter(|| conformal_gpu::cpu::softmax::softmax(&logits, k, 1.7))
            });
            if let Some(ctx) = &gpu {
                group.bench_function(BenchmarkId::new("gpu-total", &id), |b| {
                    b.iter(|| conformal_gpu::gpu::softmax::softmax(ctx, &logits, k, 1.7).unwrap())
                });
                if ctx.timestamps_enabled() {
                    group.bench_function(BenchmarkId::new("gpu-kernel", &id), |b| {
                        b.iter_custom(|iters| {
                            common::kernel_time(ctx, iters, || {
                                conformal_gpu::gpu::softmax::softmax(ctx, &logits, k, 1.7).unwrap();
                            })
                            .unwrap_or_default()
                        })
                    });
                    let reps = 3;
                    if let Some(t) = common::kernel_time(ctx, reps, || {
                        conformal_gpu::gpu::softmax::softmax(ctx, &logits, k, 1.7).unwrap();
                    }) {
                        let bw = (8 * n * k) as f64 * reps as f64 / t.as_secs_f64();
                        let frac = ceiling
                            .map(|c| format!(", {:.0}% of copy", 100.0 * bw / c))
                            .unwrap_or_default();
                        eprintln!("softmax n={n} K={k}: kernel {:.1} GB/s{frac}", bw / 1e9);
                    }
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
