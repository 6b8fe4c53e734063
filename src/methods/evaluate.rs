//! The evaluation driver (DESIGN.md 3, "The pipeline"): the one place an evaluation is
//! put together, for the library, the command line and Python alike. [`run`] fits the
//! calibration ([`Calibration::fit`]) on an [`Engine`], streams every target through
//! tallies in chunks of [`TARGET_CHUNK_ROWS`] (files decoded ahead on a thread, rows in
//! memory borrowed), reports each ([`Calibration::report`]) and assembles the MAE rows.
//! Counts are integers, so the report does not depend on the chunk size, the thread
//! count, or how a target was sharded. Callers parse arguments and print; nothing else.

use std::path::PathBuf;
use std::time::Instant;

use crate::backend::Backend;
use crate::data::PredictionSet;
use crate::device::{DeviceChoice, Engine};
use crate::error::{Error, Result};
use crate::methods::calibration::check_k;
pub use crate::methods::cot_reference::{CotPrior, CotReferenceOptions};
use crate::methods::files::{tally_files, FileJob};
use crate::methods::sets::SetOptions;
use crate::methods::tally::{Tally, TargetRows};
use crate::methods::target::{TargetArrays, TargetInput};
use crate::provenance::InputFile;

pub use crate::methods::bootstrap::BootstrapOptions;
pub use crate::methods::calibration::{
    cpc_sweep, AtcThreshold, Calibration, CalibrationOptions, ModeCalibration, Temperature,
};
pub use crate::methods::report::{mae_intervals, mae_rows};
pub use crate::report::model::{
    BootstrapMeta, ConformalStats, CpcChoice, Estimates, Evaluation, GroupReport, MaeRow, Method,
    Modes, RowMode, RowOutputs, SourceReport, TargetReport, Timings,
};

/// Rows per target chunk: bounds host and device memory for huge targets.
pub const TARGET_CHUNK_ROWS: usize = 1 << 18;

/// Every target's report, in the targets' order. The targets run side by side (a report
/// is a function of its calibration and tally alone, so the values do not depend on it):
/// one target's serial steps overlap another's. The price: the report-time memory of the
/// targets in flight at once (COT's costs, the shift scores' blocks) adds up.
fn reports_of(cal: &Calibration, tallies: &[Tally]) -> Result<Vec<TargetReport>> {
    use rayon::prelude::*;
    let reports: Vec<Result<TargetReport>> =
        tallies.par_iter().map(|t| cal.report(&t.name, t)).collect();
    // The first failing target in order, as when they ran one by one.
    reports.into_iter().collect()
}

/// How the temperature of the `ts` mode is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum TemperatureChoice {
    /// Fitted on the source (default).
    FitSource,
    /// Given by the user.
    Fixed(f64),
    /// Fitted on another labelled set (passed to [`evaluate`]).
    FitOther,
}

/// Options of an evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Miscoverage levels for the conformal diagnostics (each in (0, 1)).
    pub alphas: Vec<f64>,
    /// Temperature of the `ts` mode.
    pub temperature: TemperatureChoice,
    /// Also return per-row outputs (yhat, max probability, credibility, confidence, set
    /// sizes) of the source and every target, in both modes.
    pub rows: bool,
    /// Bootstrap intervals (DESIGN.md 2.12): replicates (0 = off), seed, confidence.
    pub bootstrap: BootstrapOptions,
    /// Conformal scores and their options (DESIGN.md 2.13; draws seeded by the
    /// bootstrap's seed).
    pub sets: SetOptions,
    /// COT's reference mode (`COT-ref`, `COTT-ref`), when asked for.
    pub cot_reference: Option<CotReferenceOptions>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            alphas: vec![0.1],
            temperature: TemperatureChoice::FitSource,
            rows: false,
            bootstrap: BootstrapOptions::default(),
            sets: SetOptions::default(),
            cot_reference: None,
        }
    }
}

/// One evaluation, as a caller describes it.
pub struct EvaluationJob<'a> {
    /// The labelled source set.
    pub source: &'a PredictionSet,
    /// The source fit's options: levels, temperature, bootstrap.
    pub options: CalibrationOptions<'a>,
    /// The files the source (and the temperature set) were read from (provenance).
    pub inputs: Vec<InputFile>,
    /// The targets, reported in this order.
    pub targets: Vec<TargetInput<'a>>,
    /// Also per-row outputs of the source and every target.
    pub rows: bool,
    /// When the caller started (what it spent before [`run`] is reported as loading).
    pub started: Instant,
}

/// What [`run`] gives back.
pub struct EvaluationOutcome {
    /// The evaluation.
    pub evaluation: Evaluation,
    /// Every file read (the source's, the temperature set's, the targets'), sorted,
    /// without repeats.
    pub inputs: Vec<InputFile>,
    /// Warnings for the user (temperature not converged, qhat = +inf).
    pub warnings: Vec<String>,
}

/// A target again, for a CPU rerun after a GPU failure: a file is opened anew (its
/// path, name, row range and offset); rows in memory are borrowed again.
enum Reopen<'a> {
    File(PathBuf, String, Option<std::ops::Range<usize>>, usize),
    Arrays(TargetArrays<'a>),
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Evaluates `job` on `engine`: fit, tally every target, report. Under
/// [`DeviceChoice::Auto`] a GPU failure reruns the failed step on the CPU (files are
/// opened again). Targets are checked (rows, K) before any of them is tallied.
pub fn run(
    engine: &Engine,
    choice: DeviceChoice,
    job: EvaluationJob<'_>,
) -> Result<EvaluationOutcome> {
    let load = ms(job.started);
    #[cfg(not(feature = "gpu"))]
    let _ = choice;
    for t in &job.targets {
        if t.n() == 0 {
            return Err(Error::Empty {
                what: format!("{}: logits", target_label(t)),
                detail: "the target set has no rows".into(),
            });
        }
    }
    // The GPU's pipelines compile on a second thread while the source is fitted.
    let mut cal = std::thread::scope(|s| {
        #[cfg(feature = "gpu")]
        if let (Engine::Gpu(ctx), Some(t)) = (engine, job.targets.first()) {
            let (k, levels) = (t.k(), job.options.alphas.len());
            let bootstrap = job.options.bootstrap.replicates > 0;
            s.spawn(move || ctx.warm_up_evaluation(k, levels, bootstrap));
        }
        #[cfg(not(feature = "gpu"))]
        let _ = s;
        crate::with_backend!(engine, choice, |b| Calibration::fit(
            b,
            job.source,
            &job.options
        ))
    })?;
    for input in job.inputs {
        if !cal.inputs.contains(&input) {
            cal.inputs.push(input);
        }
    }
    cal.inputs.sort();
    let warnings = cal.warnings();
    let mut names = std::collections::HashMap::new();
    for t in &job.targets {
        check_k(&target_label(t), t.k(), &cal)?;
        // One name is one target: files of one name are its parts, anything else twice
        // is an error.
        let file = matches!(t, TargetInput::File(_));
        if let Some(&was_file) = names.get(t.name()) {
            if !(was_file && file) {
                return Err(Error::Invalid(format!(
                    "two targets are named {:?}",
                    t.name()
                )));
            }
        }
        names.insert(t.name().to_string(), file);
    }
    let phase = Instant::now();
    // A CPU rerun after a GPU failure opens the files again.
    let reopen: Vec<Reopen<'_>> = job
        .targets
        .iter()
        .map(|t| match t {
            TargetInput::File(f) => Reopen::File(
                f.reader.path().to_path_buf(),
                f.name.clone(),
                f.rows.clone(),
                f.row_offset,
            ),
            TargetInput::Arrays(a) => Reopen::Arrays(*a),
        })
        .collect();
    let mut first_try = Some(job.targets);
    let (tallies, rows) = crate::with_backend!(engine, choice, |b| {
        let targets = match first_try.take() {
            Some(t) => t,
            None => reopen_targets(&reopen)?,
        };
        tally_targets(b, &cal, job.source, targets, job.rows)
    })?;
    let reports = reports_of(&cal, &tallies)?;
    let mut inputs = cal.inputs.clone();
    for t in &tallies {
        inputs.extend(t.inputs.iter().cloned());
    }
    inputs.sort();
    inputs.dedup();
    let timings = Timings {
        load,
        temperature: cal.timings_ms.temperature,
        sort: cal.timings_ms.sort,
        estimate: ms(phase),
        total: ms(job.started),
    };
    let device = cal.device.clone();
    Ok(EvaluationOutcome {
        evaluation: Evaluation::assemble(&cal, device, reports, rows, timings),
        inputs,
        warnings,
    })
}

/// How errors name a target: its file, or its name.
fn target_label(t: &TargetInput<'_>) -> String {
    match t {
        TargetInput::File(f) => f.reader.path().display().to_string(),
        TargetInput::Arrays(a) => a.name.to_string(),
    }
}

fn reopen_targets<'a>(reopen: &[Reopen<'a>]) -> Result<Vec<TargetInput<'a>>> {
    reopen
        .iter()
        .map(|r| match r {
            Reopen::File(path, name, rows, offset) => Ok(TargetInput::File(Box::new(
                FileJob::open(path, name, rows.clone())?.at_offset(*offset),
            ))),
            Reopen::Arrays(a) => Ok(TargetInput::Arrays(*a)),
        })
        .collect()
}

/// Every target's tally (in order), and with `rows` the per-row outputs of the source
/// and every target. Files are streamed together (decoded ahead on a thread).
fn tally_targets<B: Backend>(
    backend: &B,
    cal: &Calibration,
    source: &PredictionSet,
    targets: Vec<TargetInput<'_>>,
    rows: bool,
) -> Result<(Vec<Tally>, Vec<RowOutputs>)> {
    let mut row_outputs = Vec::new();
    if rows {
        let source = source.standard();
        row_outputs.push(TargetArrays::of_set(&source)?.row_outputs(
            backend,
            cal,
            TARGET_CHUNK_ROWS,
        )?);
    }
    let mut tallies: Vec<Option<(Tally, Option<RowOutputs>)>> = Vec::new();
    let mut jobs = Vec::new();
    let mut job_slots = Vec::new();
    // Files of one name are the parts of one target (each at its row offset).
    let mut file_slot: std::collections::HashMap<String, usize> = Default::default();
    for t in targets {
        match t {
            TargetInput::Arrays(a) => {
                let tally = a.tally(backend, cal, TARGET_CHUNK_ROWS)?;
                let r = rows
                    .then(|| a.row_outputs(backend, cal, TARGET_CHUNK_ROWS))
                    .transpose()?;
                tallies.push(Some((tally, r)));
            }
            TargetInput::File(job) => {
                let slot = *file_slot.entry(job.name.clone()).or_insert_with(|| {
                    tallies.push(None);
                    tallies.len() - 1
                });
                job_slots.push(slot);
                jobs.push(*job);
            }
        }
    }
    if !jobs.is_empty() {
        let done = tally_files(backend, cal, jobs, TARGET_CHUNK_ROWS, rows)?;
        for (slot, d) in job_slots.into_iter().zip(done) {
            match &mut tallies[slot] {
                Some((tally, r)) => {
                    // A later part: its rows follow (overlaps are refused by the merge).
                    tally.merge(&d.tally)?;
                    if let (Some(r), Some(more)) = (r.as_mut(), d.rows) {
                        r.yhat.extend(more.yhat);
                        r.modes.raw.append(more.modes.raw);
                        r.modes.ts.append(more.modes.ts);
                    }
                }
                empty => *empty = Some((d.tally, d.rows)),
            }
        }
    }
    let mut out = Vec::with_capacity(tallies.len());
    for (tally, r) in tallies.into_iter().flatten() {
        out.push(tally);
        row_outputs.extend(r);
    }
    Ok((out, row_outputs))
}

/// Evaluates in-memory targets against `source` on one backend (DESIGN.md 2.3-2.10).
/// `temperature_set` is the labelled set to fit T on when `options.temperature` is
/// [`TemperatureChoice::FitOther`]. Every target is validated (shape, K, finite logits,
/// labels) before any work.
pub fn evaluate<B: Backend>(
    backend: &B,
    source: &PredictionSet,
    targets: &[PredictionSet],
    temperature_set: Option<&PredictionSet>,
    options: &EvalOptions,
) -> Result<Evaluation> {
    let start = Instant::now();
    let temperature = match (&options.temperature, temperature_set) {
        (TemperatureChoice::FitSource, _) => Temperature::FitSource,
        (TemperatureChoice::Fixed(t), _) => Temperature::Fixed(*t),
        (TemperatureChoice::FitOther, Some(set)) => Temperature::FitOn(set),
        (TemperatureChoice::FitOther, None) => {
            return Err(Error::Invalid(
                "a temperature set was asked for but none given".into(),
            ))
        }
    };
    for t in targets {
        t.validate()?;
        if t.n() == 0 {
            return Err(Error::Empty {
                what: format!("{}: logits", t.name),
                detail: "the target set has no rows".into(),
            });
        }
        crate::methods::calibration::same_k(&t.name, t.k(), &source.name, source.k())?;
    }
    let cal = Calibration::fit(
        backend,
        source,
        &CalibrationOptions {
            alphas: options.alphas.clone(),
            temperature,
            bootstrap: options.bootstrap,
            sets: options.sets.clone(),
            cot_reference: options.cot_reference.clone(),
        },
    )?;
    let phase = Instant::now();
    let standard: Vec<_> = targets.iter().map(PredictionSet::standard).collect();
    let inputs = standard
        .iter()
        .map(|t| TargetArrays::of_set(t).map(TargetInput::Arrays))
        .collect::<Result<_>>()?;
    let (tallies, rows) = tally_targets(backend, &cal, source, inputs, options.rows)?;
    let reports = reports_of(&cal, &tallies)?;
    let timings = Timings {
        load: 0.0,
        temperature: cal.timings_ms.temperature,
        sort: cal.timings_ms.sort,
        estimate: ms(phase),
        total: ms(start),
    };
    Ok(Evaluation::assemble(
        &cal,
        backend.device_name(),
        reports,
        rows,
        timings,
    ))
}

/// Tallies a whole in-memory set in chunks of `chunk_rows`.
pub fn tally_set<B: Backend>(
    backend: &B,
    cal: &Calibration,
    set: &PredictionSet,
    chunk_rows: usize,
) -> Result<Tally> {
    TargetArrays::of_set(&set.standard())?.tally(backend, cal, chunk_rows)
}

/// Runs `f` on rows `start..end` of `set` as one chunk (a shard: its offset kept).
pub fn with_set_rows<R>(
    set: &PredictionSet,
    start: usize,
    end: usize,
    f: impl FnOnce(&TargetRows<'_>) -> Result<R>,
) -> Result<R> {
    TargetArrays::of_set(&set.standard())?
        .rows(start, end)?
        .with_rows(f)
}

/// Per-row outputs of a whole in-memory set, chunk by chunk.
pub fn set_row_outputs<B: Backend>(
    backend: &B,
    cal: &Calibration,
    set: &PredictionSet,
) -> Result<RowOutputs> {
    TargetArrays::of_set(&set.standard())?.row_outputs(backend, cal, TARGET_CHUNK_ROWS)
}
