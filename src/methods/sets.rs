//! Prediction sets under every requested conformal score (DESIGN.md 2.13-2.15): what the
//! source decides ([`SetCalibration`]: qhat per score, level and, Mondrian, per class; the
//! CPC threshold of each score), the mergeable counts a target's rows give
//! ([`SetTally`]: coverage, sizes, size strata, per-class coverage, CPC singletons), and
//! the report's entries and CPC-score estimates made from them.
//!
//! The scores are computed on the host from the CPU softmax's f32 probabilities
//! (`cpu::softmax`), on either backend: the same bits on the CPU and the GPU path, so the
//! counts are exact integers that merge by addition whatever the chunking, the sharding
//! or the backend. The one exception keeps today's LAC numbers: a marginal LAC entry
//! takes its qhat, coverage, sizes, singleton and empty rates from the backend's own
//! counts (on the GPU a probability can differ from the host's by an ulp, so its size
//! strata and class coverage, host-made, can disagree with them on a row that sits on
//! qhat; within DESIGN.md 4's two-row tolerance).

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::cpu::softmax::softmax;
use crate::error::{Error, Result};
use crate::kernel::score_ranks::RANK_WORDS;
use crate::kernel::tally::GroupKey;
use crate::methods::quantile::conformal_rank;
use crate::methods::scores::{randomized_u, row_scores_into, scores_from_ranks, Score};
use crate::methods::thresholds::{cpc_sweep, ModeCalibration};
use crate::report::estimates::Modes;
pub use crate::report::model::SetOptions;
use crate::report::model::{ClassCoverage, ConformalStats, CpcChoice, PerClass};

impl SetOptions {
    /// The scores, checked: known names, no repeats, at least one; every parameter
    /// valid whether or not its score is listed (an error names the option).
    pub fn parsed(&self) -> Result<Vec<Score>> {
        if !(self.raps_lambda.is_finite() && self.raps_lambda >= 0.0) {
            return Err(Error::Invalid(format!(
                "--raps-lambda {}: must be a finite number >= 0",
                self.raps_lambda
            )));
        }
        if !(self.saps_lambda.is_finite() && self.saps_lambda > 0.0) {
            return Err(Error::Invalid(format!(
                "--saps-lambda {}: must be a finite number > 0",
                self.saps_lambda
            )));
        }
        if self.scores.is_empty() {
            return Err(Error::Invalid("--score: no score given".into()));
        }
        let mut out: Vec<Score> = Vec::new();
        for name in &self.scores {
            let s = Score::named(
                name.trim(),
                self.raps_lambda,
                self.raps_k_reg,
                self.saps_lambda,
            )?;
            if out.iter().any(|o| o.name() == s.name()) {
                return Err(Error::Invalid(format!("--score: {name:?} listed twice")));
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// Parses `--score`'s comma list (`"lac,aps"`).
pub fn parse_scores(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).collect()
}

/// The name of the CPC estimate under `score` (`None` for LAC, whose CPC is the report's
/// `CPC`, and TopK, where CPC says nothing: DESIGN.md 2.15).
pub fn cpc_method(score: &str) -> Option<&'static str> {
    match score {
        "aps" => Some("CPC-APS"),
        "raps" => Some("CPC-RAPS"),
        "saps" => Some("CPC-SAPS"),
        _ => None,
    }
}

/// One entry of a mode's set list, as the source decides it: a score, marginal or per
/// class, at one level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryCalibration {
    /// Score name.
    pub score: String,
    /// Mondrian (per-class thresholds).
    pub class_conditional: bool,
    /// Level.
    pub alpha: f64,
    /// The conformal rank on the source's n (marginal: one; class-conditional: one per
    /// class, on that class's `n_c`).
    pub k: Vec<usize>,
    /// qhat (one, or one per class; `None` = +inf: k > n).
    pub qhat: Vec<Option<f64>>,
}

impl EntryCalibration {
    /// Whether class `class` with score `s` is in this entry's set (`s <= qhat`, the
    /// class's own qhat when class-conditional; `None` = +inf).
    pub fn contains(&self, class: usize, s: f64) -> bool {
        let q = if self.qhat.len() == 1 {
            self.qhat[0]
        } else {
            self.qhat[class]
        };
        q.is_none_or(|q| s <= q)
    }
}

/// The CPC threshold of a score (DESIGN.md 2.15).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreCpc {
    /// Score name (`aps`, `raps`, `saps`).
    pub score: String,
    /// `q*` (`None` = +inf).
    pub q: Option<f64>,
    /// `alpha* = 1 - i/(n+1)`.
    pub alpha: f64,
}

/// What one mode's targets need: the entries in report order and each score's CPC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeSets {
    /// Entries: scores in the order given, marginal before class-conditional, then levels.
    pub entries: Vec<EntryCalibration>,
    /// CPC per score, in the order given (APS, RAPS, SAPS only).
    pub cpc: Vec<ScoreCpc>,
    /// Every score but LAC (whose sorted scores the mode calibration keeps): the
    /// source's label scores, ascending, for p-values (absent in files written before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sorted: Vec<SortedScores>,
}

/// One score's source label scores `s(x_i, y_i)`, ascending (exact f64 in JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SortedScores {
    /// Score name.
    pub score: String,
    /// The n label scores, ascending.
    pub sorted: Vec<f64>,
}

impl ModeSets {
    /// The marginal qhat per level of each score.
    pub fn qhat_by_score(&self) -> BTreeMap<String, Vec<Option<f64>>> {
        let mut out: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| !e.class_conditional) {
            out.entry(e.score.clone()).or_default().push(e.qhat[0]);
        }
        out
    }

    /// CPC's threshold per score: LAC's from the mode calibration `lac` (where LAC is
    /// listed), then every CPC score's.
    pub fn cpc_by_score(&self, lac: &ModeCalibration) -> BTreeMap<String, CpcChoice> {
        let mut out = BTreeMap::new();
        if self.entries.iter().any(|e| e.score == "lac") {
            out.insert(
                "lac".to_string(),
                CpcChoice {
                    q: lac.cpc_q.map(|q| q as f64),
                    alpha: lac.cpc_alpha,
                },
            );
        }
        for c in &self.cpc {
            out.insert(
                c.score.clone(),
                CpcChoice {
                    q: c.q,
                    alpha: c.alpha,
                },
            );
        }
        out
    }
}

/// The source's decisions for every score, in both modes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetCalibration {
    /// The options they were made with.
    pub options: SetOptions,
    /// Per mode.
    pub modes: Modes<ModeSets>,
}

/// The source as the set calibration reads it.
pub struct SetSource<'a> {
    /// Set name (keys the randomised draws).
    pub name: &'a str,
    /// Classes.
    pub k: usize,
    /// `n * k` logits.
    pub logits: &'a [f32],
    /// Labels, every one known and in range.
    pub labels: &'a [i32],
    /// Correct source rows (argmax of the logits = label).
    pub correct: usize,
}

impl SetCalibration {
    /// Fits every entry and CPC threshold at the temperatures `t` (raw, ts).
    /// `lac_qhats` are the backend's marginal LAC quantiles per mode, kept as they are.
    pub fn fit(
        options: &SetOptions,
        source: &SetSource<'_>,
        alphas: &[f64],
        t: Modes<f32>,
        lac_qhats: Modes<&[Option<f32>]>,
    ) -> Result<Self> {
        let scores = options.parsed()?;
        let mode = |t: f32, lac: &[Option<f32>]| -> ModeSets {
            fit_mode(options, &scores, source, alphas, t, lac)
        };
        Ok(SetCalibration {
            options: options.clone(),
            modes: Modes {
                raw: mode(t.raw, lac_qhats.raw),
                ts: mode(t.ts, lac_qhats.ts),
            },
        })
    }

    /// Why the fields cannot come from a fit (`k` classes, `n_alpha` levels), if not.
    pub fn inconsistency(&self, k: usize, n_alpha: usize) -> Option<String> {
        let scores = match self.options.parsed() {
            Ok(s) => s,
            Err(e) => return Some(format!("set options: {e}")),
        };
        let per_score = if self.options.class_conditional { 2 } else { 1 };
        let cpcs = scores
            .iter()
            .filter(|s| cpc_method(s.name()).is_some())
            .count();
        for m in [&self.modes.raw, &self.modes.ts] {
            if m.entries.len() != scores.len() * per_score * n_alpha || m.cpc.len() != cpcs {
                return Some("set entries do not match the options".into());
            }
            let non_lac = scores.iter().filter(|s| **s != Score::Lac).count();
            // Absent (a file written before p-values) or one list per non-LAC score.
            if !m.sorted.is_empty() && m.sorted.len() != non_lac {
                return Some("sorted source scores do not match the options".into());
            }
            for list in &m.sorted {
                let ordered = list.sorted.windows(2).all(|w| w[0] <= w[1]);
                if !ordered || list.sorted.iter().any(|v| !v.is_finite()) {
                    return Some(format!("sorted source scores of {}", list.score));
                }
            }
            for e in &m.entries {
                let want = if e.class_conditional { k } else { 1 };
                if e.k.len() != want || e.qhat.len() != want {
                    return Some(format!("set entry {}: per-class lists", e.score));
                }
                if e.qhat.iter().flatten().any(|q| q.is_nan()) {
                    return Some(format!("set entry {}: NaN qhat", e.score));
                }
            }
        }
        None
    }

    /// Entries per mode.
    pub fn entries(&self) -> usize {
        self.modes.raw.entries.len()
    }

    /// The counters of one (pair, mode) list: see [`SetTally`].
    pub fn pair_len(&self) -> usize {
        pair::ENTRIES + self.entries() * entry::LEN + self.modes.raw.cpc.len()
    }
}

impl SetCalibration {
    /// The prediction sets of `logits` (`rows x k`, finite) under the entry (`score`,
    /// `class_conditional`, `alpha`) of mode `ts` at its temperature `t`: one K-long row
    /// of booleans per row, row-major. The randomised draws are keyed by `name` and each
    /// row's index `row_offset + i`, as in a tally. An entry the calibration lacks is an
    /// error naming it. `backend` ranks the classes (`Backend::score_ranks`) of the host's
    /// probabilities, so every backend gives the same sets, the tallies' sets.
    #[allow(clippy::too_many_arguments)]
    pub fn predict_sets<B: Backend>(
        &self,
        backend: &B,
        logits: &[f32],
        k: usize,
        t: f32,
        ts: bool,
        score: &str,
        class_conditional: bool,
        alpha: f64,
        name: &str,
        row_offset: u64,
    ) -> Result<Vec<bool>> {
        let entry = self
            .modes
            .of(ts)
            .entries
            .iter()
            .find(|e| e.score == score && e.class_conditional == class_conditional && e.alpha == alpha)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no prediction-set entry for score {score:?}, class_conditional {class_conditional}, alpha {alpha} in this calibration (fitted with scores {:?}, levels as given)",
                    self.options.scores
                ))
            })?;
        let s = self.score_named(score)?;
        let mut out = vec![false; logits.len()];
        self.map_row_scores(
            backend,
            logits,
            k,
            t,
            s,
            (name, row_offset),
            &mut out,
            |c, v| entry.contains(c, v),
        )?;
        Ok(out)
    }

    /// The calibration's score named `name` with its parameters (LAC when it has none
    /// of that name: the entry and sorted-score lookups name the missing score).
    fn score_named(&self, name: &str) -> Result<Score> {
        Ok(self
            .options
            .parsed()?
            .into_iter()
            .find(|s| s.name() == name)
            .unwrap_or(Score::Lac))
    }

    /// Conformal p-values (DESIGN.md 2.6 with score `score`) of every class of every row
    /// of `logits` (`rows x k`, finite) in mode `ts` at its temperature `t`:
    /// `(1 + #{i : s_i >= s(x, k)}) / (n + 1)` over the source's label scores, counted by
    /// binary search, divided once. LAC's come from the mode calibration's sorted scores
    /// (see `row_outputs::pvalue_matrix`); this serves the others. Randomised draws are
    /// keyed by `name` and each row's index `row_offset + i`, as in a tally. `backend`
    /// ranks the classes, as in [`Self::predict_sets`].
    #[allow(clippy::too_many_arguments)]
    pub fn pvalues<B: Backend>(
        &self,
        backend: &B,
        logits: &[f32],
        k: usize,
        t: f32,
        ts: bool,
        score: &str,
        name: &str,
        row_offset: u64,
    ) -> Result<Vec<f64>> {
        let list = self
            .modes
            .of(ts)
            .sorted
            .iter()
            .find(|l| l.score == score)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no sorted source scores for score {score:?} in this calibration (fitted with scores {:?}; LAC's p-values come from the mode calibration, and files written before p-values hold none)",
                    self.options.scores
                ))
            })?;
        let s = self.score_named(score)?;
        let sorted = &list.sorted;
        let denominator = (sorted.len() + 1) as f64;
        let mut out = vec![0.0f64; logits.len()];
        self.map_row_scores(
            backend,
            logits,
            k,
            t,
            s,
            (name, row_offset),
            &mut out,
            |_, v| {
                let at_least = sorted.len() - sorted.partition_point(|&c| c < v);
                (1 + at_least) as f64 / denominator
            },
        )?;
        Ok(out)
    }

    /// Every class score of every row of `logits` under `score` at temperature `t`
    /// (randomised draws keyed by the set name and `row_offset + i`, as in a tally),
    /// mapped by `f(class, score)` into `out` (`rows x k`): the host's probabilities (the
    /// tallies'), ranked by `backend` a slab of rows at a time (its words bound the
    /// memory), then finished in parallel blocks of rows.
    #[allow(clippy::too_many_arguments)]
    fn map_row_scores<B: Backend, T: Send>(
        &self,
        backend: &B,
        logits: &[f32],
        k: usize,
        t: f32,
        score: Score,
        (name, row_offset): (&str, u64),
        out: &mut [T],
        f: impl Fn(usize, f64) -> T + Sync,
    ) -> Result<()> {
        let probs = softmax(logits, k, t);
        let slab = (RANK_SLAB_CLASSES / k.max(1)).max(1);
        for (si, (o, p)) in out
            .chunks_mut(k * slab)
            .zip(probs.chunks(k * slab))
            .enumerate()
        {
            // LAC does not rank.
            let ranks = match score {
                Score::Lac => Vec::new(),
                _ => backend.score_ranks(p, k)?,
            };
            let words = if ranks.is_empty() { 0 } else { k * RANK_WORDS };
            o.par_chunks_mut(k * BLOCK_ROWS)
                .zip(p.par_chunks(k * BLOCK_ROWS))
                .enumerate()
                .for_each(|(b, (o, p))| {
                    let mut row = vec![0.0f64; k];
                    for (j, (orow, prow)) in
                        o.chunks_exact_mut(k).zip(p.chunks_exact(k)).enumerate()
                    {
                        let r = b * BLOCK_ROWS + j;
                        let u = draw(&self.options, name, row_offset + (si * slab + r) as u64);
                        let rk = &ranks[(r * words).min(ranks.len())..][..words];
                        scores_from_ranks(prow, rk, score, u, &mut row);
                        for (c, (x, &v)) in orow.iter_mut().zip(&row).enumerate() {
                            *x = f(c, v);
                        }
                    }
                });
        }
        Ok(())
    }
}

/// Classes per slab that `map_row_scores` ranks at once: 4M (80 MB of words).
const RANK_SLAB_CLASSES: usize = 1 << 22;

fn fit_mode(
    options: &SetOptions,
    scores: &[Score],
    source: &SetSource<'_>,
    alphas: &[f64],
    t: f32,
    lac_qhats: &[Option<f32>],
) -> ModeSets {
    let (k, n) = (source.k, source.labels.len());
    let probs = softmax(source.logits, k, t);
    let mut class_n = vec![0usize; k];
    for &y in source.labels {
        class_n[y as usize] += 1;
    }
    let mut out = ModeSets::default();
    let mut order = Vec::new();
    let mut row = vec![0.0f64; k];
    for &score in scores {
        // Each row's label score and its smallest two class scores.
        let mut label = Vec::with_capacity(n);
        let (mut first, mut second) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, p) in probs.chunks_exact(k).enumerate() {
            let u = draw(options, source.name, i as u64);
            row_scores_into(p, score, u, &mut order, &mut row);
            label.push(row[source.labels[i] as usize]);
            let (a, b) = smallest_two(&row);
            first.push(a);
            second.push(b);
        }
        let mut sorted = label.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        if score != Score::Lac {
            out.sorted.push(SortedScores {
                score: score.name().into(),
                sorted: sorted.clone(),
            });
        }
        for (a, &alpha) in alphas.iter().enumerate() {
            let rank = conformal_rank(n, alpha);
            let qhat = match score {
                // Today's LAC quantile, the backend's bits.
                Score::Lac => lac_qhats[a].map(|q| q as f64),
                _ => (rank <= n).then(|| sorted[rank - 1]),
            };
            out.entries.push(EntryCalibration {
                score: score.name().into(),
                class_conditional: false,
                alpha,
                k: vec![rank],
                qhat: vec![qhat],
            });
        }
        if options.class_conditional {
            let mut of_class: Vec<Vec<f64>> = vec![Vec::new(); k];
            for (&s, &y) in label.iter().zip(source.labels) {
                of_class[y as usize].push(s);
            }
            for v in &mut of_class {
                v.sort_unstable_by(f64::total_cmp);
            }
            for &alpha in alphas {
                let ranks: Vec<usize> = class_n.iter().map(|&m| conformal_rank(m, alpha)).collect();
                let qhat = ranks
                    .iter()
                    .zip(&of_class)
                    .map(|(&r, v)| (r <= v.len()).then(|| v[r - 1]))
                    .collect();
                out.entries.push(EntryCalibration {
                    score: score.name().into(),
                    class_conditional: true,
                    alpha,
                    k: ranks,
                    qhat,
                });
            }
        }
        if cpc_method(score.name()).is_some() {
            first.sort_unstable_by(f64::total_cmp);
            second.sort_unstable_by(f64::total_cmp);
            let (q, i) = cpc_sweep(&sorted, &first, &second, source.correct);
            out.cpc.push(ScoreCpc {
                score: score.name().into(),
                q,
                alpha: 1.0 - i as f64 / (n as f64 + 1.0),
            });
        }
    }
    // Marginal before class-conditional within a score: already in that order.
    out
}

/// The row's `u` under `options` (1 for the deterministic scores).
fn draw(options: &SetOptions, name: &str, row: u64) -> f64 {
    if options.randomize {
        randomized_u(options.seed, name, row)
    } else {
        1.0
    }
}

/// The smallest and second-smallest of `row` (K >= 2; a tie gives the same value twice).
fn smallest_two(row: &[f64]) -> (f64, f64) {
    let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
    for &s in row {
        if s < a {
            b = a;
            a = s;
        } else if s < b {
            b = s;
        }
    }
    (a, b)
}

/// Size strata of SSCV (DESIGN.md 2.14): {0,1}, {2,3}, {4..10}, {11..100}, {101..1000},
/// {1001..}.
pub const STRATA: usize = 6;

/// The stratum of a set of `size` classes.
pub fn stratum(size: usize) -> usize {
    match size {
        0..=1 => 0,
        2..=3 => 1,
        4..=10 => 2,
        11..=100 => 3,
        101..=1000 => 4,
        _ => 5,
    }
}

/// Counters at the head of a (pair, mode) list.
pub mod pair {
    /// Rows.
    pub const N: usize = 0;
    /// Labelled rows.
    pub const LABELLED: usize = 1;
    /// Counters before the entries.
    pub const ENTRIES: usize = 2;
}

/// Counters of one entry in a (pair, mode) list.
pub mod entry {
    use super::STRATA;
    /// Labelled rows whose label is in the set.
    pub const COVERED: usize = 0;
    /// Sum of set sizes.
    pub const SIZE_SUM: usize = 1;
    /// Singleton sets.
    pub const SINGLETON: usize = 2;
    /// Empty sets.
    pub const EMPTY: usize = 3;
    /// Labelled rows per size stratum.
    pub const STRATUM_LABELLED: usize = 4;
    /// Covered labelled rows per size stratum.
    pub const STRATUM_COVERED: usize = 4 + STRATA;
    /// Counters per entry.
    pub const LEN: usize = 4 + 2 * STRATA;
}

/// One (hospital, slide) pair's counters, both modes, as written in a tally file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetPair {
    /// Hospital id.
    pub hospital: Option<i64>,
    /// Slide id.
    pub slide: Option<i64>,
    /// Counters at T = 1: `[n, labelled]`, then [`entry::LEN`] per entry, then one CPC
    /// singleton count per CPC score.
    pub raw: Vec<u64>,
    /// The same at the `ts` temperature.
    pub ts: Vec<u64>,
}

/// A target's set counts: per (hospital, slide) pair and mode, plus the target's
/// per-class counts (labelled rows per class, then per entry the covered ones).
/// Integer sums: merge is associative and commutative.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SetTally {
    /// Pairs, sorted by key, each once.
    pub pairs: Vec<SetPair>,
    /// Per mode: `K` labelled counts, then `K` covered counts per entry.
    pub classes: Modes<Vec<u64>>,
}

/// One block's counters of one mode: per pair, and per class.
type BlockCounts = (BTreeMap<GroupKey, Vec<u64>>, Vec<u64>);

/// Pair counters per mode while counting.
type PairMap = BTreeMap<GroupKey, Modes<Vec<u64>>>;

impl SetTally {
    /// An empty tally under `cal` for `k` classes.
    pub fn empty(cal: &SetCalibration, k: usize) -> Self {
        let len = k * (1 + cal.entries());
        SetTally {
            pairs: Vec::new(),
            classes: Modes {
                raw: vec![0; len],
                ts: vec![0; len],
            },
        }
    }

    fn map(&self) -> PairMap {
        self.pairs
            .iter()
            .map(|p| {
                (
                    [p.hospital, p.slide],
                    Modes {
                        raw: p.raw.clone(),
                        ts: p.ts.clone(),
                    },
                )
            })
            .collect()
    }

    fn set_map(&mut self, map: PairMap) {
        self.pairs = map
            .into_iter()
            .map(|(key, m)| SetPair {
                hospital: key[0],
                slide: key[1],
                raw: m.raw,
                ts: m.ts,
            })
            .collect();
    }

    /// Adds `other` (same shape); `None` on overflow or a shape mismatch (only reachable
    /// from a forged file).
    pub fn checked_merge(&mut self, other: &SetTally) -> Option<()> {
        let mut map = self.map();
        for p in &other.pairs {
            let key = [p.hospital, p.slide];
            match map.get_mut(&key) {
                Some(m) => {
                    add_into(&mut m.raw, &p.raw)?;
                    add_into(&mut m.ts, &p.ts)?;
                }
                None => {
                    map.insert(
                        key,
                        Modes {
                            raw: p.raw.clone(),
                            ts: p.ts.clone(),
                        },
                    );
                }
            }
        }
        let mut classes = self.classes.clone();
        add_into(&mut classes.raw, &other.classes.raw)?;
        add_into(&mut classes.ts, &other.classes.ts)?;
        self.set_map(map);
        self.classes = classes;
        Some(())
    }

    /// Why the counts cannot come from rows under `cal` (`k` classes), if not.
    pub fn inconsistency(&self, cal: &SetCalibration, k: usize) -> Option<String> {
        let (len, e) = (cal.pair_len(), cal.entries());
        let sorted = self
            .pairs
            .windows(2)
            .all(|w| [w[0].hospital, w[0].slide] < [w[1].hospital, w[1].slide]);
        if !sorted {
            return Some("set counts: groups not sorted or listed twice".into());
        }
        let mut n = [0u64; 2];
        let mut labelled = [0u64; 2];
        for p in &self.pairs {
            for (m, c) in [&p.raw, &p.ts].into_iter().enumerate() {
                if c.len() != len {
                    return Some("set counts: wrong length".into());
                }
                let (rows, lab) = (c[pair::N], c[pair::LABELLED]);
                if lab > rows {
                    return Some("set counts: more labelled rows than rows".into());
                }
                for x in 0..e {
                    let v = &c[pair::ENTRIES + x * entry::LEN..][..entry::LEN];
                    let strata_lab: u64 = v[entry::STRATUM_LABELLED..][..STRATA].iter().sum();
                    let bad = v[entry::COVERED] > lab
                        || v[entry::SINGLETON] + v[entry::EMPTY] > rows
                        || strata_lab != lab
                        || (0..STRATA).any(|s| {
                            v[entry::STRATUM_COVERED + s] > v[entry::STRATUM_LABELLED + s]
                        });
                    if bad {
                        return Some("set counts: counters disagree".into());
                    }
                }
                if c[pair::ENTRIES + e * entry::LEN..]
                    .iter()
                    .any(|&s| s > rows)
                {
                    return Some("set counts: CPC singletons exceed rows".into());
                }
                n[m] = n[m].checked_add(rows)?;
                labelled[m] = labelled[m].checked_add(lab)?;
            }
        }
        if n[0] != n[1] || labelled[0] != labelled[1] {
            return Some("set counts: modes disagree".into());
        }
        for c in [&self.classes.raw, &self.classes.ts] {
            if c.len() != k * (1 + e) {
                return Some("set counts: class counts have the wrong length".into());
            }
            if c[..k].iter().sum::<u64>() != labelled[0] {
                return Some("set counts: class counts disagree with labelled rows".into());
            }
            for x in 0..e {
                if (0..k).any(|j| c[k + x * k + j] > c[j]) {
                    return Some("set counts: class coverage exceeds labelled rows".into());
                }
            }
        }
        None
    }

    /// Rows counted (per the raw mode).
    pub fn rows(&self) -> u64 {
        self.pairs.iter().map(|p| p.raw[pair::N]).sum()
    }
}

fn add_into(d: &mut [u64], s: &[u64]) -> Option<()> {
    if d.len() != s.len() {
        return None;
    }
    for (a, b) in d.iter_mut().zip(s) {
        *a = a.checked_add(*b)?;
    }
    Some(())
}

/// One chunk of a target's rows, as the set tally reads them.
pub struct SetRows<'a> {
    /// Target name (keys the randomised draws).
    pub name: &'a str,
    /// Index of the first row in the whole target.
    pub row_offset: u64,
    /// Classes.
    pub k: usize,
    /// `rows * k` logits.
    pub logits: &'a [f32],
    /// Labels (-1 unknown).
    pub labels: &'a [i32],
    /// Hospital and slide ids.
    pub groups: [Option<&'a [i64]>; 2],
}

/// Rows per parallel block of the set tally.
const BLOCK_ROWS: usize = 4096;

impl SetTally {
    /// Counts one chunk under `cal` at the mode temperatures `t`: each mode's
    /// probabilities, every score of every row, the set of every entry, the CPC
    /// singletons. Integer counts, order-free. The chunk must be valid (finite logits,
    /// labels in range, group arrays as long as the labels).
    pub fn add(&mut self, cal: &SetCalibration, t: Modes<f32>, rows: &SetRows<'_>) -> Result<()> {
        let scores = cal.options.parsed()?;
        let k = rows.k;
        let n = rows.labels.len();
        if n == 0 {
            return Ok(());
        }
        let mut map = self.map();
        let mut classes = self.classes.clone();
        for (ts, t) in [(false, t.raw), (true, t.ts)] {
            let sets = cal.modes.of(ts);
            let probs = softmax(rows.logits, k, t);
            let parts: Vec<BlockCounts> = probs
                .par_chunks(k * BLOCK_ROWS)
                .enumerate()
                .map(|(b, block)| count_block(cal, sets, &scores, rows, b * BLOCK_ROWS, block))
                .collect();
            for (pairs, class) in parts {
                for (key, c) in pairs {
                    let m = map.entry(key).or_insert_with(|| Modes {
                        raw: vec![0; c.len()],
                        ts: vec![0; c.len()],
                    });
                    let d = if ts { &mut m.ts } else { &mut m.raw };
                    add_into(d, &c).ok_or_else(overflow)?;
                }
                let d = if ts {
                    &mut classes.ts
                } else {
                    &mut classes.raw
                };
                add_into(d, &class).ok_or_else(overflow)?;
            }
        }
        self.set_map(map);
        self.classes = classes;
        Ok(())
    }
}

fn overflow() -> Error {
    Error::Invalid("set counts overflow".into())
}

/// A score made anew for an entry: which, and its CPC's index and q, if it has one.
type FreshScore = (Score, Option<(usize, Option<f64>)>);

/// The counts of one block of rows (`first` = its first row in the chunk).
fn count_block(
    cal: &SetCalibration,
    sets: &ModeSets,
    scores: &[Score],
    rows: &SetRows<'_>,
    first: usize,
    probs: &[f32],
) -> BlockCounts {
    let k = rows.k;
    let e = sets.entries.len();
    let len = cal.pair_len();
    // Pairs in order of first sight, with the last one's index: rows of one slide come
    // in runs, so most rows find their pair without a search.
    let mut pairs: Vec<(GroupKey, Vec<u64>)> = Vec::new();
    let mut last = 0usize;
    let mut class = vec![0u64; k * (1 + e)];
    let mut order = Vec::new();
    let mut row = vec![0.0f64; k];
    // Where an entry's score differs from the one before it, the row's scores are made
    // anew: which score, and its CPC (index, q) if it has one. Fixed by the entries'
    // order, so settled once here rather than by name compares on every row.
    let mut current: Option<&str> = None;
    let fresh: Vec<Option<FreshScore>> = sets
        .entries
        .iter()
        .map(|ent| {
            if current == Some(ent.score.as_str()) {
                return None;
            }
            current = Some(ent.score.as_str());
            let score = scores
                .iter()
                .find(|s| s.name() == ent.score)
                .copied()
                .unwrap_or(Score::Lac);
            let cpc = sets.cpc.iter().position(|c| c.score == ent.score);
            Some((score, cpc.map(|ci| (ci, sets.cpc[ci].q))))
        })
        .collect();
    for (j, p) in probs.chunks_exact(k).enumerate() {
        let i = first + j;
        let key = [rows.groups[0].map(|g| g[i]), rows.groups[1].map(|g| g[i])];
        if pairs.get(last).is_none_or(|(k, _)| *k != key) {
            last = match pairs.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    pairs.push((key, vec![0; len]));
                    pairs.len() - 1
                }
            };
        }
        let c = &mut pairs[last].1;
        let y = rows.labels[i];
        let labelled = y >= 0;
        c[pair::N] += 1;
        if labelled {
            c[pair::LABELLED] += 1;
            class[y as usize] += 1;
        }
        let u = draw(&cal.options, rows.name, rows.row_offset + i as u64);
        for (x, (ent, fresh)) in sets.entries.iter().zip(&fresh).enumerate() {
            if let Some((score, cpc)) = fresh {
                row_scores_into(p, *score, u, &mut order, &mut row);
                if let Some((ci, q)) = cpc {
                    let (a, b) = smallest_two(&row);
                    if q.is_some_and(|q| a <= q && b > q) {
                        c[pair::ENTRIES + e * entry::LEN + ci] += 1;
                    }
                }
            }
            let within = |cls: usize, s: f64| ent.contains(cls, s);
            let size = row
                .iter()
                .enumerate()
                .filter(|&(j, &s)| within(j, s))
                .count();
            let v = &mut c[pair::ENTRIES + x * entry::LEN..][..entry::LEN];
            v[entry::SIZE_SUM] += size as u64;
            v[entry::SINGLETON] += (size == 1) as u64;
            v[entry::EMPTY] += (size == 0) as u64;
            if labelled {
                let covered = within(y as usize, row[y as usize]);
                let st = stratum(size);
                v[entry::STRATUM_LABELLED + st] += 1;
                if covered {
                    v[entry::COVERED] += 1;
                    v[entry::STRATUM_COVERED + st] += 1;
                    class[k + x * k + y as usize] += 1;
                }
            }
        }
    }
    (pairs.into_iter().collect(), class)
}

impl SetTally {
    /// The counters of mode `ts` summed over the pairs `keep` accepts.
    pub fn summed(
        &self,
        cal: &SetCalibration,
        ts: bool,
        keep: impl Fn(&GroupKey) -> bool,
    ) -> Vec<u64> {
        let mut out = vec![0u64; cal.pair_len()];
        for p in &self.pairs {
            if keep(&[p.hospital, p.slide]) {
                let c = if ts { &p.ts } else { &p.raw };
                for (d, s) in out.iter_mut().zip(c) {
                    *d += *s;
                }
            }
        }
        out
    }

    /// Group ids of group array `g` (0 hospital, 1 slide), ascending.
    pub fn group_ids(&self, g: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .pairs
            .iter()
            .filter_map(|p| [p.hospital, p.slide][g])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The report's entries of one mode from summed counters `c` (see [`SetTally::summed`]);
/// `classes` (target level only) adds class coverage and CovGap; `lac` are the
/// backend's marginal LAC entries per level, whose qhat and rates a marginal LAC entry
/// keeps.
pub fn report_entries(
    sets: &ModeSets,
    alphas: &[f64],
    c: &[u64],
    classes: Option<&[u64]>,
    lac: &[ConformalStats],
) -> Vec<ConformalStats> {
    let (n, labelled) = (c[pair::N] as f64, c[pair::LABELLED]);
    let rate = |x: u64| x as f64 / n;
    let share = |x: u64, of: u64| (of > 0).then(|| x as f64 / of as f64);
    sets.entries
        .iter()
        .enumerate()
        .map(|(x, ent)| {
            let v = &c[pair::ENTRIES + x * entry::LEN..][..entry::LEN];
            let level = alphas.iter().position(|&a| a == ent.alpha).unwrap_or(0);
            let target = 1.0 - ent.alpha;
            let sscv = (0..STRATA)
                .filter(|&s| v[entry::STRATUM_LABELLED + s] > 0)
                .map(|s| {
                    let cov = v[entry::STRATUM_COVERED + s] as f64
                        / v[entry::STRATUM_LABELLED + s] as f64;
                    (cov - target).abs()
                })
                .reduce(f64::max);
            let by_class = classes.map(|cl| {
                let k = cl.len() / (1 + sets.entries.len());
                if labelled == 0 {
                    return ClassCoverage {
                        covgap: None,
                        class_coverage: None,
                    };
                }
                let cov: Vec<Option<f64>> =
                    (0..k).map(|j| share(cl[k + x * k + j], cl[j])).collect();
                let gaps: Vec<f64> = cov.iter().flatten().map(|c| (c - target).abs()).collect();
                ClassCoverage {
                    covgap: Some(gaps.iter().sum::<f64>() / gaps.len() as f64),
                    class_coverage: Some(cov),
                }
            });
            let one = |v: Vec<usize>| PerClass::of(v);
            let mut out = ConformalStats {
                score: ent.score.clone(),
                class_conditional: ent.class_conditional,
                alpha: ent.alpha,
                k: one(ent.k.clone()),
                qhat: PerClass::of(ent.qhat.clone()),
                mean_set_size: rate(v[entry::SIZE_SUM]),
                singleton_rate: rate(v[entry::SINGLETON]),
                empty_rate: rate(v[entry::EMPTY]),
                coverage: share(v[entry::COVERED], labelled),
                sscv: if labelled > 0 { sscv } else { None },
                by_class,
            };
            if ent.score == "lac" && !ent.class_conditional {
                if let Some(l) = lac.get(level) {
                    out.k = l.k.clone();
                    out.qhat = l.qhat.clone();
                    out.mean_set_size = l.mean_set_size;
                    out.singleton_rate = l.singleton_rate;
                    out.empty_rate = l.empty_rate;
                    out.coverage = l.coverage;
                }
            }
            out
        })
        .collect()
}

/// The CPC estimate of each CPC score from summed counters `c`: `(method name, rate)`.
pub fn score_cpc(sets: &ModeSets, c: &[u64]) -> Vec<(&'static str, f64)> {
    let e = sets.entries.len();
    let n = c[pair::N] as f64;
    sets.cpc
        .iter()
        .enumerate()
        .filter_map(|(ci, s)| {
            cpc_method(&s.score).map(|m| (m, c[pair::ENTRIES + e * entry::LEN + ci] as f64 / n))
        })
        .collect()
}

/// Labelled rows in summed counters.
pub fn labelled(c: &[u64]) -> u64 {
    c[pair::LABELLED]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn options(scores: &str, cc: bool, randomize: bool) -> SetOptions {
        SetOptions {
            scores: parse_scores(scores),
            randomize,
            seed: 5,
            class_conditional: cc,
            ..Default::default()
        }
    }

    /// Seeded logits (quantised: ties inside rows), labels (some unknown), slides.
    fn rows(seed: u64, n: usize, k: usize) -> (Vec<f32>, Vec<i32>, Vec<i64>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let logits = (0..n * k)
            .map(|_| (rng.random_range(-3.0f32..3.0) * 2.0).round() / 2.0)
            .collect();
        let labels = (0..n)
            .map(|_| {
                if rng.random_bool(0.2) {
                    -1
                } else {
                    rng.random_range(0..k as i32)
                }
            })
            .collect();
        let slides = (0..n).map(|_| rng.random_range(0..5i64)).collect();
        (logits, labels, slides)
    }

    fn calibration(k: usize, opts: &SetOptions) -> SetCalibration {
        let (logits, mut labels, _) = rows(1, 200, k);
        for (i, y) in labels.iter_mut().enumerate() {
            if *y < 0 {
                *y = (i % k) as i32;
            }
        }
        let lac = [Some(0.5f32), None];
        SetCalibration::fit(
            opts,
            &SetSource {
                name: "src",
                k,
                logits: &logits,
                labels: &labels,
                correct: 80,
            },
            &[0.1, 0.3],
            Modes { raw: 1.0, ts: 0.7 },
            Modes {
                raw: &lac,
                ts: &lac,
            },
        )
        .unwrap()
    }

    fn tally(cal: &SetCalibration, k: usize, range: std::ops::Range<usize>) -> SetTally {
        let (logits, labels, slides) = rows(2, 9000, k);
        let mut t = SetTally::empty(cal, k);
        t.add(
            cal,
            Modes { raw: 1.0, ts: 0.7 },
            &SetRows {
                name: "t",
                row_offset: range.start as u64,
                k,
                logits: &logits[range.start * k..range.end * k],
                labels: &labels[range.clone()],
                groups: [None, Some(&slides[range])],
            },
        )
        .unwrap();
        t
    }

    /// Cut at 0, 1 and around the 4096-row parallel blocks (4095, 4096, 4097, 8193),
    /// tallied apart and merged in reverse: the same counts as the whole, randomised
    /// draws included (they are keyed by the row's index in the target).
    #[test]
    fn shards_merge_to_the_whole() {
        for (k, cc, randomize) in [(4, true, true), (12, false, true), (3, true, false)] {
            let cal = calibration(k, &options("lac,aps,raps,saps,topk", cc, randomize));
            let whole = tally(&cal, k, 0..9000);
            let cuts = [0, 1, 4095, 4096, 4097, 8193, 9000];
            let mut merged = SetTally::empty(&cal, k);
            for w in cuts.windows(2).rev() {
                merged.checked_merge(&tally(&cal, k, w[0]..w[1])).unwrap();
            }
            assert_eq!(merged, whole);
            assert_eq!(whole.inconsistency(&cal, k), None);
            assert_eq!(whole.rows(), 9000);
        }
    }

    /// A forged count (more covered than labelled, a short list) is found.
    #[test]
    fn damaged_counts_are_found() {
        let k = 4;
        let cal = calibration(k, &options("aps", false, false));
        let t = tally(&cal, k, 0..100);
        let mut bad = t.clone();
        bad.pairs[0].raw[pair::ENTRIES + entry::COVERED] += 1000;
        assert!(bad.inconsistency(&cal, k).is_some());
        let mut short = t.clone();
        short.pairs[0].ts.pop();
        assert!(short.inconsistency(&cal, k).is_some());
        let mut classes = t;
        classes.classes.raw[0] += 1;
        assert!(classes.inconsistency(&cal, k).is_some());
    }

    /// Entries come per score, marginal before class-conditional, then levels; the
    /// marginal LAC entry keeps the given qhat.
    #[test]
    fn entries_in_report_order() {
        let cal = calibration(3, &options("aps,lac", true, false));
        let got: Vec<(String, bool, f64)> = cal
            .modes
            .raw
            .entries
            .iter()
            .map(|e| (e.score.clone(), e.class_conditional, e.alpha))
            .collect();
        let want = [
            ("aps", false, 0.1),
            ("aps", false, 0.3),
            ("aps", true, 0.1),
            ("aps", true, 0.3),
            ("lac", false, 0.1),
            ("lac", false, 0.3),
            ("lac", true, 0.1),
            ("lac", true, 0.3),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1, g.2), w);
        }
        assert_eq!(cal.modes.raw.entries[4].qhat, vec![Some(0.5)]);
        assert_eq!(cal.modes.raw.entries[5].qhat, vec![None]);
        assert_eq!(cal.modes.raw.cpc.len(), 1);
    }

    /// Strata bounds (DESIGN.md 2.14) and the smallest two with ties.
    #[test]
    fn strata_and_smallest_two() {
        let cases = [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (10, 2), (11, 3)];
        for (size, s) in cases {
            assert_eq!(stratum(size), s, "size {size}");
        }
        for (size, s) in [(100, 3), (101, 4), (1000, 4), (1001, 5)] {
            assert_eq!(stratum(size), s, "size {size}");
        }
        assert_eq!(smallest_two(&[0.5, 0.2, 0.2]), (0.2, 0.2));
        assert_eq!(smallest_two(&[0.5, 0.1, 0.3]), (0.1, 0.3));
    }

    /// Bad options name the option.
    #[test]
    fn bad_options_name_themselves() {
        let mut o = options("aps", false, false);
        o.raps_lambda = f64::NAN;
        assert!(o.parsed().unwrap_err().to_string().contains("raps-lambda"));
        let mut o = options("aps", false, false);
        o.saps_lambda = -1.0;
        assert!(o.parsed().unwrap_err().to_string().contains("saps-lambda"));
        assert!(options("aps,lac,aps", false, false).parsed().is_err());
        assert!(options("lac,nope", false, false).parsed().is_err());
        assert!(options("", false, false).parsed().is_err());
    }
}
