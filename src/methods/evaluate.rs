//! Accuracy estimation under shift (DESIGN.md 2.3-2.10): AC, DoC, ATC-MC, ATC-NE and CPC,
//! with and without temperature scaling, conformal diagnostics at several levels, true
//! accuracy and errors where labels exist, MAE over targets and over groups.
//!
//! Written once over [`Backend`]: the backend computes per-row summaries (the exp/log
//! work, see `row_stats`); this module turns them into thresholds on the source and
//! mergeable counts on the targets. Targets stream through in row chunks, each chunk's
//! counts merge by addition, so a target of any size fits.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{labels_i32, Backend};
use crate::cpu::calibration::CalibrationStats;
use crate::cpu::row_stats::{col, RowBlock, RowStats};
use crate::data::PredictionSet;
use crate::error::{Error, Result};
use crate::methods::quantile::{check_alpha, conformal_k};
use crate::methods::temperature::{
    fit_temperature, validate_source, validate_temperature, TemperatureFit,
};

/// Rows per target chunk: bounds host and device memory for huge targets.
pub const TARGET_CHUNK_ROWS: usize = 1 << 22;

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
    /// Also return per-row outputs (yhat, max probability, credibility, confidence,
    /// set sizes) of every target, in the `ts` mode.
    pub rows: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            alphas: vec![0.1],
            temperature: TemperatureChoice::FitSource,
            rows: false,
        }
    }
}

/// The five estimates of a target's accuracy (JSON names as in the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimates {
    /// Average confidence.
    #[serde(rename = "AC")]
    pub ac: f64,
    /// Difference of confidences.
    #[serde(rename = "DoC")]
    pub doc: f64,
    /// Average thresholded confidence, max-probability score.
    #[serde(rename = "ATC-MC")]
    pub atc_mc: f64,
    /// Average thresholded confidence, negative-entropy score.
    #[serde(rename = "ATC-NE")]
    pub atc_ne: f64,
    /// Conformal prediction confidence (singleton rate at the source-matched q*).
    #[serde(rename = "CPC")]
    pub cpc: f64,
}

impl Estimates {
    /// `(name, value)` pairs in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("AC", self.ac),
            ("DoC", self.doc),
            ("ATC-MC", self.atc_mc),
            ("ATC-NE", self.atc_ne),
            ("CPC", self.cpc),
        ]
    }
}

/// Per-mode pair of values (`raw` = T = 1, `ts` = temperature-scaled).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Modes<T> {
    /// At T = 1.
    pub raw: T,
    /// At the fitted or given temperature.
    pub ts: T,
}

/// The CPC threshold chosen on the source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpcChoice {
    /// `q*` (`None` = +inf).
    pub q: Option<f64>,
    /// `alpha* = 1 - i/(n+1)`.
    pub alpha: f64,
}

/// Conformal diagnostics at one level.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ConformalStats {
    /// Level.
    pub alpha: f64,
    /// `qhat(alpha)` (`None` = +inf: k > n).
    pub qhat: Option<f64>,
    /// Mean prediction-set size.
    pub mean_set_size: f64,
    /// Share of singleton sets.
    pub singleton_rate: f64,
    /// Share of empty sets.
    pub empty_rate: f64,
    /// Share of labelled rows whose label is in the set (`None` without labels).
    pub coverage: Option<f64>,
}

/// One group (slide or hospital) of a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    /// Group id.
    pub id: i64,
    /// Rows.
    pub n: usize,
    /// Accuracy over the group's labelled rows.
    pub true_accuracy: Option<f64>,
    /// Estimates on the group's rows.
    pub estimates: Modes<Estimates>,
}

/// Everything reported for one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    /// Set name.
    pub name: String,
    /// Rows.
    pub n: usize,
    /// Rows with a known label.
    pub n_labelled: usize,
    /// Every label known.
    pub labelled: bool,
    /// Accuracy over the known rows (`None` when no label is known).
    pub true_accuracy: Option<f64>,
    /// The estimates.
    pub estimates: Modes<Estimates>,
    /// The CPC threshold (a source property, repeated per target for reading ease).
    pub cpc: Modes<CpcChoice>,
    /// Conformal diagnostics per level.
    pub conformal: Modes<Vec<ConformalStats>>,
    /// Per group array present (`hospital`, `slide`): per group id.
    pub groups: BTreeMap<String, Vec<GroupReport>>,
}

/// The source set's calibration summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceReport {
    /// Set name.
    pub name: String,
    /// Rows.
    pub n: usize,
    /// Classes.
    pub k: usize,
    /// Accuracy of the argmax of the logits.
    pub accuracy: f64,
    /// Temperature of the `ts` mode.
    pub temperature: f64,
    /// Whether the fit converged (true for a given temperature).
    pub converged: bool,
    /// Newton passes of the fit (0 for a given temperature).
    pub iterations: u32,
    /// Mean NLL at T = 1.
    pub nll_before: f64,
    /// Mean NLL at the `ts` temperature.
    pub nll_after: f64,
    /// ECE at T = 1.
    pub ece_before: f64,
    /// ECE at the `ts` temperature.
    pub ece_after: f64,
    /// Per level: the conformal quantile on the source, per mode.
    #[serde(skip)]
    pub qhat: Modes<Vec<Option<f64>>>,
    /// Warning from the fit, if any.
    #[serde(skip)]
    pub warning: Option<String>,
    /// ECE bins before (`raw`) and after (`ts`) scaling, for reliability diagrams.
    #[serde(skip)]
    pub calibration: Modes<CalibrationStats>,
}

/// MAE per method (`None` when no target has labels).
pub type MaeRow = BTreeMap<&'static str, Option<f64>>;

/// Per-row outputs of one target (`ts` mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowOutputs {
    /// Target name.
    pub name: String,
    /// Predicted class.
    pub yhat: Vec<i64>,
    /// Largest probability.
    pub max_prob: Vec<f32>,
    /// Largest conformal p-value.
    pub credibility: Vec<f32>,
    /// 1 - second largest conformal p-value.
    pub confidence: Vec<f32>,
    /// Set size per row and level, `[n, A]` row-major.
    pub set_size: Vec<i64>,
}

impl RowOutputs {
    /// Appends the rows of `more` (same levels).
    fn append(&mut self, mut more: RowOutputs) {
        self.yhat.append(&mut more.yhat);
        self.max_prob.append(&mut more.max_prob);
        self.credibility.append(&mut more.credibility);
        self.confidence.append(&mut more.confidence);
        self.set_size.append(&mut more.set_size);
    }
}

/// Milliseconds per phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading inputs (filled by the caller).
    pub load: f64,
    /// Temperature fit and calibration statistics.
    pub temperature: f64,
    /// Source row statistics, sorting, thresholds.
    pub sort: f64,
    /// Target passes and counting.
    pub estimate: f64,
    /// Everything.
    pub total: f64,
}

/// Result of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// `"cpu"` or `"gpu: <adapter>"`.
    pub device: String,
    /// Levels.
    pub alphas: Vec<f64>,
    /// Source summary.
    pub source: SourceReport,
    /// One report per target, in the order given.
    pub targets: Vec<TargetReport>,
    /// MAE rows: `raw`, `ts`, and `<group>_raw`, `<group>_ts` for each group array seen.
    pub mae: BTreeMap<String, MaeRow>,
    /// Per-row outputs when asked for.
    pub rows: Vec<RowOutputs>,
    /// Phase timings.
    pub timings_ms: Timings,
}

/// ATC threshold on the source: `t`, and the share `lambda` of the tie group at `t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtcThreshold {
    /// The c-th largest source score (`None` when no source row is correct).
    pub t: Option<f32>,
    /// `(c - #{g > t}) / #{g = t}`.
    pub lambda: f64,
}

impl AtcThreshold {
    /// From the ascending-sorted source scores and the number of correct rows `c`.
    pub fn new(sorted: &[f32], c: usize) -> Self {
        if c == 0 || sorted.is_empty() {
            return AtcThreshold {
                t: None,
                lambda: 0.0,
            };
        }
        let n = sorted.len();
        let c = c.min(n);
        let t = sorted[n - c];
        let upper = sorted.partition_point(|&x| x <= t);
        let lower = sorted.partition_point(|&x| x < t);
        let above = n - upper;
        let ties = upper - lower;
        AtcThreshold {
            t: Some(t),
            lambda: (c - above) as f64 / ties as f64,
        }
    }

    /// ATC from the counts of target scores above and equal to `t` over `n` rows.
    pub fn estimate(&self, above: u64, equal: u64, n: u64) -> f64 {
        match self.t {
            None => 0.0,
            Some(_) => (above as f64 + self.lambda * equal as f64) / n as f64,
        }
    }
}

/// Chooses CPC's `q*` by the sweep of DESIGN.md 2.8. `scores` are the ascending LAC
/// scores, `one_minus_p1`/`one_minus_p2` the ascending `1 - p_(1)` and `1 - p_(2)` of the
/// same rows, `correct` the number of correct source rows. Returns `(q*, i)` with `i` the
/// 1-based index of q*'s first occurrence (`n + 1` and `None` for +inf).
pub fn cpc_sweep(
    scores: &[f32],
    one_minus_p1: &[f32],
    one_minus_p2: &[f32],
    correct: usize,
) -> (Option<f32>, usize) {
    let n = scores.len();
    // +inf: no singleton (1 - p_(2) > inf never holds), |R - acc| = c / n.
    let mut best: (Option<f32>, usize, usize) = (None, n + 1, usize::MAX);
    let (mut ia, mut ib) = (0usize, 0usize);
    for (i, &q) in scores.iter().enumerate() {
        if i > 0 && scores[i - 1] == q {
            continue; // same candidate: R is equal, the first index stands
        }
        while ia < n && one_minus_p1[ia] <= q {
            ia += 1;
        }
        while ib < n && one_minus_p2[ib] <= q {
            ib += 1;
        }
        // Singletons at q: rows with 1 - p_(1) <= q minus rows with 1 - p_(2) <= q
        // (the second implies the first). |R_S - acc(S)| = |count - c| / n, in integers.
        let diff = (ia - ib).abs_diff(correct);
        if diff < best.2 {
            best = (Some(q), i + 1, diff);
        }
    }
    if best.0.is_some() && correct < best.2 {
        // +inf (count 0) is strictly better than every finite candidate.
        return (None, n + 1);
    }
    if best.0.is_none() {
        return (None, n + 1);
    }
    (best.0, best.1)
}

/// Everything the targets need from the source in one mode.
#[derive(Clone, Debug)]
struct SourceCal {
    t: f32,
    n: usize,
    correct: usize,
    ac: f64,
    atc_mc: AtcThreshold,
    atc_ne: AtcThreshold,
    qhats: Vec<Option<f32>>,
    cpc_q: Option<f32>,
    cpc_alpha: f64,
    sorted_lac: Vec<f32>,
}

impl SourceCal {
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n as f64
    }
}

fn calibrate_source<B: Backend>(
    backend: &B,
    stats: &RowStats,
    labels: &[i32],
    t: f32,
    alphas: &[f64],
) -> Result<SourceCal> {
    let n = stats.len();
    let correct = (0..n)
        .filter(|&i| stats.yhat(i) as i32 == labels[i])
        .count();
    // Sorted by the backend (the radix sort on the GPU path): the same bits either way.
    let column =
        |c: usize| backend.sort_keys(&stats.stats.iter().map(|s| s[c]).collect::<Vec<_>>());
    let ac = stats.stats.iter().map(|s| s[col::P1] as f64).sum::<f64>() / n as f64;
    let mc = column(col::P1)?;
    let ne = column(col::NE)?;
    let lac = column(col::LAC)?;
    let a = column(col::R1)?;
    let b = column(col::R2)?;
    let qhats = alphas
        .iter()
        .map(|&alpha| conformal_k(n, alpha).map(|k| lac[k - 1]))
        .collect();
    let (cpc_q, i) = cpc_sweep(&lac, &a, &b, correct);
    Ok(SourceCal {
        t,
        n,
        correct,
        ac,
        atc_mc: AtcThreshold::new(&mc, correct),
        atc_ne: AtcThreshold::new(&ne, correct),
        qhats,
        cpc_q,
        cpc_alpha: 1.0 - i as f64 / (n as f64 + 1.0),
        sorted_lac: lac,
    })
}

/// Indices into [`TargetCounts::counts`].
pub mod count {
    /// Rows.
    pub const N: usize = 0;
    /// Rows with a known label.
    pub const LABELLED: usize = 1;
    /// Labelled rows predicted correctly.
    pub const CORRECT: usize = 2;
    /// Rows whose max probability is above the ATC-MC threshold.
    pub const MC_ABOVE: usize = 3;
    /// Rows whose max probability equals it.
    pub const MC_EQUAL: usize = 4;
    /// Rows whose negative entropy is above the ATC-NE threshold.
    pub const NE_ABOVE: usize = 5;
    /// Rows whose negative entropy equals it.
    pub const NE_EQUAL: usize = 6;
    /// Singleton rows at CPC's q*.
    pub const CPC: usize = 7;
}

/// Indices into each [`TargetCounts::levels`] entry.
pub mod level {
    /// Sum of set sizes.
    pub const SIZE_SUM: usize = 0;
    /// Singleton sets.
    pub const SINGLETON: usize = 1;
    /// Empty sets.
    pub const EMPTY: usize = 2;
    /// Labelled rows whose label is in the set.
    pub const COVERED: usize = 3;
}

/// Mergeable counts over target rows in one mode (chunks and shards add up).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetCounts {
    /// Integer counters, indexed by [`count`].
    pub counts: [u64; 8],
    /// Sum of the largest probability.
    pub sum_p1: f64,
    /// Per level, counters indexed by [`level`].
    pub levels: Vec<[u64; 4]>,
}

impl TargetCounts {
    fn with_levels(a: usize) -> Self {
        TargetCounts {
            levels: vec![[0; 4]; a],
            ..Default::default()
        }
    }

    /// Counts rows `rows` of `blk` (labels `labels`, -1 = unknown). Absent thresholds
    /// become NaN (no row above or equal, no CPC singleton) and an absent qhat +inf
    /// (every labelled row covered), so the loops have no branches.
    fn add_rows(
        &mut self,
        blk: RowBlock<'_>,
        rows: std::ops::Range<usize>,
        labels: &[i32],
        cal: &SourceCal,
    ) {
        let t_mc = cal.atc_mc.t.unwrap_or(f32::NAN);
        let t_ne = cal.atc_ne.t.unwrap_or(f32::NAN);
        let q_cpc = cal.cpc_q.unwrap_or(f32::NAN);
        let mut c = [0u64; 8];
        let mut sum_p1 = 0.0f64;
        for (j, &y) in rows.clone().zip(labels) {
            let [p1, ne, _, r1, r2] = blk.stats[j];
            let known = y >= 0;
            c[count::LABELLED] += known as u64;
            c[count::CORRECT] += (known && blk.yhat(j) as i32 == y) as u64;
            c[count::MC_ABOVE] += (p1 > t_mc) as u64;
            c[count::MC_EQUAL] += (p1 == t_mc) as u64;
            c[count::NE_ABOVE] += (ne > t_ne) as u64;
            c[count::NE_EQUAL] += (ne == t_ne) as u64;
            c[count::CPC] += (r1 <= q_cpc && q_cpc < r2) as u64;
            sum_p1 += p1 as f64;
        }
        c[count::N] = rows.len() as u64;
        for (d, s) in self.counts.iter_mut().zip(c) {
            *d += s;
        }
        self.sum_p1 += sum_p1;
        for (a, lv) in self.levels.iter_mut().enumerate() {
            let q = cal.qhats[a].unwrap_or(f32::INFINITY);
            let mut l = [0u64; 4];
            for (j, &y) in rows.clone().zip(labels) {
                let size = blk.sizes(j)[a];
                l[level::SIZE_SUM] += size as u64;
                l[level::SINGLETON] += (size == 1) as u64;
                l[level::EMPTY] += (size == 0) as u64;
                l[level::COVERED] += (y >= 0 && blk.stats[j][col::LAC] <= q) as u64;
            }
            for (d, s) in lv.iter_mut().zip(l) {
                *d += s;
            }
        }
    }

    /// Adds another partial (same levels).
    pub fn merge(&mut self, o: &TargetCounts) {
        for (d, s) in self.counts.iter_mut().zip(&o.counts) {
            *d += s;
        }
        self.sum_p1 += o.sum_p1;
        for (d, s) in self.levels.iter_mut().zip(&o.levels) {
            for (a, b) in d.iter_mut().zip(s) {
                *a += b;
            }
        }
    }

    /// Rows counted.
    pub fn n(&self) -> u64 {
        self.counts[count::N]
    }

    /// Labelled rows counted.
    pub fn labelled(&self) -> u64 {
        self.counts[count::LABELLED]
    }

    fn estimates(&self, cal: &SourceCal) -> Estimates {
        let c = &self.counts;
        let n = self.n();
        let ac = self.sum_p1 / n as f64;
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

    fn true_accuracy(&self) -> Option<f64> {
        let l = self.labelled();
        (l > 0).then(|| self.counts[count::CORRECT] as f64 / l as f64)
    }

    fn conformal(&self, cal: &SourceCal, alphas: &[f64]) -> Vec<ConformalStats> {
        let n = self.n() as f64;
        let labelled = self.labelled();
        alphas
            .iter()
            .zip(&self.levels)
            .enumerate()
            .map(|(a, (&alpha, lv))| ConformalStats {
                alpha,
                qhat: cal.qhats[a].map(|q| q as f64),
                mean_set_size: lv[level::SIZE_SUM] as f64 / n,
                singleton_rate: lv[level::SINGLETON] as f64 / n,
                empty_rate: lv[level::EMPTY] as f64 / n,
                coverage: (labelled > 0).then(|| lv[level::COVERED] as f64 / labelled as f64),
            })
            .collect()
    }
}

/// Counts of one target in one mode: whole-set and per group id of each group array.
#[derive(Clone, Debug, Default)]
struct TargetTally {
    all: TargetCounts,
    groups: BTreeMap<&'static str, BTreeMap<i64, TargetCounts>>,
}

const GROUP_ARRAYS: [&str; 2] = ["hospital", "slide"];

fn group_ids<'s>(set: &'s PredictionSet, name: &str) -> Option<&'s ndarray::Array1<i64>> {
    match name {
        "hospital" => set.hospital.as_ref(),
        "slide" => set.slide.as_ref(),
        _ => None,
    }
}

/// Every set must have the source's number of classes (an invalid-data error, exit 5).
fn same_k(set: &PredictionSet, source: &PredictionSet) -> Result<()> {
    if set.k() == source.k() {
        return Ok(());
    }
    Err(Error::LengthMismatch {
        what: format!("{}: logits", set.name),
        detail: format!(
            "rows have K = {} classes but the source {} has K = {}",
            set.k(),
            source.name,
            source.k()
        ),
    })
}

/// Validates the evaluation inputs; every message names the offending set.
fn validate_inputs(
    source: &PredictionSet,
    targets: &[PredictionSet],
    temperature_set: Option<&PredictionSet>,
    options: &EvalOptions,
) -> Result<()> {
    let alphas = &options.alphas;
    validate_source(source)?;
    if alphas.is_empty() {
        return Err(Error::Invalid("no alpha level given".into()));
    }
    for &a in alphas {
        check_alpha(a)?;
    }
    match &options.temperature {
        TemperatureChoice::FitSource => {}
        TemperatureChoice::Fixed(t) => validate_temperature(*t)?,
        TemperatureChoice::FitOther => {
            let other = temperature_set.ok_or_else(|| {
                Error::Invalid("a temperature set was asked for but none given".into())
            })?;
            validate_source(other)?;
            same_k(other, source)?;
        }
    }
    for t in targets {
        t.validate()?;
        if t.n() == 0 {
            return Err(Error::Empty {
                what: format!("{}: logits", t.name),
                detail: "the target set has no rows".into(),
            });
        }
        same_k(t, source)?;
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Evaluates every target against `source` (DESIGN.md 2.3-2.10). `temperature_set` is the
/// labelled set to fit T on when `options.temperature` is [`TemperatureChoice::FitOther`].
/// Inputs are validated first: any invalid set aborts before any work.
pub fn evaluate<B: Backend>(
    backend: &B,
    source: &PredictionSet,
    targets: &[PredictionSet],
    temperature_set: Option<&PredictionSet>,
    options: &EvalOptions,
) -> Result<Evaluation> {
    let start = Instant::now();
    let alphas = &options.alphas;
    validate_inputs(source, targets, temperature_set, options)?;

    // Temperature and calibration statistics on the source.
    let phase = Instant::now();
    let src_logits = source.logits_slice();
    let src_labels = labels_i32(source);
    let k = source.k();
    let src_rows = backend.prepare(&src_logits, &src_labels, k)?;
    let fit: TemperatureFit = match &options.temperature {
        TemperatureChoice::FitSource => fit_temperature(backend, &src_rows)?,
        TemperatureChoice::Fixed(t) => {
            validate_temperature(*t)?;
            TemperatureFit {
                temperature: *t,
                iterations: 0,
                converged: true,
                nll: f64::NAN,
                warning: None,
            }
        }
        TemperatureChoice::FitOther => {
            let other = temperature_set.ok_or_else(|| {
                Error::Invalid("a temperature set was asked for but none given".into())
            })?;
            // Validated (labels, K) by validate_inputs above.
            let (l, y) = (other.logits_slice(), labels_i32(other));
            let rows = backend.prepare(&l, &y, k)?;
            fit_temperature(backend, &rows)?
        }
    };
    let t_ts = fit.temperature as f32;
    let nll_before = backend.nll_sums(&src_rows, 1.0)?;
    let nll_after = backend.nll_sums(&src_rows, 1.0 / fit.temperature)?;
    let cal_before = backend.calibration(&src_rows, 1.0)?;
    let cal_after = backend.calibration(&src_rows, t_ts)?;
    let t_temperature = ms(phase);

    // Source row statistics, sorted scores, thresholds per mode.
    let phase = Instant::now();
    let cal = Modes {
        raw: calibrate_source(
            backend,
            &backend.row_stats(&src_rows, 1.0, &[])?,
            &src_labels,
            1.0,
            alphas,
        )?,
        ts: calibrate_source(
            backend,
            &backend.row_stats(&src_rows, t_ts, &[])?,
            &src_labels,
            t_ts,
            alphas,
        )?,
    };
    drop(src_rows);
    let t_sort = ms(phase);

    // Targets, chunk by chunk, both modes per upload.
    let phase = Instant::now();
    let mut reports = Vec::with_capacity(targets.len());
    let mut row_outputs = Vec::new();
    for target in targets {
        let logits = target.logits_slice();
        let labels = labels_i32(target);
        let groups = group_cols(target);
        let mut tally = Modes::<TargetTally>::default();
        let mut rows_out = RowOutputs {
            name: target.name.clone(),
            ..Default::default()
        };
        let n = target.n();
        let mut start_row = 0;
        while start_row < n {
            let end = (start_row + TARGET_CHUNK_ROWS).min(n);
            let y = &labels[start_row..end];
            let rows = backend.prepare(&logits[start_row * k..end * k], y, k)?;
            for (mode_cal, mode_tally, is_ts) in [
                (&cal.raw, &mut tally.raw, false),
                (&cal.ts, &mut tally.ts, true),
            ] {
                let want_rows = is_ts && options.rows;
                let blocks =
                    backend.map_row_blocks(&rows, mode_cal.t, &mode_cal.qhats, |first, blk| {
                        let first = start_row + first;
                        (
                            tally_block(blk, first, &groups, &labels, mode_cal, alphas.len()),
                            want_rows.then(|| block_rows(blk, &mode_cal.sorted_lac)),
                        )
                    })?;
                for (counts, out) in blocks {
                    merge_block(mode_tally, counts, alphas.len());
                    if let Some(out) = out {
                        rows_out.append(out);
                    }
                }
            }
            start_row = end;
        }
        if options.rows {
            row_outputs.push(rows_out);
        }
        reports.push(target_report(target, &tally, &cal, alphas));
    }
    let t_estimate = ms(phase);

    let mae = mae_rows(&reports);
    Ok(Evaluation {
        device: backend.device_name(),
        alphas: alphas.clone(),
        source: SourceReport {
            name: source.name.clone(),
            n: source.n(),
            k,
            accuracy: cal.raw.accuracy(),
            temperature: fit.temperature,
            converged: fit.converged,
            iterations: fit.iterations,
            nll_before: nll_before.nll / nll_before.rows,
            nll_after: nll_after.nll / nll_after.rows,
            ece_before: cal_before.ece(),
            ece_after: cal_after.ece(),
            qhat: Modes {
                raw: cal.raw.qhats.iter().map(|q| q.map(|v| v as f64)).collect(),
                ts: cal.ts.qhats.iter().map(|q| q.map(|v| v as f64)).collect(),
            },
            warning: fit.warning,
            calibration: Modes {
                raw: cal_before,
                ts: cal_after,
            },
        },
        targets: reports,
        mae,
        rows: row_outputs,
        timings_ms: Timings {
            load: 0.0,
            temperature: t_temperature,
            sort: t_sort,
            estimate: t_estimate,
            total: ms(start),
        },
    })
}

/// Counts of one block of rows, per (hospital, slide) pair: each row goes to exactly one
/// pair, and the whole-target, per-hospital and per-slide counts are sums of pairs, so a
/// row is counted once whatever the groups. A short list (tens of pairs) with a cache of
/// the last pair, since rows of a slide usually come together.
struct BlockTally {
    pairs: Vec<([Option<i64>; 2], TargetCounts)>,
    last: usize,
}

impl BlockTally {
    fn slot(&mut self, key: [Option<i64>; 2], n_alpha: usize) -> &mut TargetCounts {
        if self.pairs.get(self.last).is_none_or(|(g, _)| *g != key) {
            self.last = match self.pairs.iter().position(|(g, _)| *g == key) {
                Some(i) => i,
                None => {
                    self.pairs.push((key, TargetCounts::with_levels(n_alpha)));
                    self.pairs.len() - 1
                }
            };
        }
        &mut self.pairs[self.last].1
    }
}

/// Group ids of a target, one column per [`GROUP_ARRAYS`] entry, as contiguous slices.
type GroupCols<'s> = [Option<std::borrow::Cow<'s, [i64]>>; 2];

fn group_cols(target: &PredictionSet) -> GroupCols<'_> {
    GROUP_ARRAYS.map(|name| {
        group_ids(target, name).map(|a| match a.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(a.to_vec()),
        })
    })
}

/// Counts one block of a target's rows starting at `first` (an offset into the whole
/// target) in one mode, run by run of equal (hospital, slide): rows of a slide usually
/// come together.
fn tally_block(
    blk: RowBlock<'_>,
    first: usize,
    groups: &GroupCols<'_>,
    labels: &[i32],
    cal: &SourceCal,
    n_alpha: usize,
) -> BlockTally {
    let key = |i: usize| [0, 1].map(|g| groups[g].as_ref().map(|a| a[i]));
    let mut tally = BlockTally {
        pairs: Vec::new(),
        last: 0,
    };
    let n = blk.len();
    let mut j = 0;
    while j < n {
        let run_key = key(first + j);
        let mut end = j + 1;
        while end < n && key(first + end) == run_key {
            end += 1;
        }
        tally
            .slot(run_key, n_alpha)
            .add_rows(blk, j..end, &labels[first + j..first + end], cal);
        j = end;
    }
    tally
}

/// Adds a block's counts (blocks in row order) to the target's.
fn merge_block(tally: &mut TargetTally, block: BlockTally, n_alpha: usize) {
    if tally.all.levels.len() != n_alpha {
        tally.all = TargetCounts::with_levels(n_alpha);
    }
    for (key, counts) in block.pairs {
        tally.all.merge(&counts);
        for (name, id) in GROUP_ARRAYS.iter().zip(key) {
            let Some(id) = id else { continue };
            tally
                .groups
                .entry(name)
                .or_default()
                .entry(id)
                .and_modify(|c| c.merge(&counts))
                .or_insert_with(|| counts.clone());
        }
    }
}

/// Per-row outputs of one block: credibility = p-value of the top class, confidence =
/// 1 - p-value of the runner-up (p-values fall as `1 - p_k` grows, so these are the
/// largest two).
fn block_rows(blk: RowBlock<'_>, sorted_lac: &[f32]) -> RowOutputs {
    let n = sorted_lac.len();
    // The p-value kernel's own count (mirror of shaders/pvalues.wgsl's binary search).
    let pvalue =
        |r: f32| (1 + crate::cpu::pvalues::count_ge(sorted_lac, r)) as f64 / (n + 1) as f64;
    let mut out = RowOutputs::default();
    for (i, s) in blk.stats.iter().enumerate() {
        out.yhat.push(blk.yhat(i) as i64);
        out.max_prob.push(s[col::P1]);
        out.credibility.push(pvalue(s[col::R1]) as f32);
        out.confidence.push((1.0 - pvalue(s[col::R2])) as f32);
        out.set_size.extend(blk.sizes(i).iter().map(|&c| c as i64));
    }
    out
}

fn target_report(
    target: &PredictionSet,
    tally: &Modes<TargetTally>,
    cal: &Modes<SourceCal>,
    alphas: &[f64],
) -> TargetReport {
    let mut groups = BTreeMap::new();
    for name in GROUP_ARRAYS {
        let (Some(raw), Some(ts)) = (tally.raw.groups.get(name), tally.ts.groups.get(name)) else {
            continue;
        };
        let list = raw
            .iter()
            .zip(ts.values())
            .map(|((&id, r), t)| GroupReport {
                id,
                n: r.n() as usize,
                true_accuracy: r.true_accuracy(),
                estimates: Modes {
                    raw: r.estimates(&cal.raw),
                    ts: t.estimates(&cal.ts),
                },
            })
            .collect();
        groups.insert(name.to_string(), list);
    }
    let all = &tally.raw.all;
    let cpc = |c: &SourceCal| CpcChoice {
        q: c.cpc_q.map(|q| q as f64),
        alpha: c.cpc_alpha,
    };
    TargetReport {
        name: target.name.clone(),
        n: target.n(),
        n_labelled: all.labelled() as usize,
        labelled: all.labelled() == all.n(),
        true_accuracy: all.true_accuracy(),
        estimates: Modes {
            raw: tally.raw.all.estimates(&cal.raw),
            ts: tally.ts.all.estimates(&cal.ts),
        },
        cpc: Modes {
            raw: cpc(&cal.raw),
            ts: cpc(&cal.ts),
        },
        conformal: Modes {
            raw: tally.raw.all.conformal(&cal.raw, alphas),
            ts: tally.ts.all.conformal(&cal.ts, alphas),
        },
        groups,
    }
}

fn mae_of(pairs: &[(Estimates, f64)]) -> MaeRow {
    let mut row = MaeRow::new();
    for (idx, name) in ["AC", "DoC", "ATC-MC", "ATC-NE", "CPC"]
        .into_iter()
        .enumerate()
    {
        let v = (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(e, t)| (e.named()[idx].1 - t).abs())
                .sum::<f64>()
                / pairs.len() as f64
        });
        row.insert(name, v);
    }
    row
}

/// MAE per method over labelled targets, and over (target, group) pairs per group array.
fn mae_rows(reports: &[TargetReport]) -> BTreeMap<String, MaeRow> {
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
