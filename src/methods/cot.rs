//! COT, confidence optimal transport (Lu, Y. et al. 2023; DESIGN.md 2.11), exact: one
//! minus the optimal transport cost between a target's rows (mass `1/N` each) and the
//! source's label shares `pi_k = n_k / n`, a row's cost to class k being `c_ik = 1 - p_ik`.
//!
//! The masses are made integers (`n` units a row, `n_k N` units a class) and the costs
//! grid integers ([`transport::grid_cost`]), so the optimum is found exactly:
//! - K = 2, closed form: the `n_1 N` units class 1 needs come from the rows that gain
//!   most by going there (largest `c_i0 - c_i1`, i.e. `p_i1 - p_i0`), whole rows first and
//!   a fraction of the next; tied rows cost the same, so which one moves does not matter.
//! - K > 2: [`transport::solve`], successive shortest paths over the K classes.
//!
//! [`CotRows`] carries a target's rows to the report, where COT is solved for the target
//! and each of its groups.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::cpu::bootstrap::draw_weights;
use crate::cpu::softmax::softmax;
use crate::kernel::bootstrap::REPS_PER_DRAW;
use crate::kernel::cot_two_class::TwoClassSums;
use crate::methods::cott::{
    equal_runs, two_class_sets_in, two_class_sets_with_cot, CottThreshold, TwoClassSet,
};
use crate::methods::transport::{self, grid_cost, COST_GRID_BITS};
use crate::report::estimates::Modes;

/// The share of each class among the labelled rows, as counts (`-1` = unknown, skipped).
pub fn class_counts(labels: &[i64], k: usize) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; k];
    for (row, &y) in labels.iter().enumerate() {
        if y == -1 {
            continue;
        }
        if y < -1 || y >= k as i64 {
            return Err(Error::LabelOutOfRange {
                what: "COT source labels".into(),
                row,
                label: y,
                k,
            });
        }
        counts[y as usize] += 1;
    }
    Ok(counts)
}

/// The grid costs `1 - p_ik` of row-major f32 probabilities.
fn grid_costs(probs: &[f32]) -> Vec<i64> {
    probs.iter().map(|&p| grid_cost(1.0 - p as f64)).collect()
}

/// COT's transport cost per unit of target mass (the error COT predicts): the optimal
/// cost of moving `N = probs.len() / k` rows of mass `1/N` to the classes in the shares
/// of `class_counts`. `probs` are f32 probabilities, row-major.
pub fn cot_cost(probs: &[f32], k: usize, class_counts: &[u64]) -> Result<f64> {
    check_cot_input(probs, k, class_counts)?;
    let costs = grid_costs(probs);
    grid_cot_cost(&costs, k, class_counts)
}

/// [`cot_cost`]'s checks: K >= 2, one count a class, whole rows in `[0, 1]`.
fn check_cot_input(probs: &[f32], k: usize, class_counts: &[u64]) -> Result<()> {
    check_classes(k, class_counts)?;
    check_probabilities(probs, k)
}

/// COT's class checks: K >= 2 and one source count a class.
pub(crate) fn check_classes(k: usize, class_counts: &[u64]) -> Result<()> {
    if k < 2 {
        return Err(Error::TooFewClasses {
            what: "COT".into(),
            k,
        });
    }
    if class_counts.len() != k {
        return Err(Error::LengthMismatch {
            what: "COT class counts".into(),
            detail: format!("{} counts for K = {k}", class_counts.len()),
        });
    }
    Ok(())
}

/// COT's probability checks: whole rows of K, every value in `[0, 1]`.
pub(crate) fn check_probabilities(probs: &[f32], k: usize) -> Result<()> {
    if !probs.len().is_multiple_of(k) {
        return Err(Error::LengthMismatch {
            what: "COT probabilities".into(),
            detail: format!("{} values do not make rows of K = {k}", probs.len()),
        });
    }
    if let Some(i) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::Invalid(format!(
            "COT: probability {} of row {} is not in [0, 1]",
            probs[i],
            i / k
        )));
    }
    Ok(())
}

/// [`cot`] on `backend`: at K = 2 by the mergeable passes of `kernel::cot_two_class`
/// (the GPU kernel or its CPU mirror: the same integers, so the same bits as [`cot`] on
/// either); K > 2 by the host's exact solver on every backend.
pub fn cot_on<B: Backend + ?Sized>(
    backend: &B,
    probs: &[f32],
    k: usize,
    class_counts: &[u64],
) -> Result<f64> {
    if k != 2 {
        return cot(probs, k, class_counts);
    }
    check_cot_input(probs, k, class_counts)?;
    let n_source: u64 = class_counts.iter().sum();
    let n = (probs.len() / 2) as u64;
    if n_source == 0 || n == 0 {
        // The host's typed errors.
        return cot(probs, k, class_counts);
    }
    let demand1 = demand_units(class_counts, n as usize)?[1];
    let (whole, part) = (demand1 / n_source, demand1 % n_source);
    let s = backend.cot_two_class(probs, whole)?;
    Ok(two_class_estimate(&s, n_source, part))
}

/// COT from the K = 2 sums of a set (`whole` rows move to class 1, and `part` units of
/// the next), as [`two_class_units`]: every row at class 0, less what the moved units
/// gain.
pub(crate) fn two_class_estimate(s: &TwoClassSums, n_source: u64, part: u64) -> f64 {
    let mut moved = s.top * n_source as i128;
    if part > 0 {
        moved += s.next.unwrap_or(0) as i128 * part as i128;
    }
    let units = (s.base * n_source as i128 - moved) as u128;
    1.0 - mean(units, s.n as u128 * n_source as u128)
}

/// COT at K = 2 of a set of `n` rows that is read in passes, in bounded memory (one
/// chunk at a time): `each_pass(f)` must feed `f` the set's probabilities (`rows x 2`,
/// finite in `[0, 1]`), every row once, in chunks of any size and order, and is called
/// once a pass (seven: six histograms, one sums; DESIGN.md 2.11's rounds). Each pass is
/// a sum over chunks, so chunks and shards may be read in any order and the value is
/// [`cot`]'s of all the rows, bit for bit. A pass that sees other than `n` rows is an
/// error (a file that changed between passes).
pub fn cot_two_class_streamed<B: Backend + ?Sized>(
    backend: &B,
    n: u64,
    class_counts: &[u64],
    mut each_pass: impl FnMut(&mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()>,
) -> Result<f64> {
    let v = cot_two_class_streamed_sets(backend, &[n], class_counts, |feed| {
        each_pass(&mut |p| feed(0, p))
    })?;
    Ok(v[0])
}

/// What a pass of [`cot_two_class_streamed_sets`] feeds: `(set, probabilities)` chunks.
pub type SetFeed<'a> = dyn FnMut(usize, &[f32]) -> Result<()> + 'a;

/// [`cot_two_class_streamed`] of several sets read together (a target and its groups:
/// each its own problem against the source's shares), their passes in lockstep so that
/// one read of the rows serves them all: `each_pass(f)` feeds `f(set, probs)` every row
/// of every set (`sizes[set]` rows each, a row may go to several sets). One COT a set.
pub fn cot_two_class_streamed_sets<B: Backend + ?Sized>(
    backend: &B,
    sizes: &[u64],
    class_counts: &[u64],
    each_pass: impl FnMut(&mut SetFeed<'_>) -> Result<()>,
) -> Result<Vec<f64>> {
    use crate::kernel::cot_two_class::{TwoClassRounds, TwoClassTotals};
    let (sets, parts) = two_class_sets(sizes, class_counts)?;
    let n_source: u64 = class_counts.iter().sum();
    let mut rounds = TwoClassRounds::new(&sets)?;
    let mut each_pass = each_pass;
    while let Some(plan) = rounds.plan() {
        let mut totals = TwoClassTotals::zeros(&plan);
        let mut seen = vec![0u64; sizes.len()];
        each_pass(&mut |set: usize, probs: &[f32]| {
            let Some(n) = seen.get_mut(set) else {
                return Err(Error::Invalid(format!(
                    "COT: rows fed to set {set} of {}",
                    sizes.len()
                )));
            };
            *n += (probs.len() / 2) as u64;
            if let Some(p) = plan.pass(set) {
                totals.add(set, backend.cot_two_class_pass(probs, p)?)?;
            }
            Ok(())
        })?;
        check_seen(&seen, sizes)?;
        rounds.advance(totals)?;
    }
    Ok(rounds
        .finish()?
        .iter()
        .zip(&parts)
        .map(|(s, &part)| two_class_estimate(s, n_source, part))
        .collect())
}

/// Every set saw its rows in a pass: another count means a file changed between passes.
pub(crate) fn check_seen(seen: &[u64], sizes: &[u64]) -> Result<()> {
    if let Some(set) = (0..sizes.len()).find(|&s| seen[s] != sizes[s]) {
        return Err(Error::Invalid(format!(
            "COT: a pass read {} rows of a set of {} (did a file change between passes?)",
            seen[set], sizes[set]
        )));
    }
    Ok(())
}

/// `(n, whole)` a set, and each set's part-row units.
pub(crate) type TwoClassSets = (Vec<(u64, u64)>, Vec<u64>);

/// K = 2's sets for [`TwoClassRounds`](crate::kernel::cot_two_class::TwoClassRounds):
/// `(n, whole)` a set (rows, rows whose every unit goes to class 1) and each set's
/// part-row units.
pub(crate) fn two_class_sets(sizes: &[u64], class_counts: &[u64]) -> Result<TwoClassSets> {
    if class_counts.len() != 2 {
        return Err(Error::LengthMismatch {
            what: "COT class counts".into(),
            detail: format!("{} counts for K = 2", class_counts.len()),
        });
    }
    let n_source: u64 = class_counts.iter().sum();
    if n_source == 0 || sizes.contains(&0) {
        return Err(Error::Empty {
            what: "COT".into(),
            detail: "no labelled source row or a set without rows".into(),
        });
    }
    let mut sets = Vec::with_capacity(sizes.len());
    let mut parts = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let demand1 = demand_units(class_counts, n as usize)?[1];
        sets.push((n, demand1 / n_source));
        parts.push(demand1 % n_source);
    }
    Ok((sets, parts))
}

/// [`cot_cost`] of rows already on the cost grid (`n x k` integers, row-major): the one
/// solver behind the in-memory function and the reports' COT.
pub fn grid_cot_cost(costs: &[i64], k: usize, class_counts: &[u64]) -> Result<f64> {
    let n_source: u64 = class_counts.iter().sum();
    if n_source == 0 {
        return Err(Error::Empty {
            what: "COT source labels".into(),
            detail: "no labelled source row: the class shares are unknown".into(),
        });
    }
    let n = costs.len() / k;
    if n == 0 {
        return Err(Error::Empty {
            what: "COT target".into(),
            detail: "no rows".into(),
        });
    }
    let demand = demand_units(class_counts, n)?;
    let cost_units = if k == 2 {
        two_class_sets_with_cot(costs, None, 1, class_counts, None)?[0].cot_units
    } else {
        transport::solve(costs, k, n_source, &demand)?.cost_units
    };
    Ok(mean(cost_units, n as u128 * n_source as u128))
}

/// Each class's units for `n` target rows: `n_k n` (an overflow is a typed error).
pub(crate) fn demand_units(class_counts: &[u64], n: usize) -> Result<Vec<u64>> {
    class_counts
        .iter()
        .map(|&c| {
            c.checked_mul(n as u64)
                .ok_or_else(|| Error::Invalid(format!("COT: {c} x {n} units overflow")))
        })
        .collect()
}

/// K > 2: COT's cost (per unit of mass) of grid costs and, with a threshold, COTT's
/// estimate from the same optimal plan (one transport solve for both).
fn cot_and_cott(
    costs: &[i64],
    k: usize,
    class_counts: &[u64],
    thr: Option<&CottThreshold>,
) -> Result<(f64, Option<f64>)> {
    let Some(thr) = thr else {
        return Ok((grid_cot_cost(costs, k, class_counts)?, None));
    };
    let n_source: u64 = class_counts.iter().sum();
    let n = costs.len() / k;
    if n_source == 0 || n == 0 {
        // The same typed errors as COT alone.
        return Ok((grid_cot_cost(costs, k, class_counts)?, None));
    }
    let demand = demand_units(class_counts, n)?;
    let plan = transport::solve(costs, k, n_source, &demand)?;
    let cot = mean(plan.cost_units, n as u128 * n_source as u128);
    let cott = crate::methods::cott::from_flows(costs, k, class_counts, plan.flows, thr)?;
    Ok((cot, Some(cott)))
}

/// COT's estimate of the target's accuracy: `1 - cot_cost`.
pub fn cot(probs: &[f32], k: usize, class_counts: &[u64]) -> Result<f64> {
    Ok(1.0 - cot_cost(probs, k, class_counts)?)
}

/// `cost_units / (units 2^40)`, rounded once.
pub(crate) fn mean(cost_units: u128, units: u128) -> f64 {
    let scale = units << COST_GRID_BITS;
    (cost_units / scale) as f64 + (cost_units % scale) as f64 / scale as f64
}

/// One chunk of a target as COT sees it: its first row, its logits (`rows x K`,
/// row-major) and its group ids (one array per group array present).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CotChunk {
    row_offset: u64,
    rows: u64,
    #[serde(with = "crate::serde_bytes::f32s")]
    logits: Vec<f32>,
    #[serde(with = "b64_groups")]
    groups: [Option<Vec<i64>>; 2],
}

/// COT's share of a target (DESIGN.md 2.11): the rows themselves (logits and group ids),
/// kept until the report, where each mode's costs `1 - p_ik` are put on the 2^-40 grid
/// and the optimum is solved exactly for the target and for each group. Chunks are kept
/// in row order, so the rows (and the solution, an exact integer optimum) do not depend
/// on chunking or merge order. Probabilities are the CPU softmax's (`cpu::softmax`) in
/// both backends, so COT is the same bits on CPU and GPU runs.
///
/// Not a bounded summary: a tally file carries these rows (4 K bytes a row, plus 8 a
/// group id), which is what makes merged shards give the unsharded COT bit for bit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CotRows {
    chunks: Vec<CotChunk>,
    /// Rows to make room for when the first chunk comes (a hint: see `reserve_rows`).
    #[serde(skip)]
    room: usize,
}

impl PartialEq for CotRows {
    /// Equal rows, whatever the chunking.
    fn eq(&self, other: &Self) -> bool {
        let flat = |r: &CotRows| {
            let mut logits = Vec::new();
            let mut groups: [Vec<i64>; 2] = Default::default();
            for c in &r.chunks {
                logits.extend(c.logits.iter().map(|v| v.to_bits()));
                for (g, ids) in groups.iter_mut().zip(&c.groups) {
                    g.extend(ids.iter().flatten());
                }
            }
            (logits, groups)
        };
        flat(self) == flat(other)
    }
}

impl CotRows {
    /// The logits of every chunk (`rows x K`, row-major), in row order.
    pub fn logits(&self) -> impl Iterator<Item = &[f32]> {
        self.chunks.iter().map(|c| c.logits.as_slice())
    }

    /// Makes the first chunk added next hold room for `rows` rows, so a target's rows
    /// streamed in chunks grow in place instead of being copied at each doubling (and
    /// their pages faulted in again). A hint: wrong or failing to allocate, it only
    /// costs the growth it would have saved.
    pub fn reserve_rows(&mut self, rows: usize) {
        self.room = rows;
    }

    /// Adds a chunk of `logits` (`rows x k`) whose first row is `row_offset`.
    pub fn add(&mut self, row_offset: u64, logits: &[f32], k: usize, groups: [Option<&[i64]>; 2]) {
        if logits.is_empty() || k == 0 {
            return;
        }
        let rows = (logits.len() / k) as u64;
        // A chunk that follows on from the last (the usual stream, in row order) joins
        // it in place, as `insert` would join it, with no copy of its own.
        if let Some(last) = self.chunks.last_mut() {
            if last.row_offset + last.rows == row_offset
                && last.groups.each_ref().map(Option::is_some) == groups.map(|g| g.is_some())
            {
                last.rows += rows;
                last.logits.extend_from_slice(logits);
                for (a, b) in last.groups.iter_mut().zip(groups) {
                    if let (Some(a), Some(b)) = (a, b) {
                        a.extend_from_slice(b);
                    }
                }
                return;
            }
        }
        let room = std::mem::take(&mut self.room);
        // Values a row (none for a chunk shorter than a row, kept as it comes).
        let width = |v: usize| v.checked_div(rows as usize).unwrap_or(0);
        let chunk = CotChunk {
            row_offset,
            rows,
            logits: with_room(logits, room.saturating_mul(width(logits.len()))),
            groups: groups.map(|g| g.map(|g| with_room(g, room.saturating_mul(width(g.len()))))),
        };
        self.insert(vec![chunk]);
    }

    /// Adds the rows of `other` (disjoint rows of the same target).
    pub fn merge(&mut self, other: &CotRows) {
        self.insert(other.chunks.clone());
    }

    /// Adds chunks, then joins chunks whose rows follow on: one chunk per run of
    /// consecutive rows, so the rows' form (and a tally's JSON) does not depend on how
    /// they were cut.
    fn insert(&mut self, chunks: Vec<CotChunk>) {
        let mut all = std::mem::take(&mut self.chunks);
        all.extend(chunks);
        all.sort_by_key(|c| c.row_offset);
        let mut out: Vec<CotChunk> = Vec::with_capacity(all.len());
        for c in all {
            match out.last_mut() {
                Some(last)
                    if last.row_offset + last.rows == c.row_offset
                        && last.groups.each_ref().map(Option::is_some)
                            == c.groups.each_ref().map(Option::is_some) =>
                {
                    last.rows += c.rows;
                    last.logits.extend_from_slice(&c.logits);
                    for (a, b) in last.groups.iter_mut().zip(c.groups) {
                        if let (Some(a), Some(b)) = (a, b) {
                            a.extend(b);
                        }
                    }
                }
                _ => out.push(c),
            }
        }
        self.chunks = out;
    }

    /// Why these rows cannot be the rows `rows` (sorted `[start, end)` ranges) of a
    /// target of `k` classes with group arrays `groups`, if they cannot (a tally file's
    /// COT rows are untrusted input).
    pub fn inconsistency(&self, k: usize, rows: &[[u64; 2]], groups: [bool; 2]) -> Option<String> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for c in &self.chunks {
            let n = c.rows;
            if c.logits.len() as u64 != n.saturating_mul(k as u64) || n == 0 {
                return Some(format!(
                    "COT rows at {}: logits do not make rows of K",
                    c.row_offset
                ));
            }
            if c.logits.iter().any(|v| !v.is_finite()) {
                return Some(format!(
                    "COT rows at {}: a logit is not finite",
                    c.row_offset
                ));
            }
            for (ids, on) in c.groups.iter().zip(groups) {
                if ids.as_ref().map(|v| v.len() as u64) != on.then_some(n) {
                    return Some(format!(
                        "COT rows at {}: group ids do not match",
                        c.row_offset
                    ));
                }
            }
            let Some(end) = c.row_offset.checked_add(n) else {
                return Some(format!("COT rows at {}: past the last row", c.row_offset));
            };
            match ranges.last_mut() {
                Some([_, e]) if *e == c.row_offset => *e = end,
                Some([_, e]) if *e > c.row_offset => {
                    return Some(format!("COT rows at {}: overlap", c.row_offset))
                }
                _ => ranges.push([c.row_offset, end]),
            }
        }
        (ranges != rows).then(|| "COT rows do not cover the tally's rows".into())
    }

    /// Every row's grid costs at temperature `t`, in row order.
    fn costs(&self, k: usize, t: f32) -> Vec<i64> {
        let mut out = vec![0i64; self.rows(k) * k];
        let mut at = 0;
        for c in &self.chunks {
            grid_costs_into(&c.logits, k, t, &mut out[at..at + c.logits.len()]);
            at += c.logits.len();
        }
        out
    }

    /// Rows held.
    fn rows(&self, k: usize) -> usize {
        self.chunks.iter().map(|c| c.logits.len() / k).sum()
    }

    /// COT of the whole target and of every group, in each mode (temperatures `t`),
    /// against the source's `class_counts`. Each mode's costs are made once; a group is
    /// its own problem (its rows against the source's shares).
    pub fn solve(
        &self,
        k: usize,
        class_counts: &[u64],
        t: Modes<f32>,
        cott: Option<&Modes<CottThreshold>>,
    ) -> Result<CotSolution> {
        let partitions: [Option<Partition>; 2] = [0, 1].map(|g| self.partition(g, k));
        type Solved = (f64, [Vec<f64>; 2], Option<(f64, [Vec<f64>; 2])>);
        let one = |ts: bool| -> Result<Solved> {
            let costs = self.costs(k, *t.of(ts));
            let thr = cott.map(|c| c.of(ts));
            if k == 2 {
                return two_class_solve(&costs, &partitions, class_counts, thr);
            }
            // K > 2: one transport solve a set gives both COT and COTT.
            let (target, target_cott) = cot_and_cott(&costs, k, class_counts, thr)?;
            let mut groups: [Vec<f64>; 2] = Default::default();
            let mut cott_groups: [Vec<f64>; 2] = Default::default();
            for ((out, out_cott), p) in groups.iter_mut().zip(&mut cott_groups).zip(&partitions) {
                let Some(p) = p else { continue };
                let both: Vec<(f64, Option<f64>)> = p
                    .rows(&costs, k)
                    .par_iter()
                    .map(|rows| cot_and_cott(rows, k, class_counts, thr))
                    .collect::<Result<_>>()?;
                *out = both.iter().map(|b| b.0).collect();
                *out_cott = both.iter().map(|b| b.1.unwrap_or(f64::NAN)).collect();
            }
            let thresholded = target_cott.map(|c| (c, cott_groups));
            Ok((target, groups, thresholded))
        };
        let (raw, ts) = rayon::join(|| one(false), || one(true));
        let ((raw, raw_groups, raw_cott), (ts, ts_groups, ts_cott)) = (raw?, ts?);
        // Each group array's values by id, both modes, through `f`.
        let by_id = |raw: &[Vec<f64>; 2], ts: &[Vec<f64>; 2], f: fn(f64) -> f64| {
            let mut out: [BTreeMap<i64, Modes<f64>>; 2] = Default::default();
            for (g, p) in partitions.iter().enumerate() {
                let Some(p) = p else { continue };
                out[g] = p
                    .ids
                    .iter()
                    .zip(raw[g].iter().zip(&ts[g]))
                    .map(|(&id, (&r, &t))| {
                        (
                            id,
                            Modes {
                                raw: f(r),
                                ts: f(t),
                            },
                        )
                    })
                    .collect();
            }
            out
        };
        let (cott, cott_groups) = match (raw_cott, ts_cott) {
            (Some((r, rg)), Some((t, tg))) => {
                (Some(Modes { raw: r, ts: t }), by_id(&rg, &tg, |v| v))
            }
            _ => (None, Default::default()),
        };
        let groups = by_id(&raw_groups, &ts_groups, |cost| 1.0 - cost);
        Ok(CotSolution {
            target: Modes {
                raw: 1.0 - raw,
                ts: 1.0 - ts,
            },
            groups,
            cott,
            cott_groups,
        })
    }

    /// Every bootstrap replicate's COT of the whole target (DESIGN.md 2.12), per mode:
    /// replicate `b` weighs row `i` by the Poisson weight the target tally uses
    /// (`weights4(seed, name_key, i, b / 4)`), its probabilities are at the replicate's
    /// temperature (`t.ts[b]`: refitted in each replicate; `t.raw[b]` = 1), and the
    /// source's shares are its weighted class counts `class_counts[b]`; the weighted
    /// problem is solved exactly as the point one (integer units: `w_i n_b` a row,
    /// `n_kb W` a class). NaN where the replicate drew no target row.
    ///
    /// With `cott` (every replicate's source threshold per mode), also every replicate's
    /// COTT: the same weighted problem's plan read at the replicate's threshold (K > 2:
    /// from the same solve; K = 2: [`two_class_sets`](crate::methods::cott::two_class_sets)
    /// on the replicate's multiset, rows in row order as the point estimate's).
    pub fn replicates(
        &self,
        k: usize,
        t: &Modes<Vec<f32>>,
        seed: u64,
        name_key: u32,
        class_counts: &[Vec<u64>],
        cott: Option<&Modes<Vec<Option<CottThreshold>>>>,
    ) -> Result<ReplicateValues> {
        let draw = Draw {
            seed,
            name_key,
            class_counts,
        };
        let index: Vec<u64> = self
            .chunks
            .iter()
            .flat_map(|c| c.row_offset..c.row_offset + c.rows)
            .collect();
        let logits: Vec<f32> = self
            .chunks
            .iter()
            .flat_map(|c| c.logits.iter().copied())
            .collect();
        if k == 2 {
            // Rows in order of their margin z_1 - z_0 (the order of the gains at any T,
            // up to rounding, which the walk checks), then by row. The margin rounded to
            // f32 is all a row's costs depend on (the softmax takes `x = (z_min - z_max)
            // / T` from that f32 difference, and its sign gives the larger class), so rows
            // it ties have the same costs and their order changes no walk; rounding is
            // monotone, so it orders the rest as the exact margin does.
            // Keys: the f32 margin's order-preserving bits, negated (largest first), above
            // the row: one u64 a row.
            let mut keyed: Vec<u64> = logits
                .par_chunks_exact(2)
                .enumerate()
                .map(|(i, z)| {
                    let m = (z[1] - z[0]).to_bits();
                    let sortable = if m >> 31 == 1 { !m } else { m | 1 << 31 };
                    ((!sortable as u64) << 32) | i as u64
                })
                .collect();
            keyed.par_sort_unstable();
            let order: Vec<u32> = keyed.into_iter().map(|k| k as u32).collect();
            let sorted_logits: Vec<f32> = order
                .iter()
                .flat_map(|&i| [logits[2 * i as usize], logits[2 * i as usize + 1]])
                .collect();
            let sorted_index: Vec<u64> = order.iter().map(|&i| index[i as usize]).collect();
            let (cot, thresholded) = draw.two_class(&sorted_logits, &sorted_index, t, cott)?;
            return Ok((cot, thresholded));
        }
        let (raw, ts) = rayon::join(
            || draw.general(&logits, &index, k, &t.raw, cott.map(|c| c.raw.as_slice())),
            || draw.general(&logits, &index, k, &t.ts, cott.map(|c| c.ts.as_slice())),
        );
        let (raw, ts) = (raw?, ts?);
        let split = |v: Vec<(f64, f64)>| -> (Vec<f64>, Vec<f64>) { v.into_iter().unzip() };
        let ((raw_cot, raw_cott), (ts_cot, ts_cott)) = (split(raw), split(ts));
        Ok((
            Modes {
                raw: raw_cot,
                ts: ts_cot,
            },
            cott.map(|_| Modes {
                raw: raw_cott,
                ts: ts_cott,
            }),
        ))
    }

    /// The rows of group array `g` partitioned by id (`None` without that array). Ids
    /// come in runs (a slide's patches together): each step goes a run at a time.
    fn partition(&self, g: usize, k: usize) -> Option<Partition> {
        let mut distinct = std::collections::BTreeSet::new();
        for c in &self.chunks {
            for (id, _) in equal_runs(c.groups[g].as_ref()?) {
                distinct.insert(id);
            }
        }
        let ids: Vec<i64> = distinct.into_iter().collect();
        let mut slot = Vec::with_capacity(self.rows(k));
        let mut start = vec![0usize; ids.len() + 1];
        for c in &self.chunks {
            for (id, rows) in equal_runs(c.groups[g].as_deref().unwrap_or(&[])) {
                let s = ids.binary_search(&id).unwrap_or(0);
                slot.extend(std::iter::repeat_n(s as u32, rows.len()));
                start[s + 1] += rows.len();
            }
        }
        for i in 0..ids.len() {
            start[i + 1] += start[i];
        }
        Some(Partition { ids, slot, start })
    }
}

/// The bootstrap's draws of a target: its weights' key and each replicate's source
/// class counts.
struct Draw<'a> {
    seed: u64,
    name_key: u32,
    class_counts: &'a [Vec<u64>],
}

impl Draw<'_> {
    /// K = 2, rows (`logits`, their set indices `index`) in margin order, both modes.
    /// Per group of four replicates (one Philox draw a row gives their weights, shared by
    /// the modes): per replicate and mode a [`Walk`] down the gains until class 1's units
    /// are met, the group's eight walks a block of rows at a time, each block's costs at
    /// the walk's temperature (made once for all replicates of one temperature, as the
    /// raw mode's). The walk is exact when the gains do not increase along the order
    /// (checked); otherwise that replicate sorts its gains.
    ///
    /// With `cott`, the same walk gives each replicate's COTT at its threshold
    /// ([`Draw::finish`]).
    fn two_class(
        &self,
        logits: &[f32],
        index: &[u64],
        t: &Modes<Vec<f32>>,
        cott: Option<&Modes<Vec<Option<CottThreshold>>>>,
    ) -> Result<ReplicateValues> {
        let reps = self.class_counts.len();
        let shared = |t: &[f32]| {
            (!t.is_empty() && t.windows(2).all(|w| w[0] == w[1]))
                .then(|| grid_costs_at(logits, 2, t[0]))
        };
        let shared = Modes {
            raw: shared(&t.raw),
            ts: shared(&t.ts),
        };
        type Pair = (Modes<Vec<f64>>, Modes<Vec<f64>>);
        let groups: Vec<Pair> = (0..reps.div_ceil(REPS_PER_DRAW))
            .into_par_iter()
            // One weights buffer a worker's run of draw groups, not one a group (each a
            // fresh, page-faulted allocation of 4 bytes a row); every draw fills it whole.
            .map_init(Vec::new, |w, g| -> Result<Pair> {
                w.resize(index.len(), [0u8; REPS_PER_DRAW]);
                draw_weights(
                    self.seed,
                    self.name_key,
                    g as u32,
                    |i| index[i],
                    w,
                    |x| x.map(|x| x as u8),
                );
                let w: &[[u8; REPS_PER_DRAW]] = w;
                // Each replicate's total weight, shared by the modes.
                let mut totals = [0u64; REPS_PER_DRAW];
                for wi in w {
                    for (t, &x) in totals.iter_mut().zip(wi) {
                        *t += x as u64;
                    }
                }
                // The group's walks (replicate, mode), run a block of rows at a time so
                // a block's weights and costs stay in cache across them.
                struct Job<'c> {
                    j: usize,
                    b: usize,
                    ts: bool,
                    costs: Costs<'c>,
                    thr: Option<CottThreshold>,
                    walk: Option<Walk>,
                }
                let mut jobs: Vec<Job<'_>> = Vec::new();
                for (j, &total) in totals.iter().enumerate() {
                    let b = g * REPS_PER_DRAW + j;
                    if b >= reps {
                        break;
                    }
                    for ts in [false, true] {
                        let thr = cott.and_then(|c| c.of(ts).get(b).copied().flatten());
                        jobs.push(Job {
                            j,
                            b,
                            ts,
                            costs: Costs {
                                logits,
                                shared: shared.of(ts).as_deref(),
                                t: t.of(ts)[b],
                            },
                            thr,
                            walk: self.walk(b, total, thr.as_ref()),
                        });
                    }
                }
                let mut block = Vec::new();
                // Per lane, the block's rows it weighs and their weights: a weightless
                // row changes no walk (it takes and costs nothing, and neither its gain
                // nor its pair is looked at), so each walk sees only these, and a ts
                // walk makes costs for these only (about a third of the rows weigh
                // nothing).
                let mut picked: [Vec<usize>; REPS_PER_DRAW] = Default::default();
                let mut picked_w: [Vec<[u8; REPS_PER_DRAW]>; REPS_PER_DRAW] = Default::default();
                let mut gathered = Vec::new();
                let mut start = 0;
                while start < w.len() {
                    let end = (start + COST_BLOCK_ROWS).min(w.len());
                    for j in 0..REPS_PER_DRAW {
                        // Branch-free: every row written at the next free place, which
                        // only a weighed row keeps.
                        let (rows, ws) = (&mut picked[j], &mut picked_w[j]);
                        rows.resize(end - start, 0);
                        ws.resize(end - start, [0; REPS_PER_DRAW]);
                        let mut kept = 0usize;
                        for (o, wi) in w[start..end].iter().enumerate() {
                            rows[kept] = start + o;
                            ws[kept] = *wi;
                            kept += (wi[j] != 0) as usize;
                        }
                        rows.truncate(kept);
                        ws.truncate(kept);
                    }
                    for job in &mut jobs {
                        if let Some(walk) = &mut job.walk {
                            let rows = &picked[job.j];
                            walk.block(
                                job.costs.picked(rows, &mut block, &mut gathered),
                                &picked_w[job.j],
                                job.j,
                            );
                        }
                    }
                    start = end;
                }
                let mut out = Modes::<Vec<f64>>::default();
                let mut out_cott = Modes::<Vec<f64>>::default();
                for job in jobs {
                    let (v, c) = match job.walk {
                        Some(walk) => self.finish(
                            walk,
                            &job.costs,
                            w,
                            job.j,
                            job.b,
                            totals[job.j],
                            &mut block,
                            job.thr.as_ref(),
                        )?,
                        None => (f64::NAN, f64::NAN),
                    };
                    let (o, oc) = if job.ts {
                        (&mut out.ts, &mut out_cott.ts)
                    } else {
                        (&mut out.raw, &mut out_cott.raw)
                    };
                    o.push(v);
                    oc.push(c);
                }
                Ok((out, out_cott))
            })
            .collect::<Result<_>>()?;
        let mut out = Modes::<Vec<f64>>::default();
        let mut out_cott = Modes::<Vec<f64>>::default();
        for (m, c) in groups {
            out.raw.extend(m.raw);
            out.ts.extend(m.ts);
            out_cott.raw.extend(c.raw);
            out_cott.ts.extend(c.ts);
        }
        Ok((out, cott.map(|_| out_cott)))
    }

    /// One replicate `b` of [`Draw::two_class`] on its own: its [`Walk`] over every
    /// block, `walk_rows` rows at a time (small ones reach the walk's whole-block path
    /// on few rows), then [`Draw::finish`] (the tests' entry; `two_class` runs a draw
    /// group's walks a block at a time).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn two_class_one(
        &self,
        costs: &Costs<'_>,
        w: &[[u8; REPS_PER_DRAW]],
        j: usize,
        b: usize,
        total: u64,
        block: &mut Vec<i64>,
        thr: Option<&CottThreshold>,
        walk_rows: usize,
    ) -> Result<(f64, f64)> {
        let Some(mut walk) = self.walk(b, total, thr) else {
            return Ok((f64::NAN, f64::NAN));
        };
        costs.each_block(w.len(), block, |part, rows| {
            for (k, sub) in part.chunks(2 * walk_rows).enumerate() {
                let first = rows.start + k * walk_rows;
                walk.block(sub, &w[first..first + sub.len() / 2], j);
            }
        });
        self.finish(walk, costs, w, j, b, total, block, thr)
    }

    /// Replicate `b`'s walk before its first row (`None` where the replicate drew no
    /// source or no target row: its values are NaN).
    fn walk(&self, b: usize, total: u64, thr: Option<&CottThreshold>) -> Option<Walk> {
        let c = &self.class_counts[b];
        let supply: u64 = c.iter().sum();
        if supply == 0 || total == 0 {
            return None;
        }
        Some(Walk::new(
            c[1] as u128 * total as u128,
            supply,
            thr.map(|x| x.t),
        ))
    }

    /// `(COT, COTT)` of replicate `b` of [`Draw::two_class`] (weights `w[i][j]`, total
    /// weight `total`) from its finished [`Walk`], one pass over the rows: the rows
    /// class 1 takes whole, the row it splits, the rows it leaves, and the check that
    /// the rows taken are the top ones (no smaller gain taken before the boundary row, no
    /// larger one after it); where rounding breaks that, the replicate's gains are
    /// sorted. `block` is a buffer reused across replicates.
    ///
    /// With a COTT threshold, the same pass adds each row's units to E (edge cost `> t`)
    /// and F (`>= t`) under the walk's plan, and records the cost pairs of the rows whose
    /// gain is the boundary's: where they all agree, every optimal plan (and so the one
    /// [`two_class_sets`](crate::methods::cott::two_class_sets) settles) has these E and
    /// F; otherwise, or where the walk was not exact, that function runs on the
    /// replicate's multiset. Returns `(COT, COTT)` (COTT NaN without a threshold).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        walk: Walk,
        costs: &Costs<'_>,
        w: &[[u8; REPS_PER_DRAW]],
        j: usize,
        b: usize,
        total: u64,
        block: &mut Vec<i64>,
        thr: Option<&CottThreshold>,
    ) -> Result<(f64, f64)> {
        let c = &self.class_counts[b];
        let supply = walk.supply;
        let need = c[1] as u128 * total as u128;
        let low = walk.split.map_or(walk.taken_min, |s| s.gain);
        let top = walk.taken_min >= low && low >= walk.rest_max;
        let units = if top {
            // Whole rows at their class's cost, the split row in proportion.
            let whole = walk.whole_cost as u128 * supply as u128;
            whole + walk.split.map_or(0, |s| s.cost)
        } else {
            self.sorted_units(costs, w, j, supply, need, block)
        };
        let cot = 1.0 - mean(units, total as u128 * supply as u128);
        let Some(thr) = thr else {
            return Ok((cot, f64::NAN));
        };
        // The rows tied at the boundary gain (the only rows a settlement can move) must
        // all have the boundary row's costs.
        let boundary_pair = match walk.split {
            Some(s) => Some(s.pair),
            None => walk.taken_pair,
        };
        let agrees = |at: i64, pair: Option<[i64; 2]>| at != low || pair == boundary_pair;
        let settled = c[1] == 0
            || (boundary_pair.is_some()
                && agrees(walk.taken_min, walk.taken_pair)
                && agrees(walk.rest_max, walk.rest_pair));
        let cott = if top && settled {
            let all = total as u128 * supply as u128;
            let (e, f) = walk.thresholded();
            1.0 - (e as f64 + thr.lambda * (f - e) as f64) / all as f64
        } else {
            let mut multiset = Vec::new();
            costs.each_block(w.len(), block, |part, range| {
                for (r, wi) in part.chunks_exact(2).zip(&w[range]) {
                    for _ in 0..wi[j] {
                        multiset.extend_from_slice(r);
                    }
                }
            });
            crate::methods::cott::two_class_sets(&multiset, None, 1, c, thr)?[0]
        };
        Ok((cot, cott))
    }

    /// The cost units when the replicate's rows are sorted by gain first (the fallback
    /// of [`Draw::finish`]): every row at class 0's cost, less the gains class 1
    /// takes (`need` units).
    fn sorted_units(
        &self,
        costs: &Costs<'_>,
        w: &[[u8; REPS_PER_DRAW]],
        j: usize,
        supply: u64,
        mut need: u128,
        block: &mut Vec<i64>,
    ) -> u128 {
        let mut rows: Vec<(i64, u64)> = Vec::new();
        let mut base = 0i128;
        costs.each_block(w.len(), block, |part, range| {
            for (r, wi) in part.chunks_exact(2).zip(&w[range]) {
                if wi[j] > 0 {
                    base += wi[j] as i128 * r[0] as i128;
                    rows.push((r[0] - r[1], wi[j] as u64));
                }
            }
        });
        rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        let mut moved = 0i128;
        for (gain, wj) in rows {
            if need == 0 {
                break;
            }
            let take = (wj as u128 * supply as u128).min(need);
            moved += take as i128 * gain as i128;
            need -= take;
        }
        (base * supply as i128 - moved) as u128
    }

    /// K > 2: each replicate's multiset (a row repeated by its weight) at its
    /// temperature, through the transport solver: `(COT, COTT)` per replicate (COTT NaN
    /// without a threshold).
    fn general(
        &self,
        logits: &[f32],
        index: &[u64],
        k: usize,
        t: &[f32],
        cott: Option<&[Option<CottThreshold>]>,
    ) -> Result<Vec<(f64, f64)>> {
        (0..self.class_counts.len())
            .into_par_iter()
            .map(|b| {
                let costs = grid_costs_at(logits, k, t[b]);
                let multiset = weighted_rows(&costs, k, &self.weights(index, b));
                let c = &self.class_counts[b];
                if multiset.is_empty() || c.iter().sum::<u64>() == 0 {
                    return Ok((f64::NAN, f64::NAN));
                }
                let thr = cott.and_then(|c| c[b]);
                let (cost, cott) = cot_and_cott(&multiset, k, c, thr.as_ref())?;
                Ok((1.0 - cost, cott.unwrap_or(f64::NAN)))
            })
            .collect()
    }

    /// Replicate `b`'s weight of every row (`index`: the rows' indices in their set).
    fn weights(&self, index: &[u64], b: usize) -> Vec<u8> {
        crate::kernel::bootstrap::replicate_weights(
            self.seed,
            self.name_key,
            index.iter().copied(),
            b,
        )
    }
}

/// One replicate's K = 2 walk down the rows in margin order ([`Draw::finish`]),
/// counted in row weights where the old form counted units (`weight x supply` a row):
/// class 1 needs `need = left supply + rem` units (`rem < supply`), so a row of weight
/// `w` is taken whole while `w <= left` and split (`left supply + rem` of its units to
/// class 1) at the first row with `w > left`; the unit sums are the weight sums times
/// `supply`, the same integers. Per-block sums are i64 (weights <= 12, costs <= 2^40,
/// 16,384 rows: under 2^58) added to i128 totals.
#[derive(Clone, Debug, PartialEq)]
struct Walk {
    supply: u64,
    left: u64,
    rem: u64,
    /// Class 1's demand is met: the rows that follow stay at class 0.
    met: bool,
    /// Weighted costs of the rows not split: class 1's for the rows taken whole, class
    /// 0's for the rest.
    whole_cost: i128,
    split: Option<Split>,
    /// Smallest gain of a drawn row taken whole, largest of a drawn row left.
    taken_min: i64,
    rest_max: i64,
    /// COTT: the threshold, E and F in weights (whole rows), and the cost pairs at the
    /// taken minimum and the rest maximum (`None` once two differ at that gain).
    t: Option<i64>,
    e_weight: u64,
    f_weight: u64,
    taken_pair: Option<[i64; 2]>,
    rest_pair: Option<[i64; 2]>,
}

/// The row class 1 splits: its gain, its costs, and in units its cost and (COTT) its
/// E and F under the split.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Split {
    gain: i64,
    pair: [i64; 2],
    cost: u128,
    e: u128,
    f: u128,
}

impl Walk {
    fn new(need: u128, supply: u64, t: Option<i64>) -> Walk {
        let (left, rem) = (
            (need / supply as u128) as u64,
            (need % supply as u128) as u64,
        );
        Walk {
            supply,
            left,
            rem,
            met: need == 0,
            whole_cost: 0,
            split: None,
            taken_min: i64::MAX,
            rest_max: i64::MIN,
            t,
            e_weight: 0,
            f_weight: 0,
            taken_pair: None,
            rest_pair: None,
        }
    }

    /// The rows of one block (`part`: their cost pairs; `w`: their weights, lane `j`).
    fn block(&mut self, part: &[i64], w: &[[u8; REPS_PER_DRAW]], j: usize) {
        let mut i = 0;
        if !self.met {
            if w.iter().map(|x| x[j] as u64).sum::<u64>() < self.left {
                // Class 1 takes every row of the block whole and still wants more.
                self.take_whole(part, w, j);
                return;
            }
            i = self.take_rows(part, w, j);
        }
        if self.met {
            self.rest(&part[2 * i..], &w[i..], j);
        }
    }

    /// Class 1's rows of a block one by one, from its first, until its demand is met
    /// (a row split or the units reached exactly) or the block ends: the rows it went
    /// through.
    fn take_rows(&mut self, part: &[i64], w: &[[u8; REPS_PER_DRAW]], j: usize) -> usize {
        let rows = part.len() / 2;
        let mut i = 0;
        {
            let mut cost = 0i64;
            let (mut e, mut f) = (0u64, 0u64);
            let (track, t) = (self.t.is_some(), self.t.unwrap_or(i64::MAX));
            // Taken pair as a value and a flag, updated by selects. A weightless row is a
            // no-op here: `two_class` passes weighed rows only, the tests' entry every row.
            let mut pair = self.taken_pair.unwrap_or([0; 2]);
            let mut pair_ok = self.taken_pair.is_some();
            while i < rows {
                let (r0, r1) = (part[2 * i], part[2 * i + 1]);
                let wj = w[i][j] as u64;
                if wj > self.left {
                    self.split_at(r0, r1, wj);
                    i += 1;
                    break;
                }
                self.left -= wj;
                cost += wj as i64 * r1;
                let gain = r0 - r1;
                let drawn = wj > 0;
                if track {
                    e += wj * (r1 > t) as u64;
                    f += wj * (r1 >= t) as u64;
                    let lower = drawn & (gain < self.taken_min);
                    let differs = drawn & (gain == self.taken_min) & (pair != [r0, r1]);
                    pair = if lower { [r0, r1] } else { pair };
                    pair_ok = lower | (pair_ok & !differs);
                }
                let gain = if drawn { gain } else { i64::MAX };
                self.taken_min = self.taken_min.min(gain);
                i += 1;
                if self.left == 0 && self.rem == 0 {
                    self.met = true;
                    break;
                }
            }
            self.whole_cost += cost as i128;
            self.e_weight += e;
            self.f_weight += f;
            if self.t.is_some() {
                self.taken_pair = pair_ok.then_some(pair);
            }
        }
        i
    }

    /// The rows a block has after class 1's demand is met: each stays at class 0.
    fn rest(&mut self, part: &[i64], w: &[[u8; REPS_PER_DRAW]], j: usize) {
        let mut cost = 0i64;
        match self.t {
            None => {
                for (r, wi) in part.chunks_exact(2).zip(w) {
                    let wj = wi[j] as i64;
                    cost += wj * r[0];
                    let gain = if wj > 0 { r[0] - r[1] } else { i64::MIN };
                    self.rest_max = self.rest_max.max(gain);
                }
            }
            Some(t) => {
                let (mut e, mut f) = (0u64, 0u64);
                for (r, wi) in part.chunks_exact(2).zip(w) {
                    let wj = wi[j] as u64;
                    cost += wj as i64 * r[0];
                    e += wj * (r[0] > t) as u64;
                    f += wj * (r[0] >= t) as u64;
                    let gain = r[0] - r[1];
                    // Gains fall along the order: rarely at or above the maximum (`&`,
                    // not `&&`: no branch on the weight).
                    if (wj > 0) & (gain >= self.rest_max) {
                        let pair = [r[0], r[1]];
                        if gain > self.rest_max {
                            self.rest_pair = Some(pair);
                        } else if self.rest_pair != Some(pair) {
                            self.rest_pair = None;
                        }
                        self.rest_max = gain;
                    }
                }
                self.e_weight += e;
                self.f_weight += f;
            }
        }
        self.whole_cost += cost as i128;
    }

    /// [`Walk::block`] where the block's weights are less than `left`: no row is split and
    /// the demand is not met, so every row is taken whole. The same sums, minimum and pair
    /// as the row-by-row loop, in loops without a branch on the weights (the minimum's
    /// pair from a second look at the rows with that gain).
    fn take_whole(&mut self, part: &[i64], w: &[[u8; REPS_PER_DRAW]], j: usize) {
        let (mut cost, mut weight, mut min) = (0i64, 0u64, i64::MAX);
        for (r, wi) in part.chunks_exact(2).zip(w) {
            let wj = wi[j] as u64;
            weight += wj;
            cost += wj as i64 * r[1];
            min = min.min(if wj > 0 { r[0] - r[1] } else { i64::MAX });
        }
        self.left -= weight;
        self.whole_cost += cost as i128;
        if let Some(t) = self.t {
            let (mut e, mut f) = (0u64, 0u64);
            for (r, wi) in part.chunks_exact(2).zip(w) {
                let wj = wi[j] as u64;
                e += wj * (r[1] > t) as u64;
                f += wj * (r[1] >= t) as u64;
            }
            self.e_weight += e;
            self.f_weight += f;
            // Gains are within +-2^41: MAX means no drawn row (nothing changes).
            if min < i64::MAX && min <= self.taken_min {
                // The drawn rows at the block's minimum: their first pair, and whether
                // all agree with it.
                let (mut first, mut agree) = (None, true);
                for (r, wi) in part.chunks_exact(2).zip(w) {
                    if wi[j] > 0 && r[0] - r[1] == min {
                        let pair = [r[0], r[1]];
                        agree &= *first.get_or_insert(pair) == pair;
                    }
                }
                self.taken_pair = if min < self.taken_min {
                    first.filter(|_| agree)
                } else {
                    // Equal minimum: the pair stands if every new one is it.
                    self.taken_pair.filter(|&p| agree && first == Some(p))
                };
            }
        }
        self.taken_min = self.taken_min.min(min);
    }

    /// Class 1 takes `left supply + rem` of the `wj supply` units of the row `(r0, r1)`.
    fn split_at(&mut self, r0: i64, r1: i64, wj: u64) {
        let units = wj as u128 * self.supply as u128;
        let take = self.left as u128 * self.supply as u128 + self.rem as u128;
        let rest = units - take;
        let t = self.t.unwrap_or(i64::MAX);
        self.split = Some(Split {
            gain: r0 - r1,
            pair: [r0, r1],
            cost: (take as i128 * r1 as i128 + rest as i128 * r0 as i128) as u128,
            e: take * (r1 > t) as u128 + rest * (r0 > t) as u128,
            f: take * (r1 >= t) as u128 + rest * (r0 >= t) as u128,
        });
        self.left = 0;
        self.rem = 0;
        self.met = true;
    }

    /// E and F in units under the walk's plan.
    fn thresholded(&self) -> (u128, u128) {
        let s = self.supply as u128;
        let (se, sf) = self.split.map_or((0, 0), |x| (x.e, x.f));
        (
            self.e_weight as u128 * s + se,
            self.f_weight as u128 * s + sf,
        )
    }
}

/// Rows of a replicate's K = 2 grid costs, in blocks: from costs made once for every
/// replicate of one temperature, or made per block from the logits at `t`.
struct Costs<'a> {
    logits: &'a [f32],
    shared: Option<&'a [i64]>,
    t: f32,
}

/// Rows a block of [`Costs`] makes at a time (a few hundred kilobytes).
const COST_BLOCK_ROWS: usize = 16384;

impl Costs<'_> {
    /// The costs of rows `start..end` (`2 (end - start)` values), made into `buf` when
    /// not shared.
    fn block<'b>(&'b self, start: usize, end: usize, buf: &'b mut Vec<i64>) -> &'b [i64] {
        if let Some(c) = self.shared {
            return &c[2 * start..2 * end];
        }
        two_class_costs(&self.logits[2 * start..2 * end], self.t, buf);
        buf
    }

    /// The costs of the rows `rows` (ascending indices), made into `buf`: copied when
    /// shared, else made from their logits gathered into `logits` (each row's costs are
    /// its own: the bits [`Costs::block`] gives it).
    fn picked<'b>(
        &self,
        rows: &[usize],
        buf: &'b mut Vec<i64>,
        logits: &mut Vec<f32>,
    ) -> &'b [i64] {
        // Indexed copies into buffers sized first (an `extend` of pairs checks the
        // capacity a value).
        if let Some(c) = self.shared {
            buf.resize(2 * rows.len(), 0);
            for (o, &r) in buf.chunks_exact_mut(2).zip(rows) {
                o.copy_from_slice(&c[2 * r..2 * r + 2]);
            }
            return buf;
        }
        logits.resize(2 * rows.len(), 0.0);
        for (o, &r) in logits.chunks_exact_mut(2).zip(rows) {
            o.copy_from_slice(&self.logits[2 * r..2 * r + 2]);
        }
        two_class_costs(logits, self.t, buf);
        buf
    }

    /// `f(costs, rows)` for every block of `COST_BLOCK_ROWS` of the `rows` rows, in order.
    fn each_block(
        &self,
        rows: usize,
        buf: &mut Vec<i64>,
        mut f: impl FnMut(&[i64], std::ops::Range<usize>),
    ) {
        let mut start = 0;
        while start < rows {
            let end = (start + COST_BLOCK_ROWS).min(rows);
            f(self.block(start, end, buf), start..end);
            start = end;
        }
    }
}

/// K = 2 grid costs of `logits` at temperature `t` into `out`: the bits of
/// [`grid_costs_at`] (the CPU softmax: the larger logit's term is `exp(0) = 1`, the other
/// `e = exp((z_other - m) / t)`, the sum `1 + e` in class order, each term divided by
/// it) with one exponential a row instead of two.
fn two_class_costs(logits: &[f32], t: f32, out: &mut Vec<i64>) {
    out.clear();
    out.resize(logits.len(), 0);
    two_class_costs_into(logits, t, out);
}

/// [`two_class_costs`] into `out` (as long as `logits`).
fn two_class_costs_into(logits: &[f32], t: f32, out: &mut [i64]) {
    let rows = logits.len() / 2;
    let mut e = vec![0f32; rows];
    // Branch-free loops the AVX2 build vectorises (same arithmetic, same bits).
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            for (e, z) in e.iter_mut().zip(logits.chunks_exact(2)) {
                // row_max: the first of tied maxima is the max.
                *e = if z[1] > z[0] {
                    (z[0] - z[1]) / t
                } else {
                    (z[1] - z[0]) / t
                };
            }
        },
    );
    crate::cpu::math::exp_in_place(&mut e);
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            for ((o, z), &e) in out.chunks_exact_mut(2).zip(logits.chunks_exact(2)).zip(&e) {
                // The sum `1 + e` in class order is `e + 1` either way (one rounding).
                let s = e + 1.0;
                let (other, max) = (probability_cost(e / s), probability_cost(1.0 / s));
                let one_max = z[1] > z[0];
                o[0] = if one_max { other } else { max };
                o[1] = if one_max { max } else { other };
            }
        },
    );
}

/// [`grid_cost`] of `1 - p` for an f32 probability `p`: `1 - p` is 0 or at least 2^-24
/// and exact in f64 (or, for `p < 2^-29`, at least 1/2), so `x = (1 - p) 2^40` is 0, a
/// multiple of 2^16, or at least 2^39 with an ulp of at most 2^-13: `x + 1/2` is exact
/// and its floor is `round(x)` without the libm call.
///
/// The floor is taken in f64 arithmetic a vector unit does (no f64 -> i64 conversion,
/// which AVX2 lacks): adding and subtracting 2^52 rounds `y = x + 1/2` (< 2^41) to the
/// nearest integer `r`, `r - 1` where that rounded up is the floor, and `r + 2^52`'s
/// bits less 2^52's are `r`.
#[inline(always)]
pub(crate) fn probability_cost(p: f32) -> i64 {
    const M: f64 = (1u64 << 52) as f64;
    let y = (1.0 - p as f64) * (1u64 << COST_GRID_BITS) as f64 + 0.5;
    let r = (y + M) - M;
    let floor = if r > y { r - 1.0 } else { r };
    ((floor + M).to_bits() - M.to_bits()) as i64
}

/// `v` copied into a vector with room for `room` values, if the allocator grants it.
fn with_room<T: Copy>(v: &[T], room: usize) -> Vec<T> {
    let mut out = Vec::new();
    let _ = out.try_reserve_exact(v.len().max(room));
    out.extend_from_slice(v);
    out
}

/// Every replicate's COT per mode, and with thresholds every replicate's COTT.
type ReplicateValues = (Modes<Vec<f64>>, Option<Modes<Vec<f64>>>);

/// COT per target and group, both modes (see [`CotRows::solve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CotSolution {
    /// The whole target's COT.
    pub target: Modes<f64>,
    /// Per group array ([`crate::kernel::tally::GROUP_ARRAYS`] order), COT by group id.
    pub groups: [BTreeMap<i64, Modes<f64>>; 2],
    /// The whole target's COTT (with the calibration's thresholds).
    pub cott: Option<Modes<f64>>,
    /// COTT by group, as `groups`.
    pub cott_groups: [BTreeMap<i64, Modes<f64>>; 2],
}

/// A target's rows grouped by the ids of one group array: the distinct ids ascending,
/// each row's index among them, and where each group starts in grouped order.
struct Partition {
    ids: Vec<i64>,
    slot: Vec<u32>,
    start: Vec<usize>,
}

impl Partition {
    /// Every group's rows' costs (`rows x k` each), in group order.
    fn rows(&self, costs: &[i64], k: usize) -> Vec<Vec<i64>> {
        let mut out: Vec<Vec<i64>> = (0..self.ids.len())
            .map(|j| Vec::with_capacity((self.start[j + 1] - self.start[j]) * k))
            .collect();
        for (&s, r) in self.slot.iter().zip(costs.chunks_exact(k)) {
            out[s as usize].extend_from_slice(r);
        }
        out
    }
}

/// K = 2 COT of the target and of every group, and with a threshold COTT of each, from
/// one selection a set ([`two_class_sets_with_cot`]); COT's typed errors first, as
/// [`grid_cot_cost`] gives them.
#[allow(clippy::type_complexity)]
fn two_class_solve(
    costs: &[i64],
    partitions: &[Option<Partition>; 2],
    class_counts: &[u64],
    thr: Option<&CottThreshold>,
) -> Result<(f64, [Vec<f64>; 2], Option<(f64, [Vec<f64>; 2])>)> {
    let n_source: u64 = class_counts.iter().sum();
    let n = costs.len() / 2;
    if n_source == 0 || n == 0 {
        // The same typed errors as COT alone.
        return grid_cot_cost(costs, 2, class_counts).map(|c| (c, Default::default(), None));
    }
    demand_units(class_counts, n)?;
    let cot_of = |s: &TwoClassSet| mean(s.cot_units, s.rows as u128 * n_source as u128);
    let mut gains = Vec::new();
    let target = two_class_sets_in(costs, None, 1, class_counts, thr, &mut gains)?[0];
    let mut groups: [Vec<f64>; 2] = Default::default();
    let mut cott_groups: [Vec<f64>; 2] = Default::default();
    for ((out, out_cott), p) in groups.iter_mut().zip(&mut cott_groups).zip(partitions) {
        let Some(p) = p else { continue };
        let sets = two_class_sets_in(
            costs,
            Some(&p.slot),
            p.ids.len(),
            class_counts,
            thr,
            &mut gains,
        )?;
        *out = sets.iter().map(cot_of).collect();
        *out_cott = sets.iter().map(|s| s.cott.unwrap_or(f64::NAN)).collect();
    }
    let thresholded = target.cott.map(|c| (c, cott_groups));
    Ok((cot_of(&target), groups, thresholded))
}

/// A weighted set's multiset: each row of `costs` (`n x k`) repeated by its weight.
pub(crate) fn weighted_rows(costs: &[i64], k: usize, weights: &[u8]) -> Vec<i64> {
    let total: usize = weights.iter().map(|&w| w as usize).sum();
    let mut out = Vec::with_capacity(total * k);
    for (row, &w) in costs.chunks_exact(k).zip(weights) {
        for _ in 0..w {
            out.extend_from_slice(row);
        }
    }
    out
}

/// Grid costs `1 - p_ik` of `logits` at temperature `t`, in blocks of rows (the CPU
/// softmax's bits; no whole-chunk probability array).
pub(crate) fn grid_costs_at(logits: &[f32], k: usize, t: f32) -> Vec<i64> {
    let mut out = vec![0i64; logits.len()];
    grid_costs_into(logits, k, t, &mut out);
    out
}

/// [`grid_costs_at`] into `out` (as long as `logits`).
fn grid_costs_into(logits: &[f32], k: usize, t: f32, out: &mut [i64]) {
    const BLOCK_ROWS: usize = 4096;
    out.par_chunks_mut(BLOCK_ROWS * k)
        .zip(logits.par_chunks(BLOCK_ROWS * k))
        .for_each(|(o, l)| {
            if k == 2 {
                two_class_costs_into(l, t, o);
                return;
            }
            for (c, p) in o.iter_mut().zip(softmax(l, k, t)) {
                *c = grid_cost(1.0 - p as f64);
            }
        });
}

/// Group ids (per group array, absent or i64 per row) as base64 of little-endian bytes.
mod b64_groups {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Option<Vec<i64>>; 2], s: S) -> Result<S::Ok, S::Error> {
        let enc = v.each_ref().map(|ids| {
            ids.as_ref().map(|ids| {
                let bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
                STANDARD.encode(bytes)
            })
        });
        enc.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[Option<Vec<i64>>; 2], D::Error> {
        let enc: [Option<String>; 2] = Deserialize::deserialize(d)?;
        let mut out: [Option<Vec<i64>>; 2] = [None, None];
        for (o, e) in out.iter_mut().zip(enc) {
            if let Some(text) = e {
                let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
                if !bytes.len().is_multiple_of(8) {
                    return Err(D::Error::custom("i64 bytes not a multiple of 8"));
                }
                *o = Some(
                    bytes
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::bootstrap::weights4;

    /// A seeded generator of small probability rows with ties (quarters), so plans have
    /// tied costs and split rows.
    fn rows(seed: u64, n: usize, k: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut out = Vec::with_capacity(n * k);
        for _ in 0..n {
            let w: Vec<u64> = (0..k)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 61) + 1
                })
                .collect();
            let s: u64 = w.iter().sum();
            out.extend(w.iter().map(|&v| v as f32 / s as f32));
        }
        out
    }

    /// K = 2: the closed form and the general solver find the same optimum, at sizes
    /// 1 (one row, split), 2, an odd count and a few hundred, with shares that split a row.
    #[test]
    fn two_classes_closed_form_equals_the_solver() {
        for (seed, n, counts) in [
            (1u64, 1usize, [1u64, 2]),
            (2, 2, [3, 1]),
            (3, 7, [5, 4]),
            (4, 300, [7, 13]),
            (5, 300, [0, 9]),
        ] {
            let p = rows(seed, n, 2);
            let costs = grid_costs(&p);
            let supply: u64 = counts.iter().sum();
            let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
            let plan = transport::solve(&costs, 2, supply, &demand).unwrap();
            assert_eq!(
                two_class_sets_with_cot(&costs, None, 1, &counts, None).unwrap()[0].cot_units,
                plan.cost_units,
                "n={n}"
            );
        }
    }

    /// The plan meets every row's supply and every class's demand, splits at most K - 1
    /// rows, and no single row moved to another class makes it cheaper (a necessary
    /// condition of optimality, exact on the grid).
    #[test]
    fn plans_are_feasible_and_locally_optimal() {
        for (seed, n, k) in [(7u64, 50usize, 3usize), (8, 200, 5), (9, 120, 10)] {
            let p = rows(seed, n, k);
            let costs = grid_costs(&p);
            let counts: Vec<u64> = (0..k as u64).map(|c| 1 + (c * 7 + seed) % 5).collect();
            let supply: u64 = counts.iter().sum();
            let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
            let plan = transport::solve(&costs, k, supply, &demand).unwrap();
            let mut got = vec![0u64; k];
            let mut split = 0;
            for f in &plan.flows {
                assert_eq!(f.iter().map(|(_, u)| u).sum::<u64>(), supply);
                split += usize::from(f.len() > 1);
                for &(c, u) in f {
                    got[c as usize] += u;
                }
            }
            assert_eq!(got, demand);
            assert!(split < k, "{split} split rows");
            // Swapping one unit between two rows on different classes never saves.
            for i in 0..n {
                for j in 0..n {
                    for &(a, _) in &plan.flows[i] {
                        for &(b, _) in &plan.flows[j] {
                            let (a, b) = (a as usize, b as usize);
                            let now = costs[i * k + a] + costs[j * k + b];
                            let swapped = costs[i * k + b] + costs[j * k + a];
                            assert!(swapped >= now, "seed {seed}: rows {i} {j}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            cot(&[0.5, 0.5], 2, &[0, 0]),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(cot(&[], 2, &[1, 1]), Err(Error::Empty { .. })));
        assert!(matches!(
            cot(&[0.5, 0.5], 2, &[1]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            cot(&[1.0], 1, &[1]),
            Err(Error::TooFewClasses { .. })
        ));
        assert!(matches!(
            cot(&[f32::NAN, 0.5], 2, &[1, 1]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            class_counts(&[0, 3], 2),
            Err(Error::LabelOutOfRange { .. })
        ));
    }

    /// Every row certain of its class and shares that match: nothing moves, COT = 1.
    #[test]
    fn matching_shares_cost_nothing() {
        let p = [
            1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0,
        ];
        assert_eq!(cot(&p, 3, &[1, 1, 2]).unwrap(), 1.0);
        // All rows want class 0 but the source is all class 1: every unit moves at cost 1.
        let q = [1.0f32, 0.0, 1.0, 0.0];
        assert_eq!(cot(&q, 2, &[0, 5]).unwrap(), 0.0);
    }

    /// Logits with ties (quarter steps), K = 2, and slide-like group ids in runs.
    fn logit_rows(seed: u64, n: usize) -> (Vec<f32>, Vec<i64>) {
        let p = rows(seed, n, 2);
        let logits = p.iter().map(|&v| (v * 8.0).round() / 4.0).collect();
        let ids = (0..n as i64).map(|i| i / 37 % 5).collect();
        (logits, ids)
    }

    /// Rows added in any cut and order, or merged from parts (through JSON, as a tally
    /// file carries them), solve to the same bits and serialise to the same text; sizes
    /// 1 (a single row), 2, and 300 cut at 1, 37 and 299.
    #[test]
    fn cuts_and_merge_order_do_not_change_cot() {
        let counts = [7u64, 13];
        let t = Modes { raw: 1.0, ts: 1.7 };
        // COTT's thresholds too: its plans are solved from the same merged rows.
        let thr = Modes {
            raw: CottThreshold {
                t: 1 << 39,
                lambda: 0.25,
            },
            ts: CottThreshold {
                t: 3 << 37,
                lambda: 0.75,
            },
        };
        for n in [1usize, 2, 300] {
            let (logits, ids) = logit_rows(n as u64, n);
            let mut whole = CotRows::default();
            whole.add(0, &logits, 2, [None, Some(&ids)]);
            let want = whole.solve(2, &counts, t.clone(), Some(&thr)).unwrap();
            assert!(want.cott.is_some());
            let cuts: Vec<usize> = [0, 1, 37, 299, n].into_iter().filter(|&c| c <= n).collect();
            let mut parts: Vec<CotRows> = cuts
                .windows(2)
                .filter(|w| w[0] < w[1])
                .map(|w| {
                    let mut r = CotRows::default();
                    r.add(
                        w[0] as u64,
                        &logits[w[0] * 2..w[1] * 2],
                        2,
                        [None, Some(&ids[w[0]..w[1]])],
                    );
                    serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap()
                })
                .collect();
            parts.reverse();
            let mut merged = CotRows::default();
            for p in &parts {
                merged.merge(p);
            }
            assert_eq!(merged, whole, "n={n}");
            assert_eq!(
                serde_json::to_string(&merged).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
            assert_eq!(
                merged.solve(2, &counts, t.clone(), Some(&thr)).unwrap(),
                want,
                "n={n}"
            );
            // A group's COT is the in-memory function on its rows.
            for (id, m) in &want.groups[1] {
                let mut p = Vec::new();
                for (row, &g) in logits.chunks_exact(2).zip(&ids) {
                    if g == *id {
                        let mut out = [0f32; 2];
                        crate::cpu::softmax::softmax_row(row, 1.0, &mut out);
                        p.extend(out);
                    }
                }
                assert_eq!(m.raw, cot(&p, 2, &counts).unwrap());
            }
        }
    }

    /// The partition by runs is the row-by-row one: ids in long runs, alternating every
    /// row, negative and extreme, across chunks (a gap between them keeps them apart);
    /// a chunk without the array gives none.
    #[test]
    fn partition_by_runs_equals_row_by_row() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let n = 3000;
        let mut ids: Vec<i64> = Vec::with_capacity(n);
        while ids.len() < n {
            let id = [i64::MIN, -3, 0, 7, i64::MAX][rng.random_range(0..5)];
            let len = if rng.random_bool(0.5) {
                1
            } else {
                rng.random_range(1..400)
            };
            ids.extend(std::iter::repeat_n(id, len.min(n - ids.len())));
        }
        let logits = vec![0.5f32; 2 * n];
        let mut rows = CotRows::default();
        rows.add(0, &logits[..2000], 2, [None, Some(&ids[..1000])]);
        rows.add(1001, &logits[2002..], 2, [None, Some(&ids[1001..])]);
        let p = rows.partition(1, 2).unwrap();
        let kept: Vec<i64> = ids[..1000].iter().chain(&ids[1001..]).copied().collect();
        let mut want_ids = kept.clone();
        want_ids.sort_unstable();
        want_ids.dedup();
        assert_eq!(p.ids, want_ids);
        let want_slot: Vec<u32> = kept
            .iter()
            .map(|id| want_ids.binary_search(id).unwrap() as u32)
            .collect();
        assert_eq!(p.slot, want_slot);
        for (s, w) in p.start.windows(2).enumerate() {
            assert_eq!(
                w[1] - w[0],
                want_slot.iter().filter(|&&x| x == s as u32).count()
            );
        }
        assert!(rows.partition(0, 2).is_none());
    }

    /// Chunks added in row order join the last chunk in place; out of order, or after a
    /// gap, or with other group arrays, they go through `insert`: every way gives the
    /// rows (and the JSON) of one whole add.
    #[test]
    fn adds_in_any_order_give_the_whole_rows() {
        let (logits, ids) = logit_rows(5, 10);
        let mut whole = CotRows::default();
        whole.add(0, &logits, 2, [Some(&ids), Some(&ids)]);
        let json = serde_json::to_string(&whole).unwrap();
        let add = |r: &mut CotRows, a: usize, b: usize| {
            r.add(
                a as u64,
                &logits[2 * a..2 * b],
                2,
                [Some(&ids[a..b]), Some(&ids[a..b])],
            )
        };
        for order in [
            [(0, 3), (3, 7), (7, 10)],
            [(7, 10), (0, 3), (3, 7)],
            [(3, 7), (7, 10), (0, 3)],
        ] {
            let mut r = CotRows::default();
            for (a, b) in order {
                add(&mut r, a, b);
            }
            assert_eq!(r.chunks.len(), 1, "{order:?}");
            assert_eq!(r, whole, "{order:?}");
            assert_eq!(serde_json::to_string(&r).unwrap(), json, "{order:?}");
        }
        // A room hint changes nothing but the capacity, whatever its size: the rows'
        // exact count, a wrong one, and one no allocator grants (no panic, no abort).
        // A chunk shorter than one row (no row count to scale the room by) is kept.
        let mut short = CotRows::default();
        short.reserve_rows(10);
        short.add(0, &logits[..1], 2, [None, None]);
        assert_eq!(short.chunks[0].logits, &logits[..1]);
        for room in [10usize, 3, usize::MAX / 4] {
            let mut r = CotRows::default();
            r.reserve_rows(room);
            add(&mut r, 0, 3);
            if room == 10 {
                assert!(r.chunks[0].logits.capacity() >= 20);
                assert!(r.chunks[0].groups[1].as_ref().unwrap().capacity() >= 10);
            }
            add(&mut r, 3, 7);
            add(&mut r, 7, 10);
            assert_eq!(r, whole, "room {room}");
            assert_eq!(serde_json::to_string(&r).unwrap(), json, "room {room}");
        }
        // A gap, and a chunk without the hospital array, stay apart.
        let mut r = CotRows::default();
        add(&mut r, 0, 3);
        add(&mut r, 4, 6);
        r.add(6, &logits[12..14], 2, [None, Some(&ids[6..7])]);
        assert_eq!(r.chunks.len(), 3);
        assert_eq!(r.chunks[1].logits, &logits[8..12]);
    }

    /// COT rows that do not match their tally (a gap, an overlap, a group array missing,
    /// logits short of the row count) are refused: a tally file is untrusted input.
    #[test]
    fn inconsistent_rows_are_named() {
        let (logits, ids) = logit_rows(3, 10);
        let mut r = CotRows::default();
        r.add(0, &logits[..8], 2, [None, Some(&ids[..4])]);
        r.add(4, &logits[8..], 2, [None, Some(&ids[4..])]);
        assert_eq!(r.inconsistency(2, &[[0, 10]], [false, true]), None);
        assert!(r.inconsistency(2, &[[0, 11]], [false, true]).is_some());
        assert!(r.inconsistency(2, &[[0, 10]], [true, true]).is_some());
        let mut gap = CotRows::default();
        gap.add(0, &logits[..4], 2, [None, Some(&ids[..2])]);
        gap.add(3, &logits[6..], 2, [None, Some(&ids[3..])]);
        assert!(gap
            .inconsistency(2, &[[0, 2], [3, 10]], [false, true])
            .is_none());
        assert!(gap.inconsistency(2, &[[0, 10]], [false, true]).is_some());
        let mut short = r.clone();
        short.chunks[0].rows += 1;
        assert!(short.inconsistency(2, &[[0, 11]], [false, true]).is_some());
        let mut nan = r.clone();
        nan.chunks[0].logits[3] = f32::NAN;
        assert!(nan.inconsistency(2, &[[0, 10]], [false, true]).is_some());
    }

    /// Each bootstrap replicate's K = 2 COT is the exact optimum of its multiset (every
    /// row repeated by its Poisson weight, the source shares the replicate's counts),
    /// solved by the general transport solver: B = 9 (two full Philox draws and one
    /// partial), a replicate with an empty class, tied rows, rows at a shard's offset.
    #[test]
    fn two_class_replicates_are_the_weighted_optimum() {
        // 150 rows: one cost block; COST_BLOCK_ROWS + 3: a block boundary.
        for n in [150, COST_BLOCK_ROWS + 3] {
            replicates_match_the_solver(n);
        }
    }

    fn replicates_match_the_solver(n: usize) {
        let (logits, _) = logit_rows(11, n);
        let offset = 1000u64;
        let mut r = CotRows::default();
        r.add(offset, &logits, 2, [None, None]);
        // Replicate 9 draws no class-1 source row (the walk takes nothing), 10 no source
        // row at all (NaN).
        let class_counts: Vec<Vec<u64>> = (0..9u64)
            .map(|b| vec![b * 3 % 7, 5 + b])
            .chain([vec![6, 0], vec![0, 0]])
            .collect();
        let (seed, key) = (42u64, 0xdead_beefu32);
        // Each replicate its own temperature in the ts mode, as refits give.
        let t = Modes {
            raw: vec![1.0f32; 11],
            ts: (0..11).map(|b| 0.5 + 0.1 * b as f32).collect::<Vec<f32>>(),
        };
        // COTT's thresholds per replicate: several t, one replicate without.
        let thr = |ts: bool| -> Vec<Option<CottThreshold>> {
            (0..11)
                .map(|b| {
                    (b != 4).then(|| CottThreshold {
                        t: (1i64 << 38) * (b as i64 % 4) + ts as i64,
                        lambda: 0.25 * (b % 5) as f64,
                    })
                })
                .collect()
        };
        let thresholds = Modes {
            raw: thr(false),
            ts: thr(true),
        };
        let (got, got_cott) = r
            .replicates(2, &t, seed, key, &class_counts, Some(&thresholds))
            .unwrap();
        let got_cott = got_cott.unwrap();
        for (ts, values) in [(false, &got.raw), (true, &got.ts)] {
            for (b, &v) in values.iter().enumerate() {
                let costs = r.costs(2, t.of(ts)[b]);
                let (g, j) = ((b / REPS_PER_DRAW) as u32, b % REPS_PER_DRAW);
                let mut multiset = Vec::new();
                for (i, c) in costs.chunks_exact(2).enumerate() {
                    let w = weights4(seed, key, offset + i as u64, g)[j];
                    for _ in 0..w {
                        multiset.extend_from_slice(c);
                    }
                }
                let c = &class_counts[b];
                let supply: u64 = c.iter().sum();
                if supply == 0 {
                    assert!(v.is_nan() && got_cott.of(ts)[b].is_nan(), "replicate {b}");
                    continue;
                }
                let rows = (multiset.len() / 2) as u64;
                let demand: Vec<u64> = c.iter().map(|&x| x * rows).collect();
                let plan = transport::solve(&multiset, 2, supply, &demand).unwrap();
                let want = 1.0 - mean(plan.cost_units, rows as u128 * supply as u128);
                assert_eq!(v, want, "ts={ts} replicate {b}");
                // COTT: the settled plan of the same multiset at the replicate's threshold.
                let got = got_cott.of(ts)[b];
                match thresholds.of(ts)[b] {
                    Some(th) => {
                        let want = crate::methods::cott::two_class_sets(&multiset, None, 1, c, &th)
                            .unwrap()[0];
                        assert_eq!(got, want, "COTT ts={ts} replicate {b}");
                    }
                    None => assert!(got.is_nan()),
                }
            }
        }
    }

    /// A block class 1 takes whole leaves the walk as the row-by-row loop leaves it:
    /// its sums, the taken minimum and that minimum's pair (tied gains with one pair and
    /// with several, weightless rows at the minimum, a minimum equal to an earlier
    /// block's), with and without a COTT threshold.
    #[test]
    fn whole_blocks_walk_as_rows_do() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..2000 {
            let rows = 1 + case % 9;
            let part: Vec<i64> = (0..rows)
                .flat_map(|_| {
                    // Gains in a narrow range with two pairs per gain: ties of both kinds.
                    let c1 = rng.random_range(0..3i64);
                    let g = rng.random_range(-2..2i64);
                    [c1 + g, c1]
                })
                .collect();
            let w: Vec<[u8; REPS_PER_DRAW]> = (0..rows)
                .map(|_| std::array::from_fn(|_| rng.random_range(0..3u8)))
                .collect();
            let t = [None, Some(1i64)][case % 2];
            let mut start = Walk::new(1_000_000, 7, t);
            // An earlier block's minimum and pair (or none yet).
            if case % 3 > 0 {
                start.taken_min = rng.random_range(-2..3i64);
                start.taken_pair = (case % 3 == 1 && t.is_some()).then(|| {
                    let c1 = rng.random_range(0..3i64);
                    [c1 + start.taken_min, c1]
                });
            }
            for j in 0..REPS_PER_DRAW {
                let (mut whole, mut by_row) = (start.clone(), start.clone());
                whole.take_whole(&part, &w, j);
                assert_eq!(by_row.take_rows(&part, &w, j), rows);
                assert_eq!(whole, by_row, "case {case} lane {j} {part:?} {w:?}");
            }
        }
    }

    /// A replicate whose gains are out of order (as rounding could leave them) sorts
    /// them: the same value as the rows given in gain order.
    #[test]
    fn out_of_order_gains_fall_back_to_a_sort() {
        let counts = [vec![3u64, 4]];
        let draw = Draw {
            seed: 0,
            name_key: 0,
            class_counts: &counts,
        };
        let sorted: Vec<i64> = vec![9, 1, 7, 2, 5, 3, 4, 6];
        let shuffled: Vec<i64> = vec![5, 3, 9, 1, 4, 6, 7, 2];
        let w = vec![[1u8, 2, 0, 3]; 4];
        let mut block = Vec::new();
        for j in 0..4 {
            let mut one = |c: &[i64]| {
                let costs = Costs {
                    logits: &[],
                    shared: Some(c),
                    t: 1.0,
                };
                let total = w.iter().map(|x| x[j] as u64).sum();
                draw.two_class_one(&costs, &w, j, 0, total, &mut block, None, COST_BLOCK_ROWS)
                    .unwrap()
                    .0
            };
            let (a, b) = (one(&sorted), one(&shuffled));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "j={j}"
            );
        }
    }

    /// A replicate's COTT from the walk equals `two_class_sets` on its multiset, bit for
    /// bit: rows in gain order (the walk's E and F) and shuffled (the fallback), with
    /// tied gains of equal costs (the walk settles them) and of unequal costs (the
    /// fallback settles them), at thresholds on, between and beyond the costs, class
    /// counts that split a row or end on a whole one, and none for a class.
    #[test]
    fn two_class_cott_walk_equals_the_settled_multiset() {
        use crate::methods::cott::two_class_sets;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for case in 0..300 {
            let n = 1 + case % 23;
            let mut rows: Vec<[i64; 2]> = (0..n)
                .map(|_| {
                    // Costs on the grid are never negative (4 up: gains of -4..4 all
                    // the same); negative ones overflowed the u128 units in debug builds.
                    let c1 = 4 + rng.random_range(0..16i64);
                    [c1 + rng.random_range(-4..5i64), c1]
                })
                .collect();
            if case % 3 == 0 {
                // Same gain, other costs: only a settlement decides these.
                let r = rows[0];
                rows.push([r[0] + 1, r[1] + 1]);
            }
            if case % 3 == 1 {
                // A tie group of three cost pairs around the middle row, where class 1's
                // boundary often falls: taken, split and left rows at one gain.
                let r = rows[n / 2];
                for d in [2, 1, 2, 0, 1] {
                    rows.push([r[0] + d, r[1] + d]);
                }
            }
            rows.sort_by_key(|r| std::cmp::Reverse(r[0] - r[1]));
            let sorted: Vec<i64> = rows.iter().flatten().copied().collect();
            let mut shuffled = rows.clone();
            shuffled.reverse();
            let shuffled: Vec<i64> = shuffled.iter().flatten().copied().collect();
            let w: Vec<[u8; REPS_PER_DRAW]> = (0..rows.len())
                .map(|_| std::array::from_fn(|_| rng.random_range(0..3u8)))
                .collect();
            let counts = [vec![rng.random_range(0..4u64), [0, 1, 3, 5][case % 4]]];
            let draw = Draw {
                seed: 0,
                name_key: 0,
                class_counts: &counts,
            };
            let w_reversed: Vec<[u8; REPS_PER_DRAW]> = w.iter().rev().copied().collect();
            let unequal_ties = rows
                .iter()
                .any(|a| rows.iter().any(|b| a[0] - a[1] == b[0] - b[1] && a != b));
            let mut block = Vec::new();
            for j in 0..REPS_PER_DRAW {
                let total: u64 = w.iter().map(|x| x[j] as u64).sum();
                for t in [-1i64, 3, 8, 12, 30] {
                    let thr = CottThreshold { t, lambda: 0.3 };
                    let multiset: Vec<i64> = rows
                        .iter()
                        .zip(&w)
                        .flat_map(|(r, wi)| std::iter::repeat_n(*r, wi[j] as usize))
                        .flatten()
                        .collect();
                    let want = if total == 0 || counts[0].iter().sum::<u64>() == 0 {
                        f64::NAN
                    } else {
                        two_class_sets(&multiset, None, 1, &counts[0], &thr).unwrap()[0]
                    };
                    for (c, w) in [(&sorted, &w), (&shuffled, &w_reversed)] {
                        let costs = Costs {
                            logits: &[],
                            shared: Some(c),
                            t: 1.0,
                        };
                        // Walked a block at a time and in blocks of 1-3 rows (whole
                        // blocks taken, tie groups across block ends).
                        for walk_rows in [COST_BLOCK_ROWS, 1, 2, 3] {
                            let got = draw
                                .two_class_one(
                                    &costs,
                                    w,
                                    j,
                                    0,
                                    total,
                                    &mut block,
                                    Some(&thr),
                                    walk_rows,
                                )
                                .unwrap()
                                .1;
                            let same = got.to_bits() == want.to_bits();
                            // The shuffled order's multiset settles its tied rows in its
                            // own order: equal whenever tied gains have one cost pair.
                            if c == &sorted || !unequal_ties {
                                assert!(
                                    same || (got.is_nan() && want.is_nan()),
                                    "case {case} j {j} t {t} rows/block {walk_rows} sorted {}: {got} vs {want} rows {rows:?} w {:?} counts {counts:?}",
                                    c == &sorted,
                                    w.iter().map(|x| x[j]).collect::<Vec<_>>()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The one-exponential K = 2 costs equal the CPU softmax's grid costs bit for bit:
    /// ties (z_0 = z_1, -0.0 against 0.0), huge spreads (e underflows to 0), both orders,
    /// several temperatures; and the fast rounding equals `grid_cost` on every f32
    /// probability near the edges.
    #[test]
    fn two_class_costs_equal_the_softmax_costs() {
        let mut logits = vec![
            0.0f32, 0.0, -0.0, 0.0, 0.0, -0.0, 1.0, 1.0, -200.0, 200.0, 200.0, -200.0,
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0;
            let b = ((x & 0xff_ffff) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0;
            logits.extend([a, if x.is_multiple_of(7) { a } else { b }]);
        }
        for t in [1.0f32, 0.37, 2.1626, 1e-3, 50.0] {
            let mut fast = Vec::new();
            two_class_costs(&logits, t, &mut fast);
            let reference: Vec<i64> = softmax(&logits, 2, t)
                .into_iter()
                .map(|p| grid_cost(1.0 - p as f64))
                .collect();
            assert_eq!(fast, reference, "t={t}");
        }
        for bits in [
            0u32,
            1,
            0x3000_0000,
            0x3eff_ffff,
            0x3f00_0000,
            0x3f7f_fffe,
            0x3f7f_ffff,
            0x3f80_0000,
        ] {
            let p = f32::from_bits(bits);
            assert_eq!(probability_cost(p), grid_cost(1.0 - p as f64), "p={p:e}");
        }
        // Exact halves of a grid step (`(j + 1/2) 2^-40`, the floor's tie) and their
        // neighbours, for the vector floor.
        for j in 0..256u32 {
            let half = (j as f32 + 0.5) * 2f32.powi(-40);
            for p in [
                half,
                f32::from_bits(half.to_bits() - 1),
                f32::from_bits(half.to_bits() + 1),
            ] {
                assert_eq!(probability_cost(p), grid_cost(1.0 - p as f64), "p={p:e}");
            }
        }
        let mut p = 1e-45f32;
        while p < 1.0 {
            assert_eq!(probability_cost(p), grid_cost(1.0 - p as f64), "p={p:e}");
            p = f32::from_bits(p.to_bits() + 997);
        }
    }
}
