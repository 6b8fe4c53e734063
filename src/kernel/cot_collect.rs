//! Contract of shaders/cot_collect.wgsl: COT's collect pass at K > 2 (DESIGN.md 2.11,
//! `methods::cot_dual`'s round 2) over rows of probabilities at a dual point `g` with
//! per-class bands.
//!
//! A row's values are `V_b = c_b - g_b + 2^51` ([`VALUE_BIAS`]; `c_b` the grid cost
//! [`probability_cost`], `|g_b| <= 2^50` ([`MAX_DUAL`]), so `0 <= V_b < 2^53`). Its best
//! class `a` has the least value (the lowest index among ties); the row is *fixed* at `a`
//! when every other class `b` has `V_b - V_a > max(band_a, band_b)`, else *free*. A pass
//! returns [`CollectSums`]: the sum of every row's `V_a` (the dual's `sum_i min_k (c_ik -
//! g_k)`, less the bias), per class the fixed rows and the sum of their costs there, per
//! class pair `(a, b)` the least `c_b - c_a` of the rows fixed at `a`, and the free rows'
//! indices. Integers only: the GPU's sums equal the CPU mirror's bit for bit, and chunks
//! merge by addition and minimum. `methods::cot_dual::DualTally::add_sums` turns them
//! into the pass's tally (the free rows' costs taken from the host's probabilities).
//!
//! The device holds per-class sums in workgroup memory, so it takes at most
//! [`MAX_DEVICE_CLASSES`] classes; a wider pass runs on the host (the mirror).

use crate::error::{Error, Result};
pub use crate::kernel::cot_two_class::probability_cost;

/// Uniform parameters. Keep in sync with `Params` in shaders/cot_collect.wgsl (layout
/// checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CollectParams {
    /// Rows in this dispatch.
    pub rows: u32,
    /// Classes.
    pub k: u32,
    /// `WG`-wide sub-blocks of rows per workgroup.
    pub ipt: u32,
    /// [`MODE_COLLECT`] or [`MODE_SLACK_LOW`].
    pub mode: u32,
}

/// The pass proper: sums, counts, the slacks' high words, the free list.
pub const MODE_COLLECT: u32 = 0;
/// After [`MODE_COLLECT`] over the same rows: the slacks' low words.
pub const MODE_SLACK_LOW: u32 = 1;

/// The most classes the device pass takes (its workgroup memory holds a count and a
/// 96-bit cost a class). Keep in sync with `MAXK` in the shader.
pub const MAX_DEVICE_CLASSES: usize = 256;

/// Bias of a value `c_b - g_b` (so values are non-negative 53-bit integers).
pub const VALUE_BIAS: i64 = 1 << 51;
/// The largest `|g_b|` a pass takes (`methods::cot_passes`' plans are checked against it).
pub const MAX_DUAL: i64 = 1 << 50;
/// Bias of a slack `c_b - c_a` (in `[-2^40, 2^40]`).
pub const SLACK_BIAS: i64 = 1 << 40;
/// No fixed row at `a` with a slack to `b` (`methods::cot_dual`'s "no edge").
pub const NO_SLACK: i64 = i64::MAX;
/// A band past every value difference (`V_b - V_a < 2^53`): the row is never fixed.
const BAND_NEVER: u64 = 1 << 54;

/// `WG`-wide sub-blocks of rows per workgroup.
pub const IPT: u32 = 8;

/// Loop iterations of a collect invocation (both modes; `kernel::loop_budget`): the
/// workgroup words zeroed and flushed, and per row three loops over the classes.
pub fn collect_loops(k: usize, ipt: u32) -> u64 {
    let k = k as u64;
    2 * (3 + 3 * k).div_ceil(crate::kernel::WG as u64) + ipt as u64 * (3 * k + 8) + 16
}

/// Word offsets of the accumulators. Keep in sync with the shader's `W_*`.
pub mod word {
    /// `sum_i V_a`, 96 bits (three words).
    pub const DUAL_SUM: usize = 0;
    /// Free rows (the free list's length).
    pub const FREE_COUNT: usize = 3;
    /// Per class, its fixed rows.
    pub const FIXED_ROWS: usize = 4;
    /// Class `a`'s fixed cost, 96 bits.
    pub fn fixed_cost(k: usize, a: usize) -> usize {
        FIXED_ROWS + k + 3 * a
    }
    /// Pair `(a, b)`'s least slack, high word, inverted (`0xffffffff - hi`; 0: none).
    pub fn slack_high(k: usize, a: usize, b: usize) -> usize {
        FIXED_ROWS + 4 * k + a * k + b
    }
    /// Pair `(a, b)`'s least slack among those with the least high word, low word,
    /// inverted.
    pub fn slack_low(k: usize, a: usize, b: usize) -> usize {
        slack_high(k, a, b) + k * k
    }
    /// Words of a pass's accumulators.
    pub fn count(k: usize) -> usize {
        FIXED_ROWS + 4 * k + 2 * k * k
    }
}

/// A collect pass's point in the kernel's integers: per class `G = 2^51 - g` and the band
/// as `E = clamp(band + 1, 0, 2^54)` (a row is fixed when `V_b - V_a >= max(E_a, E_b)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectPoint {
    /// `2^51 - g_b` a class.
    pub shift: Vec<u64>,
    /// `clamp(band_b + 1, 0, 2^54)` a class.
    pub need: Vec<u64>,
}

impl CollectPoint {
    /// The point `g` with bands `deltas` (both a grid integer a class; `i64::MAX`: no
    /// row is fixed there); an error unless `|g_b| <= 2^50` and both have `k >= 2`
    /// entries.
    pub fn new(g: &[i64], deltas: &[i64]) -> Result<Self> {
        if g.len() < 2 || g.len() != deltas.len() {
            return Err(Error::Invalid(format!(
                "COT collect pass: {} dual values and {} bands",
                g.len(),
                deltas.len()
            )));
        }
        if let Some(b) = g.iter().position(|x| x.unsigned_abs() > MAX_DUAL as u64) {
            return Err(Error::Invalid(format!(
                "COT collect pass: dual value {} of class {b} is past 2^50",
                g[b]
            )));
        }
        Ok(CollectPoint {
            shift: g.iter().map(|&x| (VALUE_BIAS - x) as u64).collect(),
            need: deltas
                .iter()
                .map(|&d| (d.max(-1) as i128 + 1).min(BAND_NEVER as i128) as u64)
                .collect(),
        })
    }

    /// Classes.
    pub fn k(&self) -> usize {
        self.shift.len()
    }

    /// The shader's `classes` binding: `G` (lo, hi) then `E` (lo, hi) a class.
    pub fn words(&self) -> Vec<u32> {
        self.shift
            .iter()
            .zip(&self.need)
            .flat_map(|(&g, &e)| [g as u32, (g >> 32) as u32, e as u32, (e >> 32) as u32])
            .collect()
    }

    /// A row's best class and whether it is fixed there (`costs`: its `k` grid costs,
    /// [`probability_cost`] of its probabilities). Keep in sync with `classify` in the
    /// shader (which makes each cost where it reads it).
    #[inline]
    pub fn classify(&self, costs: &[u64]) -> (usize, bool) {
        let mut best = 0;
        let mut least = costs[0] + self.shift[0];
        for (b, (&c, &s)) in costs.iter().zip(&self.shift).enumerate().skip(1) {
            if c + s < least {
                least = c + s;
                best = b;
            }
        }
        let ea = self.need[best];
        let fixed = costs
            .iter()
            .zip(&self.shift)
            .zip(&self.need)
            .enumerate()
            .all(|(b, ((&c, &s), &e))| b == best || c + s - least >= ea.max(e));
        (best, fixed)
    }
}

/// A collect pass's sums over some rows (a chunk, a shard's, merged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectSums {
    /// Rows seen.
    pub rows: u64,
    /// `sum_i V_a` (biased values: the dual sum plus `rows 2^51`).
    pub value_sum: u128,
    /// Per class, its fixed rows.
    pub fixed_rows: Vec<u64>,
    /// Per class, the sum of its fixed rows' costs there.
    pub fixed_cost: Vec<u128>,
    /// `k x k`: `[a * k + b]` the least `c_b - c_a` of the rows fixed at `a`
    /// ([`NO_SLACK`]: none).
    pub fixed_slack: Vec<i64>,
    /// The free rows' indices (among the pass's rows), ascending.
    pub free: Vec<u64>,
}

impl CollectSums {
    /// Nothing seen, `k` classes.
    pub fn empty(k: usize) -> Self {
        CollectSums {
            rows: 0,
            value_sum: 0,
            fixed_rows: vec![0; k],
            fixed_cost: vec![0; k],
            fixed_slack: vec![NO_SLACK; k * k],
            free: Vec::new(),
        }
    }

    /// `sum_i min_k (c_ik - g_k)`: the value sum less its bias.
    pub fn dual_sum(&self) -> i128 {
        self.value_sum as i128 - self.rows as i128 * VALUE_BIAS as i128
    }

    /// Adds row `index`'s (`row`, its probabilities) at `point`: what the shader does
    /// for one row (`costs`: `k` words of scratch for the row's grid costs).
    #[inline]
    pub fn add_row(&mut self, point: &CollectPoint, index: u64, row: &[f32], costs: &mut [u64]) {
        let k = row.len();
        for (c, &p) in costs.iter_mut().zip(row) {
            *c = probability_cost(p);
        }
        let (a, fixed) = point.classify(costs);
        let ca = costs[a];
        self.rows += 1;
        self.value_sum += (ca + point.shift[a]) as u128;
        if !fixed {
            self.free.push(index);
            return;
        }
        self.fixed_rows[a] += 1;
        self.fixed_cost[a] += ca as u128;
        let slack = &mut self.fixed_slack[a * k..(a + 1) * k];
        for (b, (s, &c)) in slack.iter_mut().zip(costs.iter()).enumerate() {
            if b != a {
                *s = (*s).min(c as i64 - ca as i64);
            }
        }
    }

    /// Adds the sums of rows that follow this one's (free indices ascending across
    /// them, as chunks in order give).
    pub fn merge(&mut self, other: &CollectSums) {
        self.rows += other.rows;
        self.value_sum += other.value_sum;
        for (a, b) in self.fixed_rows.iter_mut().zip(&other.fixed_rows) {
            *a += b;
        }
        for (a, b) in self.fixed_cost.iter_mut().zip(&other.fixed_cost) {
            *a += b;
        }
        for (a, &b) in self.fixed_slack.iter_mut().zip(&other.fixed_slack) {
            *a = (*a).min(b);
        }
        self.free.extend_from_slice(&other.free);
    }

    /// Decodes a device pass over `rows` rows: its accumulator `words` ([`word`]) and
    /// the free list it wrote (any order; sorted here). An error where they cannot be a
    /// pass's (counts that do not add up, a slack past its range, a free index twice or
    /// past the rows).
    pub fn from_words(k: usize, rows: u64, words: &[u32], mut free: Vec<u32>) -> Result<Self> {
        let bad = |what: &str| Err(Error::Gpu(format!("COT collect pass read back: {what}")));
        if words.len() != word::count(k) {
            return bad("accumulators of another size");
        }
        let wide = |at: usize| {
            words[at] as u128 | (words[at + 1] as u128) << 32 | (words[at + 2] as u128) << 64
        };
        let fixed_rows: Vec<u64> = (0..k).map(|a| words[word::FIXED_ROWS + a] as u64).collect();
        free.sort_unstable();
        if free.len() as u64 != words[word::FREE_COUNT] as u64
            || fixed_rows.iter().sum::<u64>() + free.len() as u64 != rows
            || free.windows(2).any(|w| w[0] == w[1])
            || free.last().is_some_and(|&i| i as u64 >= rows)
        {
            return bad("fixed and free rows that are not the rows");
        }
        let mut fixed_slack = vec![NO_SLACK; k * k];
        for a in 0..k {
            for b in (0..k).filter(|&b| b != a) {
                let hi = words[word::slack_high(k, a, b)];
                if hi == 0 {
                    continue;
                }
                let s = ((0xffff_ffff - hi as u64) << 32)
                    | (0xffff_ffff - words[word::slack_low(k, a, b)]) as u64;
                if s > 2 * SLACK_BIAS as u64 || fixed_rows[a] == 0 {
                    return bad("a slack past its range");
                }
                fixed_slack[a * k + b] = s as i64 - SLACK_BIAS;
            }
        }
        Ok(CollectSums {
            rows,
            value_sum: wide(word::DUAL_SUM),
            fixed_rows,
            fixed_cost: (0..k).map(|a| wide(word::fixed_cost(k, a))).collect(),
            fixed_slack,
            free: free.into_iter().map(u64::from).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_encode_the_bands_strictly() {
        // band -5 fixes every untied-or-tied row (diff >= 0), band 0 needs diff >= 1,
        // i64::MAX fixes none.
        let p = CollectPoint::new(&[0, -(1 << 50), 1 << 50], &[-5, 0, i64::MAX]).unwrap();
        assert_eq!(p.need, vec![0, 1, 1 << 54]);
        assert_eq!(p.shift, vec![1 << 51, 3 << 50, 1 << 50]);
        assert!(CollectPoint::new(&[0, (1 << 50) + 1], &[0, 0]).is_err());
        assert!(CollectPoint::new(&[0], &[0]).is_err());
        assert!(CollectPoint::new(&[0, 0], &[0]).is_err());
    }

    #[test]
    fn decoding_refuses_what_no_pass_writes() {
        let k = 3;
        let mut w = vec![0u32; word::count(k)];
        w[word::FIXED_ROWS] = 2;
        w[word::FREE_COUNT] = 1;
        assert!(CollectSums::from_words(k, 3, &w, vec![2]).is_ok());
        assert!(CollectSums::from_words(k, 4, &w, vec![2]).is_err());
        assert!(CollectSums::from_words(k, 3, &w, vec![3]).is_err());
        assert!(CollectSums::from_words(k, 3, &w[1..], vec![2]).is_err());
        // A slack at a class with no fixed row.
        w[word::slack_high(k, 1, 0)] = 0xffff_ffff;
        assert!(CollectSums::from_words(k, 3, &w, vec![2]).is_err());
    }
}
