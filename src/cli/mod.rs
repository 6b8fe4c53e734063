//! The `conformal-gpu` command line: arguments, dataset discovery, outputs, and the
//! subcommands. Thin: parses, calls the library, prints.

// Without the `gpu` feature `with_backend!` ignores the device choice it is handed.
#![cfg_attr(not(feature = "gpu"), allow(unused_variables))]

pub mod args;
pub mod commands;
pub mod cot;
pub mod cot_passes;
pub mod dataset;
pub mod manifest;
pub mod outputs;
pub mod sweep;
pub mod sweep_gde;
pub mod sweep_scores;
pub mod sweep_table;

use crate::data::grid::GridConfig;
use crate::data::{self, npz, GeneratorConfig};
use crate::methods::temperature::temperature_report;
use crate::{with_backend, Error, Result};

use args::{Cli, Command};
use commands::{run_calibrate, run_evaluate, run_merge, run_tally, EvalJob, SourceArgs, TallyJob};
use outputs::{check_json_target, check_writable_dir, emit_json, open_device, parse_alphas, phase};

/// Bootstrap replicates of the main job: intervals in seconds on 2 cores.
const MAIN_JOB_REPLICATES: usize = 50;

/// The main job: generate (once), evaluate, report; then the sweep over the default grid.
fn main_job() -> Result<()> {
    camelyon_report()?;
    grid_sweep()
}

/// Where the main job's sweep writes.
const MAIN_SWEEP_DIR: &str = "conformal-gpu-sweep";

/// The main job's second half: the default grid (every dataset shape x model x 5 runs,
/// scale 1, seed 0) swept with `sweep`'s defaults into ./conformal-gpu-sweep, its MAE
/// summary printed per dataset, and where CPC and ATC differ.
fn grid_sweep() -> Result<()> {
    let cfg = GridConfig {
        scale: 1.0,
        seed: 0,
        datasets: Vec::new(),
    };
    let root = dataset::cached_grid(&cfg)?;
    let args: [&std::ffi::OsStr; 4] = [
        "--data".as_ref(),
        root.as_os_str(),
        "--out".as_ref(),
        MAIN_SWEEP_DIR.as_ref(),
    ];
    let outcome = sweep::sweep_from_args(args)?;
    println!();
    print!("{}", sweep_table::mae_blocks(&outcome.summary));
    print!("{}", sweep_table::cpc_vs_atc(&outcome));
    println!(
        "sweep: {} cells; results.csv, summary.csv, paired.csv, scatter plots in ./{MAIN_SWEEP_DIR}",
        outcome.cells
    );
    outcome.checked().map(|_| ())
}

/// The main job's first half: the Camelyon17-shaped dataset, every estimator, intervals.
fn camelyon_report() -> Result<()> {
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
            bootstrap: crate::methods::bootstrap::BootstrapOptions {
                replicates: MAIN_JOB_REPLICATES,
                seed: 0,
                confidence: 0.95,
            },
            sets: Default::default(),
            exclude: Vec::new(),
            cot_reference: None,
        },
        out: Some(&out),
        rows: false,
        device: "auto",
        json: &None,
        seed: Some(cfg.seed),
    })
}

/// The `sweep` options given on the command line in `matches` (the whole command's):
/// they win over a manifest's.
pub fn explicit_sweep_options(matches: &clap::ArgMatches) -> Vec<String> {
    matches
        .subcommand_matches("sweep")
        .map(|m| {
            m.ids()
                .filter(|id| {
                    m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|id| id.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the parsed command line; `explicit` names the sweep's options given on the
/// command line (they win over a manifest's).
pub fn run(cli: Cli, explicit: &[String]) -> Result<()> {
    let Some(command) = cli.command else {
        return main_job();
    };
    match command {
        Command::Generate {
            out,
            scale,
            seed,
            grid,
            datasets,
        } => {
            check_writable_dir(&out)?;
            let pb = phase(&format!("generating into {}", out.display()));
            let show = |m: &str| pb.set_message(m.to_string());
            let files = if grid {
                let cfg = GridConfig {
                    scale,
                    seed,
                    datasets,
                };
                data::grid::generate_grid(&cfg, &out, Some(&show))?
            } else {
                data::generate_dataset(&GeneratorConfig { scale, seed }, &out, Some(&show))?
            };
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
        } => {
            let outcome = sweep::run_sweep(sweep::SweepJob {
                opts: &source,
                out: &out,
                device: &device,
                explicit,
            })?;
            outcome.print_summary();
            outcome.checked().map(|_| ())
        }
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
        Command::Cot {
            calibration,
            data,
            device,
            sample_rows,
            json,
        } => cot::run_cot(&calibration, &data, &device, sample_rows, &json),
        Command::CotCensus {
            calibration,
            file,
            out,
        } => cot_passes::run_cot_census(&calibration, &file, &out),
        Command::CotPlan {
            calibration,
            census,
            parts,
            sample_rows,
            plan,
            json,
        } => cot_passes::run_cot_plan(&calibration, &census, &parts, sample_rows, &plan, &json),
        Command::CotPass {
            plan,
            shard,
            file,
            out,
            device,
        } => cot_passes::run_cot_pass(&plan, shard, &file, &out, &device),
        Command::CotMerge { parts, out } => cot_passes::run_cot_merge(&parts, &out),
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
                crate::methods::quantile::quantile_report_f64(&exact, &alphas)?
            } else {
                let scores: Vec<f32> = exact.iter().map(|&v| v as f32).collect();
                let (engine, choice) = open_device(&common.device)?;
                with_backend!(&engine, choice, |b| {
                    crate::methods::quantile::quantile_report(b, &scores, &alphas)
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
