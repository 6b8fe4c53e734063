//! The evaluation through the library API: ndarray logits in, report struct out.
//!
//! `cargo run --release --example evaluate_api`

use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::{generate_split, split_specs, GeneratorConfig, PredictionSet};
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions};
use ndarray::{Array1, Array2};

fn main() -> conformal_gpu::Result<()> {
    // Any (N, K) logits and labels (-1 = unknown) work; here a 1% Camelyon17-shaped sample.
    let cfg = GeneratorConfig {
        scale: 0.01,
        seed: 0,
    };
    let specs = split_specs(cfg.scale);
    let split = |name: &str| {
        let spec = specs
            .iter()
            .find(|s| s.name == name)
            .expect("a WILDS split");
        generate_split(&cfg, spec)
    };
    let source = split("id_val");
    let mut targets = vec![split("test"), split("unlabeled_test")];

    // Your own arrays: wrap them in a PredictionSet.
    let logits: Array2<f32> = source.logits.clone();
    let labels: Array1<i64> = source.labels.clone().expect("labelled");
    targets.push(PredictionSet::new("my_copy_of_id_val", logits).with_labels(labels));

    let options = EvalOptions {
        alphas: vec![0.1, 0.05],
        ..Default::default()
    };
    let report = evaluate(&CpuBackend, &source, &targets, None, &options)?;
    println!(
        "T* = {:.4} on {} ({} rows)",
        report.source.temperature, report.source.name, report.source.n
    );
    for t in &report.targets {
        let truth = t
            .true_accuracy
            .map_or("unknown".to_string(), |a| format!("{a:.4}"));
        println!(
            "{:<20} true {truth:>8}  CPC {:.4}  ATC-MC {:.4}  DoC {:.4}  (TS)",
            t.name, t.estimates.ts.cpc, t.estimates.ts.atc_mc, t.estimates.ts.doc
        );
    }
    Ok(())
}
