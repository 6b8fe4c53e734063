//! Confidence intervals by the Poisson bootstrap (DESIGN.md 2.12). Replicate `b` weighs
//! row `i` of a set by an integer `w ~ Poisson(1)` ([`crate::kernel::bootstrap`]), so a
//! replicate is a resampled multiset and every estimator is recomputed on it exactly as
//! on the data itself: the source refit here (temperature by the same safeguarded Newton
//! on weighted sums, accuracy, AC(S), ATC thresholds and tie shares, CPC's sweep, all on
//! the multiset's sorted columns through `ModeCalibration::from_columns`), the target
//! side as weighted counts in the tally ([`crate::kernel::bootstrap::RepCounts`]).
//!
//! The source side runs on the host for every backend: it is one small set (the tally
//! over the targets is the data-parallel part the GPU takes), and with it the replicate
//! calibrations of a CPU and a GPU run are the same bits.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::{labels_i32, Backend, NllSums};
use crate::cpu::temperature_nll::nll_sums_f64_weighted;
use crate::data::PredictionSet;
use crate::error::{Error, Result};
use crate::kernel::bootstrap::{name_key, rep, RepCounts, ReplicatePlan};
use crate::kernel::row_stats::NSTAT;
use crate::kernel::tally::P1_GRID_BITS;
use crate::methods::cot::{grid_costs_at, weighted_rows};
use crate::methods::cott::{source_threshold, CottThreshold};
use crate::methods::temperature::fit_temperature_with;
use crate::methods::temperature::Temperature;
use crate::methods::thresholds::{AtcThreshold, ModeCalibration};
pub use crate::report::intervals::{Intervals, MethodIntervals, ReplicateValues};
use crate::report::model::{Estimates, Modes};

/// Most replicates a run takes: counts grow as replicates x groups (in memory per chunk
/// and in every tally file), and percentile intervals gain nothing past a few thousand.
pub const MAX_REPLICATES: usize = 10_000;

/// Bootstrap settings: `replicates` = 0 turns it off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootstrapOptions {
    /// Replicates B.
    pub replicates: usize,
    /// Seed of the weights.
    pub seed: u64,
    /// Confidence of the percentile intervals, in (0, 1).
    pub confidence: f64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            replicates: 0,
            seed: 0,
            confidence: 0.95,
        }
    }
}

impl BootstrapOptions {
    /// Checks B and the confidence (`Error::Invalid` naming the bad value).
    pub fn validate(&self) -> Result<()> {
        if self.replicates > MAX_REPLICATES {
            return Err(Error::Invalid(format!(
                "--bootstrap {}: at most {MAX_REPLICATES} replicates",
                self.replicates
            )));
        }
        check_confidence(self.confidence)
    }
}

/// A confidence must lie in (0, 1).
pub fn check_confidence(c: f64) -> Result<()> {
    if c.is_finite() && c > 0.0 && c < 1.0 {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "confidence {c}: must lie strictly between 0 and 1"
    )))
}

/// What one replicate's source decides in one mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicateCalibration {
    /// Temperature (1 for `raw`).
    #[serde(with = "crate::serde_exact::one")]
    pub t: f32,
    /// Weighted source rows.
    pub n: u64,
    /// Weighted correct source rows.
    pub correct: u64,
    /// AC(S) of the replicate.
    pub ac: f64,
    /// ATC-MC threshold and tie share.
    pub atc_mc: AtcThreshold,
    /// ATC-NE threshold and tie share.
    pub atc_ne: AtcThreshold,
    /// CPC's q* (`None` = +inf).
    #[serde(with = "crate::serde_exact::opt")]
    pub cpc_q: Option<f32>,
}

impl ReplicateCalibration {
    /// What the target tally needs.
    pub fn plan(&self) -> ReplicatePlan {
        ReplicatePlan {
            t: self.t,
            atc_mc: self.atc_mc.t,
            atc_ne: self.atc_ne.t,
            cpc_q: self.cpc_q,
        }
    }

    /// Accuracy of the replicate's source (NaN when it drew no row).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n as f64
    }

    fn from_mode(m: ModeCalibration) -> Self {
        ReplicateCalibration {
            t: m.t,
            n: m.n as u64,
            correct: m.correct as u64,
            // A replicate that drew no source row has no AC(S): 0 is written (JSON has no
            // NaN) and `estimates` gives NaN for every estimate of such a replicate.
            ac: if m.n == 0 { 0.0 } else { m.ac },
            atc_mc: m.atc_mc,
            atc_ne: m.atc_ne,
            cpc_q: m.cpc_q,
        }
    }

    /// The five estimates of a target from its counts in this replicate (NaN where the
    /// replicate drew no target row).
    pub fn estimates(&self, c: &[u64; rep::LEN], sum_p1: u128) -> Estimates {
        let n = c[rep::N];
        let nf = n as f64;
        let ac = sum_p1 as f64 / (1u64 << P1_GRID_BITS) as f64 / nf;
        // No rate without target rows, and no estimate without source rows.
        let rate = |x: f64| if n == 0 || self.n == 0 { f64::NAN } else { x };
        Estimates {
            ac: rate(ac),
            doc: rate(self.accuracy() + ac - self.ac),
            atc_mc: rate(self.atc_mc.estimate(c[rep::MC_ABOVE], c[rep::MC_EQUAL], n)),
            atc_ne: rate(self.atc_ne.estimate(c[rep::NE_ABOVE], c[rep::NE_EQUAL], n)),
            cpc: rate(c[rep::CPC] as f64 / nf),
            cot: None,
            ..Default::default()
        }
    }
}

/// The bootstrap part of a calibration: settings and every replicate's source refit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBootstrap {
    /// Replicates B.
    pub replicates: usize,
    /// Seed of the weights.
    pub seed: u64,
    /// Confidence of the intervals reported.
    pub confidence: f64,
    /// Replicate calibrations per mode, `B` each.
    pub modes: Modes<Vec<ReplicateCalibration>>,
    /// Every replicate's weighted source rows per class (COT's shares in the replicate).
    pub class_counts: Vec<Vec<u64>>,
    /// Every replicate's COTT threshold per mode: the weighted source's own plan at the
    /// replicate's temperature (`null` for a replicate without source rows; the whole
    /// field absent in files written before COTT's intervals, whose reports then give
    /// COTT no interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cott: Option<Modes<Vec<Option<CottThreshold>>>>,
}

impl CalibrationBootstrap {
    /// The target-tally plans of every replicate in each mode.
    pub fn plans(&self) -> Modes<Vec<ReplicatePlan>> {
        Modes {
            raw: self.modes.raw.iter().map(|r| r.plan()).collect(),
            ts: self.modes.ts.iter().map(|r| r.plan()).collect(),
        }
    }

    /// Why the fields cannot come from a fit, if they cannot.
    pub fn inconsistency(&self) -> Option<String> {
        let b = self.replicates;
        if b == 0 || b > MAX_REPLICATES || check_confidence(self.confidence).is_err() {
            return Some("bootstrap settings".into());
        }
        if self.class_counts.len() != b {
            return Some(format!(
                "bootstrap: {} class counts",
                self.class_counts.len()
            ));
        }
        for (i, (c, r)) in self.class_counts.iter().zip(&self.modes.raw).enumerate() {
            if c.iter().try_fold(0u64, |a, &x| a.checked_add(x)) != Some(r.n) {
                return Some(format!("bootstrap replicate {i}: class counts"));
            }
        }
        if let Some(c) = &self.cott {
            for list in [&c.raw, &c.ts] {
                if list.len() != b {
                    return Some(format!("bootstrap: {} COTT thresholds", list.len()));
                }
                if let Some(Err(e)) = list
                    .iter()
                    .flatten()
                    .map(|t| t.check())
                    .find(Result::is_err)
                {
                    return Some(e.to_string());
                }
            }
        }
        for (name, m) in [("raw", &self.modes.raw), ("ts", &self.modes.ts)] {
            if m.len() != b {
                return Some(format!("bootstrap mode {name}: {} replicates", m.len()));
            }
            let bad = |r: &ReplicateCalibration| {
                let share = |l: f64| (0.0..=1.0).contains(&l);
                !(r.t.is_finite() && r.t > 0.0)
                    || (name == "raw" && r.t != 1.0)
                    || r.correct > r.n
                    || !(0.0..=1.0).contains(&r.ac)
                    || !share(r.atc_mc.lambda)
                    || !share(r.atc_ne.lambda)
            };
            if let Some(i) = m.iter().position(bad) {
                return Some(format!("bootstrap mode {name}: replicate {i}"));
            }
        }
        None
    }
}

/// Replicate `b`'s weight of every row of a set of `n` rows keyed `key`.
fn replicate_weights(seed: u64, key: u32, n: usize, b: usize) -> Vec<u8> {
    crate::kernel::bootstrap::replicate_weights(seed, key, 0..n as u64, b)
}

/// The multiset's column: each row's value repeated by its weight, in `order`.
fn expand(col: &[f32], order: &[u32], w: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(col.len());
    for &i in order {
        out.extend(std::iter::repeat_n(col[i as usize], w[i as usize] as usize));
    }
    out
}

/// Replicates whose `ts` row summaries are fetched from the backend at a time, then
/// turned into calibrations in parallel.
const TS_BATCH: usize = 16;

/// Refits the source (and the temperature) in every replicate. The row summaries come
/// from `backend` (the source prepared as `src_rows`), the code the target tally runs, so
/// a replicate's thresholds and the target rows it counts share their ties; the
/// temperature refits and the sorts run on the host. `t_point` is the point fit's
/// temperature (a replicate's Newton iteration starts there).
pub fn fit_replicates<B: Backend>(
    backend: &B,
    src_rows: &B::Rows<'_>,
    source: &PredictionSet,
    temperature: Temperature<'_>,
    t_point: f64,
    opts: &BootstrapOptions,
) -> Result<CalibrationBootstrap> {
    opts.validate()?;
    let reps = opts.replicates;
    let k = source.k();
    let n = source.n();
    let logits = source.logits_slice();
    let labels = labels_i32(source);
    let src_key = name_key(&source.name);
    let weights = |b: usize| replicate_weights(opts.seed, src_key, n, b);
    // Each replicate's temperature: refitted on its weighted rows (of the temperature
    // set, with that set's own weights, for `--temperature-source`), or the fixed one.
    let other = match temperature {
        Temperature::FitOn(set) => Some((set.logits_slice(), labels_i32(set), set)),
        _ => None,
    };
    let b_point = 1.0 / t_point;
    let temps: Vec<f32> = (0..reps)
        .into_par_iter()
        .map(|b| -> Result<f32> {
            let t = match (temperature, &other) {
                (Temperature::Fixed(t), _) => t,
                (Temperature::FitOn(_), Some((l, y, set))) => {
                    let w = replicate_weights(opts.seed, name_key(&set.name), set.n(), b);
                    replicate_temperature(l, y, set.k(), &w, b_point)?
                }
                _ => replicate_temperature(&logits, &labels, k, &weights(b), b_point)?,
            };
            Ok(t as f32)
        })
        .collect::<Result<_>>()?;
    // Rows at T = 1 (the raw mode), each column's ascending order (total_cmp), correct.
    let raw = backend.row_stats(src_rows, 1.0, &[])?;
    let correct: Vec<bool> = (0..n).map(|i| raw.yhat(i) as i32 == labels[i]).collect();
    let raw_cols: [Vec<f32>; NSTAT] =
        std::array::from_fn(|c| raw.stats.iter().map(|s| s[c]).collect());
    let orders: Vec<Vec<u32>> = raw_cols
        .iter()
        .map(|col| {
            let mut idx: Vec<u32> = (0..n as u32).collect();
            idx.sort_by(|&a, &b| col[a as usize].total_cmp(&col[b as usize]));
            idx
        })
        .collect();
    let mut modes = Modes {
        raw: Vec::with_capacity(reps),
        ts: Vec::with_capacity(reps),
    };
    let all: Vec<usize> = (0..reps).collect();
    for batch in all.chunks(TS_BATCH) {
        // The backend's summaries at each replicate's temperature (one pass each).
        let ts_stats: Vec<_> = batch
            .iter()
            .map(|&b| backend.row_stats(src_rows, temps[b], &[]))
            .collect::<Result<_>>()?;
        let done: Vec<(ReplicateCalibration, ReplicateCalibration)> = batch
            .par_iter()
            .zip(ts_stats)
            .map(|(&b, st)| {
                let w = weights(b);
                let c: usize = (0..n).map(|i| w[i] as usize * correct[i] as usize).sum();
                let cols_raw: [Vec<f32>; NSTAT] =
                    std::array::from_fn(|col| expand(&raw_cols[col], &orders[col], &w));
                let rc_raw = ReplicateCalibration::from_mode(ModeCalibration::from_columns(
                    cols_raw,
                    c,
                    1.0,
                    &[],
                ));
                // The ts mode: each weighed row's summary at the replicate's temperature.
                let cols: [Vec<f32>; NSTAT] = std::array::from_fn(|col| {
                    let mut v = Vec::with_capacity(n);
                    for (s, &wi) in st.stats.iter().zip(&w) {
                        v.extend(std::iter::repeat_n(s[col], wi as usize));
                    }
                    crate::cpu::host_radix::sort_keys(&v)
                });
                let rc_ts = ReplicateCalibration::from_mode(ModeCalibration::from_columns(
                    cols,
                    c,
                    temps[b],
                    &[],
                ));
                (rc_raw, rc_ts)
            })
            .collect();
        for (r, t) in done {
            modes.raw.push(r);
            modes.ts.push(t);
        }
    }
    let class_counts: Vec<Vec<u64>> = (0..reps)
        .into_par_iter()
        .map(|b| {
            let mut c = vec![0u64; k];
            for (&w, &y) in weights(b).iter().zip(&labels) {
                c[y as usize] += w as u64;
            }
            c
        })
        .collect();
    let cott = Some(replicate_cott(
        &logits,
        k,
        &correct,
        &temps,
        &class_counts,
        weights,
    )?);
    Ok(CalibrationBootstrap {
        replicates: reps,
        seed: opts.seed,
        confidence: opts.confidence,
        modes,
        class_counts,
        cott,
    })
}

/// COTT's threshold in every replicate (DESIGN.md 2.12 and 2.16): the point fit's rule on
/// the replicate's multiset of source rows (each row repeated by its weight), its
/// weighted class counts and misclassified rows, at T = 1 and at its temperature.
fn replicate_cott(
    logits: &[f32],
    k: usize,
    correct: &[bool],
    temps: &[f32],
    class_counts: &[Vec<u64>],
    weights: impl Fn(usize) -> Vec<u8> + Sync,
) -> Result<Modes<Vec<Option<CottThreshold>>>> {
    let raw_costs = grid_costs_at(logits, k, 1.0);
    let both: Vec<[Option<CottThreshold>; 2]> = (0..temps.len())
        .into_par_iter()
        .map(|b| -> Result<[Option<CottThreshold>; 2]> {
            let w = weights(b);
            let counts = &class_counts[b];
            if counts.iter().sum::<u64>() == 0 {
                return Ok([None, None]);
            }
            let errors: u64 = w
                .iter()
                .zip(correct)
                .map(|(&w, &ok)| if ok { 0 } else { w as u64 })
                .sum();
            let one = |costs: &[i64]| {
                source_threshold(&weighted_rows(costs, k, &w), k, counts, errors).map(Some)
            };
            Ok([one(&raw_costs)?, one(&grid_costs_at(logits, k, temps[b]))?])
        })
        .collect::<Result<_>>()?;
    Ok(Modes {
        raw: both.iter().map(|m| m[0]).collect(),
        ts: both.iter().map(|m| m[1]).collect(),
    })
}

/// One replicate's fitted temperature (the point fit's bracket and stopping rule); a
/// replicate without a labelled row keeps `1 / b_point`.
fn replicate_temperature(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    weights: &[u8],
    b_point: f64,
) -> Result<f64> {
    if !weights.iter().zip(labels).any(|(&w, &y)| w > 0 && y >= 0) {
        return Ok(1.0 / b_point);
    }
    let fit = fit_temperature_with(
        |b| {
            let s = nll_sums_f64_weighted(logits, labels, k, b, weights);
            Ok(NllSums {
                nll: s[0],
                grad: s[1],
                hess: s[2],
                rows: s[3],
            })
        },
        b_point,
    )?;
    Ok(fit.temperature)
}

impl CalibrationBootstrap {
    /// From the replicate counts of both modes (the raw mode's labels give the truth).
    pub fn replicate_values(&self, counts: &Modes<RepCounts>) -> ReplicateValues {
        let est = |cals: &[ReplicateCalibration], rc: &RepCounts| -> Vec<Estimates> {
            cals.iter()
                .zip(rc.counts.iter().zip(&rc.sum_p1))
                .map(|(cal, (c, &s))| cal.estimates(c, s))
                .collect()
        };
        let truth = counts
            .raw
            .counts
            .iter()
            .map(|c| c[rep::CORRECT] as f64 / c[rep::LABELLED] as f64)
            .collect();
        ReplicateValues {
            estimates: Modes {
                raw: est(&self.modes.raw, &counts.raw),
                ts: est(&self.modes.ts, &counts.ts),
            },
            truth,
        }
    }
}
