//! `sweep`: the paper's protocol in one command (DESIGN.md 3, "The sweep"), layout form.
//!
//! Every `ROOT/DATASET/MODEL/RUN/` directory holding `.npz` files is a cell, evaluated
//! exactly as `evaluate --data ROOT/DATASET/MODEL/RUN` with the same options (one device
//! opened for all cells). Outputs in `--out DIR`, each written atomically:
//! - `cells/DATASET/MODEL/RUN.json`: the cell's report (`evaluate --json`'s, with
//!   `meta.fingerprint`);
//! - `results.csv`: the long form (one row per target and per (target, group) pair, mode
//!   and method), rebuilt from the reports of this sweep's cells only; with
//!   `--cot-reference`, `COT-ref` and `COTT-ref` rows (ts, target level) after the
//!   sweep's own methods, never summarised;
//! - `conformal.csv`: the set metrics in the same long form (score, class_conditional,
//!   alpha instead of method; see `conformal_rows`);
//! - `summary.csv`: per dataset, model, MAE key and method, the MAE and bias over runs
//!   (mean, sample std);
//! - `timings.csv` (each cell's `timings_ms.total` in seconds) and `failures.csv`.
//!
//! Resumable: a cell whose report carries the fingerprint of its current inputs and
//! options is kept; otherwise it is redone. A killed sweep leaves only temporary files
//! (removed by the next run) and whole reports. An advisory lock refuses a second sweep
//! into the same DIR (exit code 8); failed cells are listed and the sweep exits with 7.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::cli::dataset::set_name;
use crate::cli::manifest::{Manifest, ManifestCell};
use crate::cli::sweep_gde::{gde_estimates, Member};
use crate::cli::sweep_scores::{
    excluded, sweep_estimates, SweepEstimates, SCORES_HEADER, SWEEP_NAMES,
};
use crate::data::write_atomic;
use crate::report::estimates::Method;
use crate::report::plots::{scatter_svg, ScatterPoint};
use crate::report::{self, InputFile};
use crate::{Error, Result};

use crate::cli::args::SourceOpts;
use crate::cli::commands::{evaluate_dir, Device, EvalJob, SourceArgs};
use crate::cli::dataset::dataset_files;
use crate::cli::outputs::{check_writable_dir, open_device};

/// One (dataset, model, run): a directory of prediction sets.
#[derive(Clone, Debug)]
struct Cell {
    dataset: String,
    model: String,
    run: String,
    /// The directory evaluated: the layout's, or a manifest cell's stage.
    dir: PathBuf,
    /// A manifest cell: its source's set name and the links its stage holds.
    manifest: Option<Staged>,
}

/// A manifest cell's files under their set names: `(link name, file)`.
#[derive(Clone, Debug)]
struct Staged {
    source: String,
    links: Vec<(String, PathBuf)>,
}

impl Staged {
    fn of(cell: &ManifestCell) -> Result<Self> {
        let abs = |p: &Path| p.canonicalize().map_err(|e| Error::io(p, e));
        let source = set_name(&cell.source);
        let mut links = vec![(format!("{source}.npz"), abs(&cell.source)?)];
        for (name, files) in &cell.targets {
            if files.len() == 1 && set_name(&files[0]) == *name {
                links.push((format!("{name}.npz"), abs(&files[0])?));
            } else {
                for (i, f) in files.iter().enumerate() {
                    links.push((format!("{name}.part-{i:03}.npz"), abs(f)?));
                }
            }
        }
        Ok(Staged { source, links })
    }

    /// (Re)makes the stage `dir`: exactly the cell's files, as symbolic links.
    fn make(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, file) in &self.links {
            let link = dir.join(name);
            std::os::unix::fs::symlink(file, &link).map_err(|e| Error::io(&link, e))?;
        }
        Ok(())
    }
}

impl Cell {
    fn report_path(&self, out: &Path) -> PathBuf {
        out.join("cells")
            .join(&self.dataset)
            .join(&self.model)
            .join(format!("{}.json", self.run))
    }
}

/// The sub-directories of `dir`, by name (byte order).
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            out.push((name, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The cells under `root` (`ROOT/DATASET/MODEL/RUN/` with at least one `.npz`), sorted
/// by dataset, model, then run: numerically when every run of the model is an integer,
/// else by bytes.
fn discover(root: &Path) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for (dataset, d) in subdirs(root)? {
        for (model, m) in subdirs(&d)? {
            let mut runs = Vec::new();
            for (run, r) in subdirs(&m)? {
                let has_sets = std::fs::read_dir(&r)
                    .map_err(|e| Error::io(&r, e))?
                    .filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "npz"));
                if has_sets {
                    runs.push(Cell {
                        dataset: dataset.clone(),
                        model: model.clone(),
                        run,
                        dir: r,
                        manifest: None,
                    });
                }
            }
            if runs.iter().all(|c| c.run.parse::<i64>().is_ok()) {
                runs.sort_by_key(|c| c.run.parse::<i64>().unwrap_or(0));
            }
            cells.extend(runs);
        }
    }
    if cells.is_empty() {
        return Err(Error::Empty {
            what: root.display().to_string(),
            detail: "no cell: expected ROOT/DATASET/MODEL/RUN/ directories of .npz files".into(),
        });
    }
    Ok(cells)
}

/// What a cell's report depends on: the crate's version, the device asked for, every
/// option that can change the report, and each prediction set's name and SHA-256 (which
/// also fixes every part's row offset). Hex SHA-256 of that canonical JSON.
fn fingerprint(cell: &Cell, opts: &SourceOpts, device: &str) -> Result<String> {
    let mut files = Vec::new();
    for f in dataset_files(&cell.dir)? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        files.push(json!({"name": name, "sha256": InputFile::hash(&f)?.sha256}));
    }
    let content = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device": device,
        "source": opts.source,
        "alpha": opts.alpha,
        "temperature": opts.temperature,
        "temperature_source": opts.temperature_source,
        "bootstrap": opts.bootstrap,
        "confidence": opts.confidence,
        "seed": opts.seed,
        "score": opts.score,
        "randomize": opts.randomize,
        "raps_lambda": opts.raps_lambda,
        "raps_k_reg": opts.raps_k_reg,
        "saps_lambda": opts.saps_lambda,
        "class_conditional": opts.class_conditional,
        "exclude": opts.exclude,
        "cot_reference": opts.cot_reference,
        "cot_prior": opts.cot_prior,
        "files": files,
    });
    Ok(crate::provenance::hex(&Sha256::digest(
        content.to_string().as_bytes(),
    )))
}

/// Options of `sweep`.
pub struct SweepJob<'a> {
    /// `--data ROOT` (or a manifest) and evaluate's options.
    pub opts: &'a SourceOpts,
    pub out: &'a Path,
    pub device: &'a str,
    /// Options given on the command line (they win over a manifest's `[options]`).
    pub explicit: &'a [String],
}

/// The cells of a manifest, in its order, staged under `out/.stage/DATASET/MODEL/RUN`.
fn manifest_cells(manifest: &Manifest, out: &Path) -> Result<Vec<Cell>> {
    manifest
        .cells
        .iter()
        .map(|c| {
            Ok(Cell {
                dataset: c.dataset.clone(),
                model: c.model.clone(),
                run: c.run.clone(),
                dir: out
                    .join(".stage")
                    .join(&c.dataset)
                    .join(&c.model)
                    .join(&c.run),
                manifest: Some(Staged::of(c)?),
            })
        })
        .collect()
}

/// `sweep`: every cell evaluated (or kept), then the CSV files rebuilt. Failed cells do
/// not make this an error (see [`SweepOutcome::checked`]).
pub fn run_sweep(job: SweepJob<'_>) -> Result<SweepOutcome> {
    let root = &job.opts.data;
    // A manifest is read and checked whole before anything is written.
    let mut opts = job.opts.clone();
    let cells = if root.is_file() || root.extension().is_some_and(|e| e == "toml") {
        let manifest = Manifest::read(root, &mut opts, job.explicit)?;
        manifest_cells(&manifest, job.out)?
    } else {
        discover(root)?
    };
    let job = SweepJob { opts: &opts, ..job };
    check_options(&opts)?;
    std::fs::create_dir_all(job.out).map_err(|e| Error::io(job.out, e))?;
    check_writable_dir(job.out)?;
    let lock_path = job.out.join(".sweep.lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
    }
    remove_temporaries(job.out)?;
    let (engine, choice) = open_device(job.device)?;
    let bar = progress(cells.len());
    let mut failures: Vec<(Cell, i32, String)> = Vec::new();
    let mut reports: Vec<(Cell, Value)> = Vec::new();
    for cell in &cells {
        bar.set_message(format!("{}/{}/{}", cell.dataset, cell.model, cell.run));
        let path = cell.report_path(job.out);
        match sweep_cell(cell, &job, &path, &engine, choice) {
            Ok(v) => reports.push((cell.clone(), v)),
            Err(e) => {
                // A failed cell keeps no stale report.
                let _ = std::fs::remove_file(&path);
                bar.suspend(|| {
                    eprintln!(
                        "error: cell {}/{}/{}: {}",
                        cell.dataset,
                        cell.model,
                        cell.run,
                        e.to_string().replace(['\n', '\r'], " ")
                    )
                });
                failures.push((cell.clone(), e.exit_code(), e.to_string()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let groups: Vec<(String, String)> = reports
        .iter()
        .map(|(c, _)| (c.dataset.clone(), c.model.clone()))
        .collect();
    let values: Vec<&Value> = reports.iter().map(|(_, v)| v).collect();
    let (mut estimates, scores) = sweep_estimates(&groups, &values);
    let members: Vec<Member> = reports
        .iter()
        .map(|(c, v)| Member {
            dataset: &c.dataset,
            model: &c.model,
            run: &c.run,
            dir: &c.dir,
            report: v,
        })
        .collect();
    gde_estimates(job.out, &members, &mut estimates)?;
    write_csv(&job.out.join("scores.csv"), SCORES_HEADER, &scores)?;
    let results = results_rows(&reports, &estimates)?;
    write_csv(&job.out.join("results.csv"), RESULTS_HEADER, &results)?;
    let conformal = conformal_rows(&reports)?;
    write_csv(&job.out.join("conformal.csv"), CONFORMAL_HEADER, &conformal)?;
    let table = mae_table(&reports, &estimates)?;
    let summary = summary_rows(&reports, &table);
    write_csv(&job.out.join("summary.csv"), SUMMARY_HEADER, &summary)?;
    let paired = paired_rows(&reports, &table);
    write_csv(&job.out.join("paired.csv"), PAIRED_HEADER, &paired)?;
    write_scatters(job.out, &reports)?;
    let timings: Vec<Vec<String>> = reports
        .iter()
        .map(|(c, v)| {
            let s = v["timings_ms"]["total"].as_f64().map(|ms| ms / 1000.0);
            vec![c.dataset.clone(), c.model.clone(), c.run.clone(), field(s)]
        })
        .collect();
    write_csv(
        &job.out.join("timings.csv"),
        &["dataset", "model", "run", "seconds"],
        &timings,
    )?;
    let failed: Vec<Vec<String>> = failures
        .iter()
        .map(|(c, code, msg)| {
            vec![
                c.dataset.clone(),
                c.model.clone(),
                c.run.clone(),
                code.to_string(),
                msg.clone(),
            ]
        })
        .collect();
    let failures_path = job.out.join("failures.csv");
    write_csv(
        &failures_path,
        &["dataset", "model", "run", "exit_code", "error"],
        &failed,
    )?;
    drop(lock);
    Ok(SweepOutcome {
        cells: cells.len(),
        failed: failures.len(),
        failures_path,
        summary,
        paired,
    })
}

/// Options that would fail every cell fail the sweep before anything is written (exit
/// code 2): levels, scores, globs, the bootstrap's confidence, a fixed temperature.
fn check_options(opts: &SourceOpts) -> Result<()> {
    if opts.cott_reference_subsample.is_some() {
        return Err(Error::Invalid(
            "--cott-reference-subsample names one source's rows: evaluate or calibrate \
             that cell instead of sweeping"
                .into(),
        ));
    }
    let args = SourceArgs::new(opts)?;
    for &a in &args.alphas {
        crate::methods::quantile::check_alpha(a)?;
    }
    if args.bootstrap.replicates > 0 {
        crate::methods::bootstrap::check_confidence(args.bootstrap.confidence)?;
    }
    if let Some(t) = args.temperature {
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::BadTemperature(t));
        }
    }
    Ok(())
}

/// What a finished sweep reports back (its files are in `--out`).
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    /// Cells in the sweep.
    pub cells: usize,
    /// Cells that failed (named in `failures_path`).
    pub failed: usize,
    /// `DIR/failures.csv`.
    pub failures_path: PathBuf,
    /// `summary.csv`'s rows.
    pub summary: Vec<Vec<String>>,
    /// `paired.csv`'s rows.
    pub paired: Vec<Vec<String>>,
}

impl SweepOutcome {
    /// The outcome, or the failed-cells error (exit code 7) when a cell failed.
    pub fn checked(self) -> Result<Self> {
        if self.failed > 0 {
            return Err(Error::CellsFailed {
                failed: self.failed,
                cells: self.cells,
                path: self.failures_path,
            });
        }
        Ok(self)
    }

    /// `summary.csv` as an aligned table on stdout (the `sweep` command's output).
    pub fn print_summary(&self) {
        print_table(SUMMARY_HEADER, &self.summary);
    }

    /// The paired comparison of `method_a` and `method_b` (either order): rows of
    /// `paired.csv` with `method_a`, `method_b` as given when they are stored swapped
    /// (`mean_diff`, `lo`, `hi` negated, wins and losses exchanged).
    pub fn paired_of(&self, method_a: &str, method_b: &str) -> Vec<Vec<String>> {
        let neg = |s: &str| {
            s.parse::<f64>()
                .map_or(String::new(), |v| format!("{}", -v))
        };
        self.paired
            .iter()
            .filter_map(|r| {
                if r[2] == method_a && r[3] == method_b {
                    Some(r.clone())
                } else if r[2] == method_b && r[3] == method_a {
                    let mut out = r.clone();
                    out.swap(2, 3);
                    out[5] = neg(&r[5]);
                    out[6] = neg(&r[7]);
                    out[7] = neg(&r[6]);
                    out.swap(8, 9);
                    Some(out)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// `sweep` from its arguments as on the command line (without `sweep` itself), parsed
/// by the same parser: the library entry Python's `sweep` and the main job use. Options
/// given here win over a manifest's, as on the command line.
pub fn sweep_from_args<I, T>(args: I) -> Result<SweepOutcome>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let argv = ["conformal-gpu".into(), "sweep".into()]
        .into_iter()
        .chain(args.into_iter().map(Into::into));
    let matches = crate::cli::args::Cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| Error::Invalid(clap_message(&e)))?;
    let cli = crate::cli::args::Cli::from_arg_matches(&matches)
        .map_err(|e| Error::Invalid(clap_message(&e)))?;
    let explicit = crate::cli::explicit_sweep_options(&matches);
    let Some(crate::cli::args::Command::Sweep {
        source,
        out,
        device,
    }) = cli.command
    else {
        unreachable!("the arguments were parsed as `sweep`")
    };
    run_sweep(SweepJob {
        opts: &source,
        out: &out,
        device: &device,
        explicit: &explicit,
    })
}

/// clap's message, one line, without its `error: ` prefix and usage.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    format!(
        "sweep options: {}",
        first.strip_prefix("error: ").unwrap_or(first)
    )
}

/// A cell's report: the one on disk when its fingerprint is current and it reads back
/// into results rows, else a fresh evaluation written atomically.
fn sweep_cell(
    cell: &Cell,
    job: &SweepJob<'_>,
    path: &Path,
    engine: &crate::device::Engine,
    choice: crate::device::DeviceChoice,
) -> Result<Value> {
    let mut opts = job.opts.clone();
    opts.data = cell.dir.clone();
    if let Some(staged) = &cell.manifest {
        staged.make(&cell.dir)?;
        opts.source = staged.source.clone();
    }
    let fp = fingerprint(cell, &opts, job.device)?;
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            // The report on disk is untrusted: kept only if it reads back whole.
            let current = v["meta"]["fingerprint"].as_str() == Some(fp.as_str());
            if current && results_rows(&[(cell.clone(), v.clone())], &SweepEstimates::new()).is_ok()
            {
                return Ok(v);
            }
        }
    }
    let _ = std::fs::remove_file(path);
    let eval_job = EvalJob {
        source: SourceArgs::new(&opts)?,
        out: None,
        rows: false,
        device: job.device,
        json: &None,
        seed: None,
    };
    let (eval, mut meta) = evaluate_dir(&eval_job, Device::Shared(engine, choice), Instant::now())?;
    meta.fingerprint = Some(fp);
    let value = report::to_json(&eval, &meta)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let text = serde_json::to_string_pretty(&value)
        .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| Error::io(path, e))
    })?;
    Ok(value)
}

/// Removes the temporary files a killed run left (`.NAME.tmp.PID.N`, see
/// `data::atomic`) under `dir`.
fn remove_temporaries(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            remove_temporaries(&path)?;
        } else if name.starts_with('.') && name.contains(".tmp.") {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn progress(n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cells {msg} [{elapsed}]")
    {
        bar.set_style(style);
    }
    bar
}

const RESULTS_HEADER: &[&str] = &[
    "dataset",
    "model",
    "run",
    "mode",
    "target",
    "group_kind",
    "group_id",
    "method",
    "n",
    "n_labelled",
    "estimate",
    "true_accuracy",
    "error",
    "abs_error",
    "lo",
    "hi",
];

const CONFORMAL_HEADER: &[&str] = &[
    "dataset",
    "model",
    "run",
    "mode",
    "target",
    "group_kind",
    "group_id",
    "score",
    "class_conditional",
    "alpha",
    "n",
    "n_labelled",
    "qhat",
    "coverage",
    "mean_set_size",
    "singleton_rate",
    "empty_rate",
    "sscv",
    "covgap",
];

const PAIRED_HEADER: &[&str] = &[
    "dataset",
    "mae_key",
    "method_a",
    "method_b",
    "cells",
    "mean_diff",
    "lo",
    "hi",
    "wins",
    "losses",
    "ties",
];

const SUMMARY_HEADER: &[&str] = &[
    "dataset",
    "model",
    "mae_key",
    "method",
    "runs",
    "mae_mean",
    "mae_std",
    "bias_mean",
    "bias_std",
];

const MODES: [&str; 2] = ["raw", "ts"];

/// An f64 as Rust's `{}` prints it (the shortest form that reads back the same); an
/// unknown value is an empty field.
fn field(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map(|v| format!("{v}"))
        .unwrap_or_default()
}

/// A report's part that must be there, or a typed error naming the field.
fn need<'a>(v: &'a Value, what: &str) -> Result<&'a Value> {
    if v.is_null() {
        return Err(Error::Invalid(format!("sweep report: {what} is missing")));
    }
    Ok(v)
}

/// One target's or group's estimate row values: `(estimate, interval)` of `method`.
fn estimate_of(entry: &Value, mode: &str, method: &str) -> (Option<f64>, Option<[f64; 2]>) {
    let est = entry["estimates"][mode][method].as_f64();
    let ci = entry["ci"][mode][method].as_array().and_then(|a| {
        let lo = a.first()?.as_f64()?;
        let hi = a.get(1)?.as_f64()?;
        Some([lo, hi])
    });
    (est, ci)
}

/// A report's targets sorted by name (byte order).
fn targets_of(v: &Value) -> Result<Vec<&Value>> {
    let mut targets: Vec<&Value> = need(&v["targets"], "targets")?
        .as_array()
        .ok_or_else(|| Error::Invalid("sweep report: targets is not a list".into()))?
        .iter()
        .collect();
    for t in &targets {
        if !t["name"].is_string() || !t["estimates"].is_object() {
            return Err(Error::Invalid(
                "sweep report: a target lacks its name or estimates".into(),
            ));
        }
    }
    targets.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(targets)
}

/// A target's groups: `(kind, entries sorted by numeric id)`, kinds in byte order.
fn groups_of(t: &Value) -> Vec<(String, Vec<&Value>)> {
    let mut out = Vec::new();
    if let Some(kinds) = t["groups"].as_object() {
        let mut names: Vec<&String> = kinds.keys().collect();
        names.sort();
        for kind in names {
            let mut entries: Vec<&Value> = kinds[kind].as_array().into_iter().flatten().collect();
            entries.sort_by_key(|g| g["id"].as_i64());
            out.push((kind.clone(), entries));
        }
    }
    out
}

/// The long-form rows of every cell's report (see the module docs).
fn results_rows(reports: &[(Cell, Value)], estimates: &SweepEstimates) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    each_entry(reports, |at, entry| {
        let truth = entry["true_accuracy"].as_f64();
        let mut push = |name: &str, est: Option<f64>, ci: Option<[f64; 2]>| {
            let err = est.zip(truth).map(|(e, t)| e - t);
            let mut row = at.key();
            row.extend([
                name.to_string(),
                count(&entry["n"]),
                count(&entry["n_labelled"]),
                field(est),
                field(truth),
                field(err),
                field(err.map(f64::abs)),
                field(ci.map(|c| c[0])),
                field(ci.map(|c| c[1])),
            ]);
            rows.push(row);
        };
        // Optional methods (a score's CPC) only where the report has them.
        for m in Method::ALL.into_iter().filter(|m| at.methods.contains(m)) {
            let (est, ci) = estimate_of(entry, at.mode, m.name());
            push(m.name(), est, ci);
        }
        // The sweep's own, at the target level.
        if at.kind.is_empty() {
            for name in SWEEP_NAMES {
                let key = (at.index, at.mode.to_string(), at.target.to_string(), name);
                push(name, estimates.get(&key).copied(), None);
            }
            // The reference mode's values (`--cot-reference`): ts, target level, no
            // interval; listed, never summarised (out of the MAE).
            for name in REFERENCE_NAMES {
                let e = &entry["estimates"][at.mode];
                if e.get(name).is_some() {
                    push(name, e[name].as_f64(), None);
                }
            }
        }
    })?;
    Ok(rows)
}

/// The reference mode's values in results.csv, after the sweep's own methods.
const REFERENCE_NAMES: [&str; 2] = ["COT-ref", "COTT-ref"];

/// Where an entry (a target or one of its groups) stands in the CSV files.
struct At<'a> {
    /// The report's index in the sweep.
    index: usize,
    cell: &'a Cell,
    mode: &'static str,
    target: &'a str,
    kind: &'a str,
    id: String,
    /// The report's methods (optional ones only where some target has them).
    methods: &'a [Method],
}

impl At<'_> {
    /// `dataset,model,run,mode,target,group_kind,group_id`.
    fn key(&self) -> Vec<String> {
        vec![
            self.cell.dataset.clone(),
            self.cell.model.clone(),
            self.cell.run.clone(),
            self.mode.to_string(),
            self.target.to_string(),
            self.kind.to_string(),
            self.id.clone(),
        ]
    }
}

/// An unsigned count field (empty when absent).
fn count(v: &Value) -> String {
    v.as_u64().map(|x| x.to_string()).unwrap_or_default()
}

/// Calls `f` on every entry of every cell's report in the CSV files' order: per cell,
/// mode, target (by name), the target before its groups (by kind, then numeric id).
fn each_entry(reports: &[(Cell, Value)], mut f: impl FnMut(&At<'_>, &Value)) -> Result<()> {
    for (index, (cell, v)) in reports.iter().enumerate() {
        let targets = targets_of(v)?;
        let methods: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| {
                !m.is_optional()
                    || targets
                        .iter()
                        .any(|t| t["estimates"]["raw"].get(m.name()).is_some())
            })
            .collect();
        for mode in MODES {
            for t in &targets {
                let target = t["name"].as_str().unwrap_or_default();
                let whole = At {
                    index,
                    cell,
                    mode,
                    target,
                    kind: "",
                    id: String::new(),
                    methods: &methods,
                };
                f(&whole, t);
                for (kind, entries) in groups_of(t) {
                    for g in entries {
                        let id = g["id"].as_i64().map(|x| x.to_string()).unwrap_or_default();
                        f(
                            &At {
                                kind: &kind,
                                id,
                                ..whole
                            },
                            g,
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Mean and sample standard deviation (ddof 1; `None` for fewer than two values).
fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt());
    (Some(mean), std)
}

/// A cell's signed errors of `method` over the members of MAE key `key` (labelled
/// targets for `raw`/`ts`, labelled (target, group) pairs of the kind for `KIND_MODE`):
/// their mean, the bias (`None` when a member has no estimate).
fn bias(v: &Value, key: &str, method: &str) -> Option<f64> {
    let (kind, mode) = match key {
        "raw" | "ts" => (None, key),
        _ => {
            let (k, m) = key.rsplit_once('_')?;
            (Some(k), m)
        }
    };
    let mut errors = Vec::new();
    for t in v["targets"].as_array()? {
        // The targets the report's MAE leaves out.
        if excluded(v, t["name"].as_str().unwrap_or_default()) {
            continue;
        }
        let members: Vec<&Value> = match kind {
            None => vec![t],
            Some(k) => t["groups"][k].as_array().into_iter().flatten().collect(),
        };
        for m in members {
            let Some(truth) = m["true_accuracy"].as_f64() else {
                continue;
            };
            errors.push(m["estimates"][mode][method].as_f64()? - truth);
        }
    }
    (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64)
}

/// The set metrics of every cell's targets and groups (DESIGN.md 2.14) in the long form
/// of `results.csv`, one row per conformal entry in the report's order (score, marginal
/// before class-conditional, level). `qhat` is empty for a class-conditional entry
/// (per-class values are in the cell's JSON) and for +inf; `covgap` for groups.
fn conformal_rows(reports: &[(Cell, Value)]) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    each_entry(reports, |at, entry| {
        for e in entry["conformal"][at.mode].as_array().into_iter().flatten() {
            let cc = e["class_conditional"].as_bool().unwrap_or(false);
            let mut row = at.key();
            row.extend([
                e["score"].as_str().unwrap_or("lac").to_string(),
                cc.to_string(),
                field(e["alpha"].as_f64()),
                count(&entry["n"]),
                count(&entry["n_labelled"]),
                field(e["qhat"].as_f64()),
                field(e["coverage"].as_f64()),
                field(e["mean_set_size"].as_f64()),
                field(e["singleton_rate"].as_f64()),
                field(e["empty_rate"].as_f64()),
                field(e["sscv"].as_f64()),
                field(e["covgap"].as_f64()),
            ]);
            rows.push(row);
        }
    })?;
    Ok(rows)
}

/// Every method's name in method order: the reports' methods, then the sweep's own.
fn method_names() -> Vec<&'static str> {
    Method::ALL
        .iter()
        .map(|m| m.name())
        .chain(SWEEP_NAMES)
        .collect()
}

/// Per report, MAE key, method (index into [`method_names`]): its MAE and bias.
type MaeTable = Vec<BTreeMap<String, BTreeMap<usize, (f64, Option<f64>)>>>;

/// Each report's MAE rows and biases, with the sweep's methods' MAE and bias taken from
/// their results rows (the report's labelled targets it does not exclude; none where a
/// target has no estimate). The sweep's methods have no group rows.
fn mae_table(reports: &[(Cell, Value)], estimates: &SweepEstimates) -> Result<MaeTable> {
    let names = method_names();
    let mut out = Vec::new();
    for (index, (_, v)) in reports.iter().enumerate() {
        let Some(mae) = v["mae"].as_object() else {
            return Err(Error::Invalid("sweep report: mae is missing".into()));
        };
        let mut keys: BTreeMap<String, BTreeMap<usize, (f64, Option<f64>)>> = BTreeMap::new();
        for (key, row) in mae {
            let per = keys.entry(key.clone()).or_default();
            for (i, m) in Method::ALL.iter().enumerate() {
                if let Some(x) = row[m.name()].as_f64() {
                    per.insert(i, (x, bias(v, key, m.name())));
                }
            }
        }
        for mode in MODES {
            for (j, name) in SWEEP_NAMES.iter().enumerate() {
                let mut errors = Vec::new();
                let mut complete = true;
                for t in v["targets"].as_array().into_iter().flatten() {
                    let tname = t["name"].as_str().unwrap_or_default();
                    let Some(truth) = t["true_accuracy"].as_f64() else {
                        continue;
                    };
                    if excluded(v, tname) {
                        continue;
                    }
                    let key = (index, mode.to_string(), tname.to_string(), *name);
                    match estimates.get(&key) {
                        Some(e) => errors.push(e - truth),
                        None => complete = false,
                    }
                }
                if complete && !errors.is_empty() {
                    let n = errors.len() as f64;
                    let mae = errors.iter().map(|e| e.abs()).sum::<f64>() / n;
                    let bias = errors.iter().sum::<f64>() / n;
                    keys.entry(mode.to_string())
                        .or_default()
                        .insert(Method::ALL.len() + j, (mae, Some(bias)));
                }
            }
        }
        debug_assert!(keys.values().all(|m| m.keys().all(|&i| i < names.len())));
        out.push(keys);
    }
    Ok(out)
}

/// Per dataset, model, MAE key and method: the MAE and bias over runs.
fn summary_rows(reports: &[(Cell, Value)], table: &MaeTable) -> Vec<Vec<String>> {
    type Key = (String, String, String, usize);
    let names = method_names();
    let mut acc: BTreeMap<Key, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for ((cell, _), keys) in reports.iter().zip(table) {
        for (key, per) in keys {
            for (&i, &(mae, bias)) in per {
                let e = acc
                    .entry((cell.dataset.clone(), cell.model.clone(), key.clone(), i))
                    .or_default();
                e.0.push(mae);
                if let Some(b) = bias {
                    e.1.push(b);
                }
            }
        }
    }
    acc.into_iter()
        .map(|((dataset, model, key, i), (mae, bias))| {
            let (mm, ms) = mean_std(&mae);
            let (bm, bs) = mean_std(&bias);
            vec![
                dataset,
                model,
                key,
                names[i].to_string(),
                mae.len().to_string(),
                field(mm),
                field(ms),
                field(bm),
                field(bs),
            ]
        })
        .collect()
}

/// Per dataset and MAE key, every pair of methods (a before b in method order) over the
/// (model, run) cells where both MAEs exist: `MAE_a - MAE_b`, its mean and 95% Student-t
/// interval (empty below 2 cells), wins (`MAE_a < MAE_b`), losses and ties.
fn paired_rows(reports: &[(Cell, Value)], table: &MaeTable) -> Vec<Vec<String>> {
    let names = method_names();
    type PerCell = BTreeMap<usize, f64>;
    let mut acc: BTreeMap<(String, String), Vec<PerCell>> = BTreeMap::new();
    for ((cell, _), keys) in reports.iter().zip(table) {
        for (key, per) in keys {
            acc.entry((cell.dataset.clone(), key.clone()))
                .or_default()
                .push(per.iter().map(|(&i, &(m, _))| (i, m)).collect());
        }
    }
    let mut rows = Vec::new();
    for ((dataset, key), cells) in acc {
        for a in 0..names.len() {
            for b in a + 1..names.len() {
                let both: Vec<(f64, f64)> = cells
                    .iter()
                    .filter_map(|c| Some((*c.get(&a)?, *c.get(&b)?)))
                    .collect();
                if both.is_empty() {
                    continue;
                }
                let diffs: Vec<f64> = both.iter().map(|(x, y)| x - y).collect();
                let (mean, std) = mean_std(&diffs);
                let half = std.and_then(|sd| {
                    let n = diffs.len() as f64;
                    let t = StudentsT::new(0.0, 1.0, n - 1.0).ok()?.inverse_cdf(0.975);
                    Some(t * sd / n.sqrt())
                });
                let count = |f: fn(&(f64, f64)) -> bool| both.iter().filter(|p| f(p)).count();
                rows.push(vec![
                    dataset.clone(),
                    key.clone(),
                    names[a].to_string(),
                    names[b].to_string(),
                    diffs.len().to_string(),
                    field(mean),
                    field(mean.zip(half).map(|(m, h)| m - h)),
                    field(mean.zip(half).map(|(m, h)| m + h)),
                    count(|(x, y)| x < y).to_string(),
                    count(|(x, y)| x > y).to_string(),
                    count(|(x, y)| x == y).to_string(),
                ]);
            }
        }
    }
    rows
}

/// `DIR/scatter_DATASET_MODE.svg` for each dataset and mode: every labelled (cell,
/// target), estimate against true accuracy, per method and model.
fn write_scatters(out: &Path, reports: &[(Cell, Value)]) -> Result<()> {
    let mut datasets: Vec<&str> = Vec::new();
    for (c, _) in reports {
        if !datasets.contains(&c.dataset.as_str()) {
            datasets.push(&c.dataset);
        }
    }
    for dataset in datasets {
        let mine: Vec<&(Cell, Value)> = reports
            .iter()
            .filter(|(c, _)| c.dataset == dataset)
            .collect();
        let mut models: Vec<String> = Vec::new();
        for (c, _) in &mine {
            if !models.contains(&c.model) {
                models.push(c.model.clone());
            }
        }
        for mode in MODES {
            let mut points: Vec<ScatterPoint> = Vec::new();
            for (c, v) in &mine {
                let model = models.iter().position(|m| *m == c.model).unwrap_or(0);
                for t in targets_of(v)? {
                    let Some(truth) = t["true_accuracy"].as_f64() else {
                        continue;
                    };
                    for m in Method::ALL {
                        if let Some(est) = t["estimates"][mode][m.name()].as_f64() {
                            points.push((model, m, truth, est));
                        }
                    }
                }
            }
            if points.is_empty() {
                continue;
            }
            let title = format!("{dataset}: estimated vs true accuracy ({mode})");
            let svg = scatter_svg(&title, &models, &points)?;
            let path = out.join(format!("scatter_{dataset}_{mode}.svg"));
            write_atomic(&path, |w| {
                w.write_all(svg.as_bytes()).map_err(|e| Error::io(&path, e))
            })?;
        }
    }
    Ok(())
}

/// Writes `header` and `rows` as CSV, atomically.
fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let io = |e: csv::Error| Error::Invalid(format!("{}: {e}", path.display()));
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(header).map_err(io)?;
    for r in rows {
        w.write_record(r).map_err(io)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    write_atomic(path, |out| {
        out.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

/// The summary as an aligned table on stdout.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len().min(12));
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                let c = if c.len() > 12 && c.parse::<f64>().is_ok() {
                    format!("{:.6}", c.parse::<f64>().unwrap_or(f64::NAN))
                } else {
                    c.clone()
                };
                format!("{c:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}
