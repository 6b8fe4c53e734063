//! The Rust library call that `python/benches/bench_evaluate.py` compares `cg.evaluate`
//! with: loads a source and one target `.npz` (not timed), then for every line `run` on
//! stdin times one `evaluate(&CpuBackend, ...)` (the same alphas and chunking) and prints
//! its wall time in milliseconds, so the two run interleaved, in turn, warm.
//!
//! `cargo run --release --example evaluate_timed -- SOURCE.npz TARGET.npz`

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::npz::load_npz;
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: evaluate_timed SOURCE.npz TARGET.npz".into());
    }
    let source = load_npz(Path::new(&args[1]))?;
    let targets = vec![load_npz(Path::new(&args[2]))?];
    let opts = EvalOptions {
        alphas: vec![0.1, 0.05],
        ..Default::default()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready {} {}", source.n(), targets[0].n())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line?.trim() != "run" {
            break;
        }
        let t0 = Instant::now();
        let eval = evaluate(&CpuBackend, &source, &targets, None, &opts)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        writeln!(out, "{ms:.3} {}", eval.targets[0].estimates.ts.cpc)?;
        out.flush()?;
    }
    Ok(())
}
