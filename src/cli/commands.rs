//! The subcommands that evaluate: `evaluate` (calibrate, stream every target through
//! tallies, report), and the same three steps as separate commands for sharding:
//! `calibrate`, `tally`, `merge`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::npz;
use crate::data::stream::NpzRowReader;
use crate::data::PredictionSet;
use crate::device::{DeviceChoice, Engine};
use crate::methods::bootstrap::{check_confidence, BootstrapOptions};
use crate::methods::calibration::{Calibration, CalibrationOptions, Temperature};
use crate::methods::cot_reference::{CotPrior, CotReferenceOptions};
use crate::methods::evaluate::{
    self as evaluation, Evaluation, EvaluationJob, Timings, TARGET_CHUNK_ROWS,
};
use crate::methods::files::{tally_files, FileJob};
use crate::methods::sets::{parse_scores, SetOptions};
use crate::methods::tally::Tally;
use crate::methods::target::TargetInput;
use crate::report::{self, InputFile, Meta, SkippedFile};
use crate::{with_backend, Error, Result};

use crate::cli::dataset::{dataset_files, find_set, set_name, target_part};
use crate::cli::outputs::{check_json_target, check_writable_dir, emit_json, open_device, phase};

/// What `evaluate` and `calibrate` read from a dataset directory.
pub struct SourceArgs<'a> {
    pub data: &'a Path,
    pub source: &'a str,
    pub alphas: Vec<f64>,
    pub temperature: Option<f64>,
    pub temperature_source: Option<&'a str>,
    pub bootstrap: BootstrapOptions,
    pub sets: SetOptions,
    /// Globs of target names kept out of the MAE rows.
    pub exclude: Vec<String>,
    /// COT's reference mode, when asked for.
    pub cot_reference: Option<CotReferenceOptions>,
}

impl<'a> SourceArgs<'a> {
    /// From the parsed options (levels checked).
    pub fn new(o: &'a crate::cli::args::SourceOpts) -> Result<Self> {
        Ok(SourceArgs {
            data: &o.data,
            source: &o.source,
            alphas: crate::cli::outputs::parse_alphas(&o.alpha)?,
            temperature: o.temperature,
            temperature_source: o.temperature_source.as_deref(),
            bootstrap: BootstrapOptions {
                replicates: o.bootstrap,
                seed: o.seed,
                confidence: o.confidence,
            },
            sets: {
                let sets = SetOptions {
                    scores: parse_scores(&o.score),
                    randomize: o.randomize,
                    seed: o.seed,
                    raps_lambda: o.raps_lambda,
                    raps_k_reg: o.raps_k_reg,
                    saps_lambda: o.saps_lambda,
                    class_conditional: o.class_conditional,
                };
                sets.parsed()?;
                sets
            },
            exclude: {
                for g in &o.exclude {
                    glob::Pattern::new(g)
                        .map_err(|e| Error::Invalid(format!("--exclude {g:?}: {e}")))?;
                }
                o.exclude.clone()
            },
            cot_reference: o
                .cot_reference
                .then(|| -> Result<CotReferenceOptions> {
                    Ok(CotReferenceOptions {
                        prior: CotPrior::parse(&o.cot_prior)?,
                        subsample: o
                            .cott_reference_subsample
                            .as_deref()
                            .map(crate::data::npy::load_npy_indices)
                            .transpose()?,
                    })
                })
                .transpose()?,
        })
    }
}

/// A whole set and its file's SHA-256, read in parallel.
fn load_hashed(path: &Path) -> Result<(PredictionSet, InputFile)> {
    let (set, sha256) = npz::load_npz_hashed(path)?;
    let file = path.display().to_string();
    Ok((set, InputFile { file, sha256 }))
}

/// The source and the temperature set of a dataset, read and hashed.
struct SourceSets {
    source: PredictionSet,
    /// The temperature set (`--temperature-source`).
    temperature_set: Option<PredictionSet>,
    /// Their files.
    inputs: Vec<InputFile>,
}

impl SourceSets {
    /// Reads the source and the temperature set named by `args` (the temperature checked
    /// first, before any reading).
    fn load(args: &SourceArgs<'_>, files: &[PathBuf]) -> Result<Self> {
        if let Some(t) = args.temperature {
            crate::methods::temperature::validate_temperature(t)?;
        }
        let source_path = find_set(args.data, files, args.source, "source")?;
        let temp_path = args
            .temperature_source
            .map(|name| find_set(args.data, files, name, "temperature"))
            .transpose()?;
        let (source, source_input) = load_hashed(&source_path)?;
        let temp = temp_path.as_deref().map(load_hashed).transpose()?;
        let mut inputs = vec![source_input];
        let temperature_set = temp.map(|(set, input)| {
            inputs.push(input);
            set
        });
        Ok(SourceSets {
            source,
            temperature_set,
            inputs,
        })
    }

    /// The fit's options under `args`.
    fn options<'a>(&'a self, args: &SourceArgs<'_>) -> CalibrationOptions<'a> {
        let temperature = match (args.temperature, &self.temperature_set) {
            (Some(t), _) => Temperature::Fixed(t),
            (None, Some(set)) => Temperature::FitOn(set),
            (None, None) => Temperature::FitSource,
        };
        CalibrationOptions {
            alphas: args.alphas.clone(),
            temperature,
            bootstrap: args.bootstrap,
            sets: args.sets.clone(),
            cot_reference: args.cot_reference.clone(),
        }
    }
}

/// Loads the source (and temperature set) and fits the calibration (`calibrate`).
fn calibrate(
    args: &SourceArgs<'_>,
    files: &[PathBuf],
    engine: &Engine,
    choice: DeviceChoice,
) -> Result<Calibration> {
    let sets = SourceSets::load(args, files)?;
    let options = sets.options(args);
    let mut cal = with_backend!(engine, choice, |b| Calibration::fit(
        b,
        &sets.source,
        &options
    ))?;
    for input in sets.inputs.iter() {
        if !cal.inputs.contains(input) {
            cal.inputs.push(input.clone());
        }
    }
    cal.inputs.sort();
    for w in cal.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(cal)
}

/// `meta` of a report: provenance, the device's adapter, skipped files.
fn meta(
    engine_device: &str,
    inputs: Vec<InputFile>,
    skipped: Vec<SkippedFile>,
    seed: Option<u64>,
) -> Meta {
    let (adapter, driver) = match engine_device.strip_prefix("gpu: ") {
        Some(name) => (Some(name.to_string()), None),
        None => (None, None),
    };
    Meta {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("CONFORMAL_GPU_COMMIT").into(),
        args: std::env::args().collect(),
        seed,
        inputs,
        adapter,
        driver,
        transfers: None,
        gpu_kernel_ms: None,
        gpu_kernels: Default::default(),
        skipped,
        fingerprint: None,
    }
}

/// The GPU ledger as the report records it (and a line on stderr), on a GPU run.
fn record_transfers(meta: &mut Meta, engine: &Engine, device: &str) {
    #[cfg(feature = "gpu")]
    if let Engine::Gpu(ctx) = engine {
        if device.starts_with("gpu") {
            let t = ctx.transfers();
            eprintln!(
                "transfers: {} bytes up, {} bytes down, {} submissions",
                t.upload_bytes, t.download_bytes, t.submissions
            );
            meta.transfers = Some(t);
            let ns = ctx.take_kernel_ns();
            if ns > 0 {
                meta.gpu_kernel_ms = Some(ns as f64 / 1e6);
                let times = ctx.take_kernel_times();
                let mut largest_first: Vec<_> = times.iter().collect();
                largest_first.sort_by_key(|(_, t)| std::cmp::Reverse(t.ns));
                let parts: Vec<String> = largest_first
                    .iter()
                    .map(|(name, t)| format!("{name} {:.1}", t.ns as f64 / 1e6))
                    .collect();
                eprintln!(
                    "GPU kernel time: {:.1} ms ({})",
                    ns as f64 / 1e6,
                    parts.join(", ")
                );
                meta.gpu_kernels = times
                    .into_iter()
                    .map(|(name, t)| {
                        let ms = t.ns as f64 / 1e6;
                        let dispatches = t.dispatches;
                        (name.to_string(), crate::report::KernelMs { ms, dispatches })
                    })
                    .collect();
            }
        }
    }
    #[cfg(not(feature = "gpu"))]
    let _ = (meta, engine, device);
}

/// Prints the table, writes `--out` files and the JSON, all or nothing.
fn emit_report(
    eval: &Evaluation,
    meta: &Meta,
    json: &Option<String>,
    out: Option<&Path>,
) -> Result<()> {
    let table = report::table(eval);
    if json.as_deref() == Some("-") {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let value = match json {
        Some(_) => Some(report::to_json(eval, meta)?),
        None => None,
    };
    let mut written = Vec::new();
    if let Some(dir) = out {
        written = report::write_outputs(eval, meta, dir)?;
        eprintln!("wrote {} files into {}", written.len(), dir.display());
    }
    if let Some(value) = value {
        if let Err(e) = emit_json(&value, json) {
            // All or nothing: no report files from a run that failed.
            for f in &written {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The targets of a dataset directory as the driver takes them: each file a target
/// named by its stem, except `NAME.part-000.npz`, `NAME.part-001.npz`, ...: the parts of
/// one target NAME, in order, each at the offset of the rows before it. Parts must run
/// from 000 without a gap, and a name is either whole or in parts.
fn target_jobs(readers: Vec<NpzRowReader>) -> Result<Vec<TargetInput<'static>>> {
    let mut parts: BTreeMap<String, Vec<(usize, NpzRowReader)>> = BTreeMap::new();
    let mut order = Vec::new();
    for reader in readers {
        let stem = reader.name().to_string();
        let (name, part) = target_part(&stem);
        let name = name.to_string();
        let entry = parts.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            Vec::new()
        });
        match part {
            Some(i) => entry.push((i, reader)),
            None => entry.push((usize::MAX, reader)),
        }
    }
    let mut out = Vec::new();
    for name in order {
        let mut files = parts.remove(&name).unwrap_or_default();
        files.sort_by_key(|(i, _)| *i);
        let whole = files.iter().any(|(i, _)| *i == usize::MAX);
        if whole && files.len() > 1 {
            return Err(Error::Invalid(format!(
                "target {name:?} is both a whole file and parts ({name}.npz and {name}.part-NNN.npz)"
            )));
        }
        let mut offset = 0;
        for (expect, (i, reader)) in files.into_iter().enumerate() {
            if !whole && i != expect {
                return Err(Error::Invalid(format!(
                    "target {name:?}: part {expect:03} is missing (found part {i:03} after it); \
                     parts must run from 000 without a gap"
                )));
            }
            let n = reader.n();
            out.push(TargetInput::File(Box::new(
                FileJob {
                    name: name.clone(),
                    reader,
                    rows: None,
                    row_offset: 0,
                }
                .at_offset(offset),
            )));
            offset += n;
        }
    }
    Ok(out)
}

/// What a merged target's row ranges cover: rows tallied, the span, and the rows in gaps
/// between the ranges (parts or shards that were not tallied).
fn row_coverage(rows: &[[u64; 2]]) -> String {
    let tallied: u64 = rows.iter().map(|r| r[1] - r[0]).sum();
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return "no rows".into();
    };
    let span = last[1] - first[0];
    let ranges: Vec<String> = rows.iter().map(|r| format!("{}..{}", r[0], r[1])).collect();
    let mut out = format!(
        "{tallied} rows tallied in {} range(s) ({})",
        rows.len(),
        ranges.join(", ")
    );
    if tallied < span || first[0] > 0 {
        out.push_str(&format!(
            "; {} rows before the first range and {} in gaps were not tallied",
            first[0],
            span - tallied
        ));
    }
    out
}

/// Options of `evaluate`.
pub struct EvalJob<'a> {
    pub source: SourceArgs<'a>,
    pub out: Option<&'a Path>,
    pub rows: bool,
    pub device: &'a str,
    pub json: &'a Option<String>,
    pub seed: Option<u64>,
}

/// `evaluate`: calibrate, then stream each target through tallies, then report.
pub fn run_evaluate(job: EvalJob<'_>) -> Result<()> {
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
    check_json_target(job.json)?;
    let device = Device::Open(job.device);
    let (eval, meta) = evaluate_dir(&job, device, started)?;
    emit_report(&eval, &meta, job.json, job.out)
}

/// The device an evaluation runs on: opened by it (`evaluate`), or opened once and
/// shared by many (`sweep`).
pub enum Device<'a> {
    /// Open this `--device` when the data has been checked.
    Open(&'a str),
    /// An engine already open.
    Shared(&'a Engine, DeviceChoice),
}

/// `evaluate` of one dataset directory, without printing the report: the evaluation and
/// the report's `meta`.
pub fn evaluate_dir(
    job: &EvalJob<'_>,
    device: Device<'_>,
    started: Instant,
) -> Result<(Evaluation, Meta)> {
    let data = job.source.data;
    let files = dataset_files(data)?;
    let source_path = find_set(data, &files, job.source.source, "source")?;
    // Every target is opened (headers read, shapes and K checked) before any work; a file
    // that is not a readable prediction set is skipped with a warning, not fatal.
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for f in files.iter().filter(|f| **f != source_path) {
        match NpzRowReader::open(f) {
            Ok(r) if r.n() == 0 => {
                return Err(Error::Empty {
                    what: format!("{}: logits", f.display()),
                    detail: "the target set has no rows".into(),
                })
            }
            Ok(r) => targets.push(r),
            Err(e @ Error::Format { .. }) => skipped.push((f, e)),
            Err(e) => return Err(e),
        }
    }
    if targets.is_empty() {
        // Nothing readable to evaluate: the first unreadable file is the error.
        if let Some((_, e)) = skipped.into_iter().next() {
            return Err(e);
        }
        return Err(Error::Empty {
            what: data.display().to_string(),
            detail: format!(
                "no target set to evaluate besides the source {} (put the targets' .npz files beside it)",
                source_path.display()
            ),
        });
    }
    let skipped: Vec<SkippedFile> = skipped
        .into_iter()
        .map(|(f, e)| {
            eprintln!(
                "warning: skipping {}: not a readable prediction set: {e}",
                f.display()
            );
            SkippedFile {
                file: f.display().to_string(),
                error: e.to_string(),
            }
        })
        .collect();
    let targets = target_jobs(targets)?;
    let opened;
    let (engine, choice) = match device {
        Device::Open(d) => {
            opened = open_device(d)?;
            (&opened.0, opened.1)
        }
        Device::Shared(e, c) => (e, c),
    };
    let args = &job.source;
    let sets = SourceSets::load(args, &files)?;
    let pb = phase(&format!(
        "evaluating {} target files ({} predictions)",
        targets.len(),
        targets.iter().map(|t| t.n()).sum::<usize>() + sets.source.n()
    ));
    let outcome = evaluation::run(
        engine,
        choice,
        EvaluationJob {
            source: &sets.source,
            options: sets.options(args),
            inputs: sets.inputs.clone(),
            targets,
            rows: job.rows,
            started,
        },
    )?;
    pb.finish_and_clear();
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    let mut eval = outcome.evaluation;
    eval.exclude_from_mae(&args.exclude)?;
    let inputs = outcome.inputs;
    let mut meta = meta(&eval.device, inputs, skipped, job.seed);
    record_transfers(&mut meta, engine, &eval.device);
    #[cfg(feature = "gpu")]
    if let Engine::Gpu(ctx) = engine {
        let info = ctx.adapter_info();
        if eval.device.starts_with("gpu") {
            meta.adapter = Some(info.name.clone());
            meta.driver = Some(format!("{} {}", info.driver, info.driver_info));
        }
    }
    Ok((eval, meta))
}

/// `calibrate`: fit once, write the calibration file.
pub fn run_calibrate(args: SourceArgs<'_>, device: &str, out: &Path) -> Result<()> {
    check_json_target(&Some(out.display().to_string()))?;
    let files = dataset_files(args.data)?;
    let (engine, choice) = open_device(device)?;
    let cal = calibrate(&args, &files, &engine, choice)?;
    let text = cal.to_json()?;
    npz::write_atomic(out, |w| {
        w.write_all(text.as_bytes()).map_err(|e| Error::io(out, e))
    })?;
    eprintln!(
        "calibration {} ({} rows of {}, T = {:.6}) written to {}",
        &cal.id[..12],
        cal.source.n,
        cal.source.name,
        cal.source.temperature,
        out.display()
    );
    Ok(())
}

/// Reads a calibration file.
pub(crate) fn read_calibration(path: &Path) -> Result<Calibration> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Calibration::from_json(&text, &path.display().to_string())
}

/// Parses `START:END` (half-open).
fn parse_rows(s: &str) -> Result<Range<usize>> {
    let bad = || Error::Invalid(format!("--rows {s:?}: expected START:END, e.g. 0:1000000"));
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(Error::Invalid(format!("--rows {s}: START > END")));
    }
    Ok(a..b)
}

/// Options of `tally`.
pub struct TallyJob<'a> {
    pub calibration: &'a Path,
    pub data: &'a Path,
    pub name: Option<&'a str>,
    pub rows: Option<&'a str>,
    pub row_offset: usize,
    pub device: &'a str,
    pub out: &'a Path,
}

/// `tally`: count one file (or row range) under a calibration.
pub fn run_tally(job: TallyJob<'_>) -> Result<()> {
    check_json_target(&Some(job.out.display().to_string()))?;
    let rows = job.rows.map(parse_rows).transpose()?;
    let cal = read_calibration(job.calibration)?;
    if job.data.is_dir() {
        return Err(Error::Invalid(format!(
            "--data {} is a directory; tally takes one .npz file",
            job.data.display()
        )));
    }
    let name = job
        .name
        .map(str::to_string)
        .unwrap_or_else(|| set_name(job.data));
    let reader = NpzRowReader::open(job.data)?;
    crate::methods::calibration::check_k(&job.data.display().to_string(), reader.k(), &cal)?;
    let (engine, choice) = open_device(job.device)?;
    let mut reader = Some(reader);
    let done = with_backend!(&engine, choice, |b| {
        let r = match reader.take() {
            Some(r) => r,
            None => NpzRowReader::open(job.data)?,
        };
        let jobs = vec![FileJob {
            reader: r,
            name: name.clone(),
            rows: rows.clone(),
            row_offset: job.row_offset,
        }];
        tally_files(b, &cal, jobs, TARGET_CHUNK_ROWS, false).map(|mut d| d.remove(0))
    })?;
    let text = done.tally.to_json()?;
    npz::write_atomic(job.out, |w| {
        w.write_all(text.as_bytes())
            .map_err(|e| Error::io(job.out, e))
    })?;
    eprintln!(
        "tally of {name}: {} rows ({:?}) written to {}",
        done.tally.n(),
        done.tally.rows,
        job.out.display()
    );
    Ok(())
}

/// `merge`: tallies by target name under their calibration, then the report.
pub fn run_merge(
    calibration: &Path,
    tallies: &[PathBuf],
    json: &Option<String>,
    out: Option<&Path>,
    confidence: Option<f64>,
    exclude: &[String],
) -> Result<()> {
    let started = Instant::now();
    if let Some(dir) = out {
        check_writable_dir(dir)?;
    }
    check_json_target(json)?;
    let mut cal = read_calibration(calibration)?;
    if let Some(c) = confidence {
        check_confidence(c)?;
        match cal.bootstrap.as_mut() {
            Some(b) => b.confidence = c,
            None => eprintln!("warning: --confidence: the calibration has no bootstrap replicates"),
        }
    }
    // Every file is read and checked before anything is merged or written.
    let mut parts = Vec::new();
    for path in tallies {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let t = Tally::from_json(&text, &path.display().to_string())?;
        t.check_against(&cal).map_err(|e| match e {
            Error::Incompatible { detail, .. } => Error::Incompatible {
                what: path.display().to_string(),
                detail,
            },
            other => other,
        })?;
        parts.push(t);
    }
    let mut by_name: BTreeMap<String, Tally> = BTreeMap::new();
    for t in parts {
        match by_name.get_mut(&t.name) {
            Some(acc) => acc.merge(&t)?,
            None => {
                by_name.insert(t.name.clone(), t);
            }
        }
    }
    let mut inputs = cal.inputs.clone();
    let mut reports = Vec::new();
    for (name, t) in &by_name {
        eprintln!("merged {name}: {}", row_coverage(&t.rows));
        reports.push(cal.report(name, t)?);
        inputs.extend(t.inputs.iter().cloned());
    }
    inputs.sort();
    inputs.dedup();
    let timings = Timings {
        load: 0.0,
        temperature: cal.timings_ms.temperature,
        sort: cal.timings_ms.sort,
        estimate: 0.0,
        total: started.elapsed().as_secs_f64() * 1e3,
    };
    let mut eval = Evaluation::assemble(&cal, cal.device.clone(), reports, Vec::new(), timings);
    eval.exclude_from_mae(exclude)?;
    let meta = meta(&eval.device, inputs, Vec::new(), None);
    emit_report(&eval, &meta, json, out)
}
