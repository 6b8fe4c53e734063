//! Exact discrete optimal transport from many rows to a few classes (DESIGN.md 2.11): the
//! reference solver COT is checked against, in memory.
//!
//! Rows `i` each hold `supply` units, classes `k` need `demand[k]` units (integers, so a
//! plan is exact: COT's masses `1/N` and `pi_k = n_k / n` become `n` units a row and
//! `n_k N` units a class). Costs are on the 2^-40 grid (`kernel::class_sum`'s grid),
//! integers, so every comparison (which row moves, which plan is cheaper) is exact and the
//! plan does not depend on float rounding.
//!
//! The algorithm is successive shortest paths on the K classes: every row starts at its
//! cheapest class (ties: the lowest index), which is optimal for the loads it makes; then,
//! while a class holds more than it needs, the cheapest way to move one row's units from a
//! class that holds too much to one that holds too little (through intermediate classes,
//! each hop moving one row) is found by Dijkstra over K nodes with potentials, and as
//! many units as the path allows move along it. Each class pair keeps a heap of the rows
//! on the first class ordered by the cost of moving them to the second (stale entries
//! skipped when they surface), so a step costs `O(K^2 + hops x K log N)`. A plan ends
//! with at most K - 1 rows split between classes. Memory: `N x (K - 1)` heap entries.
//!
//! Written by hand: the well-kept crates that solve transport problems (network simplex,
//! Sinkhorn) take the full N x K problem in floating point and cost far more at N in the
//! millions; this is the few-sinks special case with exact integer masses and costs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::{Error, Result};

/// Bits of the cost grid: a cost `c` is the integer `round(c 2^40)`.
pub const COST_GRID_BITS: u32 = 40;

/// A cost in `[0, 1]` (e.g. `1 - p`, `p` an f32 probability) on the 2^-40 grid.
pub fn grid_cost(c: f64) -> i64 {
    (c * (1u64 << COST_GRID_BITS) as f64).round() as i64
}

/// An optimal plan: the units each row sends to each class.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportPlan {
    /// Classes.
    pub k: usize,
    /// Units per row.
    pub supply: u64,
    /// Per row, `(class, units)` with units > 0, classes ascending.
    pub flows: Vec<Vec<(u32, u64)>>,
    /// `sum flows x grid costs`: the plan's cost in units x 2^-40.
    pub cost_units: u128,
}

impl TransportPlan {
    /// The cost per unit of mass moved: `cost_units / (N supply 2^40)` (0 without rows).
    pub fn mean_cost(&self) -> f64 {
        let total = self.flows.len() as u128 * self.supply as u128;
        if total == 0 {
            return 0.0;
        }
        // Exact integer part and remainder, so the quotient is rounded once.
        let scale = total << COST_GRID_BITS;
        let whole = self.cost_units / scale;
        let rest = self.cost_units % scale;
        whole as f64 + rest as f64 / scale as f64
    }
}

/// Solves the transport of `n = costs.len() / k` rows of `supply` units each to classes
/// needing `demand[k]` units, `costs` (grid integers, row-major `n x k`) per unit. The
/// supplies and demands must balance.
pub fn solve(costs: &[i64], k: usize, supply: u64, demand: &[u64]) -> Result<TransportPlan> {
    if k == 0 || demand.len() != k || !costs.len().is_multiple_of(k) {
        return Err(Error::Invalid(format!(
            "transport: {} costs, {} demands for K = {k}",
            costs.len(),
            demand.len()
        )));
    }
    let n = costs.len() / k;
    let total_supply = n as u128 * supply as u128;
    let total_demand: u128 = demand.iter().map(|&d| d as u128).sum();
    if total_supply != total_demand {
        return Err(Error::Invalid(format!(
            "transport: {n} rows x {supply} units = {total_supply}, the classes need {total_demand}"
        )));
    }
    if let Some(i) = costs.iter().position(|&c| c < 0) {
        return Err(Error::Invalid(format!(
            "transport: cost {} of row {} is negative",
            costs[i],
            i / k
        )));
    }
    let cost = |i: usize, c: usize| costs[i * k + c];
    // Every row at its cheapest class (lowest index on ties).
    let mut flows: Vec<Vec<(u32, u64)>> = Vec::with_capacity(n);
    let mut excess: Vec<i128> = demand.iter().map(|&d| -(d as i128)).collect();
    for i in 0..n {
        let best = (0..k).min_by_key(|&c| (cost(i, c), c)).unwrap_or(0);
        if supply > 0 {
            flows.push(vec![(best as u32, supply)]);
        } else {
            flows.push(Vec::new());
        }
        excess[best] += supply as i128;
    }
    // heaps[a * k + b]: rows on class a, keyed by the cost of moving a unit to b.
    let mut heaps: Vec<BinaryHeap<Reverse<(i64, u32)>>> =
        (0..k * k).map(|_| BinaryHeap::new()).collect();
    let push_row = |heaps: &mut Vec<BinaryHeap<Reverse<(i64, u32)>>>, i: usize, a: usize| {
        for b in (0..k).filter(|&b| b != a) {
            heaps[a * k + b].push(Reverse((cost(i, b) - cost(i, a), i as u32)));
        }
    };
    // The first fill in bulk: each heap built from its entries at once (O(N K) in all,
    // where a push per entry costs a log factor more).
    {
        let mut entries: Vec<Vec<Reverse<(i64, u32)>>> = vec![Vec::new(); k * k];
        for (i, f) in flows.iter().enumerate() {
            if let Some(&(a, _)) = f.first() {
                let a = a as usize;
                for b in (0..k).filter(|&b| b != a) {
                    entries[a * k + b].push(Reverse((cost(i, b) - cost(i, a), i as u32)));
                }
            }
        }
        for (h, e) in heaps.iter_mut().zip(entries) {
            *h = BinaryHeap::from(e);
        }
    }
    let units_on = |flows: &[Vec<(u32, u64)>], i: usize, a: usize| -> u64 {
        flows[i]
            .iter()
            .find(|(c, _)| *c as usize == a)
            .map_or(0, |(_, u)| *u)
    };
    let mut potential = vec![0i128; k];
    // The cheapest live edge of every class pair (stale heap tops dropped), refreshed for
    // the classes a step touches: a heap's top goes stale only when its row leaves the
    // class, and rows join only the classes a path enters.
    let refresh = |heaps: &mut Vec<BinaryHeap<Reverse<(i64, u32)>>>,
                   flows: &[Vec<(u32, u64)>],
                   edge: &mut Vec<Option<(i64, u32)>>,
                   a: usize| {
        for b in (0..k).filter(|&b| b != a) {
            let h = &mut heaps[a * k + b];
            edge[a * k + b] = None;
            while let Some(&Reverse((w, i))) = h.peek() {
                if units_on(flows, i as usize, a) > 0 {
                    edge[a * k + b] = Some((w, i));
                    break;
                }
                h.pop();
            }
        }
    };
    let mut edge: Vec<Option<(i64, u32)>> = vec![None; k * k];
    for a in 0..k {
        refresh(&mut heaps, &flows, &mut edge, a);
    }
    let (mut dist, mut prev, mut done) = (Vec::new(), Vec::new(), Vec::new());
    while excess.iter().any(|&e| e > 0) {
        // Dijkstra from every class holding too much, on reduced costs (>= 0): dense
        // O(K^2) over plain arrays (`UNREACHED` for no distance yet), the unsettled class
        // of least distance next (lowest index on ties), strict improvements only.
        const UNREACHED: i128 = i128::MAX;
        dist.clear();
        dist.extend((0..k).map(|c| if excess[c] > 0 { 0 } else { UNREACHED }));
        prev.clear();
        prev.resize(k, usize::MAX);
        done.clear();
        done.resize(k, false);
        loop {
            let (mut d, mut a) = (UNREACHED, usize::MAX);
            for c in 0..k {
                if !done[c] && dist[c] < d {
                    (d, a) = (dist[c], c);
                }
            }
            if a == usize::MAX {
                break;
            }
            done[a] = true;
            let from = d + potential[a];
            for b in 0..k {
                if done[b] {
                    continue;
                }
                if let Some((w, _)) = edge[a * k + b] {
                    // Exact integers: reduced costs stay >= 0 (the potentials' invariant).
                    let nd = from + w as i128 - potential[b];
                    debug_assert!(nd >= d, "negative reduced cost {}", nd - d);
                    if nd < dist[b] {
                        dist[b] = nd;
                        prev[b] = a;
                    }
                }
            }
        }
        // The nearest class that needs more (lowest index on ties).
        let mut target = usize::MAX;
        let mut best = UNREACHED;
        for c in 0..k {
            if excess[c] < 0 && dist[c] < best {
                (best, target) = (dist[c], c);
            }
        }
        if target == usize::MAX {
            return Err(Error::Invalid(
                "transport: no path to a class that needs units".into(),
            ));
        }
        let reach = dist
            .iter()
            .copied()
            .filter(|&d| d != UNREACHED)
            .max()
            .unwrap_or(0);
        for c in 0..k {
            potential[c] += if dist[c] == UNREACHED { reach } else { dist[c] };
        }
        // The path target <- ... <- source, and how many units it can carry.
        let mut path = Vec::new();
        let mut at = target;
        while let Some(p) = (prev[at] != usize::MAX).then_some(prev[at]) {
            let (_, row) =
                edge[p * k + at].ok_or_else(|| Error::Invalid("transport: broken path".into()))?;
            path.push((p, at, row as usize));
            at = p;
        }
        let source = at;
        let mut units = (excess[source]).min(-excess[target]);
        for &(a, _, row) in &path {
            units = units.min(units_on(&flows, row, a) as i128);
        }
        let units = units as u64;
        for &(a, b, row) in &path {
            let f = &mut flows[row];
            if let Some(e) = f.iter_mut().find(|(c, _)| *c as usize == a) {
                e.1 -= units;
            }
            f.retain(|(_, u)| *u > 0);
            match f.iter_mut().find(|(c, _)| *c as usize == b) {
                Some(e) => e.1 += units,
                None => {
                    f.push((b as u32, units));
                    f.sort_unstable();
                    push_row(&mut heaps, row, b);
                }
            }
        }
        excess[source] -= units as i128;
        excess[target] += units as i128;
        let mut touched = vec![false; k];
        for &(a, b, _) in &path {
            touched[a] = true;
            touched[b] = true;
        }
        for c in (0..k).filter(|&c| touched[c]) {
            refresh(&mut heaps, &flows, &mut edge, c);
        }
    }
    let mut cost_units: u128 = 0;
    for (i, f) in flows.iter().enumerate() {
        for &(c, u) in f {
            cost_units += u as u128 * cost(i, c as usize) as u128;
        }
    }
    Ok(TransportPlan {
        k,
        supply,
        flows,
        cost_units,
    })
}
