//! Temperature fit (DESIGN.md 2.2: safeguarded Newton on b = 1/T to |db| <= 1e-7 b), CPU
//! and GPU side by side at 1M and 10M labelled rows, K = 2. `gpu-resident` fits rows
//! already on the device (as the PyTorch LBFGS peer, whose logits are on the GPU);
//! `gpu-total` includes the upload. The fitted T and the number of passes are printed.
//! With `CONFORMAL_BENCH_DATA` the rows and labels come from that file (tiled).
//!
//! `cargo bench --bench temperature -- --sample-size 10`
//! (sizes: `CONFORMAL_BENCH_SIZES`, cap: `CONFORMAL_BENCH_MAX_ELEMS`).

mod common;

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::methods::temperature::fit_temperature;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Labels that make an overconfident but imperfect model: the argmax 80% of the time
/// (a finite optimum T, not a separable set).
fn labels(logits: &[f32], k: usize) -> Vec<i32> {
    logits
        .chunks_exact(k)
        .enumerate()
        .map(|(i, row)| {
            let arg = (0..k).fold(0, |a, j| if row[j] > row[a] { j } else { a });
            let flip = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59 < 7; // 7/32
            (if flip { (arg + 1) % k } else { arg }) as i32
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let gpu = common::gpu();
    let mut group = c.benchmark_group("temperature");
    group.sample_size(10);
    let k = 2;
    for n in common::sizes() {
        if n * k > common::max_elems() {
            eprintln!("skipped temperature n={n}: over CONFORMAL_BENCH_MAX_ELEMS");
            continue;
        }
        let logits = common::logits(n, k);
        let y = common::data_labels(n, k).unwrap_or_else(|| labels(&logits, k));
        let id = format!("n={n}/K={k}");
        // Per pass the fit reads the logits and labels once.
        group.throughput(Throughput::Bytes((4 * n * (k + 1)) as u64));
        let cpu_rows = CpuBackend.prepare(&logits, &y, k).unwrap();
        let fit = fit_temperature(&CpuBackend, &cpu_rows).unwrap();
        eprintln!(
            "temperature n={n}: cpu T = {:.9} after {} passes (converged: {})",
            fit.temperature, fit.iterations, fit.converged
        );
        group.bench_function(BenchmarkId::new("cpu", &id), |b| {
            b.iter(|| fit_temperature(&CpuBackend, &cpu_rows).unwrap())
        });
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &gpu {
            let gb = conformal_gpu::backend::GpuBackend::new(ctx);
            let rows = gb.prepare(&logits, &y, k).unwrap();
            let fit = fit_temperature(&gb, &rows).unwrap();
            eprintln!(
                "temperature n={n}: gpu T = {:.9} after {} passes",
                fit.temperature, fit.iterations
            );
            group.bench_function(BenchmarkId::new("gpu-resident", &id), |b| {
                b.iter(|| fit_temperature(&gb, &rows).unwrap())
            });
            group.bench_function(BenchmarkId::new("gpu-total", &id), |b| {
                b.iter(|| {
                    let rows = gb.prepare(&logits, &y, k).unwrap();
                    fit_temperature(&gb, &rows).unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
