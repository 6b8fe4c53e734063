//! COT at K = 2: the host's solver (`methods::cot::cot`: f64 grid costs, one selection)
//! against the mergeable passes of `kernel::cot_two_class` on the CPU mirror and on the
//! GPU (`cot_on`), on softmax probabilities at 1M and 10M rows (`CONFORMAL_BENCH_SIZES`
//! overrides). K > 2 (group `cot_collect`): one collect pass of the rounds at K = 10 by
//! the host's reference (`DualTally::add`), the CPU mirror and the GPU
//! (`Backend::cot_collect`, `kernel::cot_collect`), each turned into the pass's tally.
//! `cargo bench --bench cot -- --sample-size 10`

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

/// One collect pass at K = 10: a point that fixes most rows (g = 0, bands of 2^34 grid
/// units, about 1.6% of a probability) and frees those near a class boundary.
fn bench_collect(c: &mut Criterion) {
    use conformal_gpu::kernel::cot_collect::CollectPoint;
    use conformal_gpu::methods::cot_dual::DualTally;
    #[cfg(feature = "gpu")]
    let ctx = common::gpu();
    let k = 10;
    let (g, deltas) = (vec![0i64; k], vec![1i64 << 34; k]);
    let point = CollectPoint::new(&g, &deltas).unwrap();
    let mut group = c.benchmark_group("cot_collect");
    group.sample_size(10);
    for n in common::sizes() {
        if n * k > common::max_elems() {
            eprintln!("cot_collect: {n} rows x K = {k} skipped (CONFORMAL_BENCH_MAX_ELEMS)");
            continue;
        }
        let logits = common::logits(n, k);
        let p = conformal_gpu::cpu::softmax::softmax(&logits, k, 1.0);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("host_reference", n), &p, |b, p| {
            b.iter(|| {
                let mut t = DualTally::new(k);
                t.add(black_box(p), 0, &g, &deltas);
                t
            })
        });
        let mut via = |name: &str, be: &dyn Fn(&[f32]) -> DualTally| {
            group.bench_with_input(BenchmarkId::new(name, n), &p, |b, p| {
                b.iter(|| be(black_box(p)))
            });
        };
        let through = |be: &dyn Fn(&[f32]) -> conformal_gpu::kernel::cot_collect::CollectSums,
                       p: &[f32]| {
            let mut t = DualTally::new(k);
            t.add_sums(&be(p), 0, p).unwrap();
            t
        };
        via("cpu_mirror", &|p| {
            through(&|p| CpuBackend.cot_collect(p, &point).unwrap(), p)
        });
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &ctx {
            let gpu = conformal_gpu::backend::GpuBackend::new(ctx);
            via("gpu", &|p| {
                through(&|p| gpu.cot_collect(p, &point).unwrap(), p)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bench_collect);
criterion_main!(benches);
