//! COT at K = 2: the host's solver (`methods::cot::cot`: f64 grid costs, one selection)
//! against the mergeable passes of `kernel::cot_two_class` on the CPU mirror and on the
//! GPU (`cot_on`), on softmax probabilities at 1M and 10M rows (`CONFORMAL_BENCH_SIZES`
//! overrides). `cargo bench --bench cot -- --sample-size 10`

use std::hint::black_box;

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::methods::cot::{cot, cot_on};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;

fn run<B: Backend>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    be: &B,
    p: &[f32],
) {
    let n = p.len() / 2;
    // Shares that leave a fractional row: both ranks narrowed.
    let counts = [123_457u64, 98_765];
    g.bench_with_input(BenchmarkId::new(format!("{name}_passes"), n), p, |b, p| {
        b.iter(|| cot_on(be, black_box(p), 2, &counts).unwrap())
    });
}

fn bench(c: &mut Criterion) {
    #[cfg(feature = "gpu")]
    let ctx = common::gpu();
    let mut g = c.benchmark_group("cot_two_class");
    g.sample_size(10);
    for n in common::sizes() {
        let logits = common::logits(n, 2);
        let p = conformal_gpu::cpu::softmax::softmax(&logits, 2, 1.0);
        g.throughput(Throughput::Elements(n as u64));
        let counts = [123_457u64, 98_765];
        g.bench_with_input(BenchmarkId::new("host_solver", n), &p, |b, p| {
            b.iter(|| cot(black_box(p), 2, &counts).unwrap())
        });
        run(&mut g, "cpu_mirror", &CpuBackend, &p);
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &ctx {
            run(
                &mut g,
                "gpu",
                &conformal_gpu::backend::GpuBackend::new(ctx),
                &p,
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
