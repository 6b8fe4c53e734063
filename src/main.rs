//! The `conformal-gpu` command line. Thin: parses arguments, calls the library, prints.
//! Errors print one line on stderr and exit with the code of their class (README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conformal_gpu::data::npz;
use conformal_gpu::device::{DeviceChoice, Engine};
use conformal_gpu::methods::temperature::temperature_report;
use conformal_gpu::{with_backend, Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "conformal-gpu",
    version,
    about = "Accuracy estimation under shift with conformal prediction, on the GPU and the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Shared by every subcommand.
#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Where to run: auto (hardware GPU if present, else CPU), gpu (any adapter), cpu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the JSON report on stdout (`--json` or `--json -`) or write it to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fit the temperature on a labelled set; report NLL and ECE before and after.
    Temperature {
        /// The `.npz` prediction set (every label known).
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

/// Prints `value` as JSON on stdout or writes it atomically to a file.
fn emit_json(value: &serde_json::Value, json: &Option<String>) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
    match json.as_deref() {
        None => Ok(()),
        Some("-") => {
            println!("{text}");
            Ok(())
        }
        Some(path) => npz::write_atomic(Path::new(path), |w| {
            writeln!(w, "{text}").map_err(|e| Error::io(path, e))
        }),
    }
}

fn open(common: &Common) -> Result<(Engine, DeviceChoice)> {
    let choice: DeviceChoice = common.device.parse()?;
    let (engine, note) = Engine::open(choice, false)?;
    eprintln!("{note}");
    Ok((engine, choice))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Temperature { data, common } => {
            let set = npz::load_npz(&data)?;
            let (engine, choice) = open(&common)?;
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
                    "{}: n = {}, K = {}, accuracy {:.4}\nT* = {:.6} ({} passes{})\nNLL {:.6} -> {:.6}\nECE {:.6} -> {:.6}\ndevice: {}",
                    set.name,
                    report.n,
                    report.k,
                    report.accuracy,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
