//! Accuracy estimation under shift (DESIGN.md 2.3-2.10): AC, DoC, ATC-MC, ATC-NE and CPC,
//! with and without temperature scaling, conformal diagnostics at several levels, true
//! accuracy and errors where labels exist, MAE over targets and over groups.
//!
//! Orchestration only: [`evaluate`] is [`Calibration::fit`], then each target streamed
//! through [`Calibration::tally`] in chunks of [`TARGET_CHUNK_ROWS`], the tallies merged,
//! then [`Calibration::report`]. Counts are integers, so the report does not depend on
//! the chunk size, the thread count, or how a target was sharded.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::backend::Backend;
use crate::data::PredictionSet;
use crate::error::Result;
use crate::kernel::bootstrap::{percentile_interval, RepCounts};
use crate::kernel::row_stats::col;
use crate::kernel::tally::{count, level, Counts, GROUP_ARRAYS};
use crate::methods::bootstrap::{Intervals, MethodIntervals, ReplicateValues};
use crate::methods::quantile::conformal_rank;
use crate::methods::tally::{Tally, TargetRows};

pub use crate::methods::bootstrap::BootstrapOptions;
pub use crate::methods::calibration::{
    cpc_sweep, AtcThreshold, Calibration, CalibrationOptions, ModeCalibration, Temperature,
};
pub use crate::report::model::{
    BootstrapMeta, ConformalStats, CpcChoice, Estimates, Evaluation, GroupReport, MaeRow, Method,
    Modes, RowMode, RowOutputs, SourceReport, TargetReport, Timings,
};

/// Rows per target chunk: bounds host and device memory for huge targets.
pub const TARGET_CHUNK_ROWS: usize = 1 << 18;

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
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            alphas: vec![0.1],
            temperature: TemperatureChoice::FitSource,
            rows: false,
            bootstrap: BootstrapOptions::default(),
        }
    }
}

impl Counts {
    /// The five estimates from these counts under mode calibration `cal`.
    pub fn estimates(&self, cal: &ModeCalibration) -> Estimates {
        let c = &self.counts;
        let n = self.n();
        let ac = self.mean_p1();
        Estimates {
            ac,
            doc: cal.accuracy() + ac - cal.ac,
            atc_mc: cal
                .atc_mc
                .estimate(c[count::MC_ABOVE], c[count::MC_EQUAL], n),
            atc_ne: cal
                .atc_ne
                .estimate(c[count::NE_ABOVE], c[count::NE_EQUAL], n),
            cpc: c[count::CPC] as f64 / n as f64,
        }
    }

    /// Accuracy over the labelled rows (`None` without any).
    pub fn true_accuracy(&self) -> Option<f64> {
        let l = self.labelled();
        (l > 0).then(|| self.counts[count::CORRECT] as f64 / l as f64)
    }

    /// Conformal diagnostics per level.
    pub fn conformal(&self, cal: &ModeCalibration, alphas: &[f64]) -> Vec<ConformalStats> {
        let n = self.n() as f64;
        let labelled = self.labelled();
        alphas
            .iter()
            .zip(&self.levels)
            .enumerate()
            .map(|(a, (&alpha, lv))| ConformalStats {
                alpha,
                k: conformal_rank(cal.n, alpha),
                qhat: cal.qhats[a].map(|q| q as f64),
                mean_set_size: lv[level::SIZE_SUM] as f64 / n,
                singleton_rate: lv[level::SINGLETON] as f64 / n,
                empty_rate: lv[level::EMPTY] as f64 / n,
                coverage: (labelled > 0).then(|| lv[level::COVERED] as f64 / labelled as f64),
            })
            .collect()
    }
}

impl Calibration {
    /// The report of target `name` from its (merged) tally: estimates, diagnostics,
    /// groups, true accuracy where labelled. The tally must come from this calibration.
    pub fn report(&self, name: &str, tally: &Tally) -> Result<TargetReport> {
        tally.check_against(self)?;
        let a = self.alphas.len();
        let all = Modes {
            raw: Tally::total(&tally.modes.raw, a),
            ts: Tally::total(&tally.modes.ts, a),
        };
        // With a bootstrap: every replicate's values, then the intervals.
        let boot = match (&self.bootstrap, &tally.bootstrap) {
            (Some(cb), Some(tb)) => Some((cb, tb)),
            _ => None,
        };
        let intervals = |counts: &Modes<RepCounts>, labelled: bool| {
            boot.map(|(cb, _)| {
                Intervals::new(ReplicateValues::new(cb, counts), labelled, cb.confidence)
            })
        };
        let mut groups = BTreeMap::new();
        for (g, group) in GROUP_ARRAYS.iter().enumerate() {
            if !tally.group_arrays.iter().any(|x| x == group) {
                continue;
            }
            let raw = Tally::by_group(&tally.modes.raw, g, a);
            let ts = Tally::by_group(&tally.modes.ts, g, a);
            let reps = boot.map(|(_, tb)| tb.by_group(g));
            let list = raw
                .iter()
                .zip(ts.values())
                .map(|((&id, r), t)| GroupReport {
                    id,
                    n: r.n() as usize,
                    true_accuracy: r.true_accuracy(),
                    estimates: Modes {
                        raw: r.estimates(&self.modes.raw),
                        ts: t.estimates(&self.modes.ts),
                    },
                    intervals: reps
                        .as_ref()
                        .and_then(|m| m.get(&id))
                        .and_then(|c| intervals(c, r.labelled() > 0)),
                })
                .collect();
            groups.insert(group.to_string(), list);
        }
        let cpc = |c: &ModeCalibration| CpcChoice {
            q: c.cpc_q.map(|q| q as f64),
            alpha: c.cpc_alpha,
        };
        Ok(TargetReport {
            name: name.to_string(),
            n: all.raw.n() as usize,
            n_labelled: all.raw.labelled() as usize,
            labelled: all.raw.labelled() == all.raw.n(),
            true_accuracy: all.raw.true_accuracy(),
            estimates: Modes {
                raw: all.raw.estimates(&self.modes.raw),
                ts: all.ts.estimates(&self.modes.ts),
            },
            cpc: Modes {
                raw: cpc(&self.modes.raw),
                ts: cpc(&self.modes.ts),
            },
            conformal: Modes {
                raw: all.raw.conformal(&self.modes.raw, &self.alphas),
                ts: all.ts.conformal(&self.modes.ts, &self.alphas),
            },
            groups,
            intervals: boot.and_then(|(_, tb)| intervals(&tb.total(), all.raw.labelled() > 0)),
        })
    }

    /// Per-row outputs of one chunk in both modes: predicted class, largest probability,
    /// credibility and confidence (conformal p-values against the source's LAC scores),
    /// set sizes per level.
    pub fn row_outputs<B: Backend>(
        &self,
        backend: &B,
        rows: &TargetRows<'_>,
    ) -> Result<RowOutputs> {
        rows.validate(self.k)?;
        let n = rows.rows();
        let unknown;
        let labels: &[i32] = match rows.labels {
            Some(l) => l,
            None => {
                unknown = vec![-1; n];
                &unknown
            }
        };
        let prepared = backend.prepare(rows.logits, labels, self.k)?;
        let mut out = RowOutputs {
            name: rows.name.to_string(),
            ..Default::default()
        };
        for (m, is_ts) in [(&self.modes.raw, false), (&self.modes.ts, true)] {
            let st = backend.row_stats(&prepared, m.t, &m.qhats)?;
            let s = &m.sorted_lac;
            // The p-value kernel's own count (mirror of shaders/pvalues.wgsl's search).
            let pvalue =
                |r: f32| (1 + crate::cpu::pvalues::count_ge(s, r)) as f64 / (s.len() + 1) as f64;
            let mut mode = RowMode::default();
            for (i, row) in st.stats.iter().enumerate() {
                if !is_ts {
                    out.yhat.push(st.yhat(i) as i64);
                }
                mode.max_prob.push(row[col::P1]);
                mode.credibility.push(pvalue(row[col::R1]));
                mode.confidence.push(1.0 - pvalue(row[col::R2]));
                mode.set_size
                    .extend(st.all().sizes(i).iter().map(|&c| c as i64));
            }
            if is_ts {
                out.modes.ts = mode;
            } else {
                out.modes.raw = mode;
            }
        }
        Ok(out)
    }
}

impl Evaluation {
    /// Assembles an evaluation from a calibration and its targets' reports: the MAE rows
    /// and the source summary come from them.
    pub fn assemble(
        cal: &Calibration,
        device: String,
        targets: Vec<TargetReport>,
        rows: Vec<RowOutputs>,
        timings_ms: Timings,
    ) -> Self {
        let bootstrap = cal.bootstrap.as_ref().map(|b| BootstrapMeta {
            replicates: b.replicates,
            confidence: b.confidence,
            seed: b.seed,
        });
        Evaluation {
            device,
            alphas: cal.alphas.clone(),
            source: cal.source.clone(),
            mae: mae_rows(&targets),
            mae_ci: bootstrap.map(|b| mae_intervals(&targets, b.confidence)),
            bootstrap,
            targets,
            rows,
            timings_ms,
        }
    }
}

/// The chunks of an in-memory set, as the tally takes them (labels as i32 per chunk).
pub fn set_chunks(
    set: &PredictionSet,
    chunk_rows: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let n = set.n();
    let step = chunk_rows.max(1);
    (0..n.div_ceil(step)).map(move |c| (c * step, ((c + 1) * step).min(n)))
}

/// Runs `f` on the rows `start..end` of `set` as [`TargetRows`].
pub fn with_set_rows<R>(
    set: &PredictionSet,
    start: usize,
    end: usize,
    f: impl FnOnce(&TargetRows<'_>) -> R,
) -> R {
    let k = set.k();
    let logits = set.logits_slice();
    let labels: Option<Vec<i32>> = set.labels.as_ref().map(|l| {
        l.slice(ndarray::s![start..end])
            .iter()
            .map(|&y| y.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            .collect()
    });
    let ids = |a: &Option<ndarray::Array1<i64>>| {
        a.as_ref()
            .map(|a| a.slice(ndarray::s![start..end]).to_vec())
    };
    let (hospital, slide) = (ids(&set.hospital), ids(&set.slide));
    f(&TargetRows {
        name: &set.name,
        row_offset: start,
        k,
        logits: &logits[start * k..end * k],
        labels: labels.as_deref(),
        hospital: hospital.as_deref(),
        slide: slide.as_deref(),
    })
}

/// Tallies a whole in-memory set in chunks of `chunk_rows`.
pub fn tally_set<B: Backend>(
    backend: &B,
    cal: &Calibration,
    set: &PredictionSet,
    chunk_rows: usize,
) -> Result<Tally> {
    let groups = [set.hospital.is_some(), set.slide.is_some()];
    let mut tally = Tally::empty(cal, &set.name, groups);
    for (start, end) in set_chunks(set, chunk_rows) {
        let part = with_set_rows(set, start, end, |rows| cal.tally(backend, rows))?;
        tally.merge(&part)?;
    }
    Ok(tally)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Evaluates every target against `source` (DESIGN.md 2.3-2.10). `temperature_set` is the
/// labelled set to fit T on when `options.temperature` is [`TemperatureChoice::FitOther`].
/// Every target is validated (shape, K, finite logits, labels) before any work.
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
            return Err(crate::Error::Invalid(
                "a temperature set was asked for but none given".into(),
            ))
        }
    };
    for t in targets {
        t.validate()?;
        if t.n() == 0 {
            return Err(crate::Error::Empty {
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
        },
    )?;
    let phase = Instant::now();
    let mut reports = Vec::with_capacity(targets.len());
    let mut rows = Vec::new();
    if options.rows {
        rows.push(set_row_outputs(backend, &cal, source)?);
    }
    for target in targets {
        let tally = tally_set(backend, &cal, target, TARGET_CHUNK_ROWS)?;
        reports.push(cal.report(&target.name, &tally)?);
        if options.rows {
            rows.push(set_row_outputs(backend, &cal, target)?);
        }
    }
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

/// Per-row outputs of a whole in-memory set, chunk by chunk.
pub fn set_row_outputs<B: Backend>(
    backend: &B,
    cal: &Calibration,
    set: &PredictionSet,
) -> Result<RowOutputs> {
    let mut out = RowOutputs {
        name: set.name.clone(),
        ..Default::default()
    };
    for (start, end) in set_chunks(set, TARGET_CHUNK_ROWS) {
        let part = with_set_rows(set, start, end, |r| cal.row_outputs(backend, r))?;
        out.yhat.extend(part.yhat);
        out.modes.raw.append(part.modes.raw);
        out.modes.ts.append(part.modes.ts);
    }
    Ok(out)
}

fn mae_of(pairs: &[(Estimates, f64)]) -> MaeRow {
    Method::ALL
        .into_iter()
        .map(|m| {
            let v = (!pairs.is_empty()).then(|| {
                pairs.iter().map(|(e, t)| (e.get(m) - t).abs()).sum::<f64>() / pairs.len() as f64
            });
            (m.name(), v)
        })
        .collect()
}

/// Per replicate, the mean over `members` of method `m`'s absolute error (errors taken
/// within a replicate), then its interval.
fn mae_interval(
    members: &[&ReplicateValues],
    ts: bool,
    m: Method,
    confidence: f64,
) -> Option<[f64; 2]> {
    let first = members.first()?;
    let reps = first.truth.len();
    let mut per_rep = vec![0.0f64; reps];
    for v in members {
        for (acc, e) in per_rep.iter_mut().zip(v.errors(ts, m)) {
            *acc += e;
        }
    }
    let n = members.len() as f64;
    let per_rep: Vec<f64> = per_rep.into_iter().map(|s| s / n).collect();
    percentile_interval(&per_rep, confidence)
}

/// MAE intervals keyed as [`mae_rows`]: over the same labelled targets and groups.
pub fn mae_intervals(
    reports: &[TargetReport],
    confidence: f64,
) -> BTreeMap<String, MethodIntervals> {
    let mut out = BTreeMap::new();
    let row = |members: &[&ReplicateValues], ts: bool| -> MethodIntervals {
        Method::ALL
            .into_iter()
            .map(|m| (m.name(), mae_interval(members, ts, m, confidence)))
            .collect()
    };
    let targets: Vec<&ReplicateValues> = reports
        .iter()
        .filter(|r| r.true_accuracy.is_some())
        .filter_map(|r| r.intervals.as_ref().map(|i| &i.values))
        .collect();
    out.insert("raw".to_string(), row(&targets, false));
    out.insert("ts".to_string(), row(&targets, true));
    for name in GROUP_ARRAYS {
        if !reports.iter().any(|r| r.groups.contains_key(name)) {
            continue;
        }
        let members: Vec<&ReplicateValues> = reports
            .iter()
            .flat_map(|r| r.groups.get(name).into_iter().flatten())
            .filter(|g| g.true_accuracy.is_some())
            .filter_map(|g| g.intervals.as_ref().map(|i| &i.values))
            .collect();
        out.insert(format!("{name}_raw"), row(&members, false));
        out.insert(format!("{name}_ts"), row(&members, true));
    }
    out
}

/// MAE per method over labelled targets, and over (target, group) pairs per group array.
pub fn mae_rows(reports: &[TargetReport]) -> BTreeMap<String, MaeRow> {
    let mut out = BTreeMap::new();
    let pairs = |ts: bool| -> Vec<(Estimates, f64)> {
        reports
            .iter()
            .filter_map(|r| {
                r.true_accuracy
                    .map(|acc| (if ts { r.estimates.ts } else { r.estimates.raw }, acc))
            })
            .collect()
    };
    out.insert("raw".to_string(), mae_of(&pairs(false)));
    out.insert("ts".to_string(), mae_of(&pairs(true)));
    for name in GROUP_ARRAYS {
        if !reports.iter().any(|r| r.groups.contains_key(name)) {
            continue;
        }
        for (suffix, ts) in [("raw", false), ("ts", true)] {
            let pairs: Vec<(Estimates, f64)> = reports
                .iter()
                .flat_map(|r| r.groups.get(name).into_iter().flatten())
                .filter_map(|g| {
                    g.true_accuracy
                        .map(|acc| (if ts { g.estimates.ts } else { g.estimates.raw }, acc))
                })
                .collect();
            out.insert(format!("{name}_{suffix}"), mae_of(&pairs));
        }
    }
    out
}
