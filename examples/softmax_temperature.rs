//! Library use on an ndarray of logits: fit a temperature and compute probabilities on
//! the GPU when one exists, else on the CPU (and say which).
//!
//! `cargo run --release --example softmax_temperature`

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::methods::temperature::temperature_report;
use ndarray::{Array1, Array2};

fn main() -> conformal_gpu::Result<()> {
    // 10,000 overconfident 3-class predictions, seeded and dependency-free.
    let n = 10_000;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let labels = Array1::from_shape_fn(n, |i| (i % 3) as i64);
    let logits = Array2::from_shape_fn((n, 3), |(i, j)| {
        let signal = if j == i % 3 { 1.0 } else { 0.0 };
        4.0 * (signal + uniform() * 2.0 - 1.0)
    });
    let set = PredictionSet::new("example", logits).with_labels(labels);

    #[cfg(feature = "gpu")]
    {
        use conformal_gpu::backend::GpuBackend;
        use conformal_gpu::gpu::{GpuContext, GpuOptions};
        // A hardware adapter only: a software one is slower than the CPU path.
        match GpuContext::new(GpuOptions::default()) {
            Ok(ctx) => return run(&GpuBackend::new(&ctx), &set),
            Err(e) => eprintln!("no GPU ({e}); using the CPU path"),
        }
    }
    run(&CpuBackend, &set)
}

fn run<B: Backend>(backend: &B, set: &PredictionSet) -> conformal_gpu::Result<()> {
    let report = temperature_report(backend, set)?;
    println!(
        "{}: T* = {:.4}, NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}, accuracy {:.4}",
        report.device,
        report.temperature,
        report.nll_before,
        report.nll_after,
        report.ece_before,
        report.ece_after,
        report.accuracy
    );
    let probs = backend.softmax(&set.logits_slice(), set.k(), report.temperature as f32)?;
    println!("first row at T*: {:?}", &probs[..3]);
    Ok(())
}
