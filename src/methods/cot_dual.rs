//! COT at K > 2 in rounds over a set's rows, exact, without holding the rows
//! (DESIGN.md 2.11: the dual `max_g sum_k pi_k g_k + mean_i min_k (c_ik - g_k)`, every
//! evaluation one pass of mergeable sums).
//!
//! Everything is in [`crate::methods::cot`]'s integers: a row supplies `n` units (`n` the
//! source's labelled rows), class k needs `n_k N` units, costs `C_ik` are on the 2^-40
//! grid, and a dual point `g` is a grid integer a class. Under `g` a row's best class is
//! `a = argmin_k (C_ik - g_k)` (lowest index on ties) and its margin the distance to the
//! runner-up.
//!
//! **The rounds.**
//! 1. *Sample pass.* Every `stride`-th row of the set is kept (at most
//!    [`DualBudget::sample_rows`]); [`transport::solve`] gives the sample's optimal plan
//!    and `centre` a dual point `g` in the middle of its optimal duals (each class halfway
//!    between the largest and least value the plan's constraints allow): the full
//!    problem's dual, approximately. A set the sample holds whole (`stride = 1`) is
//!    solved there and then.
//! 2. *Collect pass* at `g` with per-class bands `delta_c`: a row is *fixed* at its best
//!    class a when every other class b is further than `max(delta_a, delta_b)`, and only
//!    tallied ([`DualTally`]: rows and cost per class, the dual sum
//!    `sum_i min_k (C_ik - g_k)`, and per class pair `(a, b)` the least `C_ib - C_ia` of
//!    the rows fixed at a); the other rows are *free* and kept. Every field is an integer
//!    sum or minimum, so chunks, threads and shards merge in any order with the same bits.
//! 3. *Settle* (host, no pass): the free rows are solved exactly against what the fixed
//!    rows leave of each class's demand, costs shifted by `g` (the same plans, a start
//!    near the optimum). The joined plan is optimal when a dual point fits it: the
//!    difference constraints `g_b - g_a <= C_ib - C_ia` of every edge carrying units,
//!    the fixed rows' through their tallied least differences, have no negative cycle
//!    (Bellman-Ford over K classes). Complementary slackness then proves the plan
//!    optimal, so its cost is the unique optimum: the in-memory solver's bits.
//! 4. *Widening*: where a class's fixed rows exceed its demand, or a cycle is negative,
//!    the collect pass runs again with every band 4x wider (but a class without
//!    demand's, 0); past `MAX_WIDENINGS` every row is free (the in-memory problem), so
//!    the rounds end.
//! 5. *Refine passes* keep the free rows bounded: a collect pass keeps at most
//!    [`DualBudget::free_cap`] free rows, beyond which it keeps a band sample (the free
//!    rows whose mixed set index is a multiple of the least power of two that fits: the
//!    same rows for any chunking, thread count or merge order) beside the exact fixed
//!    tallies. The band sample, solved against the demand the fixed rows leave scaled to
//!    its rows, gives a better point and narrower bands, and the next collect pass
//!    follows; after `MAX_REFINES` the free rows are held whatever their number.
//!
//! **Bands.** From the latest sample's margins under `g`, per best class: class c's band
//! is its margin at quantile `4 / sqrt(m_c)` ([`DualBudget::share_scale`]; `m_c` the
//! sample's rows at c, whose count error is about `sqrt(m_c)`), twice its widest margin
//! where that share reaches 1 (times the widening); 0 for a class without demand (no
//! row may go there); the widest band of the others for a class the sample puts no row
//! in.
//!
//! **Passes and memory.** One pass a set when the sample holds it; otherwise a sample
//! pass, a refine pass for each narrowing, and a collect pass that settles (measured:
//! two passes a mode for 10M rows at K = 10, three or four for 500K rows at K = 100),
//! one more a widening. Each set samples up to `sample_rows` rows while all the sets'
//! samples fit eight samples (`SAMPLE_BUDGET`); past that (many large groups) each
//! set's sample shrinks in proportion, down to `max(64 K, 4096)` rows (or all of a
//! smaller set), and so the passes may grow; a set may hold four of its samples of free
//! rows. Memory, then: the samples (`sample_rows x K` costs, 16 MiB at the default, at
//! most eight of them unless the floor lifts it), the free rows within the
//! caps (the solver of the free rows takes about 4x their size again for its heaps;
//! each thread's part of a pass holds its own), plus `K^2` minima a set and a thread.
//! Two cases hold more: rows tied at a class boundary under `g` (margin 0) are always
//! free (the cap applies to them only until `MAX_REFINES`), and the last widening frees
//! every row. Never more than the chunk in hand of the rows themselves. Sample passes
//! are host work; a collect pass runs on a backend ([`DualSetPart::add_on`]:
//! `kernel::cot_collect`, the device's kernel or its CPU mirror, whose sums
//! [`DualTally::add_sums`] takes) or on the host ([`DualSetPart::add`], the reference
//! both are tested against); the tallies are the same. Rows come in the same order every
//! pass only for the sample to be the same; the value never depends on it.

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kernel::cot_collect::{CollectPoint, CollectSums};
use crate::methods::cot::{check_classes, check_probabilities, demand_units, probability_cost};
use crate::methods::transport;

/// Rows a collect pass tallies per parallel block (each block its own tally, merged in
/// block order: the same tally for the same chunks on any number of threads).
const BLOCK_ROWS: usize = 8192;

/// No constraint between two classes (no edge): the collect kernel's "no slack".
const NO_EDGE: i64 = crate::kernel::cot_collect::NO_SLACK;

/// The largest cost on the 2^-40 grid (`1 - p` for `p = 0`).
const MAX_COST: i64 = 1 << 40;

/// Each widening multiplies the free share by this.
const WIDENING: f64 = 4.0;

/// How much of a set the rounds hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DualBudget {
    /// Rows the sample pass keeps a set (at least 1).
    pub sample_rows: u64,
    /// The first collect pass frees about `share_scale sqrt(K / m)` of a set (m sampled
    /// rows); smaller holds fewer rows and widens more often.
    pub share_scale: f64,
}

impl DualBudget {
    /// The free rows a collect pass may hold a set (a band sample beyond): four samples'.
    pub fn free_cap(&self) -> usize {
        (self.sample_rows.max(1) as usize).saturating_mul(4)
    }

    /// The default: 2^21 costs a set (16 MiB of sample), at least 4096 rows.
    pub fn for_classes(k: usize) -> Self {
        DualBudget {
            sample_rows: ((1u64 << 21) / k.max(1) as u64).max(4096),
            share_scale: 4.0,
        }
    }
}

/// A row's best class under `g`, its value `C_ia - g_a` and margin to the runner-up
/// (lowest index first among tied values, whose margin is 0).
#[inline]
fn best_of(row: &[i64], g: &[i64]) -> (usize, i64, i64) {
    let (mut best, mut first, mut second) = (0usize, i64::MAX, i64::MAX);
    for (c, (&cost, &gc)) in row.iter().zip(g).enumerate() {
        let v = cost - gc;
        if v < first {
            second = first;
            first = v;
            best = c;
        } else if v < second {
            second = v;
        }
    }
    (best, first, second.saturating_sub(first))
}

/// A bijective mix of a row index (splitmix64's finaliser): a band sample's rows are
/// those whose mixed index is a multiple of the stride, spread over the set.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A collect pass's mergeable part of one set at one dual point (module docs, round 2).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DualTally {
    /// Classes.
    pub k: usize,
    /// Rows seen.
    pub rows: u64,
    /// `sum_i min_k (C_ik - g_k)` over every row: with `sum_k d_k g_k`, the dual's value.
    pub dual_sum: i128,
    /// Per class, the rows fixed there.
    pub fixed_rows: Vec<u64>,
    /// Per class, the sum of its fixed rows' costs there.
    pub fixed_cost: Vec<u128>,
    /// `k x k`: `[a * k + b]` the least `C_ib - C_ia` of the rows fixed at a.
    pub fixed_slack: Vec<i64>,
    /// The free rows' probabilities, `rows x k` (those [`DualTally::free_stride`] keeps;
    /// half a cost's bytes, the costs following from them exactly, as a sample's).
    #[serde(with = "crate::serde_bytes::f32s")]
    pub free: Vec<f32>,
    /// Each kept free row's index in its set.
    #[serde(with = "crate::serde_bytes::u64s")]
    pub free_index: Vec<u64>,
    /// A free row is kept when `mix(its index)` is a multiple of this: 1 while the free
    /// rows fit `cap`, doubled (about half the kept rows dropped) each time they overflow
    /// it, so the tally is then a band sample: the same rows for any chunking, threads or
    /// merge order (the smallest power of two that fits).
    pub free_stride: u64,
    /// Free rows seen, kept or not.
    pub free_seen: u64,
    /// The most free rows kept.
    pub cap: usize,
}

impl DualTally {
    /// An empty tally keeping every free row.
    pub fn new(k: usize) -> Self {
        Self::capped(k, usize::MAX)
    }

    /// An empty tally keeping at most `cap` free rows (a band sample beyond).
    pub fn capped(k: usize, cap: usize) -> Self {
        DualTally {
            k,
            rows: 0,
            dual_sum: 0,
            fixed_rows: vec![0; k],
            fixed_cost: vec![0; k],
            fixed_slack: vec![NO_EDGE; k * k],
            free: Vec::new(),
            free_index: Vec::new(),
            free_stride: 1,
            free_seen: 0,
            cap: cap.max(1),
        }
    }

    /// Doubles the stride until the kept rows fit `cap` (past 2^62 it stops: at most a
    /// few indices mix to such multiples).
    fn fit_cap(&mut self) {
        while self.free_rows() > self.cap && self.free_stride < 1 << 62 {
            self.thin_to(self.free_stride * 2);
        }
    }

    /// Keeps the kept rows whose index mixes to a multiple of `stride` (a power of two
    /// at least the current stride).
    fn thin_to(&mut self, stride: u64) {
        let k = self.k;
        let mut w = 0;
        for r in 0..self.free_index.len() {
            let i = self.free_index[r];
            if mix(i).is_multiple_of(stride) {
                self.free.copy_within(r * k..(r + 1) * k, w * k);
                self.free_index[w] = i;
                w += 1;
            }
        }
        self.free.truncate(w * k);
        self.free_index.truncate(w);
        self.free_stride = stride;
    }

    /// Adds rows (`probs`, `rows x k` probabilities, finite in `[0, 1]`; the first is row
    /// `first` of its set) at dual point `g` with per-class bands `deltas`: a row is fixed
    /// at its best class a when every other class b is further than `max(delta_a,
    /// delta_b)`, free otherwise (the host's pass: the reference of `kernel::cot_collect`).
    pub fn add(&mut self, probs: &[f32], first: u64, g: &[i64], deltas: &[i64]) {
        let k = self.k;
        let mut row = vec![0i64; k];
        for (index, p) in (first..).zip(probs.chunks_exact(k)) {
            for (c, &x) in row.iter_mut().zip(p) {
                *c = probability_cost(x);
            }
            let row = &row[..];
            let (a, value, _) = best_of(row, g);
            self.rows += 1;
            self.dual_sum += value as i128;
            let fixed = (0..k).all(|b| {
                b == a || (row[b] - g[b]).saturating_sub(value) > deltas[a].max(deltas[b])
            });
            if fixed {
                self.fixed_rows[a] += 1;
                self.fixed_cost[a] += row[a] as u128;
                let slack = &mut self.fixed_slack[a * k..(a + 1) * k];
                for (b, (s, &c)) in slack.iter_mut().zip(row).enumerate() {
                    if b != a {
                        *s = (*s).min(c - row[a]);
                    }
                }
            } else {
                if mix(index).is_multiple_of(self.free_stride) {
                    self.free.extend_from_slice(p);
                    self.free_index.push(index);
                    self.fit_cap();
                }
                self.free_seen += 1;
            }
        }
    }

    /// Adds a collect pass's sums (`kernel::cot_collect`, from a backend) over rows
    /// `first..` of the set, `probs` their probabilities (the free rows' costs come from
    /// them): the tally [`DualTally::add`] makes of the same rows at the same point, but
    /// for the order of the free rows. An error where the sums are not of these rows.
    pub fn add_sums(&mut self, sums: &CollectSums, first: u64, probs: &[f32]) -> Result<()> {
        let k = self.k;
        if sums.fixed_rows.len() != k
            || sums.fixed_cost.len() != k
            || sums.fixed_slack.len() != k * k
            || (sums.rows as usize).checked_mul(k) != Some(probs.len())
            || sums.free.last().is_some_and(|&j| j >= sums.rows)
            || sums.free.windows(2).any(|w| w[0] >= w[1])
            || sums
                .fixed_rows
                .iter()
                .try_fold(sums.free.len() as u64, |a, &b| a.checked_add(b))
                != Some(sums.rows)
        {
            return Err(Error::Invalid(
                "COT: a collect pass's sums of other rows or another K".into(),
            ));
        }
        self.rows += sums.rows;
        self.dual_sum += sums.dual_sum();
        for (a, b) in self.fixed_rows.iter_mut().zip(&sums.fixed_rows) {
            *a += b;
        }
        for (a, b) in self.fixed_cost.iter_mut().zip(&sums.fixed_cost) {
            *a += b;
        }
        for (a, &b) in self.fixed_slack.iter_mut().zip(&sums.fixed_slack) {
            *a = (*a).min(b);
        }
        for &j in &sums.free {
            let index = first + j;
            if mix(index).is_multiple_of(self.free_stride) {
                self.free
                    .extend_from_slice(&probs[j as usize * k..(j as usize + 1) * k]);
                self.free_index.push(index);
                self.fit_cap();
            }
            self.free_seen += 1;
        }
        Ok(())
    }

    /// Adds another tally of the same set and dual point (sums, minima, free rows
    /// appended, a band sample thinned to the coarser stride): the same tally whatever
    /// the order, but for the order of the free rows, which the settled cost does not
    /// depend on (a band sample's next point may, through the solver's ties).
    pub fn merge(&mut self, other: &DualTally) {
        self.rows += other.rows;
        self.free_seen += other.free_seen;
        self.dual_sum += other.dual_sum;
        for (a, b) in self.fixed_rows.iter_mut().zip(&other.fixed_rows) {
            *a += b;
        }
        for (a, b) in self.fixed_cost.iter_mut().zip(&other.fixed_cost) {
            *a += b;
        }
        for (a, &b) in self.fixed_slack.iter_mut().zip(&other.fixed_slack) {
            *a = (*a).min(b);
        }
        // Strides are powers of two: the finer side thinned to the coarser.
        if other.free_stride > self.free_stride {
            self.thin_to(other.free_stride);
        }
        for (row, &i) in other.free.chunks_exact(self.k).zip(&other.free_index) {
            if mix(i).is_multiple_of(self.free_stride) {
                self.free.extend_from_slice(row);
                self.free_index.push(i);
            }
        }
        self.fit_cap();
    }

    /// Checks a tally read back (another process's part): shapes, costs on the grid,
    /// counts that add up, kept rows that the stride keeps.
    pub fn check(&self, k: usize) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("COT: a collect part: {what}")));
        if k < 2
            || self.k != k
            || self.fixed_rows.len() != k
            || self.fixed_cost.len() != k
            || self.fixed_slack.len() != k * k
        {
            return bad("shapes of another K");
        }
        if self.free.len() != self.free_index.len() * k {
            return bad("free rows and their indices differ");
        }
        if !self.free_stride.is_power_of_two() || self.cap == 0 || self.free_rows() > self.cap {
            return bad("a band sample's stride or cap");
        }
        if !self.free.iter().all(|p| (0.0..=1.0).contains(p))
            || !self
                .fixed_slack
                .iter()
                .all(|&s| s == NO_EDGE || (-MAX_COST..=MAX_COST).contains(&s))
        {
            return bad("probabilities off [0, 1] or costs off the grid");
        }
        // Each row's value `C_ia - g_a` is within 2^51 (plans bound g by 2^50).
        if self.dual_sum.unsigned_abs() > (self.rows as u128) << 52 {
            return bad("a dual sum out of range");
        }
        let fixed: u128 = self.fixed_rows.iter().map(|&r| r as u128).sum();
        if fixed + self.free_seen as u128 != self.rows as u128
            || (self.free_rows() as u64) > self.free_seen
            || self
                .fixed_cost
                .iter()
                .zip(&self.fixed_rows)
                .any(|(&c, &r)| c > r as u128 * MAX_COST as u128)
        {
            return bad("counts that do not add up");
        }
        if self
            .free_index
            .iter()
            .any(|&i| !mix(i).is_multiple_of(self.free_stride))
        {
            return bad("free rows its stride does not keep");
        }
        Ok(())
    }

    /// Orders the kept free rows by index (as one process keeps them), so that the next
    /// step does not depend on the order parts merged in.
    pub fn sort_free_rows(&mut self) -> Result<()> {
        sort_by_index(&mut self.free_index, &mut self.free, self.k)
    }

    /// The free rows kept.
    pub fn free_rows(&self) -> usize {
        self.free.len() / self.k
    }

    /// The kept free rows' grid costs, `rows x k`.
    pub fn free_costs(&self) -> Vec<i64> {
        self.free.iter().map(|&p| probability_cost(p)).collect()
    }

    /// Whether every free row is kept (an exact collect, not a band sample).
    pub fn holds_every_free_row(&self) -> bool {
        self.free_stride == 1
    }
}

/// A dual point of the difference constraints `w` (`k x k`, `[a * k + b]` bounding
/// `g_b - g_a`, `i64::MAX` for none), `g_0 = 0`; `None` where a cycle is negative
/// (no point fits). Bellman-Ford from a virtual class joined to every class at 0.
pub fn potentials(w: &[i64], k: usize) -> Option<Vec<i64>> {
    let mut d = vec![0i128; k];
    for _ in 0..=k {
        let mut changed = false;
        for a in 0..k {
            for b in 0..k {
                let e = w[a * k + b];
                if e != NO_EDGE && d[a] + (e as i128) < d[b] {
                    d[b] = d[a] + e as i128;
                    changed = true;
                }
            }
        }
        if !changed {
            return Some(d.iter().map(|&x| (x - d[0]) as i64).collect());
        }
    }
    None
}

/// Shortest distances from `from` over the edges `w` (reversed: to `from`), `None` for
/// no path; `w` must have no negative cycle.
fn distances(w: &[i64], k: usize, from: usize, reversed: bool) -> Vec<Option<i128>> {
    let mut d: Vec<Option<i128>> = vec![None; k];
    d[from] = Some(0);
    for _ in 1..k {
        let mut changed = false;
        for a in 0..k {
            for b in 0..k {
                let e = if reversed { w[b * k + a] } else { w[a * k + b] };
                if e == NO_EDGE {
                    continue;
                }
                if let Some(da) = d[a] {
                    let nd = da + e as i128;
                    if d[b].is_none_or(|db| nd < db) {
                        d[b] = Some(nd);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    d
}

/// A dual point in the middle of what the constraints `w` allow (`None` where nothing
/// fits), relative to class `reference`: each class halfway between its largest value
/// (the shortest path from `reference`) and its least (minus the shortest path back),
/// which fits too (the constraints are differences: the set is convex and closed under
/// rounding the midpoint down). A class nothing bounds from below (no plan sends it
/// units: a class without demand) sits `2^42` under its largest value, so no row's
/// best class; the largest value of a class nothing bounds from above is its least.
/// Centred, a sampled point errs less on either side than a vertex of its region.
fn centre(w: &[i64], k: usize, reference: usize) -> Option<Vec<i64>> {
    potentials(w, k)?;
    let up = distances(w, k, reference, false);
    let down = distances(w, k, reference, true);
    Some(
        up.iter()
            .zip(&down)
            .map(|(&hi, &lo)| match (hi, lo.map(|l| -l)) {
                (Some(hi), Some(lo)) => (hi + lo).div_euclid(2) as i64,
                (Some(hi), None) => (hi - (1i128 << 42)) as i64,
                (None, Some(lo)) => lo as i64,
                (None, None) => 0,
            })
            .collect(),
    )
}

/// The class needing the most units (lowest index on ties): every optimal plan sends it
/// units, so every class is bounded from it.
fn largest(demand: &[u64]) -> usize {
    (0..demand.len())
        .max_by_key(|&c| (demand[c], std::cmp::Reverse(c)))
        .unwrap_or(0)
}

/// Tightens `w` by a plan's edges: every class `a` a row sends units to bounds
/// `g_b - g_a <= C_ib - C_ia` for every other class b (complementary slackness).
fn add_plan_edges(w: &mut [i64], costs: &[i64], k: usize, flows: &[Vec<(u32, u64)>]) {
    for (row, f) in costs.chunks_exact(k).zip(flows) {
        for &(a, _) in f {
            let a = a as usize;
            for b in (0..k).filter(|&b| b != a) {
                let e = &mut w[a * k + b];
                *e = (*e).min(row[b] - row[a]);
            }
        }
    }
}

/// A plan's cost in units x 2^-40 at the unshifted costs.
fn plan_cost(costs: &[i64], k: usize, flows: &[Vec<(u32, u64)>]) -> u128 {
    let mut total = 0u128;
    for (row, f) in costs.chunks_exact(k).zip(flows) {
        for &(c, u) in f {
            total += u as u128 * row[c as usize] as u128;
        }
    }
    total
}

/// `costs - g` made non-negative (`+ max g`): the same optimal plans, a start near them.
fn shifted(costs: &[i64], k: usize, g: &[i64]) -> Vec<i64> {
    let top = g.iter().copied().max().unwrap_or(0);
    let mut out = costs.to_vec();
    for row in out.chunks_exact_mut(k) {
        for (c, &gc) in row.iter_mut().zip(g) {
            *c = *c - gc + top;
        }
    }
    out
}

/// Sample rows below which [`sample_dual`] solves from the rows' cheapest classes (above,
/// from the dual point of every 8th row: a start near the optimum, fewer moves).
const WARM_START_ROWS: usize = 4096;

/// The sample's optimal plan's dual point: `m` rows of `supply` units against demands
/// in the source's shares (`n_k m`).
fn sample_dual(sample: &[i64], k: usize, class_counts: &[u64], supply: u64) -> Result<Vec<i64>> {
    let m = (sample.len() / k) as u64;
    let start = if sample.len() / k > WARM_START_ROWS {
        let every_8th: Vec<i64> = sample
            .chunks_exact(k)
            .step_by(8)
            .flatten()
            .copied()
            .collect();
        Some(sample_dual(&every_8th, k, class_counts, supply)?)
    } else {
        None
    };
    let demand = demand_units(class_counts, m as usize)?;
    // Costs shifted by a start point have the same optimal plans.
    let plan = match &start {
        Some(g) => transport::solve(&shifted(sample, k, g), k, supply, &demand)?,
        None => transport::solve(sample, k, supply, &demand)?,
    };
    let mut w = vec![NO_EDGE; k * k];
    add_plan_edges(&mut w, sample, k, &plan.flows);
    centre(&w, k, largest(&demand)).ok_or_else(|| {
        Error::Invalid("COT: the sample's plan admits no dual point (not optimal)".into())
    })
}

/// Round 3: the optimal cost (units x 2^-40) from a collect pass's tally, or `None` where
/// the fixed rows do not fit an optimal plan (round 4 widens).
pub fn settle(tally: &DualTally, g: &[i64], supply: u64, demand: &[u64]) -> Result<Option<u128>> {
    let k = tally.k;
    if !tally.holds_every_free_row() {
        return Err(Error::Invalid(
            "COT: settle needs every free row (the tally holds a band sample)".into(),
        ));
    }
    let mut rest = Vec::with_capacity(k);
    for (&d, &fixed) in demand.iter().zip(&tally.fixed_rows) {
        let taken = fixed as u128 * supply as u128;
        if taken > d as u128 {
            return Ok(None);
        }
        rest.push(d - taken as u64);
    }
    let free = tally.free_costs();
    let plan = transport::solve(&shifted(&free, k, g), k, supply, &rest)?;
    let mut w = tally.fixed_slack.clone();
    add_plan_edges(&mut w, &free, k, &plan.flows);
    if potentials(&w, k).is_none() {
        return Ok(None);
    }
    let fixed: u128 = tally.fixed_cost.iter().sum();
    let cost = fixed * supply as u128 + plan_cost(&free, k, &plan.flows);
    debug_assert!(
        dual_value(tally, g, supply, demand) <= cost as i128,
        "weak duality: the dual at g bounds the optimum from below"
    );
    Ok(Some(cost))
}

/// The dual's value at `g` in units x 2^-40, `sum_k d_k g_k + supply sum_i min_k
/// (C_ik - g_k)`: at most the optimal cost at any `g` (weak duality), equal at an optimal
/// one.
pub fn dual_value(tally: &DualTally, g: &[i64], supply: u64, demand: &[u64]) -> i128 {
    let prices: i128 = demand
        .iter()
        .zip(g)
        .map(|(&d, &x)| d as i128 * x as i128)
        .sum();
    prices + supply as i128 * tally.dual_sum
}

/// A refine pass's next dual point and its band sample's margins under it (per best
/// class, sorted), or `None` where the fixed rows exceed a class's demand (or no free
/// row was kept). The band sample (`m` of the
/// `F` free rows) is solved against what the fixed rows leave, scaled to `m` rows
/// (largest remainders, lowest class first); the point fits the fixed rows' least
/// differences too where it can, the sample's plan alone where not.
fn refine(
    tally: &DualTally,
    g: &[i64],
    supply: u64,
    demand: &[u64],
) -> Result<Option<(Vec<i64>, ClassMargins)>> {
    let k = tally.k;
    let (m, free) = (tally.free_rows() as u128, tally.free_seen as u128);
    if m == 0 {
        return Ok(None);
    }
    let mut rest = Vec::with_capacity(k);
    for (&d, &fixed) in demand.iter().zip(&tally.fixed_rows) {
        let taken = fixed as u128 * supply as u128;
        if taken > d as u128 {
            return Ok(None);
        }
        rest.push(d as u128 - taken);
    }
    // rest sums to supply F: scaled by m / F it sums to supply m.
    let mut scaled: Vec<u64> = rest.iter().map(|&r| (r * m / free) as u64).collect();
    let mut short = supply as u128 * m - scaled.iter().map(|&x| x as u128).sum::<u128>();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(rest[c] * m % free), c));
    for &c in order.iter().cycle() {
        if short == 0 {
            break;
        }
        scaled[c] += 1;
        short -= 1;
    }
    // A class the fixed rows leave short gets at least one unit, so the band sample's
    // plan sends it some and bounds it from below (else `centre` would push it 2^42
    // down, as a class without demand).
    let donor = largest(&scaled);
    for c in 0..k {
        if rest[c] > 0 && scaled[c] == 0 && scaled[donor] > 1 {
            scaled[c] += 1;
            scaled[donor] -= 1;
        }
    }
    let free = tally.free_costs();
    let plan = transport::solve(&shifted(&free, k, g), k, supply, &scaled)?;
    let mut edges = vec![NO_EDGE; k * k];
    add_plan_edges(&mut edges, &free, k, &plan.flows);
    let with_fixed: Vec<i64> = edges
        .iter()
        .zip(&tally.fixed_slack)
        .map(|(&a, &b)| a.min(b))
        .collect();
    let reference = largest(&scaled);
    let next = centre(&with_fixed, k, reference)
        .or_else(|| centre(&edges, k, reference))
        .ok_or_else(|| Error::Invalid("COT: a band sample's plan admits no dual point".into()))?;
    let margins = class_margins(&free, k, &next);
    Ok(Some((next, margins)))
}

/// Margins per best class, each class's sorted.
type ClassMargins = Vec<Vec<i64>>;

/// Rows' margins under `g`, grouped by their best class, each class's sorted.
fn class_margins(rows: &[i64], k: usize, g: &[i64]) -> ClassMargins {
    let mut out = vec![Vec::new(); k];
    for r in rows.chunks_exact(k) {
        let (a, _, margin) = best_of(r, g);
        out[a].push(margin);
    }
    for m in &mut out {
        m.sort_unstable();
    }
    out
}

/// Per-class bands from a sample's margins (per best class, sorted): class c's band is
/// its margin at quantile `scale / sqrt(m_c)` (`m_c` its sampled rows: the count error
/// of a sampled dual is about `sqrt(m_c)` rows a class), times `4^widenings`; where that
/// share reaches 1, twice its widest margin. A class without demand has band 0 (no row
/// goes there); one the sample puts no row in takes the widest band of the others.
fn class_bands(margins: &[Vec<i64>], demand: &[u64], scale: f64, widenings: u32) -> Vec<i64> {
    let widen = WIDENING.powi(widenings as i32);
    let mut bands: Vec<Option<i64>> = margins
        .iter()
        .map(|m| {
            let share = scale / (m.len().max(1) as f64).sqrt() * widen;
            if m.is_empty() {
                None
            } else if share >= 1.0 {
                let twice = m[m.len() - 1].saturating_mul(2).max(1) as f64;
                Some((twice * widen).min(NO_EDGE as f64 / 2.0) as i64)
            } else {
                Some(m[((share * m.len() as f64) as usize).min(m.len() - 1)])
            }
        })
        .collect();
    let widest = bands.iter().flatten().copied().max().unwrap_or(NO_EDGE);
    for (b, &d) in bands.iter_mut().zip(demand) {
        if d == 0 {
            *b = Some(0);
        }
    }
    bands.into_iter().map(|b| b.unwrap_or(widest)).collect()
}

/// What the rounds took: passes, and the most rows held at once (every set's sample or
/// free rows after a pass, summed over the sets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Passes over the rows.
    pub passes: u64,
    /// The most rows held after a pass: samples and kept free rows (not the threads'
    /// parts during a pass, nor the solver's heaps).
    pub held_rows: u64,
    /// Passes that sampled a band to refine the dual point (sets too large to hold
    /// their free rows).
    pub refine_passes: u64,
}

/// Refine passes a set may take before its free rows are held whatever their number.
const MAX_REFINES: u32 = 8;

/// Each set's sample stride: up to `sample_rows` rows a set while all the sets' samples
/// fit [`SAMPLE_BUDGET`] samples; past that (many large groups) each set's share shrinks
/// in proportion, down to `max(64 K, 4096)` rows (or all of a smaller set).
fn sample_strides(sizes: &[u64], k: usize, sample_rows: u64) -> Vec<u64> {
    let min_rows = ((64 * k) as u64).max(4096).min(sample_rows);
    let wanted: Vec<u64> = sizes.iter().map(|&n| n.min(sample_rows)).collect();
    let total: u64 = wanted.iter().sum();
    let allowed = SAMPLE_BUDGET * sample_rows;
    sizes
        .iter()
        .zip(&wanted)
        .map(|(&n, &w)| {
            let rows = if total <= allowed {
                w
            } else {
                (w as u128 * allowed as u128 / total as u128) as u64
            };
            let stride = n.div_ceil(rows.max(1));
            // The floor: at least `min_rows` rows (a stride rounded down).
            let floor = n.min(min_rows);
            if n.div_ceil(stride) < floor {
                (n / floor.max(1)).max(1)
            } else {
                stride
            }
        })
        .collect()
}

/// All the sets' samples together: at most this many `sample_rows` (module docs).
const SAMPLE_BUDGET: u64 = 8;

/// Widenings of a set's bands at one point before every row is freed.
const MAX_WIDENINGS: u32 = 3;

/// One set's state between passes.
#[derive(Clone, Debug)]
enum SetRound {
    /// Sampling every `stride`-th row.
    Sample { stride: u64 },
    /// Collecting at a point (a band sample where the free rows overflow the cap).
    Collect(Box<Collect>),
    /// The optimal cost, units x 2^-40.
    Done(u128),
}

/// A collect pass's point and bands.
#[derive(Clone, Debug)]
struct Collect {
    g: Vec<i64>,
    /// Per class, the band; all `NO_EDGE`: every row free.
    deltas: Vec<i64>,
    /// The latest sample's margins under `g`, per best class (the bands' source).
    margins: Vec<Vec<i64>>,
    refines: u32,
    widenings: u32,
    /// The most free rows the pass keeps (a band sample beyond).
    cap: usize,
}

impl Collect {
    /// The pass at `g` with the bands of `margins` widened `widenings` times (past
    /// [`MAX_WIDENINGS`]: every row free); its free rows capped at `cap` (a band sample
    /// beyond) until [`MAX_REFINES`] refine passes, held whatever their number after.
    #[allow(clippy::too_many_arguments)]
    fn at(
        k: usize,
        demand: &[u64],
        budget: DualBudget,
        g: Vec<i64>,
        margins: Vec<Vec<i64>>,
        refines: u32,
        widenings: u32,
    ) -> Box<Self> {
        let every_row = widenings > MAX_WIDENINGS;
        let deltas = if every_row {
            vec![NO_EDGE; k]
        } else {
            class_bands(&margins, demand, budget.share_scale, widenings)
        };
        let cap = if every_row || refines >= MAX_REFINES {
            usize::MAX
        } else {
            budget.free_cap()
        };
        Box::new(Collect {
            g,
            deltas,
            margins,
            refines,
            widenings,
            cap,
        })
    }
}

/// What one set's part of a pass computes (module docs, rounds 1 and 2).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DualSetPlan {
    /// Keep every row whose index in the set is a multiple of `stride`.
    Sample {
        /// The sample's stride.
        stride: u64,
    },
    /// Tally the rows at dual point `g` with per-class bands `deltas`, keeping at most
    /// `cap` free rows (a band sample beyond).
    Collect {
        /// The dual point, a grid integer a class.
        g: Vec<i64>,
        /// Per class, the band.
        deltas: Vec<i64>,
        /// The most free rows kept.
        cap: u64,
    },
    /// Nothing: the set is solved.
    Done,
}

/// One set's part of a pass over some of its rows: rows of any chunks or shards, merged
/// in any order into the same part (but for the order of rows, which
/// [`DualRounds::advance`] sorts by index).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DualSetPart {
    /// The sampled rows: each one's index in the set, and its costs (`rows x k`).
    Sample {
        /// Each sampled row's index in its set.
        #[serde(with = "crate::serde_bytes::u64s")]
        index: Vec<u64>,
        /// Their probabilities, `rows x k` (half a cost's bytes; the costs follow from
        /// them exactly, [`probability_cost`](crate::kernel::cot_two_class::probability_cost)).
        #[serde(with = "crate::serde_bytes::f32s")]
        probs: Vec<f32>,
    },
    /// The collect pass's tally.
    Collect(DualTally),
    /// Nothing (a solved set).
    Done,
}

impl DualSetPart {
    /// An empty part of `plan`.
    pub fn empty(plan: &DualSetPlan, k: usize) -> Self {
        match plan {
            DualSetPlan::Sample { .. } => DualSetPart::Sample {
                index: Vec::new(),
                probs: Vec::new(),
            },
            DualSetPlan::Collect { cap, .. } => DualSetPart::Collect(DualTally::capped(
                k,
                usize::try_from(*cap).unwrap_or(usize::MAX),
            )),
            DualSetPlan::Done => DualSetPart::Done,
        }
    }

    /// Adds rows of the set (`probs`, `rows x k` probabilities, checked), the first of
    /// them row `first` of the set.
    pub fn add(&mut self, plan: &DualSetPlan, k: usize, first: u64, probs: &[f32]) -> Result<()> {
        check_probabilities(probs, k)?;
        match (self, plan) {
            (DualSetPart::Sample { index, probs: kept }, DualSetPlan::Sample { stride }) => {
                let stride = (*stride).max(1);
                // Rows first + j with (first + j) % stride == 0.
                let skip = (stride - first % stride) % stride;
                for (j, p) in probs
                    .chunks_exact(k)
                    .enumerate()
                    .skip(skip as usize)
                    .step_by(stride as usize)
                {
                    index.push(first + j as u64);
                    kept.extend_from_slice(p);
                }
            }
            (DualSetPart::Collect(tally), DualSetPlan::Collect { g, deltas, .. }) => {
                if g.len() != k || deltas.len() != k || tally.k != k {
                    return Err(Error::Invalid("COT: a collect plan of another K".into()));
                }
                let (g, deltas, cap) = (&g[..], &deltas[..], tally.cap);
                if probs.len() <= BLOCK_ROWS * k {
                    // A small feed (a group's rows of a chunk): straight in.
                    tally.add(probs, first, g, deltas);
                    return Ok(());
                }
                // Contiguous blocks folded per thread and reduced in block order: the
                // same tally for any number of threads (module docs).
                let part = probs
                    .par_chunks(BLOCK_ROWS * k)
                    .enumerate()
                    .fold(
                        || DualTally::capped(k, cap),
                        |mut t, (j, p)| {
                            t.add(p, first + (j * BLOCK_ROWS) as u64, g, deltas);
                            t
                        },
                    )
                    .reduce(
                        || DualTally::capped(k, cap),
                        |mut a, b| {
                            a.merge(&b);
                            a
                        },
                    );
                tally.merge(&part);
            }
            (DualSetPart::Done, DualSetPlan::Done) => {}
            _ => return Err(Error::Invalid("COT: a part of another pass".into())),
        }
        Ok(())
    }

    /// [`DualSetPart::add`] with a collect pass on `backend` (`kernel::cot_collect`: the
    /// device's kernel or its CPU mirror); samples are kept on the host. The same part.
    pub fn add_on<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        plan: &DualSetPlan,
        k: usize,
        first: u64,
        probs: &[f32],
    ) -> Result<()> {
        match (self, plan) {
            (DualSetPart::Collect(tally), DualSetPlan::Collect { g, deltas, .. }) => {
                if g.len() != k || deltas.len() != k || tally.k != k {
                    return Err(Error::Invalid("COT: a collect plan of another K".into()));
                }
                let sums = backend.cot_collect(probs, &CollectPoint::new(g, deltas)?)?;
                tally.add_sums(&sums, first, probs)
            }
            (part, plan) => part.add(plan, k, first, probs),
        }
    }

    /// Checks a part read back (another process's): shapes, costs on the grid, a
    /// tally's counts.
    pub fn check(&self, k: usize) -> Result<()> {
        match self {
            DualSetPart::Sample { index, probs } => {
                if index.len().checked_mul(k) != Some(probs.len()) {
                    return Err(Error::Invalid(
                        "COT: a sample part's rows and probabilities differ".into(),
                    ));
                }
                check_probabilities(probs, k)
            }
            DualSetPart::Collect(t) => t.check(k),
            DualSetPart::Done => Ok(()),
        }
    }

    /// Checks that `other` (of the same set and pass) may merge into this part: both
    /// check, and their counts add without overflow. [`DualSetPart::merge_checked`]
    /// then cannot fail.
    pub fn check_merge(&self, other: &DualSetPart, k: usize) -> Result<()> {
        self.check(k)?;
        other.check(k)?;
        let overflow = || Error::Invalid("COT: a collect part's counts overflow".into());
        match (self, other) {
            (DualSetPart::Sample { .. }, DualSetPart::Sample { .. })
            | (DualSetPart::Done, DualSetPart::Done) => Ok(()),
            (DualSetPart::Collect(a), DualSetPart::Collect(b)) => {
                if a.cap != b.cap {
                    return Err(Error::Invalid(
                        "COT: collect parts of different caps".into(),
                    ));
                }
                a.rows.checked_add(b.rows).ok_or_else(overflow)?;
                a.free_seen.checked_add(b.free_seen).ok_or_else(overflow)?;
                a.dual_sum.checked_add(b.dual_sum).ok_or_else(overflow)?;
                for (x, y) in a.fixed_rows.iter().zip(&b.fixed_rows) {
                    x.checked_add(*y).ok_or_else(overflow)?;
                }
                for (x, y) in a.fixed_cost.iter().zip(&b.fixed_cost) {
                    x.checked_add(*y).ok_or_else(overflow)?;
                }
                Ok(())
            }
            _ => Err(Error::Invalid("COT: parts of different passes".into())),
        }
    }

    /// Adds another part of the same set and pass (another chunk's or shard's) that
    /// [`DualSetPart::check_merge`] accepted.
    pub fn merge_checked(&mut self, other: &DualSetPart) {
        match (self, other) {
            (
                DualSetPart::Sample { index, probs },
                DualSetPart::Sample {
                    index: more,
                    probs: more_probs,
                },
            ) => {
                index.extend_from_slice(more);
                probs.extend_from_slice(more_probs);
            }
            (DualSetPart::Collect(a), DualSetPart::Collect(b)) => a.merge(b),
            _ => {}
        }
    }

    /// Rows held: sampled, or free rows kept.
    fn held_rows(&self, k: usize) -> usize {
        match self {
            DualSetPart::Sample { probs, .. } => probs.len() / k,
            DualSetPart::Collect(t) => t.free_rows(),
            DualSetPart::Done => 0,
        }
    }
}

/// Orders kept rows (`index`, their values `rows x k`: costs or probabilities) by index;
/// a repeated index (a row given twice) is an error.
fn sort_by_index<T: Copy>(index: &mut Vec<u64>, costs: &mut Vec<T>, k: usize) -> Result<()> {
    if index.len().checked_mul(k) != Some(costs.len()) {
        return Err(Error::Invalid(
            "COT: kept rows and their costs differ".into(),
        ));
    }
    if index.windows(2).all(|w| w[0] < w[1]) {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..index.len()).collect();
    order.sort_unstable_by_key(|&r| index[r]);
    let sorted_index: Vec<u64> = order.iter().map(|&r| index[r]).collect();
    if sorted_index.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Invalid("COT: a row in two parts of a pass".into()));
    }
    let mut sorted = Vec::with_capacity(costs.len());
    for &r in &order {
        sorted.extend_from_slice(&costs[r * k..(r + 1) * k]);
    }
    *index = sorted_index;
    *costs = sorted;
    Ok(())
}

/// COT at K > 2 as a state machine over passes: [`DualRounds::plan`] says what each
/// set's part of the next pass computes, [`DualRounds::advance`] takes the merged parts
/// (from one process or from many shards) and takes the host's step, and
/// [`DualRounds::values`] gives the COT of every set after the last pass.
pub struct DualRounds {
    sizes: Vec<u64>,
    k: usize,
    class_counts: Vec<u64>,
    supply: u64,
    demands: Vec<Vec<u64>>,
    set_budgets: Vec<DualBudget>,
    rounds: Vec<SetRound>,
    stats: RoundStats,
}

impl DualRounds {
    /// The rounds of sets of `sizes` rows at `k` classes against the source's
    /// `class_counts`, within `budget`.
    pub fn new(sizes: &[u64], k: usize, class_counts: &[u64], budget: DualBudget) -> Result<Self> {
        if k < 3 {
            return Err(Error::Invalid(format!(
                "COT rounds: K = {k} (K = 2 has its own passes)"
            )));
        }
        check_classes(k, class_counts)?;
        let supply: u64 = class_counts.iter().sum();
        if supply == 0 || sizes.contains(&0) {
            return Err(Error::Empty {
                what: "COT".into(),
                detail: "no labelled source row or a set without rows".into(),
            });
        }
        let demands = sizes
            .iter()
            .map(|&n| demand_units(class_counts, n as usize))
            .collect::<Result<Vec<_>>>()?;
        let sample_rows = budget.sample_rows.max(1);
        let strides = sample_strides(sizes, k, sample_rows);
        let set_budgets: Vec<DualBudget> = sizes
            .iter()
            .zip(&strides)
            .map(|(&n, &s)| DualBudget {
                sample_rows: n.div_ceil(s),
                ..budget
            })
            .collect();
        let rounds = strides
            .iter()
            .map(|&stride| SetRound::Sample { stride })
            .collect();
        Ok(DualRounds {
            sizes: sizes.to_vec(),
            k,
            class_counts: class_counts.to_vec(),
            supply,
            demands,
            set_budgets,
            rounds,
            stats: RoundStats::default(),
        })
    }

    /// Every set's part of the next pass; `None` when every set is solved.
    pub fn plan(&self) -> Option<Vec<DualSetPlan>> {
        if self.rounds.iter().all(|r| matches!(r, SetRound::Done(_))) {
            return None;
        }
        Some(
            self.rounds
                .iter()
                .map(|r| match r {
                    SetRound::Sample { stride } => DualSetPlan::Sample { stride: *stride },
                    SetRound::Collect(c) => DualSetPlan::Collect {
                        g: c.g.clone(),
                        deltas: c.deltas.clone(),
                        cap: c.cap as u64,
                    },
                    SetRound::Done(_) => DualSetPlan::Done,
                })
                .collect(),
        )
    }

    /// Takes every set's merged part of the pass [`DualRounds::plan`] asked for (rows
    /// `seen` a set, which must be the set's size) and takes each set's host step (its
    /// solves, the sets on threads). A part that does not belong is an error that leaves
    /// the rounds as they were.
    pub fn advance(&mut self, parts: Vec<DualSetPart>, seen: &[u64]) -> Result<()> {
        let plan = self
            .plan()
            .ok_or_else(|| Error::Invalid("COT: parts after the last pass".into()))?;
        if parts.len() != plan.len() || seen.len() != plan.len() {
            return Err(Error::Invalid(format!(
                "COT: {} parts for {} sets",
                parts.len(),
                plan.len()
            )));
        }
        let k = self.k;
        crate::methods::cot::check_seen(seen, &self.sizes)?;
        let mut parts = parts;
        // Every part checked (and its rows put in index order) before any step.
        for (set, (round, part)) in self.rounds.iter().zip(parts.iter_mut()).enumerate() {
            match (round, part) {
                (SetRound::Sample { stride }, DualSetPart::Sample { index, probs }) => {
                    sort_by_index(index, probs, k)?;
                    check_probabilities(probs, k)?;
                    let stride = (*stride).max(1);
                    let n = self.sizes[set];
                    if index.len() as u64 != n.div_ceil(stride)
                        || index.iter().any(|&i| i % stride != 0 || i >= n)
                    {
                        return Err(Error::Invalid(format!(
                            "COT: a sample part of set {set} holds other rows than every {stride}-th"
                        )));
                    }
                }
                (SetRound::Collect(c), DualSetPart::Collect(tally)) => {
                    tally.check(k)?;
                    if tally.cap != c.cap || tally.rows != self.sizes[set] {
                        return Err(Error::Invalid(format!(
                            "COT: a collect part of set {set} of another pass"
                        )));
                    }
                    tally.sort_free_rows()?;
                }
                (SetRound::Done(_), DualSetPart::Done) => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "COT: a part of set {set} of another pass"
                    )))
                }
            }
        }
        let held: usize = parts.iter().map(|p| p.held_rows(k)).sum();
        let refining = parts
            .iter()
            .any(|p| matches!(p, DualSetPart::Collect(t) if !t.holds_every_free_row()));
        let (supply, class_counts) = (self.supply, &self.class_counts[..]);
        let (demands, set_budgets) = (&self.demands, &self.set_budgets);
        // Each set's host step (its solves) on its own thread: independent problems.
        let next: Vec<SetRound> = self
            .rounds
            .par_iter()
            .zip(parts)
            .enumerate()
            .map(|(set, (round, part))| -> Result<SetRound> {
                let collect = |g: Vec<i64>, margins, refines, widenings| {
                    SetRound::Collect(Collect::at(
                        k,
                        &demands[set],
                        set_budgets[set],
                        g,
                        margins,
                        refines,
                        widenings,
                    ))
                };
                Ok(match (round, part) {
                    (SetRound::Sample { stride }, DualSetPart::Sample { probs, .. }) => {
                        let costs: Vec<i64> = probs.iter().map(|&p| probability_cost(p)).collect();
                        drop(probs);
                        if *stride == 1 {
                            // The sample is the set.
                            let plan = transport::solve(&costs, k, supply, &demands[set])?;
                            SetRound::Done(plan.cost_units)
                        } else {
                            let g = sample_dual(&costs, k, class_counts, supply)?;
                            let margins = class_margins(&costs, k, &g);
                            collect(g, margins, 0, 0)
                        }
                    }
                    (SetRound::Collect(c), DualSetPart::Collect(tally)) => {
                        if !tally.holds_every_free_row() {
                            // A band sample: its dual point, or wider bands at this one.
                            match refine(&tally, &c.g, supply, &demands[set])? {
                                Some((g, margins)) => collect(g, margins, c.refines + 1, 0),
                                None => collect(
                                    c.g.clone(),
                                    c.margins.clone(),
                                    c.refines + 1,
                                    c.widenings + 1,
                                ),
                            }
                        } else {
                            match settle(&tally, &c.g, supply, &demands[set])? {
                                Some(cost) => SetRound::Done(cost),
                                None if c.widenings > MAX_WIDENINGS => {
                                    return Err(Error::Invalid(
                                        "COT: every row free and still no optimal plan (a solver fault)"
                                            .into(),
                                    ))
                                }
                                None => collect(
                                    c.g.clone(),
                                    c.margins.clone(),
                                    c.refines,
                                    c.widenings + 1,
                                ),
                            }
                        }
                    }
                    (done, _) => done.clone(),
                })
            })
            .collect::<Result<_>>()?;
        self.rounds = next;
        self.stats.passes += 1;
        self.stats.held_rows = self.stats.held_rows.max(held as u64);
        self.stats.refine_passes += refining as u64;
        Ok(())
    }

    /// One COT a set (the in-memory [`crate::methods::cot::cot`]'s bits), once every
    /// set is solved.
    pub fn values(&self) -> Option<Vec<f64>> {
        self.rounds
            .iter()
            .zip(&self.sizes)
            .map(|(r, &n)| match r {
                SetRound::Done(cost) => {
                    Some(1.0 - crate::methods::cot::mean(*cost, n as u128 * self.supply as u128))
                }
                _ => None,
            })
            .collect()
    }

    /// What the rounds took so far.
    pub fn stats(&self) -> RoundStats {
        self.stats
    }

    /// Classes.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// COT (the estimate, `1 - cost`) at K > 2 of sets read in passes, exact, in the
/// memory of the module docs: `each_pass(f)` feeds `f(set, probs)` every row of every
/// set (`sizes[set]` rows each, probabilities `rows x k` in `[0, 1]`; chunks of any size,
/// a row may go to several sets) and is called once a pass. Returns one COT a set (the
/// in-memory [`crate::methods::cot::cot`]'s bits) and what the rounds took. Rows within a
/// set must come in the same order every pass only for the sample to be the same (the
/// value does not depend on it). [`DualRounds`] fed by one process.
pub fn cot_rounds_sets(
    sizes: &[u64],
    k: usize,
    class_counts: &[u64],
    budget: DualBudget,
    mut each_pass: impl FnMut(&mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
) -> Result<(Vec<f64>, RoundStats)> {
    let mut rounds = DualRounds::new(sizes, k, class_counts, budget)?;
    while let Some(plan) = rounds.plan() {
        let mut parts: Vec<DualSetPart> = plan.iter().map(|p| DualSetPart::empty(p, k)).collect();
        let mut seen = vec![0u64; sizes.len()];
        each_pass(&mut |set: usize, probs: &[f32]| {
            let Some(part) = parts.get_mut(set) else {
                return Err(Error::Invalid(format!(
                    "COT: rows fed to set {set} of {}",
                    sizes.len()
                )));
            };
            let first = seen[set];
            seen[set] += (probs.len() / k) as u64;
            part.add(&plan[set], k, first, probs)
        })?;
        rounds.advance(parts, &seen)?;
    }
    let values = rounds
        .values()
        .ok_or_else(|| Error::Invalid("COT: the rounds ended unsolved".into()))?;
    Ok((values, rounds.stats()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Rows of probabilities, some on a coarse grid so that costs and margins tie.
    fn rows(n: usize, k: usize, seed: u64, coarse: bool) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * k);
        for _ in 0..n {
            let w: Vec<f32> = (0..k)
                .map(|_| {
                    if coarse {
                        r.random_range(0..4) as f32
                    } else {
                        r.random::<f32>().powi(3)
                    }
                })
                .collect();
            let s: f32 = w.iter().sum::<f32>().max(1e-3);
            out.extend(w.iter().map(|&x| if s > 0.0 { x / s } else { 0.0 }));
        }
        out
    }

    fn in_memory(probs: &[f32], k: usize, counts: &[u64]) -> f64 {
        crate::methods::cot::cot(probs, k, counts).expect("cot")
    }

    /// Streams `probs` as one set in random chunks, a new cut every pass.
    fn streamed(
        probs: &[f32],
        k: usize,
        counts: &[u64],
        budget: DualBudget,
        seed: u64,
    ) -> (f64, RoundStats) {
        let n = (probs.len() / k) as u64;
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let (v, stats) = cot_rounds_sets(&[n], k, counts, budget, |feed| {
            let mut at = 0usize;
            while at < n as usize {
                let len = r.random_range(1..=(n as usize - at).min(97));
                feed(0, &probs[at * k..(at + len) * k])?;
                at += len;
            }
            Ok(())
        })
        .expect("rounds");
        (v[0], stats)
    }

    // Sizes: 1 row (the sample holds it), a few rows, and sets 10-100x the sample so the
    // collect pass fixes most rows; coarse rows tie on costs and margins (margin 0).
    #[test]
    fn rounds_equal_the_in_memory_solver_bit_for_bit() {
        let mut widened = 0;
        for (case, &(n, k, coarse)) in [
            (1usize, 3usize, false),
            (7, 4, true),
            (500, 3, false),
            (2000, 10, false),
            (2000, 10, true),
            (3000, 5, true),
            (1500, 30, false),
        ]
        .iter()
        .enumerate()
        {
            let probs = rows(n, k, case as u64, coarse);
            let mut r = ChaCha8Rng::seed_from_u64(100 + case as u64);
            // Skewed source shares, one class absent.
            let mut counts: Vec<u64> = (0..k).map(|_| r.random_range(1..50)).collect();
            counts[k - 1] = 0;
            let want = in_memory(&probs, k, &counts);
            // A share scale of 0.05 frees too few rows at first, so round 4 widens.
            for (sample_rows, share_scale) in [
                (1u64, 4.0),
                (64, 4.0),
                (200, 4.0),
                (200, 0.05),
                (n as u64, 4.0),
            ] {
                let budget = DualBudget {
                    sample_rows,
                    share_scale,
                };
                let (got, stats) = streamed(&probs, k, &counts, budget, case as u64);
                let passes = stats.passes;
                assert_eq!(got.to_bits(), want.to_bits(), "n {n} K {k} {budget:?}");
                if sample_rows >= n as u64 {
                    assert_eq!(passes, 1, "the sample holds the set");
                } else {
                    assert!(passes >= 2);
                    widened += (passes > 2) as u32;
                }
            }
        }
        // Small samples give poor duals: some sets must have widened (round 4 ran).
        assert!(widened > 0);
    }

    // Sets 10-75x the sample: more rows would be free than the sample's size, so refine
    // passes narrow the band (a band sample's dual point) before the exact collect, and
    // the rows held stay near the sample's size; skewed shares, one class absent.
    #[test]
    fn refine_passes_bound_the_rows_held() {
        let mut refined = 0;
        for (case, &(n, k, coarse, sample_rows, share_scale)) in [
            (40_000usize, 4usize, false, 1500u64, 4.0),
            (30_000, 3, true, 1000, 4.0),
            (40_000, 8, false, 3000, 4.0),
            // Bands too narrow for their points: refine passes widen.
            (30_000, 5, false, 400, 0.5),
            // A sample past WARM_START_ROWS: its solve starts from every 8th row's point.
            (60_000, 6, false, 5000, 4.0),
        ]
        .iter()
        .enumerate()
        {
            let probs = rows(n, k, 50 + case as u64, coarse);
            let mut counts: Vec<u64> = (1..=k as u64).map(|c| c * c).collect();
            counts[1] = 0;
            let want = in_memory(&probs, k, &counts);
            let budget = DualBudget {
                sample_rows,
                share_scale,
            };
            let (got, stats) = streamed(&probs, k, &counts, budget, case as u64);
            assert_eq!(got.to_bits(), want.to_bits(), "n {n} K {k}");
            refined += stats.refine_passes;
            // Rows tied at a boundary (margin 0, the coarse set's many) are always held.
            if !coarse {
                assert!(stats.held_rows <= 8 * sample_rows, "n {n} K {k}: {stats:?}");
            }
            eprintln!("n {n} K {k} coarse {coarse}: {stats:?}");
        }
        assert!(refined > 0);
    }

    // Settle at dual points far from the optimum: where the fixed rows fit the demands
    // but not an optimal plan only the certificate (the cycle check) declines; whatever
    // settle accepts must be the optimum.
    #[test]
    fn settle_is_exact_or_declines() {
        let mut r = ChaCha8Rng::seed_from_u64(21);
        let (mut accepted, mut cycle_declined) = (0, 0);
        for case in 0..600u64 {
            let k = r.random_range(3..6);
            let n = r.random_range(2..40);
            let probs = rows(n, k, 1000 + case, case % 2 == 0);
            let costs: Vec<i64> = probs
                .iter()
                .map(|&p| transport::grid_cost(1.0 - p as f64))
                .collect();
            let counts: Vec<u64> = (0..k).map(|_| r.random_range(0..6)).collect();
            let supply: u64 = counts.iter().sum();
            if supply == 0 {
                continue;
            }
            let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
            let best = transport::solve(&costs, k, supply, &demand).expect("solve");
            let g: Vec<i64> = (0..k)
                .map(|c| {
                    if c == 0 {
                        0
                    } else {
                        r.random_range(-(1i64 << 38)..(1i64 << 38))
                    }
                })
                .collect();
            let deltas: Vec<i64> = (0..k).map(|_| r.random_range(0..(1i64 << 38))).collect();
            let mut tally = DualTally::new(k);
            tally.add(&probs, 0, &g, &deltas);
            let fits = tally
                .fixed_rows
                .iter()
                .zip(&demand)
                .all(|(&f, &d)| f * supply <= d);
            // Weak duality at any point; equality at an optimal plan's own dual point.
            assert!(dual_value(&tally, &g, supply, &demand) <= best.cost_units as i128);
            let mut w = vec![NO_EDGE; k * k];
            add_plan_edges(&mut w, &costs, k, &best.flows);
            let optimal = potentials(&w, k).expect("an optimal plan has a dual point");
            let mut at_optimum = DualTally::new(k);
            at_optimum.add(&probs, 0, &optimal, &deltas);
            assert_eq!(
                dual_value(&at_optimum, &optimal, supply, &demand),
                best.cost_units as i128,
                "case {case}: strong duality"
            );
            match settle(&tally, &g, supply, &demand).expect("settle") {
                Some(cost) => {
                    assert_eq!(cost, best.cost_units, "case {case}");
                    accepted += 1;
                }
                None => cycle_declined += fits as u32,
            }
        }
        assert!(
            accepted > 20 && cycle_declined > 20,
            "{accepted} {cycle_declined}"
        );
    }

    #[test]
    fn groups_are_their_own_problems() {
        let (n, k) = (1200usize, 6usize);
        let probs = rows(n, k, 9, false);
        let counts = [5u64, 9, 1, 30, 2, 7];
        let slot = |i: usize| 1 + (i * 7 + i / 5) % 3;
        let mut sets: Vec<Vec<f32>> = vec![probs.clone(), Vec::new(), Vec::new(), Vec::new()];
        for (i, p) in probs.chunks_exact(k).enumerate() {
            sets[slot(i)].extend_from_slice(p);
        }
        let sizes: Vec<u64> = sets.iter().map(|s| (s.len() / k) as u64).collect();
        let (values, _) = cot_rounds_sets(
            &sizes,
            k,
            &counts,
            DualBudget {
                sample_rows: 50,
                share_scale: 1.0,
            },
            |feed| {
                for (i, p) in probs.chunks_exact(k).enumerate() {
                    feed(0, p)?;
                    feed(slot(i), p)?;
                }
                Ok(())
            },
        )
        .expect("rounds");
        for (set, v) in sets.iter().zip(&values) {
            assert_eq!(v.to_bits(), in_memory(set, k, &counts).to_bits());
        }
    }

    #[test]
    fn tallies_merge_as_one() {
        let k = 5;
        let probs = rows(900, k, 3, true);
        let g = [0i64, 3 << 36, -(1 << 37), 5, 1 << 38];
        let deltas = [1i64 << 36, 1 << 35, 0, 1 << 37, 1 << 36];
        let mut whole = DualTally::new(k);
        whole.add(&probs, 0, &g, &deltas);
        let mut parts = DualTally::new(k);
        for (j, cut) in probs.chunks(k * 77).enumerate() {
            let mut t = DualTally::new(k);
            t.add(cut, 77 * j as u64, &g, &deltas);
            parts.merge(&t);
        }
        assert_eq!(parts, whole);
        let free = whole.free_rows();
        assert!(free > 100 && free < 900, "{free}");
        // Capped at 40 free rows: whole, or in parts of 77 rows merged in reverse order,
        // the same tally: the fixed part and free count as uncapped, and the band sample
        // the free rows whose mixed index is a multiple of the least power of two that
        // keeps at most 40.
        let mut capped = DualTally::capped(k, 40);
        capped.add(&probs, 0, &g, &deltas);
        let mut parts = DualTally::capped(k, 40);
        for (j, cut) in probs.chunks(k * 77).enumerate().rev() {
            let mut t = DualTally::capped(k, 40);
            t.add(cut, 77 * j as u64, &g, &deltas);
            parts.merge(&t);
        }
        let sample = |s: u64| -> Vec<u64> {
            let mut v: Vec<u64> = whole
                .free_index
                .iter()
                .copied()
                .filter(|&i| mix(i).is_multiple_of(s))
                .collect();
            v.sort_unstable();
            v
        };
        let mut stride = 1u64;
        while sample(stride).len() > 40 {
            stride *= 2;
        }
        assert!(stride > 1 && sample(stride).len() >= 10);
        for t in [&capped, &parts] {
            assert_eq!(t.fixed_rows, whole.fixed_rows);
            assert_eq!(t.fixed_cost, whole.fixed_cost);
            assert_eq!(t.fixed_slack, whole.fixed_slack);
            assert_eq!((t.free_seen, t.dual_sum), (free as u64, whole.dual_sum));
            assert_eq!(t.free_stride, stride);
            assert!(!t.holds_every_free_row());
            let mut kept: Vec<(u64, &[f32])> = t
                .free_index
                .iter()
                .copied()
                .zip(t.free.chunks_exact(k))
                .collect();
            kept.sort_unstable_by_key(|r| r.0);
            let want: Vec<(u64, &[f32])> = sample(stride)
                .into_iter()
                .map(|i| (i, &probs[i as usize * k..(i as usize + 1) * k]))
                .collect();
            assert_eq!(kept, want);
        }
    }

    // Sample budgets: a target and a few groups sample up to `sample_rows` each; a
    // thousand large groups shrink to the floor (max(64 K, 4096) rows), not hold all.
    #[test]
    fn samples_share_one_budget() {
        let rows = |sizes: &[u64], k: usize, sample: u64| -> Vec<u64> {
            sizes
                .iter()
                .zip(sample_strides(sizes, k, sample))
                .map(|(&n, s)| n.div_ceil(s))
                .collect()
        };
        // 10M rows and four groups at K = 10's default: every set a full sample.
        let few = [10_000_000u64, 2_500_000, 2_500_000, 2_500_000, 2_500_000];
        // (A stride's rounding takes a few rows off.)
        let got = rows(&few, 10, 209_715);
        assert!(
            got.iter().all(|&r| (200_000..=209_715).contains(&r)),
            "{got:?}"
        );
        // Sets smaller than the sample are held whole.
        assert_eq!(rows(&[5000, 300, 1], 10, 209_715), vec![5000, 300, 1]);
        // 1000 groups of 50,000 rows: each down to the floor, 4096 rows, not 50,000.
        let mut many = vec![50_000_000u64];
        many.extend(std::iter::repeat_n(50_000, 1000));
        let got = rows(&many, 10, 209_715);
        assert!(
            got[1..].iter().all(|&r| (4096..=4200).contains(&r)),
            "{:?}",
            &got[..3]
        );
        assert!(got[0] < 209_715 && got[0] >= 4096);
        let total: u64 = got.iter().sum();
        assert!(total < 50_000 * 1000 / 10, "{total}");
        // At K = 100 the floor is 6,400 rows.
        assert!(rows(&many, 100, 20_971)[1..].iter().all(|&r| r >= 6400));
    }

    #[test]
    fn potentials_fit_the_constraints_or_find_the_cycle() {
        let k = 3;
        // g1 - g0 <= 5, g2 - g1 <= -2, g0 - g2 <= -2: the cycle sums to 1, a point fits.
        let mut w = vec![NO_EDGE; 9];
        w[1] = 5;
        w[3 + 2] = -2;
        w[6] = -2;
        let g = potentials(&w, k).expect("fits");
        assert_eq!(g[0], 0);
        for a in 0..k {
            for b in 0..k {
                if w[a * k + b] != NO_EDGE {
                    assert!(g[b] - g[a] <= w[a * k + b]);
                }
            }
        }
        // Tighten one edge: the cycle sums to -1, nothing fits.
        w[1] = 3;
        assert_eq!(potentials(&w, k), None);
    }

    #[test]
    fn bad_input_is_typed() {
        let feed_none = |_: &mut dyn FnMut(usize, &[f32]) -> Result<()>| Ok(());
        let b = DualBudget {
            sample_rows: 8,
            share_scale: 4.0,
        };
        assert!(cot_rounds_sets(&[4], 3, &[0, 0, 0], b, feed_none).is_err());
        assert!(cot_rounds_sets(&[4], 3, &[1, 2], b, feed_none).is_err());
        // Fewer rows than the set's size: the pass says so.
        let e = cot_rounds_sets(&[4], 3, &[1, 2, 3], b, feed_none).unwrap_err();
        assert!(e.to_string().contains("read 0 rows of a set of 4"), "{e}");
        let e = cot_rounds_sets(&[1], 3, &[1, 2, 3], b, |f| f(0, &[0.5, 0.5, 1.5])).unwrap_err();
        assert!(e.to_string().contains("not in [0, 1]"), "{e}");
    }
}
