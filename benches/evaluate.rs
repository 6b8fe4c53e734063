//! End to end: the whole evaluation (temperature fit, source statistics and sorts, every
//! target in both modes) on the Camelyon17-shaped data, CPU and GPU in the same group.
//! Data is generated in memory (not timed); the numpy peer is benches/peers/numpy_evaluate.py.
//!
//! `cargo bench --bench evaluate -- --sample-size 10` (scales: `CONFORMAL_BENCH_SCALES=1,10`)

mod common;

use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::{generate_split, split_specs, GeneratorConfig};
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn scales() -> Vec<f64> {
    std::env::var("CONFORMAL_BENCH_SCALES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1.0])
}

fn bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("evaluate");
    group.sample_size(10);
    for scale in scales() {
        let cfg = GeneratorConfig { scale, seed: 0 };
        let mut sets: Vec<_> = split_specs(scale)
            .iter()
            .map(|s| generate_split(&cfg, s))
            .collect();
        let at = sets
            .iter()
            .position(|s| s.name == "id_val")
            .expect("id_val split");
        let source = sets.remove(at);
        let rows: usize = sets.iter().map(|s| s.n()).sum::<usize>() + source.n();
        let opts = EvalOptions {
            alphas: vec![0.1, 0.05],
            ..Default::default()
        };
        group.throughput(Throughput::Elements(rows as u64));
        let id = format!("scale={scale}");
        group.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| evaluate(&CpuBackend, &source, &sets, None, &opts).unwrap())
        });
        if let Some(ctx) = &gpu {
            let gb = conformal_gpu::backend::GpuBackend::new(ctx);
            group.bench_function(BenchmarkId::new("gpu", &id), |b| {
                b.iter(|| evaluate(&gb, &source, &sets, None, &opts).unwrap())
            });
            if let Some(t) = common::kernel_time(ctx, 1, || {
                evaluate(&gb, &source, &sets, None, &opts).unwrap();
            }) {
                eprintln!(
                    "evaluate scale={scale}: GPU kernel time {:.1} ms of one run",
                    t.as_secs_f64() * 1e3
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
