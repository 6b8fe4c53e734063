//! Conformal p-values of a K = 2 target set (1M and 10M rows; `CONFORMAL_BENCH_SIZES`
//! overrides) against 33,560 sorted calibration scores (Camelyon17 id_val), set sizes at
//! 3 levels; GPU rows prepared (uploaded) outside the timed loop. With
//! `CONFORMAL_BENCH_DATA` the rows and the calibration scores come from that file, as in
//! `numpy_kernels.py --data`.
//! `cargo bench --bench pvalues -- --sample-size 10`

use std::hint::black_box;

use conformal_gpu::backend::{Backend, CpuBackend};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;

fn bench(c: &mut Criterion) {
    #[cfg(feature = "gpu")]
    let ctx = common::gpu();
    let mut cal = common::scores(33_560, 3);
    cal.sort_by(f32::total_cmp);
    let q = [0.9f32, 0.95, f32::INFINITY];
    let mut g = c.benchmark_group("pvalues");
    g.sample_size(10);
    for n in common::sizes() {
        let logits = common::logits(n, 2);
        let labels = vec![-1i32; n];
        g.throughput(Throughput::Elements(n as u64));
        let rows = CpuBackend.prepare(&logits, &labels, 2).unwrap();
        g.bench_function(BenchmarkId::new("cpu", n), |b| {
            b.iter(|| {
                CpuBackend
                    .pvalues(&rows, 1.3, black_box(&cal), &q, false)
                    .unwrap()
            })
        });
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &ctx {
            let gb = conformal_gpu::backend::GpuBackend::new(ctx);
            let rows = gb.prepare(&logits, &labels, 2).unwrap();
            g.bench_function(BenchmarkId::new("gpu", n), |b| {
                b.iter(|| gb.pvalues(&rows, 1.3, black_box(&cal), &q, false).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
