//! The `conformal-gpu` command line. Thin: parses arguments, calls the library, prints.
//! Errors print one line on stderr and exit with the code of their class (README).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use conformal_gpu::data::{self, npz, GeneratorConfig, PredictionSet};
use conformal_gpu::device::{DeviceChoice, Engine};
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions, Evaluation, TemperatureChoice};
use conformal_gpu::methods::temperature::temperature_report;
use conformal_gpu::report::{self, InputFile, Meta};
use conformal_gpu::{with_backend, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "conformal-gpu",
    version,
    about = "Accuracy estimation under shift with conformal prediction, on the GPU and the CPU",
    long_about = "Accuracy estimation under shift with conformal prediction, on the GPU and the CPU.\n\n\
                  With no subcommand: the main job. Generates the Camelyon17-shaped dataset \
                  (scale 1, seed 0) into a cache directory unless it is there, evaluates every \
                  estimator on it, prints a table and writes report.json and plots into \
                  ./conformal-gpu-report."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Write the seeded Camelyon17-shaped synthetic dataset (WILDS split sizes).
    Generate {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Multiplies every split size (100 gives ~350M predictions).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f64,
        /// Seed: same seed, same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Estimate every target's accuracy (AC, DoC, ATC-MC, ATC-NE, CPC, with and without TS).
    Evaluate {
        /// Directory of `.npz` prediction sets.
        #[arg(long)]
        data: PathBuf,
        /// Name of the source (calibration) set in DIR.
        #[arg(long, default_value = "id_val")]
        source: String,
        /// Miscoverage levels, comma-separated.
        #[arg(
            long,
            default_value = "0.1",
            value_delimiter = ',',
            allow_negative_numbers = true
        )]
        alpha: Vec<String>,
        /// Use this temperature instead of fitting one.
        #[arg(
            long,
            conflicts_with = "temperature_source",
            allow_negative_numbers = true
        )]
        temperature: Option<f64>,
        /// Fit the temperature on this set of DIR instead of the source.
        #[arg(long)]
        temperature_source: Option<String>,
        /// Write report.json, plots (and --rows files) into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write per-row outputs per target (`<name>_rows.npz` in --out).
        #[arg(long)]
        rows: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Conformal quantiles qhat(alpha) of a 1-D score array (`.npy`, float32 or float64).
    Quantile {
        /// The scores.
        #[arg(long)]
        scores: PathBuf,
        /// Miscoverage levels, comma-separated.
        #[arg(long, default_value = "0.1", value_delimiter = ',')]
        alpha: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
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

/// Fails early (before any work) when `dir` cannot receive output files: it, or its
/// nearest existing ancestor when it is still to be created, must be a writable directory.
fn check_writable_dir(dir: &Path) -> Result<()> {
    let mut probe_dir = dir;
    while !probe_dir.as_os_str().is_empty() && !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) => probe_dir = p,
            None => break,
        }
    }
    let probe_dir = if probe_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        probe_dir
    };
    if !probe_dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", probe_dir.display()),
            ),
        ));
    }
    let probe = probe_dir.join(format!(".conformal-gpu-probe.{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Fails early when the `--json FILE` destination cannot be written.
fn check_json_target(json: &Option<String>) -> Result<()> {
    match json.as_deref() {
        None | Some("-") => Ok(()),
        Some(file) => {
            let path = Path::new(file);
            if path.is_dir() {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::IsADirectory,
                        "--json FILE is a directory",
                    ),
                ));
            }
            let parent = path.parent().unwrap_or(Path::new(""));
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            if !parent.is_dir() {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("directory {} does not exist", parent.display()),
                    ),
                ));
            }
            check_writable_dir(parent).map_err(|e| match e {
                Error::Io { source, .. } => Error::io(path, source),
                other => other,
            })
        }
    }
}

fn open(common: &Common) -> Result<(Engine, DeviceChoice)> {
    let choice: DeviceChoice = common.device.parse()?;
    let (engine, note) = Engine::open(choice, false)?;
    eprintln!("{note}");
    Ok((engine, choice))
}

/// A spinner on stderr for a phase that may take more than a second (hidden when stderr
/// is not a terminal).
fn phase(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Parses alpha levels as written (decimal strings; DESIGN.md 2.5 uses them as given).
fn parse_alphas(list: &[String]) -> Result<Vec<f64>> {
    list.iter()
        .map(|a| {
            let v: f64 = a
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("--alpha {a:?} is not a number")))?;
            conformal_gpu::methods::quantile::check_alpha(v)?;
            Ok(v)
        })
        .collect()
}

/// The `.npz` files of a dataset directory, in name order.
fn dataset_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "npz") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

struct EvalJob<'a> {
    data: &'a Path,
    source: &'a str,
    alphas: Vec<f64>,
    temperature: Option<f64>,
    temperature_source: Option<&'a str>,
    out: Option<&'a Path>,
    rows: bool,
    common: &'a Common,
    seed: Option<u64>,
}

fn run_evaluate(job: EvalJob<'_>) -> Result<()> {
    let started = Instant::now();
    if job.rows && job.out.is_none() {
        return Err(Error::Invalid(
            "--rows writes per-row files: give --out DIR".into(),
        ));
    }
    // Output destinations are checked before any work: a long run must not fail at the end.
    if let Some(dir) = job.out {
        check_writable_dir(dir)?;
    }
    check_json_target(&job.common.json)?;
    let files = dataset_files(job.data)?;
    let source_path = job.data.join(format!("{}.npz", job.source));
    if !files.contains(&source_path) {
        return Err(Error::Invalid(format!(
            "source set {} not found in {}",
            source_path.display(),
            job.data.display()
        )));
    }
    // Load (and hash) everything before any work: an invalid set aborts the whole run.
    let pb = phase(&format!(
        "loading {} sets from {}",
        files.len(),
        job.data.display()
    ));
    // Files load and hash in parallel; the first error in name order is reported.
    let loaded: Vec<(PredictionSet, InputFile)> = {
        use rayon::prelude::*;
        files
            .par_iter()
            .map(|f| {
                // Hashing is as long as parsing: as two tasks the cores share the
                // largest file too.
                let (set, hash) = rayon::join(|| npz::load_npz(f), || InputFile::hash(f));
                Ok((set?, hash?))
            })
            .collect::<Result<Vec<_>>>()?
    };
    let mut inputs = Vec::new();
    let mut source = None;
    let mut targets: Vec<PredictionSet> = Vec::new();
    for (f, (set, input)) in files.iter().zip(loaded) {
        inputs.push(input);
        if *f == source_path {
            source = Some(set);
        } else {
            targets.push(set);
        }
    }
    pb.finish_and_clear();
    let source =
        source.ok_or_else(|| Error::Invalid("source set vanished while loading".into()))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let temp_set = match job.temperature_source {
        Some(name) => Some(
            targets
                .iter()
                .chain(std::iter::once(&source))
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "--temperature-source {name}: no {name}.npz in {}",
                        job.data.display()
                    ))
                })?,
        ),
        None => None,
    };
    let options = EvalOptions {
        alphas: job.alphas.clone(),
        temperature: match (job.temperature, temp_set) {
            (Some(t), _) => TemperatureChoice::Fixed(t),
            (None, Some(_)) => TemperatureChoice::FitOther,
            (None, None) => TemperatureChoice::FitSource,
        },
        rows: job.rows,
    };
    let (engine, choice) = open(job.common)?;
    let pb = phase(&format!(
        "evaluating {} targets ({} predictions)",
        targets.len(),
        targets.iter().map(|t| t.n()).sum::<usize>() + source.n()
    ));
    let mut eval: Evaluation = with_backend!(&engine, choice, |b| evaluate(
        b, &source, &targets, temp_set, &options
    ))?;
    pb.finish_and_clear();
    eval.timings_ms.load = load_ms;
    eval.timings_ms.total = started.elapsed().as_secs_f64() * 1e3;
    if let Some(w) = &eval.source.warning {
        eprintln!("warning: {w}");
    }
    for (t, q) in eval.alphas.iter().zip(&eval.source.qhat.ts) {
        if q.is_none() {
            eprintln!("warning: alpha = {t}: the source has too few rows (k > n), qhat = +inf");
        }
    }
    #[cfg(feature = "gpu")]
    let (adapter, driver) = match &engine {
        Engine::Gpu(ctx) if eval.device.starts_with("gpu") => {
            let info = ctx.adapter_info();
            (
                Some(info.name.clone()),
                Some(format!("{} {}", info.driver, info.driver_info)),
            )
        }
        _ => (None, None),
    };
    #[cfg(not(feature = "gpu"))]
    let (adapter, driver) = (None, None);
    let meta = Meta {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("CONFORMAL_GPU_COMMIT").into(),
        args: std::env::args().collect(),
        seed: job.seed,
        inputs,
        adapter,
        driver,
    };
    let table = report::table(&eval);
    if job.common.json.as_deref() == Some("-") {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let json = match &job.common.json {
        Some(_) => Some(report::to_json(&eval, &meta)?),
        None => None,
    };
    let mut written = Vec::new();
    if let Some(dir) = job.out {
        written = report::write_outputs(&eval, &meta, dir)?;
        eprintln!("wrote {} files into {}", written.len(), dir.display());
    }
    if let Some(json) = json {
        if let Err(e) = emit_json(&json, &job.common.json) {
            // All or nothing: no report files from a run that failed.
            for f in &written {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Where the main job keeps its generated dataset.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CONFORMAL_GPU_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("conformal-gpu")
}

/// The main job: generate (once), evaluate, report.
fn main_job() -> Result<()> {
    let cfg = GeneratorConfig {
        scale: 1.0,
        seed: 0,
    };
    let dir = cache_dir().join("camelyon17-scale1-seed0");
    let marker = dir.join(".complete");
    let expected: Vec<String> = data::split_specs(cfg.scale)
        .iter()
        .map(|s| format!("{} {}", s.name, s.n))
        .collect();
    let complete = std::fs::read_to_string(&marker)
        .is_ok_and(|m| m.lines().eq(expected.iter().map(|s| s.as_str())));
    if !complete {
        let pb = phase(&format!(
            "generating the Camelyon17-shaped dataset into {}",
            dir.display()
        ));
        let show = |m: &str| pb.set_message(m.to_string());
        data::generate_dataset(&cfg, &dir, Some(&show))?;
        npz::write_atomic(&marker, |w| {
            writeln!(w, "{}", expected.join("\n")).map_err(|e| Error::io(&marker, e))
        })?;
        pb.finish_and_clear();
        eprintln!("generated {} into {}", expected.join(", "), dir.display());
    } else {
        eprintln!("dataset: {} (cached)", dir.display());
    }
    let common = Common {
        device: "auto".into(),
        json: None,
    };
    let out = PathBuf::from("conformal-gpu-report");
    run_evaluate(EvalJob {
        data: &dir,
        source: "id_val",
        alphas: vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
        temperature: None,
        temperature_source: None,
        out: Some(&out),
        rows: false,
        common: &common,
        seed: Some(cfg.seed),
    })
}

fn run(cli: Cli) -> Result<()> {
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
        Command::Evaluate {
            data,
            source,
            alpha,
            temperature,
            temperature_source,
            out,
            rows,
            common,
        } => {
            let alphas = parse_alphas(&alpha)?;
            if let Some(t) = temperature {
                conformal_gpu::methods::temperature::validate_temperature(t)?;
            }
            run_evaluate(EvalJob {
                data: &data,
                source: &source,
                alphas,
                temperature,
                temperature_source: temperature_source.as_deref(),
                out: out.as_deref(),
                rows,
                common: &common,
                seed: None,
            })
        }
        Command::Quantile {
            scores,
            alpha,
            common,
        } => {
            let alphas = parse_alphas(&alpha)?;
            let scores = npz::load_npy_scores(&scores)?;
            let (engine, choice) = open(&common)?;
            let report = with_backend!(&engine, choice, |b| {
                conformal_gpu::methods::quantile::quantile_report(b, &scores, &alphas)
            })?;
            for (a, q) in report.alphas.iter().zip(&report.qhat) {
                if q.is_none() {
                    eprintln!(
                        "warning: alpha = {a}: too few scores (k > n = {}), qhat = +inf",
                        report.n
                    );
                }
            }
            let v = serde_json::to_value(&report)
                .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
            // JSON is this subcommand's output: stdout unless --json FILE says otherwise.
            let target = common.json.clone().or_else(|| Some("-".into()));
            emit_json(&v, &target)
        }
        Command::Temperature { data, common } => {
            check_json_target(&common.json)?;
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
            // One line, whatever an OS or zip message carries.
            eprintln!("error: {}", e.to_string().replace(['\n', '\r'], " "));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
