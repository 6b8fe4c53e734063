//! Contract of shaders/cot_two_class.wgsl: COT at K = 2 (DESIGN.md 2.11) as mergeable
//! passes over a set's probabilities, and the MSD radix select both paths drive with it.
//!
//! COT's closed form at K = 2 needs, of the rows' gains `g_i = c_i0 - c_i1` (costs on the
//! 2^-40 grid, [`probability_cost`]): the sum of the `whole` largest, the next one, and
//! the base `sum_i c_i0` (`methods::cot`). Each row's gain is an integer, biased into a
//! 42-bit key ([`gain_key`]); the `whole`-th largest key is found by six histogram passes
//! of 8-bit digits, most significant first ([`SHIFTS`]), the host narrowing the
//! requested ranks between passes ([`narrow`]); a last pass sums the keys strictly above
//! that boundary and the base. Every output is a sum of integers over rows, so chunks
//! (and shards) add into one answer, and the GPU and its CPU mirror agree bit for bit:
//! seven passes over the probabilities (8 bytes a row read each time), nothing per row
//! comes back.
//!
//! Input: `rows x 2` probabilities, finite in `[0, 1]` (`-0.0` is `0`), checked by
//! [`check_probabilities`](super::score_ranks::check_probabilities).

use crate::error::{Error, Result};
pub use crate::kernel::select_histogram::{distinct_prefixes, narrow};

/// Narrowing state of one rank of a 42-bit key (see [`narrow`]).
pub type Narrow = crate::kernel::select_histogram::Narrow<u64>;

/// Uniform parameters. Keep in sync with `Params` in shaders/cot_two_class.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CotPassParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// [`MODE_HISTOGRAM`] or [`MODE_SUMS`].
    pub mode: u32,
    /// Histogram: the digit's shift (one of [`SHIFTS`]).
    pub shift: u32,
    /// Histogram: prefixes in play (at most [`MAXP`]).
    pub nprefix: u32,
    /// `WG`-wide sub-blocks of rows per workgroup.
    pub ipt: u32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
    /// Padding to 16 bytes.
    pub _pad2: u32,
    /// Histogram: prefix 0, low word; sums: the boundary key, low word.
    pub key0_lo: u32,
    /// Histogram: prefix 0, high word; sums: the boundary key, high word.
    pub key0_hi: u32,
    /// Histogram: prefix 1, low word.
    pub key1_lo: u32,
    /// Histogram: prefix 1, high word.
    pub key1_hi: u32,
}

/// A pass counting digits (`hist[r * 256 + d]`). Keep in sync with the shader.
pub const MODE_HISTOGRAM: u32 = 0;
/// A pass summing the base and the keys above the boundary ([`sum_word`] order).
pub const MODE_SUMS: u32 = 1;

/// Prefixes one histogram pass handles: the two ranks COT asks for. Keep in sync with
/// `MAXP` in shaders/cot_two_class.wgsl.
pub const MAXP: usize = 2;
/// Bins of a digit (the f32 select's, `radix_sort::DIGITS`).
pub use crate::kernel::radix_sort::DIGITS;
/// Digit shifts, most significant first: keys are below 2^42 (bits 40..47 hold at most
/// 2 bits), so six 8-bit digits cover them.
pub const SHIFTS: [u32; 6] = [40, 32, 24, 16, 8, 0];
/// Words of a sums pass's output. Keep in sync with `SUM_WORDS` in the shader.
pub const SUM_WORDS: usize = 8;

/// The words of a sums pass, in order: the base (`sum c_i0`, 96 bits), the count of keys
/// above the boundary (32 bits a chunk), their sum (96 bits), one spare.
pub mod sum_word {
    /// Base, bits 0..32 (bits 32..64 and 64..96 follow).
    pub const BASE: usize = 0;
    /// Keys strictly above the boundary.
    pub const ABOVE_COUNT: usize = 3;
    /// Sum of those keys, bits 0..32 (bits 32..64 and 64..96 follow).
    pub const ABOVE_SUM: usize = 4;
}

/// Sub-blocks of `WG` rows per workgroup.
pub const IPT: u32 = 16;

/// Bias of a key: `gain + 2^40` (gains lie in `[-2^40, 2^40]`).
pub const KEY_BIAS: u64 = 1 << 40;

/// `round(2^53 |p|)` to the nearest integer, ties to even, from the f32's bits: the
/// integer `j` with `fl64(1 - p) = 1 - j 2^-53`. For `|p| >= 2^-30` (exponent field
/// `>= 97`) `2^53 |p|` is an integer already; below, it rounds where f64 rounds `1 - p`
/// (the f64 grid under 1 is 2^-53, and `1 - j 2^-53` has `j`'s parity in its last bit).
#[inline]
pub fn units_53(p: f32) -> u64 {
    let bits = p.to_bits() & 0x7fff_ffff;
    let e = bits >> 23;
    let m = if e == 0 {
        (bits & 0x7f_ffff) as u64
    } else {
        ((bits & 0x7f_ffff) | 0x80_0000) as u64
    };
    // |p| = m 2^(max(e, 1) - 150), so 2^53 |p| = m 2^(max(e, 1) - 97).
    let e = e.max(1);
    if e >= 97 {
        return m << (e - 97);
    }
    let r = 97 - e;
    if r >= 25 {
        // m < 2^24 <= half of 2^r: rounds to 0.
        return 0;
    }
    super::common::shift_round_even(m, r)
}

/// COT's cost `1 - p` of a probability on the 2^-40 grid, in integers: the host's
/// `round(fl64(1 - p) 2^40)` (`methods::transport::grid_cost`), i.e. with `j` =
/// [`units_53`], `floor((2^53 - j + 2^12) / 2^13)`. Keep in sync with `cost` in
/// shaders/grid_sums.wgsl (a transliteration).
#[inline]
pub fn probability_cost(p: f32) -> u64 {
    ((1u64 << 53) + (1 << 12) - units_53(p)) >> 13
}

/// A row's key: its gain `c_0 - c_1` biased by [`KEY_BIAS`], in `[0, 2^41]`; the keys'
/// order is the gains'.
#[inline]
pub fn gain_key(p0: f32, p1: f32) -> u64 {
    probability_cost(p0) + KEY_BIAS - probability_cost(p1)
}

/// The key bits above the digit at `shift` (the part a prefix fixes before that pass).
#[inline]
pub fn above_digit(key: u64, shift: u32) -> u64 {
    if shift + 8 >= 64 {
        0
    } else {
        key & (u64::MAX << (shift + 8))
    }
}

/// The sums of a sums pass, merged over chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PassSums {
    /// `sum_i c_i0` on the grid.
    pub base: u128,
    /// Keys strictly above the boundary.
    pub above_count: u64,
    /// Their sum.
    pub above_sum: u128,
}

impl PassSums {
    /// Adds another chunk's (or shard's) sums.
    pub fn merge(&mut self, o: &PassSums) {
        self.base += o.base;
        self.above_count += o.above_count;
        self.above_sum += o.above_sum;
    }

    /// Adds one chunk's [`SUM_WORDS`] words.
    pub fn add_words(&mut self, w: &[u32]) {
        let wide =
            |at: usize| w[at] as u128 | (w[at + 1] as u128) << 32 | (w[at + 2] as u128) << 64;
        self.base += wide(sum_word::BASE);
        self.above_count += w[sum_word::ABOVE_COUNT] as u64;
        self.above_sum += wide(sum_word::ABOVE_SUM);
    }
}

/// One pass over a chunk of rows (the streamed form: a set read chunk by chunk, each pass
/// a sum over its chunks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CotPass<'a> {
    /// The digits at `shift` under each of `prefixes` (at most [`MAXP`]).
    Histogram {
        /// Digit shift (one of [`SHIFTS`]).
        shift: u32,
        /// Prefixes in play.
        prefixes: &'a [u64],
    },
    /// The base and the keys strictly above `boundary`.
    Sums {
        /// The boundary key.
        boundary: u64,
    },
}

/// What a [`CotPass`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CotPassOutput {
    /// `prefixes.len() x DIGITS` counts.
    Histogram(Vec<u64>),
    /// The sums.
    Sums(PassSums),
}

/// What COT's closed form needs of a set of `n` rows, for the `whole` largest gains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwoClassSums {
    /// Rows.
    pub n: u64,
    /// `sum_i c_i0` on the grid.
    pub base: i128,
    /// The sum of the `whole` largest gains (0 for `whole = 0`).
    pub top: i128,
    /// The next gain, the `(whole + 1)`-th largest (`None` for `whole = n`).
    pub next: Option<i64>,
}

/// Drives the passes over a set of `n` rows: `histogram(shift, prefixes)` returns the
/// merged `prefixes.len() x DIGITS` counts, `sums(boundary)` the merged sums. The same
/// driver runs the GPU kernel and the CPU mirror.
pub fn two_class_sums(
    n: u64,
    whole: u64,
    mut histogram: impl FnMut(u32, &[u64]) -> Result<Vec<u64>>,
    mut sums: impl FnMut(u64) -> Result<PassSums>,
) -> Result<TwoClassSums> {
    let mut out = two_class_sums_sets(
        &[(n, whole)],
        |shift, prefixes| Ok(vec![histogram(shift, &prefixes[0])?]),
        |boundaries| Ok(vec![sums(boundaries[0])?]),
    )?;
    Ok(out.remove(0))
}

/// [`two_class_sums`] of several sets at once (`(n, whole)` each: a target and its
/// groups), their narrowings in lockstep so that one read of the rows serves every set
/// in a pass: `histogram(shift, prefixes)` gets each set's prefixes in play (none for an
/// empty set) and returns each set's merged counts; `sums(boundaries)` each set's sums.
/// [`TwoClassRounds`] driven by two closures.
pub fn two_class_sums_sets(
    sets: &[(u64, u64)],
    mut histogram: impl FnMut(u32, &[Vec<u64>]) -> Result<Vec<Vec<u64>>>,
    mut sums: impl FnMut(&[u64]) -> Result<Vec<PassSums>>,
) -> Result<Vec<TwoClassSums>> {
    let mut rounds = TwoClassRounds::new(sets)?;
    while let Some(plan) = rounds.plan() {
        match plan {
            TwoClassPlan::Histogram { shift, prefixes } => {
                let hist = histogram(shift, &prefixes)?;
                rounds.advance(TwoClassTotals::Histogram(hist))?;
            }
            TwoClassPlan::Sums { boundaries } => {
                let totals = sums(&boundaries)?;
                rounds.advance(TwoClassTotals::Sums(totals))?;
            }
        }
    }
    rounds.finish()
}

/// What the next pass of [`TwoClassRounds`] computes, every set's part of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TwoClassPlan {
    /// The digits at `shift` under each set's prefixes in play (none: nothing to count).
    Histogram {
        /// Digit shift (one of [`SHIFTS`]).
        shift: u32,
        /// Per set, its prefixes in play (at most [`MAXP`]).
        prefixes: Vec<Vec<u64>>,
    },
    /// Per set, the base and the keys strictly above its boundary.
    Sums {
        /// Per set, its boundary key (`u64::MAX`: none above, the base only).
        boundaries: Vec<u64>,
    },
}

impl TwoClassPlan {
    /// Set `set`'s pass over a chunk of its rows; `None` where it has nothing to count.
    pub fn pass(&self, set: usize) -> Option<CotPass<'_>> {
        match self {
            TwoClassPlan::Histogram { shift, prefixes } => prefixes
                .get(set)
                .filter(|p| !p.is_empty())
                .map(|p| CotPass::Histogram {
                    shift: *shift,
                    prefixes: p,
                }),
            TwoClassPlan::Sums { boundaries } => boundaries
                .get(set)
                .map(|&boundary| CotPass::Sums { boundary }),
        }
    }

    /// Sets in the plan.
    pub fn sets(&self) -> usize {
        match self {
            TwoClassPlan::Histogram { prefixes, .. } => prefixes.len(),
            TwoClassPlan::Sums { boundaries } => boundaries.len(),
        }
    }
}

/// A pass's outputs, every set's, summed over the chunks (and shards) seen: the answer
/// to a [`TwoClassPlan`] once every row is in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TwoClassTotals {
    /// Per set, `prefixes.len() x DIGITS` counts.
    Histogram(Vec<Vec<u64>>),
    /// Per set, the sums.
    Sums(Vec<PassSums>),
}

impl TwoClassTotals {
    /// Nothing counted yet, shaped for `plan`.
    pub fn zeros(plan: &TwoClassPlan) -> Self {
        match plan {
            TwoClassPlan::Histogram { prefixes, .. } => TwoClassTotals::Histogram(
                prefixes.iter().map(|p| vec![0; p.len() * DIGITS]).collect(),
            ),
            TwoClassPlan::Sums { boundaries } => {
                TwoClassTotals::Sums(vec![PassSums::default(); boundaries.len()])
            }
        }
    }

    /// Adds one chunk's output of set `set`.
    pub fn add(&mut self, set: usize, output: CotPassOutput) -> Result<()> {
        let mismatch = || Error::Invalid("COT: a pass returned another pass's output".into());
        match (self, output) {
            (TwoClassTotals::Histogram(h), CotPassOutput::Histogram(o)) => {
                let t = h.get_mut(set).ok_or_else(mismatch)?;
                if t.len() != o.len() {
                    return Err(mismatch());
                }
                for (t, v) in t.iter_mut().zip(o) {
                    *t += v;
                }
                Ok(())
            }
            (TwoClassTotals::Sums(s), CotPassOutput::Sums(o)) => {
                s.get_mut(set).ok_or_else(mismatch)?.merge(&o);
                Ok(())
            }
            _ => Err(mismatch()),
        }
    }

    /// Adds another part's totals of the same pass (another shard's): sums, so the
    /// order does not matter. Shapes must agree.
    pub fn merge(&mut self, other: &TwoClassTotals) -> Result<()> {
        let mismatch =
            || Error::Invalid("COT: parts of different passes, or counts that overflow".into());
        // The sums made aside, kept only if every one fits: an error leaves `self` as it
        // was.
        let merged = match (&*self, other) {
            (TwoClassTotals::Histogram(a), TwoClassTotals::Histogram(b)) => {
                if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
                    return Err(mismatch());
                }
                let sums = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| {
                        x.iter()
                            .zip(y)
                            .map(|(t, v)| t.checked_add(*v))
                            .collect::<Option<Vec<u64>>>()
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(mismatch)?;
                TwoClassTotals::Histogram(sums)
            }
            (TwoClassTotals::Sums(a), TwoClassTotals::Sums(b)) if a.len() == b.len() => {
                let sums = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| {
                        Some(PassSums {
                            base: x.base.checked_add(y.base)?,
                            above_count: x.above_count.checked_add(y.above_count)?,
                            above_sum: x.above_sum.checked_add(y.above_sum)?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(mismatch)?;
                TwoClassTotals::Sums(sums)
            }
            _ => return Err(mismatch()),
        };
        *self = merged;
        Ok(())
    }
}

/// The narrowing of [`two_class_sums_sets`] as a state machine: [`TwoClassRounds::plan`]
/// says what the next pass computes, [`TwoClassRounds::advance`] takes its merged
/// outputs (from one process or many shards), [`TwoClassRounds::finish`] gives the sums
/// after the last. Six histogram passes (none where no set has a rank to find), then one
/// sums pass.
#[derive(Clone, Debug)]
pub struct TwoClassRounds {
    sets: Vec<(u64, u64)>,
    state: Vec<Vec<Narrow>>,
    /// Histogram passes done (`SHIFTS.len()`: the sums pass is next).
    step: usize,
    done: Option<Vec<TwoClassSums>>,
}

impl TwoClassRounds {
    /// The rounds of `sets` (`(n, whole)` each).
    pub fn new(sets: &[(u64, u64)]) -> Result<Self> {
        if let Some((n, whole)) = sets.iter().find(|(n, whole)| whole > n) {
            return Err(Error::Invalid(format!(
                "COT: {whole} whole rows asked of a set of {n}"
            )));
        }
        // Ascending ranks: the `whole`-th largest is the (n - whole + 1)-th smallest, the
        // next one the (n - whole)-th.
        let state: Vec<Vec<Narrow>> = sets
            .iter()
            .map(|&(n, whole)| {
                let mut s = Vec::new();
                if whole > 0 {
                    s.push(Narrow {
                        prefix: 0,
                        rank: n - whole + 1,
                    });
                }
                if whole < n {
                    s.push(Narrow {
                        prefix: 0,
                        rank: n - whole,
                    });
                }
                s
            })
            .collect();
        let step = if state.iter().any(|s| !s.is_empty()) {
            0
        } else {
            SHIFTS.len()
        };
        Ok(TwoClassRounds {
            sets: sets.to_vec(),
            state,
            step,
            done: None,
        })
    }

    /// Each set's boundary: its `whole`-th largest key; above every key without whole
    /// rows (the sums pass then sums the base only).
    fn boundaries(&self) -> Vec<u64> {
        self.sets
            .iter()
            .zip(&self.state)
            .map(|(&(_, whole), s)| if whole > 0 { s[0].prefix } else { u64::MAX })
            .collect()
    }

    /// The next pass, `None` after the last.
    pub fn plan(&self) -> Option<TwoClassPlan> {
        if self.done.is_some() {
            None
        } else if self.step < SHIFTS.len() {
            Some(TwoClassPlan::Histogram {
                shift: SHIFTS[self.step],
                prefixes: self.state.iter().map(|s| distinct_prefixes(s)).collect(),
            })
        } else {
            Some(TwoClassPlan::Sums {
                boundaries: self.boundaries(),
            })
        }
    }

    /// Takes the merged outputs of the pass [`TwoClassRounds::plan`] asked for; another
    /// pass's outputs, or counts that contradict the earlier passes (rows that changed
    /// between passes), are errors that leave the rounds as they were.
    pub fn advance(&mut self, totals: TwoClassTotals) -> Result<()> {
        let plan = self
            .plan()
            .ok_or_else(|| Error::Invalid("COT: outputs after the last pass".into()))?;
        match (plan, totals) {
            (TwoClassPlan::Histogram { shift, prefixes }, TwoClassTotals::Histogram(hist)) => {
                if hist.len() != self.sets.len() {
                    return Err(Error::Invalid(format!(
                        "COT: {} histograms for {} sets",
                        hist.len(),
                        self.sets.len()
                    )));
                }
                // Narrowed on a copy, kept only if every set's counts hold up.
                let mut state = self.state.clone();
                for (((s, p), h), &(n, _)) in
                    state.iter_mut().zip(&prefixes).zip(&hist).zip(&self.sets)
                {
                    if h.len() != p.len() * DIGITS {
                        return Err(Error::Invalid(format!(
                            "COT: {} counts for {} prefixes",
                            h.len(),
                            p.len()
                        )));
                    }
                    // A row counts once at most (under one prefix): more than the set's
                    // rows means counts from elsewhere (and would overflow the narrowing).
                    let total: u128 = h.iter().map(|&c| c as u128).sum();
                    if total > n as u128 {
                        return Err(Error::Invalid(format!(
                            "COT: {total} keys counted in a set of {n} rows"
                        )));
                    }
                    // Each rank must lie among the keys under its prefix: fewer means the
                    // passes saw different rows (a source that changed between them).
                    for r in s.iter() {
                        let at = p.iter().position(|&x| x == r.prefix).unwrap_or(0);
                        let under: u64 = h[at * DIGITS..(at + 1) * DIGITS].iter().sum();
                        if under < r.rank {
                            return Err(Error::Invalid(format!(
                                "COT: rank {} under a prefix of {under} keys (the passes saw different rows)",
                                r.rank
                            )));
                        }
                    }
                    narrow(s, p, h, shift);
                }
                self.state = state;
                self.step += 1;
                Ok(())
            }
            (TwoClassPlan::Sums { boundaries }, TwoClassTotals::Sums(totals)) => {
                if totals.len() != self.sets.len() {
                    return Err(Error::Invalid(format!(
                        "COT: {} sums for {} sets",
                        totals.len(),
                        self.sets.len()
                    )));
                }
                let done = self
                    .sets
                    .iter()
                    .zip(&self.state)
                    .zip(boundaries.iter().zip(&totals))
                    .map(|((&(n, whole), st), (&b, s))| {
                        // Bounds of honest sums (costs and keys below 2^42): beyond
                        // them the sums came from elsewhere.
                        if s.base > n as u128 * (1 << 42)
                            || s.above_count > n
                            || s.above_sum > n as u128 * (1 << 42)
                        {
                            return Err(Error::Invalid(format!(
                                "COT: sums out of range for a set of {n} rows"
                            )));
                        }
                        let next =
                            (whole < n).then(|| st[st.len() - 1].prefix as i64 - KEY_BIAS as i64);
                        let top = if whole == 0 {
                            0
                        } else {
                            // Keys strictly above the boundary, the rest of the `whole` at
                            // it. More above it than `whole` only if the passes saw
                            // different rows.
                            let at = whole.checked_sub(s.above_count).ok_or_else(|| {
                                Error::Invalid(format!(
                                    "COT: {} keys above the {whole}-th largest (the passes saw different rows)",
                                    s.above_count
                                ))
                            })?;
                            s.above_sum as i128 + at as i128 * b as i128
                                - whole as i128 * KEY_BIAS as i128
                        };
                        Ok(TwoClassSums {
                            n,
                            base: s.base as i128,
                            top,
                            next,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.done = Some(done);
                Ok(())
            }
            _ => Err(Error::Invalid(
                "COT: a pass returned another pass's output".into(),
            )),
        }
    }

    /// Passes answered so far.
    pub fn passes(&self) -> u64 {
        (self.step - self.initial_step()) as u64 + self.done.is_some() as u64
    }

    fn initial_step(&self) -> usize {
        if self.state.iter().any(|s| !s.is_empty()) {
            0
        } else {
            SHIFTS.len()
        }
    }

    /// Every set's sums, after the last pass.
    pub fn finish(self) -> Result<Vec<TwoClassSums>> {
        self.done
            .ok_or_else(|| Error::Invalid("COT: the passes are not all done".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's cost, as `methods::transport::grid_cost` computes it (f64 round).
    fn host_cost(p: f32) -> u64 {
        ((1.0 - p as f64) * (1u64 << 40) as f64).round() as u64
    }

    /// Every exponent, the significands at its edges and a stride through the rest, and
    /// the values where f64's rounding of `1 - p` or the grid's halves decide.
    #[test]
    fn probability_cost_is_the_hosts() {
        let mut checked = 0u64;
        let one = 1.0f32.to_bits();
        let mut bits = 0u32;
        while bits <= one {
            let p = f32::from_bits(bits);
            assert_eq!(probability_cost(p), host_cost(p), "p = {p:e} ({bits:#x})");
            assert_eq!(probability_cost(-p), host_cost(p), "-p = {p:e}");
            checked += 1;
            // Dense at the low significand bits of every exponent, sparse in between.
            bits += if bits & 0x7f_ffff < 64 || bits & 0x7f_ffff > 0x7f_ffc0 {
                1
            } else {
                997
            };
        }
        assert!(checked > 1_000_000);
        // Around 2^-53 (j's rounding), 2^-41 (half a grid step) and 2^-29.
        for e in [-60i32, -54, -53, -52, -42, -41, -40, -30, -29, -24] {
            let c = 2f32.powi(e);
            for p in [
                c,
                f32::from_bits(c.to_bits() + 1),
                f32::from_bits(c.to_bits() - 1),
                c * 1.5,
            ] {
                assert_eq!(probability_cost(p), host_cost(p), "p = {p:e}");
            }
        }
    }

    #[test]
    fn gain_keys_order_the_gains() {
        assert_eq!(gain_key(0.5, 0.5), KEY_BIAS);
        assert_eq!(gain_key(1.0, 0.0), KEY_BIAS - (1 << 40));
        assert_eq!(gain_key(0.0, 1.0), KEY_BIAS + (1 << 40));
        assert!(gain_key(0.3, 0.7) > gain_key(0.4, 0.6));
        assert_eq!(gain_key(-0.0, 1.0), gain_key(0.0, 1.0));
    }

    #[test]
    fn narrowing_finds_every_rank() {
        let keys: Vec<u64> = [5u64, 1 << 41, 7, 7, 0, 300, 1 << 33, 7]
            .into_iter()
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        for rank in 1..=keys.len() as u64 {
            let mut state = [Narrow { prefix: 0, rank }];
            for shift in SHIFTS {
                let prefixes = distinct_prefixes(&state);
                let mut hist = vec![0u64; prefixes.len() * DIGITS];
                for &k in &keys {
                    if let Some(r) = prefixes.iter().position(|&p| p == above_digit(k, shift)) {
                        hist[r * DIGITS + ((k >> shift) & 255) as usize] += 1;
                    }
                }
                narrow(&mut state, &prefixes, &hist, shift);
            }
            assert_eq!(state[0].prefix, sorted[rank as usize - 1], "rank {rank}");
        }
    }
}
