//! Exact order statistics: radix select (GPU) and select_nth_unstable_by (CPU) for 1, 10,
//! 16 and 64 ranks, next to qhat through a full sort, at 1M and 10M
//! (`CONFORMAL_BENCH_SIZES` overrides). This is the measurement behind
//! `methods::quantile::SELECT_MAX_RANKS`. `cargo bench --bench select -- --sample-size 10`

use std::hint::black_box;

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::methods::quantile::{qhat_with, QuantileMethod};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;

fn run<B: Backend>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    be: &B,
    k: &[f32],
) {
    let n = k.len();
    // The levels of numpy_kernels.py / torch_kernels.py (`LEVELS`) for 10 ranks, alpha =
    // 0.1 alone for 1; 16 and 64 ranks spread over the upper tail, as conformal levels are.
    let spread = |r: usize| (0..r).map(|i| 0.01 + 0.3 * i as f64 / r as f64).collect();
    let cases: [(usize, Vec<f64>); 4] = [
        (1, vec![0.1]),
        (
            10,
            vec![0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01],
        ),
        (16, spread(16)),
        (64, spread(64)),
    ];
    for (r, alphas) in cases {
        g.bench_with_input(
            BenchmarkId::new(format!("{name}_select_{r}"), n),
            k,
            |b, k| b.iter(|| qhat_with(be, black_box(k), &alphas, QuantileMethod::Select).unwrap()),
        );
        if r == 1 {
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_via_sort"), n),
                k,
                |b, k| {
                    b.iter(|| qhat_with(be, black_box(k), &alphas, QuantileMethod::Sort).unwrap())
                },
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    #[cfg(feature = "gpu")]
    let ctx = common::gpu();
    let mut g = c.benchmark_group("select");
    g.sample_size(10);
    for n in common::sizes() {
        let k = common::scores(n, 2);
        g.throughput(Throughput::Elements(n as u64));
        run(&mut g, "cpu", &CpuBackend, &k);
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &ctx {
            run(
                &mut g,
                "gpu",
                &conformal_gpu::backend::GpuBackend::new(ctx),
                &k,
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
