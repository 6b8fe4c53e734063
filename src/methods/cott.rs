//! COTT, COT with a threshold (Lu, Y. et al. 2023; DESIGN.md 2.16), exact.
//!
//! For a set X and an optimal plan `gamma` of COT's problem (X's rows, mass `1/N` each,
//! against the source's label shares; [`crate::methods::cot`]), `E_X(u)` is the mass the
//! plan moves on edges costing more than `u`, `F_X(u)` at least `u` (a row split between
//! classes counts in each in proportion). On the source S: `e` = its misclassified rows,
//! `t` = the largest `u` with `F_S(u) >= e/n` (the e-th largest transported source cost),
//! `lambda = (e/n - E_S(t)) / (F_S(t) - E_S(t))` (with `e = 0`: `t` the largest
//! transported source cost, `lambda = 0`); then
//! `COTT(D) = 1 - E_D(t) - lambda (F_D(t) - E_D(t))`, which gives `acc(S)` on S itself.
//!
//! Everything is in integers: masses in COT's units (`n` a row, `n_k N` a class), costs
//! on the 2^-40 grid, so `t` is a grid cost and `E`, `F` are exact unit counts.
//!
//! **Which plan.** Where the optimal plan is not unique, E and F are those of the optimal
//! plan that puts the least mass on edges costing more than `t`. Rows tight on one class
//! under an optimal dual `g` (from the solver's plan, `g_0 = 0`, decided exactly on the
//! grid) go there in every optimal plan; the other ("free") rows are settled by a small
//! transport over the classes' remaining demand with cost `1{c_ik > t}` on their tight
//! edges (and no other edge). K = 2: the dual is the boundary gain, the free rows those
//! whose gain equals it. This crate's choices where DESIGN leaves one open: among plans
//! with the least mass above `t`, the one the solver finds (for K = 2, the free rows
//! whose class-1 edge costs more than `t` stay in class 0 first); on the source, `t` is
//! taken from the solver's plan, the plan is then settled at that `t` and `t` and
//! `lambda` are read from the settled plan (one step; on untied data nothing moves).
//!
//! Intervals (DESIGN.md 2.12), target level: each bootstrap replicate refits `t` and
//! `lambda` by the same rule on its weighted source (rows repeated by their weights, its
//! weighted class counts and errors, at its temperature; stored in the calibration's
//! bootstrap part), then reads its weighted target's plan at them. Groups have none (their
//! own plans per replicate would multiply the report's time by the group count).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::transport;

/// COTT's threshold and tie weight from the source, per mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CottThreshold {
    /// `t` on the 2^-40 cost grid.
    pub t: i64,
    /// `lambda` in [0, 1].
    pub lambda: f64,
}

impl CottThreshold {
    /// A threshold read back from a file is untrusted: `t` on the grid of costs in
    /// [0, 1], `lambda` in [0, 1].
    pub fn check(&self) -> Result<()> {
        let top = 1i64 << transport::COST_GRID_BITS;
        if !(0..=top).contains(&self.t) || !(0.0..=1.0).contains(&self.lambda) {
            return Err(Error::Invalid(format!(
                "COTT threshold t = {}, lambda = {}: t must be a grid cost in [0, 2^40] and lambda in [0, 1]",
                self.t, self.lambda
            )));
        }
        Ok(())
    }
}

/// A plan of COT's problem in units: for K = 2 the units each row sends to class 1 (the
/// rest go to class 0); for K > 2 each row's `(class, units)`.
enum Plan {
    Two(Vec<u64>),
    General(Vec<Vec<(u32, u64)>>),
}

/// The units of COT's problem for `n` rows against `class_counts`: a row's supply and
/// each class's demand.
fn units(class_counts: &[u64], n: usize) -> Result<(u64, Vec<u64>)> {
    let supply: u64 = class_counts.iter().sum();
    if supply == 0 {
        return Err(Error::Empty {
            what: "COTT source labels".into(),
            detail: "no labelled source row: the class shares are unknown".into(),
        });
    }
    if n == 0 {
        return Err(Error::Empty {
            what: "COTT".into(),
            detail: "no rows".into(),
        });
    }
    let demand = class_counts
        .iter()
        .map(|&c| {
            c.checked_mul(n as u64)
                .ok_or_else(|| Error::Invalid(format!("COTT: {c} x {n} units overflow")))
        })
        .collect::<Result<_>>()?;
    Ok((supply, demand))
}

impl Plan {
    /// The optimal plan, its free rows settled at `t` (`None`: as the solver leaves them).
    fn solve(costs: &[i64], k: usize, supply: u64, demand: &[u64], t: Option<i64>) -> Result<Plan> {
        if k == 2 {
            return Ok(Plan::Two(two_class(costs, supply, demand[1], t)));
        }
        let plan = transport::solve(costs, k, supply, demand)?;
        let Some(t) = t else {
            return Ok(Plan::General(plan.flows));
        };
        Ok(Plan::General(settle(
            costs, k, supply, demand, plan.flows, t,
        )?))
    }

    /// `(E, F)` at `u` in units: mass on edges costing more than `u`, at least `u`.
    fn above(&self, costs: &[i64], k: usize, supply: u64, u: i64) -> (u128, u128) {
        let (mut e, mut f) = (0u128, 0u128);
        self.each(costs, k, supply, |c, units| {
            if c > u {
                e += units as u128;
            }
            if c >= u {
                f += units as u128;
            }
        });
        (e, f)
    }

    /// Every `(cost, units)` piece with units > 0.
    fn each(&self, costs: &[i64], k: usize, supply: u64, mut f: impl FnMut(i64, u64)) {
        match self {
            Plan::Two(to1) => {
                for (c, &u1) in costs.chunks_exact(2).zip(to1) {
                    if u1 > 0 {
                        f(c[1], u1);
                    }
                    if u1 < supply {
                        f(c[0], supply - u1);
                    }
                }
            }
            Plan::General(flows) => {
                for (i, row) in flows.iter().enumerate() {
                    for &(class, units) in row {
                        f(costs[i * k + class as usize], units);
                    }
                }
            }
        }
    }

    /// The largest `u` with `F(u) >= need` units (`need > 0`), or with `need == 0` the
    /// largest transported cost.
    fn threshold(&self, costs: &[i64], k: usize, supply: u64, need: u128) -> i64 {
        let mut pieces: Vec<(i64, u64)> = Vec::new();
        self.each(costs, k, supply, |c, u| pieces.push((c, u)));
        pieces.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
        let mut total = 0u128;
        for &(c, u) in &pieces {
            total += u as u128;
            if total >= need.max(1) {
                return c;
            }
        }
        pieces.last().map_or(0, |p| p.0)
    }
}

/// K = 2: the units of class 1 per row. Rows with a gain `c_i0 - c_i1` above the boundary
/// gain `g*` (the last gain class 1 needs) send all their units to class 1, rows below
/// none; the tied rows at `g*` share what class 1 still needs, those whose class-1 edge
/// costs no more than `t` first when `t` is given, else in row order.
fn two_class(costs: &[i64], supply: u64, demand1: u64, t: Option<i64>) -> Vec<u64> {
    let n = costs.len() / 2;
    let mut to1 = vec![0u64; n];
    if demand1 == 0 {
        return to1;
    }
    let gains: Vec<i64> = costs.chunks_exact(2).map(|c| c[0] - c[1]).collect();
    // The boundary: the gain of the last row class 1 takes (whole or in part).
    let last = (demand1.div_ceil(supply) as usize).min(n) - 1;
    let mut order = gains.clone();
    order.select_nth_unstable_by(last, |a, b| b.cmp(a));
    let boundary = order[last];
    let mut need = demand1;
    for (u, &g) in to1.iter_mut().zip(&gains) {
        if g > boundary {
            *u = supply;
            need -= supply;
        }
    }
    let mut tied: Vec<usize> = (0..n).filter(|&i| gains[i] == boundary).collect();
    if let Some(t) = t {
        // Stable: row order within each preference.
        let above = |i: usize| (costs[2 * i + 1] > t) as i8 - (costs[2 * i] > t) as i8;
        tied.sort_by_key(|&i| above(i));
    }
    for i in tied {
        let take = need.min(supply);
        to1[i] = take;
        need -= take;
        if need == 0 {
            break;
        }
    }
    to1
}

/// K > 2: the optimal `flows` with their free rows re-settled to put the least mass on
/// edges costing more than `t` (see the module docs).
fn settle(
    costs: &[i64],
    k: usize,
    supply: u64,
    demand: &[u64],
    flows: Vec<Vec<(u32, u64)>>,
    t: i64,
) -> Result<Vec<Vec<(u32, u64)>>> {
    let n = flows.len();
    let cost = |i: usize, c: usize| costs[i * k + c] as i128;
    // An optimal dual: g_b - g_a <= c_ib - c_ia for every row i on class a, i.e. the
    // shortest-path potentials of the class graph with those edge weights (no negative
    // cycle at an optimum), from a virtual root; then shifted so g_0 = 0.
    let mut weight = vec![i128::MAX; k * k];
    for (i, row) in flows.iter().enumerate() {
        for &(a, _) in row {
            let a = a as usize;
            for b in 0..k {
                let w = cost(i, b) - cost(i, a);
                if w < weight[a * k + b] {
                    weight[a * k + b] = w;
                }
            }
        }
    }
    let mut g = vec![0i128; k];
    for _ in 0..k {
        let mut changed = false;
        for a in 0..k {
            for b in 0..k {
                let w = weight[a * k + b];
                if a != b && w != i128::MAX && g[a] + w < g[b] {
                    g[b] = g[a] + w;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let g0 = g[0];
    for x in &mut g {
        *x -= g0;
    }
    // Rows tight on one class are fixed there; the others are free.
    let mut remaining: Vec<i128> = demand.iter().map(|&d| d as i128).collect();
    let mut out: Vec<Vec<(u32, u64)>> = vec![Vec::new(); n];
    let mut free: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, slot) in out.iter_mut().enumerate() {
        let reduced = |c: usize| cost(i, c) - g[c];
        let least = (0..k).map(reduced).min().unwrap_or(0);
        let tight: Vec<usize> = (0..k).filter(|&c| reduced(c) == least).collect();
        if tight.len() == 1 {
            *slot = vec![(tight[0] as u32, supply)];
            remaining[tight[0]] -= supply as i128;
        } else {
            free.push((i, tight));
        }
    }
    if free.is_empty() {
        return Ok(out);
    }
    if remaining.iter().any(|&r| r < 0) {
        return Err(Error::Invalid(
            "COTT: the dual's tight classes do not hold the plan (solver inconsistency)".into(),
        ));
    }
    // The free rows' 0/1 problem: cost 1 on a tight edge above t, 0 on one at most t, and
    // an edge that is not tight costs more than any plan of tight edges can.
    let forbidden = (free.len() as u64 * supply + 1) as i64;
    let mut small = Vec::with_capacity(free.len() * k);
    for (i, tight) in &free {
        for c in 0..k {
            small.push(if tight.contains(&c) {
                (costs[i * k + c] > t) as i64
            } else {
                forbidden
            });
        }
    }
    let demand_free: Vec<u64> = remaining.iter().map(|&r| r as u64).collect();
    let plan = transport::solve(&small, k, supply, &demand_free)?;
    for (at, ((i, _), row)) in free.iter().zip(plan.flows).enumerate() {
        if row
            .iter()
            .any(|&(c, _)| small[at * k + c as usize] == forbidden)
        {
            return Err(Error::Invalid(
                "COTT: no optimal plan on the tight edges (solver inconsistency)".into(),
            ));
        }
        out[*i] = row;
    }
    Ok(out)
}

/// COTT's threshold from the source's grid costs (`n x k`, at the mode's temperature),
/// its class counts and its misclassified rows `errors`.
pub fn source_threshold(
    costs: &[i64],
    k: usize,
    class_counts: &[u64],
    errors: u64,
) -> Result<CottThreshold> {
    let n = costs.len() / k.max(1);
    let (supply, demand) = units(class_counts, n)?;
    let need = errors as u128 * supply as u128;
    let first = Plan::solve(costs, k, supply, &demand, None)?;
    let t0 = first.threshold(costs, k, supply, need);
    let plan = Plan::solve(costs, k, supply, &demand, Some(t0))?;
    let t = plan.threshold(costs, k, supply, need);
    if errors == 0 {
        return Ok(CottThreshold { t, lambda: 0.0 });
    }
    let (e, f) = plan.above(costs, k, supply, t);
    // e < need <= f: t is the largest cost with F(t) >= need.
    let lambda = if f > e {
        (need.saturating_sub(e)) as f64 / (f - e) as f64
    } else {
        0.0
    };
    Ok(CottThreshold {
        t,
        lambda: lambda.clamp(0.0, 1.0),
    })
}

/// [`cott`] from an optimal plan already solved (`flows` of [`transport::solve`] on the
/// same costs, K > 2): its free rows are settled at `t`, then E and F are read.
pub fn from_flows(
    costs: &[i64],
    k: usize,
    class_counts: &[u64],
    flows: Vec<Vec<(u32, u64)>>,
    thr: &CottThreshold,
) -> Result<f64> {
    let n = costs.len() / k.max(1);
    let (supply, demand) = units(class_counts, n)?;
    let plan = Plan::General(settle(costs, k, supply, &demand, flows, thr.t)?);
    Ok(estimate(&plan, costs, k, supply, n, thr))
}

/// `1 - E(t) - lambda (F(t) - E(t))` of a plan of `n` rows.
fn estimate(
    plan: &Plan,
    costs: &[i64],
    k: usize,
    supply: u64,
    n: usize,
    thr: &CottThreshold,
) -> f64 {
    let (e, f) = plan.above(costs, k, supply, thr.t);
    let total = n as u128 * supply as u128;
    let moved = e as f64 + thr.lambda * (f - e) as f64;
    1.0 - moved / total as f64
}

/// COTT's estimate of a set's accuracy from its grid costs (`n x k`), the source's
/// `class_counts` and threshold.
pub fn cott(costs: &[i64], k: usize, class_counts: &[u64], thr: &CottThreshold) -> Result<f64> {
    let n = costs.len() / k.max(1);
    let (supply, demand) = units(class_counts, n)?;
    let plan = Plan::solve(costs, k, supply, &demand, Some(thr.t))?;
    Ok(estimate(&plan, costs, k, supply, n, thr))
}

/// K = 2 COTT of several sets of rows at once (`slot[i]`: the set of row `i`, `sets`
/// of them; `None`: one set of every row), from one pass over the rows after one
/// selection per set: the same plan as `two_class` (rows above the boundary gain to
/// class 1, below to class 0, the tied ones settled at `t` in row order), without making
/// it. The multiset path of COT's replicates; the report's path is [`two_class_sets_with_cot`].
pub fn two_class_sets(
    costs: &[i64],
    slot: Option<&[u32]>,
    sets: usize,
    class_counts: &[u64],
    thr: &CottThreshold,
) -> Result<Vec<f64>> {
    Ok(
        two_class_sets_with_cot(costs, slot, sets, class_counts, Some(thr))?
            .into_iter()
            .map(|s| s.cott.unwrap_or(f64::NAN))
            .collect(),
    )
}

/// The runs of rows of one set: `(set, rows)` in row order (`slot[i]`: row `i`'s set;
/// `None`: every row in set 0).
fn set_runs(
    slot: Option<&[u32]>,
    n: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let whole = (slot.is_none() && n > 0).then_some((0, 0..n));
    let runs = slot
        .into_iter()
        .flat_map(move |s| equal_runs(&s[..n]).map(|(set, rows)| (set as usize, rows)));
    whole.into_iter().chain(runs)
}

/// The runs of equal values of `values`, in order, as `(value, range)`: found as they
/// are walked (nothing is allocated, so values that alternate cost a run each).
pub(crate) fn equal_runs<T: PartialEq + Copy>(
    values: &[T],
) -> impl Iterator<Item = (T, std::ops::Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let &v = values.get(at)?;
        let start = at;
        at += values[at..].iter().take_while(|&&x| x == v).count();
        Some((v, start..at))
    })
}

/// An exact sum of i64 values without i128 adds (which do not vectorise): each value is
/// split into its high (signed) and low 32 bits, each half summed in 64 bits. At most
/// [`SPLIT_BLOCK`] values a sum: neither half can overflow, and `2 * SPLIT_BLOCK` fits a
/// 32-bit usize.
#[derive(Clone, Copy, Default)]
struct SplitSum {
    high: i64,
    low: u64,
}

/// Values one [`SplitSum`] takes at most.
const SPLIT_BLOCK: usize = 1 << 30;

impl SplitSum {
    #[inline(always)]
    fn add(&mut self, v: i64) {
        self.high += v >> 32;
        self.low += v as u64 & 0xffff_ffff;
    }

    fn total(self) -> i128 {
        ((self.high as i128) << 32) + self.low as i128
    }
}

/// A run's gains `c0 - c1` into `gains`, and the exact sum of its class-0 costs (any
/// i64 costs), in one vectorised pass.
fn gains_and_class0_sum(run: &[i64], gains: &mut [i64]) -> i128 {
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            let mut total = 0i128;
            for (r, g) in run
                .chunks(2 * SPLIT_BLOCK)
                .zip(gains.chunks_mut(SPLIT_BLOCK))
            {
                let mut sum = SplitSum::default();
                for (g, c) in g.iter_mut().zip(r.chunks_exact(2)) {
                    *g = c[0] - c[1];
                    sum.add(c[0]);
                }
                total += sum.total();
            }
            total
        },
    )
}

/// The exact sum of `values` (vectorised).
fn exact_sum(values: &[i64]) -> i128 {
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            let mut total = 0i128;
            for block in values.chunks(SPLIT_BLOCK) {
                let mut sum = SplitSum::default();
                for &v in block {
                    sum.add(v);
                }
                total += sum.total();
            }
            total
        },
    )
}

/// A run's rows off the COTT boundary gain `b` (ties excluded): rows taken to class 1
/// (`gain > b`), rows whose cost at their class is above / at-or-above `t`, and the
/// rows on the boundary, counted but not settled (the caller settles them in row order).
/// Branch-free selects, so the loop vectorises.
fn untied_counts(run: &[i64], b: i64, t: i64) -> (u64, u64, u64, u64) {
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            let (mut taken, mut e, mut f, mut ties) = (0u64, 0u64, 0u64, 0u64);
            for c in run.chunks_exact(2) {
                let gain = c[0] - c[1];
                let tie = gain == b;
                let one = gain > b;
                let cost = if one { c[1] } else { c[0] };
                let off = !tie as u64;
                taken += one as u64;
                e += off & (cost > t) as u64;
                f += off & (cost >= t) as u64;
                ties += tie as u64;
            }
            (taken, e, f, ties)
        },
    )
}

/// One K = 2 set's outcome of [`two_class_sets_with_cot`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoClassSet {
    /// Rows in the set.
    pub rows: usize,
    /// COT's optimal cost in units (`supply` units a row, costs on the 2^-40 grid): the
    /// rows' class-0 costs less the gains class 1 takes, whole rows and a part of the next.
    pub cot_units: u128,
    /// COTT's estimate (with a threshold).
    pub cott: Option<f64>,
}

/// [`two_class_sets`] with each set's COT cost from the same selection: with `d1 = n_1 N`
/// class-1 units and `supply = n` units a row, the `ceil(d1 / supply)`-th largest gain
/// is COTT's boundary, and the `floor(d1 / supply)` gains above it (a sum that does not
/// depend on which tied rows they are) plus `d1 mod supply` units of it are what COT
/// moves. One grouping pass, one selection a set, and with a threshold one more pass.
pub fn two_class_sets_with_cot(
    costs: &[i64],
    slot: Option<&[u32]>,
    sets: usize,
    class_counts: &[u64],
    thr: Option<&CottThreshold>,
) -> Result<Vec<TwoClassSet>> {
    two_class_sets_in(costs, slot, sets, class_counts, thr, &mut Vec::new())
}

/// [`two_class_sets_with_cot`] with the gains in `gains` (scratch: a caller solving
/// several partitions of one target's rows allocates and faults in the pages once).
pub(crate) fn two_class_sets_in(
    costs: &[i64],
    slot: Option<&[u32]>,
    sets: usize,
    class_counts: &[u64],
    thr: Option<&CottThreshold>,
    gains: &mut Vec<i64>,
) -> Result<Vec<TwoClassSet>> {
    let n = costs.len() / 2;
    // Rows come in runs of one set (a group's rows together; one run without groups):
    // each pass goes a run at a time, its set's sums in registers. The runs are found
    // once.
    let runs: Vec<(usize, std::ops::Range<usize>)> = set_runs(slot, n).collect();
    let mut size = vec![0usize; sets];
    for (s, rows) in &runs {
        size[*s] += rows.len();
    }
    let mut start = vec![0usize; sets + 1];
    for s in 0..sets {
        start[s + 1] = start[s] + size[s];
    }
    // Each set's gains together, for its selection, and its class-0 cost sum.
    // Every entry is written below before it is read.
    gains.resize(n, 0);
    let mut base = vec![0i128; sets];
    let mut next = start.clone();
    for &(s, ref rows) in &runs {
        let run = &costs[2 * rows.start..2 * rows.end];
        base[s] += gains_and_class0_sum(run, &mut gains[next[s]..next[s] + rows.len()]);
        next[s] += rows.len();
    }
    let mut supply_demand = Vec::with_capacity(sets);
    let mut boundary: Vec<Option<i64>> = vec![None; sets];
    let mut out = Vec::with_capacity(sets);
    for s in 0..sets {
        let (supply, demand) = units(class_counts, size[s])?;
        let d1 = demand[1];
        let (whole, part) = ((d1 / supply) as usize, d1 % supply);
        let mut moved = 0i128;
        if d1 > 0 {
            let gains = &mut gains[start[s]..start[s + 1]];
            let last = (d1.div_ceil(supply) as usize).min(gains.len()) - 1;
            gains.select_nth_unstable_by(last, |a, b| b.cmp(a));
            boundary[s] = Some(gains[last]);
            // Before `last` the largest gains; with a part, `last` is `whole`, the next.
            moved = exact_sum(&gains[..whole]) * supply as i128;
            if part > 0 {
                moved += gains[last] as i128 * part as i128;
            }
        }
        supply_demand.push((supply, d1));
        out.push(TwoClassSet {
            rows: size[s],
            cot_units: (base[s] * supply as i128 - moved) as u128,
            cott: None,
        });
    }
    let Some(thr) = thr else {
        return Ok(out);
    };
    let t = thr.t;
    // Rows (not units) taken to class 1 and with their edge above / at-or-above t: every
    // row not tied sends all its `supply` units one way, so units are rows x supply.
    let mut taken_rows = vec![0u64; sets];
    let mut e_rows = vec![0u64; sets];
    let mut f_rows = vec![0u64; sets];
    // Tied rows per set, in row order: (class-1 edge above t minus class-0 edge above t,
    // c0, c1).
    let mut tied: Vec<Vec<(i8, i64, i64)>> = vec![Vec::new(); sets];
    for &(s, ref rows) in &runs {
        let run = &costs[2 * rows.start..2 * rows.end];
        let Some(b) = boundary[s] else {
            // Every row at class 0.
            e_rows[s] += run.chunks_exact(2).map(|c| (c[0] > t) as u64).sum::<u64>();
            f_rows[s] += run.chunks_exact(2).map(|c| (c[0] >= t) as u64).sum::<u64>();
            continue;
        };
        let (taken, e, f, ties) = untied_counts(run, b, t);
        if ties > 0 {
            // Rarely on the boundary: settled below, in row order.
            for c in run.chunks_exact(2).filter(|c| c[0] - c[1] == b) {
                tied[s].push(((c[1] > t) as i8 - (c[0] > t) as i8, c[0], c[1]));
            }
        }
        taken_rows[s] += taken;
        e_rows[s] += e;
        f_rows[s] += f;
    }
    for (s, set) in out.iter_mut().enumerate() {
        let (supply, d1) = supply_demand[s];
        let mut e = e_rows[s] as u128 * supply as u128;
        let mut f = f_rows[s] as u128 * supply as u128;
        let mut need = d1 - taken_rows[s] * supply;
        tied[s].sort_by_key(|r| r.0);
        for &(_, c0, c1) in &tied[s] {
            let to1 = need.min(supply);
            need -= to1;
            let to0 = (supply - to1) as u128;
            let to1 = to1 as u128;
            e += to1 * (c1 > t) as u128 + to0 * (c0 > t) as u128;
            f += to1 * (c1 >= t) as u128 + to0 * (c0 >= t) as u128;
        }
        let total = size[s] as u128 * supply as u128;
        let moved = e as f64 + thr.lambda * (f - e) as f64;
        set.cott = Some(1.0 - moved / total as f64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::transport::grid_cost;
    use rand::{Rng, SeedableRng};

    /// Seeded probability rows on the grid, each row summing to about 1.
    fn rows(seed: u64, n: usize, k: usize, ties: bool) -> Vec<i64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * k);
        for i in 0..n {
            let mut p: Vec<f64> = (0..k).map(|_| rng.random::<f64>().powi(3)).collect();
            if ties && i % 3 == 0 {
                // Coarse values: many rows share a cost vector.
                for x in &mut p {
                    *x = (*x * 4.0).round() + 0.5;
                }
            }
            let s: f64 = p.iter().sum();
            out.extend(p.iter().map(|x| grid_cost(1.0 - x / s)));
        }
        out
    }

    /// The K = 2 cost pairs of the rows `slot` puts in set `s`, in row order.
    fn set_rows(costs: &[i64], slot: &[u32], s: usize) -> Vec<i64> {
        costs
            .chunks_exact(2)
            .zip(slot)
            .filter(|(_, &x)| x as usize == s)
            .flat_map(|(c, _)| c.to_vec())
            .collect()
    }

    fn errors(costs: &[i64], k: usize, labels: &[usize]) -> u64 {
        costs
            .chunks_exact(k)
            .zip(labels)
            .filter(|(c, &y)| (0..k).min_by_key(|&j| (c[j], j)).unwrap() != y)
            .count() as u64
    }

    /// On the source itself COTT gives its accuracy, exactly up to one rounding: K = 2,
    /// 3, 10, untied and tied rows.
    #[test]
    fn the_source_gets_its_accuracy() {
        for (k, ties) in [
            (2, false),
            (2, true),
            (3, false),
            (3, true),
            (10, false),
            (10, true),
        ] {
            let n = 400;
            let costs = rows(k as u64 * 7 + ties as u64, n, k, ties);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(k as u64);
            let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..k)).collect();
            let mut counts = vec![0u64; k];
            for &y in &labels {
                counts[y] += 1;
            }
            let e = errors(&costs, k, &labels);
            let thr = source_threshold(&costs, k, &counts, e).unwrap();
            thr.check().unwrap();
            let got = cott(&costs, k, &counts, &thr).unwrap();
            let want = 1.0 - e as f64 / n as f64;
            assert!(
                (got - want).abs() < 1e-12,
                "K = {k}, ties {ties}: {got} vs {want}"
            );
        }
    }

    /// E and F come from an optimal plan: COTT with t below every cost and lambda 1 is
    /// 1 - (all mass) = 0, and with t at the largest cost and lambda 0 it is 1; on
    /// a target, COTT lies in [0, 1].
    #[test]
    fn extreme_thresholds() {
        for k in [2, 5] {
            let costs = rows(3, 200, k, false);
            let counts = vec![30u64; k];
            let low = CottThreshold { t: -1, lambda: 1.0 };
            assert_eq!(cott(&costs, k, &counts, &low).unwrap(), 0.0);
            let high = CottThreshold {
                t: 1 << 40,
                lambda: 0.0,
            };
            assert_eq!(cott(&costs, k, &counts, &high).unwrap(), 1.0);
            let target = rows(4, 150, k, true);
            let thr = source_threshold(&costs, k, &counts, 37).unwrap();
            let v = cott(&target, k, &counts, &thr).unwrap();
            assert!((0.0..=1.0).contains(&v), "{v}");
        }
    }

    /// Settled plans keep COT's optimal cost (the free rows only move among their tight
    /// classes) on data full of ties.
    #[test]
    fn settling_keeps_the_optimum() {
        for k in [3, 6] {
            let costs = rows(11, 300, k, true);
            let counts: Vec<u64> = (0..k as u64).map(|c| 10 + 3 * c).collect();
            let (supply, demand) = units(&counts, 300).unwrap();
            let best = transport::solve(&costs, k, supply, &demand)
                .unwrap()
                .cost_units;
            for t in [0, 1 << 38, 1 << 39, 3 << 38] {
                let Plan::General(flows) =
                    Plan::solve(&costs, k, supply, &demand, Some(t)).unwrap()
                else {
                    unreachable!()
                };
                let mut got = 0u128;
                let mut load = vec![0u64; k];
                for (i, row) in flows.iter().enumerate() {
                    assert_eq!(row.iter().map(|r| r.1).sum::<u64>(), supply);
                    for &(c, u) in row {
                        got += u as u128 * costs[i * k + c as usize] as u128;
                        load[c as usize] += u;
                    }
                }
                assert_eq!(load, demand);
                assert_eq!(got, best, "K = {k}, t = {t}");
            }
        }
    }

    /// Each set's COT units from the shared selection equal the transport solver's
    /// optimum: tied rows, shares with nothing for one class or everything for it, a
    /// demand a whole number of rows (no part) and one with a part, sets of one row.
    #[test]
    fn two_class_sets_carry_the_transport_optimum() {
        let costs = rows(5, 301, 2, true);
        // Set 3 holds row 0 alone; the others split the rest unevenly.
        let slot: Vec<u32> = (0..301u32)
            .map(|i| if i == 0 { 3 } else { i % 7 % 3 })
            .collect();
        for counts in [[11u64, 17], [0, 9], [9, 0], [5, 5], [1, 1000], [301, 1]] {
            let thr = CottThreshold {
                t: costs[3],
                lambda: 0.5,
            };
            for thr in [None, Some(&thr)] {
                let sets = two_class_sets_with_cot(&costs, Some(&slot), 4, &counts, thr).unwrap();
                for (s, got) in sets.iter().enumerate() {
                    let mine = set_rows(&costs, &slot, s);
                    let n = mine.len() / 2;
                    let supply: u64 = counts.iter().sum();
                    let demand: Vec<u64> = counts.iter().map(|&c| c * n as u64).collect();
                    let want = transport::solve(&mine, 2, supply, &demand).unwrap();
                    assert_eq!(got.rows, n);
                    assert_eq!(got.cot_units, want.cost_units, "counts {counts:?} set {s}");
                    assert_eq!(got.cott.is_some(), thr.is_some());
                }
            }
        }
    }

    /// The one-pass K = 2 path equals the plan's, for the whole set and for sets cut by
    /// a slot array, at thresholds on and off the costs, on tied rows.
    #[test]
    fn two_class_sets_equal_the_plan() {
        let costs = rows(21, 500, 2, true);
        let counts = [11u64, 17];
        let slot: Vec<u32> = (0..500u32).map(|i| (i * 7 + i / 50) % 4).collect();
        for t in [0, costs[7], costs[8], 1 << 39, 1 << 40] {
            let thr = CottThreshold { t, lambda: 0.3 };
            let whole = two_class_sets(&costs, None, 1, &counts, &thr).unwrap();
            assert_eq!(whole, vec![cott(&costs, 2, &counts, &thr).unwrap()]);
            let parts = two_class_sets(&costs, Some(&slot), 4, &counts, &thr).unwrap();
            for (s, got) in parts.into_iter().enumerate() {
                let mine = set_rows(&costs, &slot, s);
                assert_eq!(
                    got,
                    cott(&mine, 2, &counts, &thr).unwrap(),
                    "t = {t}, set {s}"
                );
            }
        }
    }

    /// The split sums equal the plain i128 sums on every kind of i64 (the extremes, both
    /// signs, values straddling 2^32), and the branch-free counts equal a plain loop,
    /// with rows on the boundary (coarse costs make ties) at several cut points.
    #[test]
    fn vectorised_sums_and_counts_equal_the_plain_loops() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let mut values = vec![0i64, 1, -1, i64::MIN, i64::MAX, 1 << 32, (1 << 32) - 1];
        values.extend(-(1i64 << 32)..-(1i64 << 32) + 3);
        values.extend((0..5000).map(|_| rng.random::<i64>() >> rng.random_range(0..63)));
        let plain: i128 = values.iter().map(|&v| v as i128).sum();
        assert_eq!(exact_sum(&values), plain);
        // Gains of costs on the grid (no overflow of c0 - c1).
        let costs: Vec<i64> = values
            .iter()
            .map(|&v| v.rem_euclid(1 << 41) - (1 << 40))
            .collect();
        let mut gains = vec![0i64; costs.len() / 2];
        let base = gains_and_class0_sum(&costs, &mut gains);
        assert_eq!(
            base,
            costs.chunks_exact(2).map(|c| c[0] as i128).sum::<i128>()
        );
        assert!(gains
            .iter()
            .zip(costs.chunks_exact(2))
            .all(|(&g, c)| g == c[0] - c[1]));
        let tied = rows(33, 3000, 2, true);
        for run in [&tied[..], &tied[..2], &tied[..0], &costs[..]] {
            let gains: Vec<i64> = run.chunks_exact(2).map(|c| c[0] - c[1]).collect();
            for b in gains
                .iter()
                .step_by(97)
                .copied()
                .chain([0, i64::MIN, i64::MAX])
            {
                for t in [0, 1 << 39, run.first().copied().unwrap_or(0)] {
                    let (mut want, mut ties) = ((0u64, 0u64, 0u64), 0u64);
                    for c in run.chunks_exact(2) {
                        let gain = c[0] - c[1];
                        if gain == b {
                            ties += 1;
                            continue;
                        }
                        let class = (gain > b) as usize;
                        want.0 += class as u64;
                        want.1 += (c[class] > t) as u64;
                        want.2 += (c[class] >= t) as u64;
                    }
                    assert_eq!(untied_counts(run, b, t), (want.0, want.1, want.2, ties));
                }
            }
        }
    }

    #[test]
    fn bad_thresholds_and_empty_sets_are_named() {
        assert!(CottThreshold { t: 0, lambda: 1.5 }.check().is_err());
        assert!(CottThreshold { t: -3, lambda: 0.5 }.check().is_err());
        let thr = CottThreshold { t: 5, lambda: 0.5 };
        assert!(cott(&[], 3, &[1, 1, 1], &thr).is_err());
        assert!(cott(&[0, 0], 2, &[0, 0], &thr).is_err());
    }
}
