//! The `conformal-gpu` command line: arguments, dataset discovery, outputs, and the
//! subcommands. Thin: parses, calls the library, prints.

pub mod args;
pub mod commands;
pub mod dataset;
pub mod manifest;
pub mod outputs;
pub mod sweep;
pub mod sweep_gde;
pub mod sweep_scores;

use conformal_gpu::data::{self, npz, GeneratorConfig};
use conformal_gpu::methods::temperature::temperature_report;
use conformal_gpu::{with_backend, Error, Result};

use args::{Cli, Command};
use commands::{run_calibrate, run_evaluate, run_merge, run_tally, EvalJob, SourceArgs, TallyJob};
use outputs::{check_json_target, check_writable_dir, emit_json, open_device, parse_alphas, phase};

/// Bootstrap replicates of the main job: intervals in seconds on 2 cores.
const MAIN_JOB_REPLICATES: usize = 50;

/// The main job: generate (once), evaluate, report.
fn main_job() -> Result<()> {
    let cfg = GeneratorConfig {
        scale: 1.0,
        seed: 0,
    };
    let dir = dataset::cached_dataset(&cfg)?;
    let out = std::path::PathBuf::from("conformal-gpu-report");
    run_evaluate(EvalJob {
        source: SourceArgs {
            data: &dir,
            source: "id_val",
            alphas: vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
            temperature: None,
            temperature_source: None,
            bootstrap: conformal_gpu::methods::bootstrap::BootstrapOptions {
                replicates: MAIN_JOB_REPLICATES,
                seed: 0,
                confidence: 0.95,
            },
            sets: Default::default(),
            exclude: Vec::new(),
        },
        out: Some(&out),
        rows: false,
        device: "auto",
        json: &None,
        seed: Some(cfg.seed),
    })
}

/// Runs the parsed command line; `explicit` names the sweep's options given on the
/// command line (they win over a manifest's).
pub fn run(cli: Cli, explicit: &[String]) -> Result<()> {
    let Some(command) = cli.command else {
        return main_job();
    };
    match command {
        Command::Generate { out, scale, seed } => {
            check_writable_dir(&out)?;
            let pb = phase(&format!("generating into {}", out.display()));
            let show = |m: &str| pb.set_message(m.to_string());
            let files =
                data::generate_dataset(&GeneratorConfig { scale, seed }, &out, Some(&show))?;
            pb.finish_and_clear();
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Sweep {
            source,
            out,
            device,
        } => sweep::run_sweep(sweep::SweepJob {
            opts: &source,
            out: &out,
            device: &device,
            explicit,
        }),
        Command::Evaluate {
            source,
            out,
            rows,
            common,
        } => run_evaluate(EvalJob {
            source: SourceArgs::new(&source)?,
            out: out.as_deref(),
            rows,
            device: &common.device,
            json: &common.json,
            seed: None,
        }),
        Command::Calibrate {
            source,
            device,
            out,
        } => run_calibrate(SourceArgs::new(&source)?, &device, &out),
        Command::Tally {
            calibration,
            data,
            name,
            rows,
            row_offset,
            device,
            out,
        } => run_tally(TallyJob {
            calibration: &calibration,
            data: &data,
            name: name.as_deref(),
            rows: rows.as_deref(),
            row_offset,
            device: &device,
            out: &out,
        }),
        Command::Merge {
            calibration,
            tallies,
            json,
            out,
            confidence,
            exclude,
        } => run_merge(
            &calibration,
            &tallies,
            &json,
            out.as_deref(),
            confidence,
            &exclude,
        ),
        Command::Quantile {
            scores,
            alpha,
            common,
        } => {
            let alphas = parse_alphas(&alpha)?;
            check_json_target(&common.json)?;
            let (exact, is_f64) = npz::load_npy_scores_f64(&scores)?;
            let mut report = if is_f64 {
                // float64 scores: the order statistic is taken in float64 on the host, so
                // qhat is one of the user's own values, not its float32 rounding.
                eprintln!("note: float64 scores: qhat taken in float64 on the CPU");
                conformal_gpu::methods::quantile::quantile_report_f64(&exact, &alphas)?
            } else {
                let scores: Vec<f32> = exact.iter().map(|&v| v as f32).collect();
                let (engine, choice) = open_device(&common.device)?;
                with_backend!(&engine, choice, |b| {
                    conformal_gpu::methods::quantile::quantile_report(b, &scores, &alphas)
                })?
            };
            report.alphas = alphas;
            for (a, q) in report.alphas.iter().zip(&report.qhat) {
                if q.is_none() {
                    eprintln!(
                        "warning: alpha = {a}: too few scores (k > n = {}), qhat = +inf",
                        report.n
                    );
                }
            }
            if common.json.is_some() {
                let v = serde_json::to_value(&report)
                    .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
                return emit_json(&v, &common.json);
            }
            // qhat printed with the digits that give its value back exactly; "inf" where
            // k > n (null in the JSON).
            println!("n = {}, device: {}", report.n, report.device);
            println!("{:>10} {:>10} {:>24}", "alpha", "k", "qhat");
            for ((a, k), q) in report.alphas.iter().zip(&report.k).zip(&report.qhat) {
                let q = q.map_or("inf".to_string(), |q| format!("{q}"));
                println!("{a:>10} {k:>10} {q:>24}");
            }
            Ok(())
        }
        Command::Temperature { data, common } => {
            check_json_target(&common.json)?;
            if data.is_dir() {
                return Err(Error::Invalid(format!(
                    "--data {} is a directory; temperature takes one .npz file (e.g. {}/id_val.npz)",
                    data.display(),
                    data.display()
                )));
            }
            let set = npz::load_npz(&data)?;
            let (engine, choice) = open_device(&common.device)?;
            let report = with_backend!(&engine, choice, |b| temperature_report(b, &set))?;
            if let Some(w) = &report.warning {
                eprintln!("warning: {w}");
            }
            if common.json.is_some() {
                let v = serde_json::to_value(&report)
                    .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
                emit_json(&v, &common.json)?;
            } else {
                println!(
                    "{}: n = {}, K = {}, accuracy {:.2}%\nT* = {:.6} ({} passes{})\nNLL {:.6} -> {:.6}\nECE {:.6} -> {:.6}\ndevice: {}",
                    set.name,
                    report.n,
                    report.k,
                    100.0 * report.accuracy,
                    report.temperature,
                    report.iterations,
                    if report.converged { "" } else { ", NOT converged" },
                    report.nll_before,
                    report.nll_after,
                    report.ece_before,
                    report.ece_after,
                    report.device
                );
            }
            Ok(())
        }
    }
}
