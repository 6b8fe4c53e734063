//! The device tally on resident rows (issue 11, item 6), three kernels on the same rows:
//! `generic` (one thread a row, K and the level count read from the uniform: the kernel
//! as it was), `one-thread` (specialised: K <= 32 unrolled; what software adapters run)
//! and `lanes` (specialised, a team of 32 lanes a row, shaders/row_summary_lanes.wgsl:
//! what hardware adapters run for K >= 64). Rows per case: `n` for K = 2, `n / 10` for
//! K = 100, `n / 100` for K = 1000 (the same logits bytes), n from
//! `CONFORMAL_BENCH_SIZES` (default 1M). One level (alpha 0.1), slides in runs of 500
//! rows. `*-kernel` is the kernel alone, from timestamp queries; `*-total` adds the
//! submission and the readback of the counts.
//!
//! `cargo bench --bench tally -- --sample-size 10`

mod common;

use conformal_gpu::backend::{Backend, GpuBackend};
use conformal_gpu::gpu::tally::DeviceTally;
use conformal_gpu::gpu::{GpuContext, GpuOptions};
use conformal_gpu::kernel::tally::{TallyPlan, TALLY_LANES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let context = |generic_pipelines, tally_lanes| {
        GpuContext::new(GpuOptions {
            allow_software: true,
            timestamps: true,
            generic_pipelines,
            tally_lanes,
            ..Default::default()
        })
    };
    let Some(gpu) = common::gpu() else {
        return;
    };
    let (Ok(generic), Ok(one_thread), Ok(lanes)) = (
        context(true, None),
        context(false, Some(1)),
        context(false, Some(TALLY_LANES)),
    ) else {
        return;
    };
    drop(gpu);
    let mut group = c.benchmark_group("tally");
    group.sample_size(10);
    for n in common::sizes() {
        for (k, rows) in [(2usize, n), (100, n / 10), (1000, n / 100)] {
            let logits = common::logits(rows, k);
            let labels: Vec<i32> = (0..rows).map(|i| (i % k) as i32).collect();
            let slide: Vec<i64> = (0..rows as i64).map(|i| i / 500).collect();
            let hospital: Vec<i64> = slide.iter().map(|s| s % 5).collect();
            let qhats = [Some(0.8f32)];
            let plan = TallyPlan {
                t: 1.3,
                atc_mc: Some(0.6),
                atc_ne: Some(-0.9),
                cpc_q: Some(0.4),
                qhats: &qhats,
                labels: &labels,
                groups: [Some(&hospital), Some(&slide)],
            };
            let id = format!("rows={rows}/K={k}");
            group.throughput(Throughput::Bytes((4 * rows * k) as u64));
            let mut counts = Vec::new();
            for (name, ctx) in [
                ("generic", &generic),
                ("one-thread", &one_thread),
                ("lanes", &lanes),
            ] {
                let resident = GpuBackend::new(ctx).prepare(&logits, &labels, k).unwrap();
                let run = || {
                    let mut dev = DeviceTally::new(1).unwrap();
                    dev.add(ctx, &resident, &plan).unwrap();
                    dev.finish(ctx).unwrap()
                };
                counts.push(run());
                group.bench_function(BenchmarkId::new(format!("{name}-total"), &id), |b| {
                    b.iter(run)
                });
                if ctx.timestamps_enabled() {
                    group.bench_function(BenchmarkId::new(format!("{name}-kernel"), &id), |b| {
                        b.iter_custom(|iters| {
                            common::kernel_time(ctx, iters, || {
                                run();
                            })
                            .unwrap_or_default()
                        })
                    });
                }
            }
            // Timings of kernels are comparable only if they count the same.
            assert!(
                counts.iter().all(|c| *c == counts[0]),
                "{id}: counts differ"
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
