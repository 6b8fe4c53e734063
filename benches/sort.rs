//! Radix sort (GPU) vs the CPU path's sort, keys alone and argsort, at 1M and 10M
//! (`CONFORMAL_BENCH_SIZES` overrides). Times include upload and readback.
//! `cargo bench --bench sort -- --sample-size 10`

use std::hint::black_box;

use conformal_gpu::backend::{Backend, CpuBackend};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;

fn bench(c: &mut Criterion) {
    #[cfg(feature = "gpu")]
    let ctx = common::gpu();
    let mut g = c.benchmark_group("sort");
    g.sample_size(10);
    for n in common::sizes() {
        let k = common::scores(n, 1);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("cpu_keys", n), &k, |b, k| {
            b.iter(|| CpuBackend.sort_keys(black_box(k)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("cpu_argsort", n), &k, |b, k| {
            b.iter(|| CpuBackend.argsort(black_box(k)).unwrap())
        });
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &ctx {
            let gb = conformal_gpu::backend::GpuBackend::new(ctx);
            g.bench_with_input(BenchmarkId::new("gpu_keys", n), &k, |b, k| {
                b.iter(|| gb.sort_keys(black_box(k)).unwrap())
            });
            g.bench_with_input(BenchmarkId::new("gpu_argsort", n), &k, |b, k| {
                b.iter(|| gb.argsort(black_box(k)).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
