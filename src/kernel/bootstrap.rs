//! Contract of the Poisson bootstrap (DESIGN.md 2.12) shared by shaders/bootstrap.wgsl and
//! its CPU mirror: the counter-based weights, the per-replicate counters and their device
//! words, and the percentile ranks of an interval.
//!
//! Row `i` of a set gets, in replicate `b`, the weight `Poisson(1)` drawn by inversion from
//! one 32-bit output of Philox4x32-10 (Salmon et al. 2011) with key `(seed low, seed high)`
//! and counter `(i low, i high, b / 4, name key)`; output word `b % 4` is replicate `b`'s.
//! Weights depend on nothing else, so every backend, chunking and sharding (a shard keeps
//! its row offset) draws the same ones. Philox is a dozen lines and is needed in WGSL as
//! well; it is written here (and checked against Random123's known-answer vectors) rather
//! than taken from a crate whose bit stream the shader would have to match anyway.

use sha2::{Digest, Sha256};

/// Philox4x32 round multipliers and Weyl key increments (Random123).
const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32-10 of `ctr` under `key`.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox_lanes(ctr.map(|c| [c]), key).map(|[c]| c)
}

/// Philox4x32-10 of `L` counters (word `i` of lane `l` is `ctr[i][l]`) under one `key`,
/// the lanes innermost, so a compiler can run their 32 x 32 -> 64-bit products side by
/// side. Integer arithmetic: each lane is [`philox4x32_10`] of its counter, bit for bit.
#[inline(always)]
fn philox_lanes<const L: usize>(mut ctr: [[u32; L]; 4], mut key: [u32; 2]) -> [[u32; L]; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(PHILOX_W[0]);
            key[1] = key[1].wrapping_add(PHILOX_W[1]);
        }
        let [c0, c1, c2, c3] = &mut ctr;
        for l in 0..L {
            let p0 = PHILOX_M[0] as u64 * c0[l] as u64;
            let p1 = PHILOX_M[1] as u64 * c2[l] as u64;
            c0[l] = (p1 >> 32) as u32 ^ c1[l] ^ key[0];
            c1[l] = p1 as u32;
            c2[l] = (p0 >> 32) as u32 ^ c3[l] ^ key[1];
            c3[l] = p0 as u32;
        }
    }
    ctr
}

/// `POISSON_CDF[j] = floor(2^32 P(X <= j))` for `X ~ Poisson(1)`, computed in f64, for
/// every `j` where it is below `2^32 - 1`: a uniform u32 `u` gives the weight
/// `#{j : u >= POISSON_CDF[j]}` (at most 12; `P(X > 12) < 1e-9`). Keep in sync with
/// shaders/bootstrap.wgsl (the shader's copy is generated from this one).
pub const POISSON_CDF: [u32; 12] = [
    0x5e2d_58d8,
    0xbc5a_b1b1,
    0xeb71_5e1d,
    0xfb23_9797,
    0xff10_25f5,
    0xffd9_0f3b,
    0xfffa_8b71,
    0xffff_540c,
    0xffff_ed1f,
    0xffff_fe21,
    0xffff_ffd4,
    0xffff_fffc,
];

/// The largest weight [`poisson_weight`] gives.
pub const MAX_WEIGHT: u32 = POISSON_CDF.len() as u32;

/// Poisson(1) by inversion of a uniform u32, branch-free.
#[inline(always)]
pub fn poisson_weight(u: u32) -> u32 {
    POISSON_CDF.iter().map(|&c| (u >= c) as u32).sum()
}

/// The 32-bit key of a set's name: the first four bytes of the SHA-256 of its UTF-8,
/// little-endian (the same in Rust, the shader's parameters and Python).
pub fn name_key(name: &str) -> u32 {
    let d = Sha256::digest(name.as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// Replicates drawn by one Philox call.
pub const REPS_PER_DRAW: usize = 4;

/// The weights of replicates `4 g .. 4 g + 3` for row `row` of the set keyed `name_key`.
#[inline(always)]
pub fn weights4(seed: u64, name_key: u32, row: u64, g: u32) -> [u32; 4] {
    weights4_lanes(seed, name_key, [row], g)[0]
}

/// Rows the CPU path's draws take at once ([`weights4_lanes`] of 8 rows).
pub const DRAW_LANES: usize = 8;

/// [`weights4`] of `L` rows at once (`rows`, any row indices): the Philox rounds with the
/// rows as lanes (`philox_lanes`; the CPU path builds them for AVX2), then each word's
/// Poisson weight, lanes innermost so the compares vectorise. Lane `l` is
/// `weights4(seed, name_key, rows[l], g)` bit for bit.
#[inline(always)]
pub fn weights4_lanes<const L: usize>(
    seed: u64,
    name_key: u32,
    rows: [u64; L],
    g: u32,
) -> [[u32; REPS_PER_DRAW]; L] {
    let ctr = [
        rows.map(|r| r as u32),
        rows.map(|r| (r >> 32) as u32),
        [g; L],
        [name_key; L],
    ];
    let out = philox_lanes(ctr, [seed as u32, (seed >> 32) as u32]);
    let mut w = [[0u32; REPS_PER_DRAW]; L];
    for &c in &POISSON_CDF {
        for (l, wl) in w.iter_mut().enumerate() {
            for (x, word) in wl.iter_mut().zip(&out) {
                *x += (word[l] >= c) as u32;
            }
        }
    }
    w
}

/// Replicate `b`'s weights of the rows `rows` of the set keyed `name_key` (one Philox draw
/// a row gives four replicates; this keeps replicate `b`'s word).
pub fn replicate_weights(
    seed: u64,
    name_key: u32,
    rows: impl IntoIterator<Item = u64>,
    b: usize,
) -> Vec<u8> {
    let (g, j) = ((b / REPS_PER_DRAW) as u32, b % REPS_PER_DRAW);
    rows.into_iter()
        .map(|row| weights4(seed, name_key, row, g)[j] as u8)
        .collect()
}

/// Indices of the per-replicate counters of a target ([`RepCounts`]): the point tally's
/// counters ([`crate::kernel::tally::count`]), each now a sum of row weights, so a
/// replicate's counts are the counts of its resampled multiset.
pub use crate::kernel::tally::count as rep;

/// What the target tally of one replicate needs from its source refit, in one mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplicatePlan {
    /// Temperature.
    pub t: f32,
    /// ATC-MC threshold (`None`: no correct source row in the replicate).
    pub atc_mc: Option<f32>,
    /// ATC-NE threshold.
    pub atc_ne: Option<f32>,
    /// CPC's q* (`None` = +inf).
    pub cpc_q: Option<f32>,
}

/// Per-replicate counts of one (hospital, slide) pair in one mode: `counts[b]` indexed by
/// [`rep`], and the weighted sum of `p_(1)` on the 2^-40 grid of
/// [`crate::kernel::tally::p1_to_grid`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepCounts {
    /// Counters per replicate.
    pub counts: Vec<[u64; rep::LEN]>,
    /// Weighted grid sum of the largest probability per replicate.
    pub sum_p1: Vec<u128>,
}

impl RepCounts {
    /// Zero counts for `reps` replicates.
    pub fn zeros(reps: usize) -> Self {
        RepCounts {
            counts: vec![[0; rep::LEN]; reps],
            sum_p1: vec![0; reps],
        }
    }

    /// Replicates.
    pub fn reps(&self) -> usize {
        self.counts.len()
    }

    /// Adds `o` (same replicates) for partials this process computed itself.
    pub fn merge(&mut self, o: &RepCounts) {
        for (d, s) in self.counts.iter_mut().zip(&o.counts) {
            for (a, b) in d.iter_mut().zip(s) {
                *a += b;
            }
        }
        for (d, s) in self.sum_p1.iter_mut().zip(&o.sum_p1) {
            *d += s;
        }
    }

    /// Adds `o`, refusing other replicate counts or an overflow (forged files).
    pub fn checked_merge(&mut self, o: &RepCounts) -> Option<()> {
        if self.reps() != o.reps() || o.sum_p1.len() != o.reps() {
            return None;
        }
        let mut out = self.clone();
        for (d, s) in out.counts.iter_mut().zip(&o.counts) {
            for (a, b) in d.iter_mut().zip(s) {
                *a = a.checked_add(*b)?;
            }
        }
        for (d, s) in out.sum_p1.iter_mut().zip(&o.sum_p1) {
            *d = d.checked_add(*s)?;
        }
        *self = out;
        Some(())
    }

    /// Why these counts cannot come from weighted rows, if they cannot.
    pub fn inconsistency(&self) -> Option<String> {
        if self.sum_p1.len() != self.counts.len() {
            return Some("replicate sums and counts differ in number".into());
        }
        for (b, (c, &s)) in self.counts.iter().zip(&self.sum_p1).enumerate() {
            let n = c[rep::N];
            let ok = c[rep::LABELLED] <= n
                && c[rep::CORRECT] <= c[rep::LABELLED]
                && c[rep::MC_ABOVE]
                    .checked_add(c[rep::MC_EQUAL])
                    .is_some_and(|x| x <= n)
                && c[rep::NE_ABOVE]
                    .checked_add(c[rep::NE_EQUAL])
                    .is_some_and(|x| x <= n)
                && c[rep::CPC] <= n
                && s <= (n as u128) << crate::kernel::tally::P1_GRID_BITS;
            if !ok {
                return Some(format!("replicate {b}: counts exceed rows"));
            }
        }
        None
    }
}

/// 1-based ranks of the percentile interval at confidence `confidence` over `b` replicate
/// values (DESIGN.md 2.12): `max(1, floor((b+1) g/2))` and `min(b, ceil((b+1)(1 - g/2)))`
/// with `g = 1 - confidence`, each taken on the decimal the user wrote (as the conformal
/// rank: a product within `1e-9 (b+1)` of an integer is that integer). `None` for `b = 0`.
pub fn percentile_ranks(b: usize, confidence: f64) -> Option<(usize, usize)> {
    if b == 0 {
        return None;
    }
    let g = 1.0 - confidence;
    let m = (b + 1) as f64;
    let snap = |x: f64| {
        let r = x.round();
        ((x - r).abs() <= 1e-9 * m).then_some(r)
    };
    let lo = snap(m * g / 2.0).unwrap_or_else(|| (m * g / 2.0).floor());
    let hi = snap(m * (1.0 - g / 2.0)).unwrap_or_else(|| (m * (1.0 - g / 2.0)).ceil());
    Some(((lo as usize).max(1), (hi as usize).clamp(1, b)))
}

/// The percentile interval of `values` (replicates whose value is undefined, NaN, are
/// left out: a replicate that drew no row of a small group has no rate there). `None`
/// when no replicate has a value.
pub fn percentile_interval(values: &[f64], confidence: f64) -> Option<[f64; 2]> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let (lo, hi) = percentile_ranks(v.len(), confidence)?;
    v.sort_by(f64::total_cmp);
    Some([v[lo - 1], v[hi - 1]])
}

// ---------------------------------------------------------------------------------------
// Device side (shaders/bootstrap.wgsl).
// ---------------------------------------------------------------------------------------

/// Uniform parameters of shaders/bootstrap.wgsl. Keep in sync with `Params` there
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BootstrapParams {
    /// Rows in this dispatch.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Unused (each replicate's temperature comes from its plan): 1.
    pub t: f32,
    /// Levels: 0 (the bootstrap counts no conformal sets).
    pub n_alpha: u32,
    /// Replicates.
    pub reps: u32,
    /// Workgroups along the rows (the grid is rows x replicate groups, flattened).
    pub row_wgs: u32,
    /// Real workgroups: the padding ones of a 2-D grid return at once.
    pub num_wgs: u32,
    /// 1 when every row goes to slot 0 (no slot buffer is read).
    pub one_slot: u32,
    /// Index of this chunk's first row in its set, low and high words.
    pub row_offset_lo: u32,
    /// High word of the row offset.
    pub row_offset_hi: u32,
    /// Seed, low and high words (the Philox key).
    pub seed_lo: u32,
    /// High word of the seed.
    pub seed_hi: u32,
    /// [`name_key`] of the set.
    pub name_key: u32,
    /// Slots the accumulator holds.
    pub slots: u32,
    /// Index in the bound chunk buffers of this dispatch's first row.
    pub first: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// Per replicate in the shader's `plans` buffer: `(t, t_mc, t_ne, q_cpc)` as f32 and
/// the `TALLY_HAS_*` flags of [`crate::kernel::tally`] as a fifth word.
pub const PLAN_WORDS: usize = 5;

impl BootstrapTallyPlan<'_> {
    /// Replicates.
    pub fn reps(&self) -> usize {
        self.modes[0].len()
    }
}

/// The plans of every replicate as the shader reads them (mode-major when several modes'
/// plans are chained).
pub fn plan_words<'a>(plans: impl IntoIterator<Item = &'a ReplicatePlan>) -> Vec<u32> {
    use crate::kernel::tally::{TALLY_HAS_CPC, TALLY_HAS_MC, TALLY_HAS_NE};
    let mut out = Vec::new();
    for p in plans {
        let flags = p.atc_mc.map_or(0, |_| TALLY_HAS_MC)
            | p.atc_ne.map_or(0, |_| TALLY_HAS_NE)
            | p.cpc_q.map_or(0, |_| TALLY_HAS_CPC);
        out.extend([
            p.t.to_bits(),
            p.atc_mc.unwrap_or(0.0).to_bits(),
            p.atc_ne.unwrap_or(0.0).to_bits(),
            p.cpc_q.unwrap_or(0.0).to_bits(),
            flags,
        ]);
    }
    out
}

/// Device words per (slot, replicate): the [`rep`] counters, then the weighted grid sum of
/// `p_(1)` as (low, high). Keep in sync with bootstrap.wgsl.
pub const REP_WORDS: usize = rep::LEN + 2;

/// Rows per device dispatch, at most: the weights of one dispatch's rows sum below
/// `MAX_WEIGHT * 2^18 < 2^22`, so every counter fits a u32 word and the grid sum of
/// `p_(1)` (< 2^40 a unit of weight) fits its (low, high) pair: the host reads the words
/// back after each dispatch and adds them in u64/u128.
pub const DEVICE_ROWS: usize = 1 << 18;

/// Replicate counts of one slot in one mode from its device words (`reps * REP_WORDS`
/// u32s, replicate major; the shader's words are (mode, slot, replicate, word)), added
/// into `into`.
pub fn add_device_words(words: &[u32], into: &mut RepCounts) {
    for (b, w) in words.chunks_exact(REP_WORDS).enumerate() {
        for (d, &s) in into.counts[b].iter_mut().zip(&w[..rep::LEN]) {
            *d += s as u64;
        }
        into.sum_p1[b] += (w[rep::LEN] as u64 | (w[rep::LEN + 1] as u64) << 32) as u128;
    }
}

/// The shader's copy of [`POISSON_CDF`], as WGSL.
pub fn wgsl_constants() -> String {
    let table: Vec<String> = POISSON_CDF.iter().map(|c| format!("{c:#010x}u")).collect();
    format!(
        "const POISSON_CDF = array<u32, {}>({});\nconst REP_WORDS: u32 = {}u;\nconst MODES: u32 = {}u;\n",
        POISSON_CDF.len(),
        table.join(", "),
        REP_WORDS,
        MODES
    )
}

/// Per-replicate counts per (hospital, slide) pair.
pub type PairRepCounts = std::collections::BTreeMap<crate::kernel::tally::GroupKey, RepCounts>;

/// Adds `part` into `into`, pair by pair.
pub fn merge_pair_reps(into: &mut PairRepCounts, part: PairRepCounts) {
    for (key, counts) in part {
        match into.get_mut(&key) {
            Some(c) => c.merge(&counts),
            None => {
                into.insert(key, counts);
            }
        }
    }
}

/// Modes a bootstrap pass counts at once (`raw`, `ts`): a row's weights are drawn once
/// for both.
pub const MODES: usize = 2;

/// What the bootstrap tally of one chunk needs: the weights' key, the chunk's place in
/// its set, each replicate's plan in both modes, and the chunk's labels and group ids.
#[derive(Clone, Copy, Debug)]
pub struct BootstrapTallyPlan<'a> {
    /// Seed of the weights.
    pub seed: u64,
    /// [`name_key`] of the target's name.
    pub name_key: u32,
    /// Index in the whole target of the chunk's first row.
    pub row_offset: u64,
    /// One plan per replicate, per mode (`raw`, `ts`; the same number in each).
    pub modes: [&'a [ReplicatePlan]; MODES],
    /// One per row, -1 = unknown.
    pub labels: &'a [i32],
    /// Group ids per [`crate::kernel::tally::GROUP_ARRAYS`] entry, where present.
    pub groups: [Option<&'a [i64]>; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every replicate's weight of rows `first..first + n` of a set: `out[r * reps + b]`.
    fn weights(seed: u64, name_key: u32, first: u64, n: usize, reps: usize) -> Vec<u8> {
        let mut out = vec![0u8; n * reps];
        for (r, row) in out.chunks_exact_mut(reps.max(1)).enumerate().take(n) {
            for (g, four) in row.chunks_mut(REPS_PER_DRAW).enumerate() {
                let w = weights4(seed, name_key, first + r as u64, g as u32);
                for (d, s) in four.iter_mut().zip(w) {
                    *d = s as u8;
                }
            }
        }
        out
    }

    /// Random123's known-answer vectors for Philox4x32-10 (kat_vectors).
    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    /// The table is floor(2^32 P(X <= j)) of Poisson(1), recomputed here in f64.
    #[test]
    fn poisson_table_is_the_poisson_cdf() {
        let mut f = 0.0f64;
        let mut fact = 1.0f64;
        for (j, &c) in POISSON_CDF.iter().enumerate() {
            if j > 0 {
                fact *= j as f64;
            }
            f += (-1.0f64).exp() / fact;
            assert_eq!(c as f64, (f * 4294967296.0).floor(), "j = {j}");
        }
        assert_eq!(poisson_weight(0), 0);
        assert_eq!(poisson_weight(POISSON_CDF[0] - 1), 0);
        assert_eq!(poisson_weight(POISSON_CDF[0]), 1);
        assert_eq!(poisson_weight(u32::MAX), MAX_WEIGHT);
    }

    /// A million draws: mean and variance 1 (Poisson(1)), each within 5 standard errors.
    #[test]
    fn weights_have_poisson_moments() {
        let w = weights(7, name_key("set"), 0, 250_000, 4);
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 5.0 / n.sqrt(), "mean {mean}");
        // Var of the sample variance of Poisson(1) is (mu4 - 1) / n = 3 / n.
        assert!((var - 1.0).abs() < 5.0 * (3.0 / n).sqrt(), "var {var}");
        let zeros = w.iter().filter(|&&x| x == 0).count() as f64 / n;
        assert!((zeros - (-1.0f64).exp()).abs() < 5.0 * (0.25 / n).sqrt());
    }

    /// Eight rows as lanes draw what one row at a time draws (and one row, Philox's known
    /// answers: `philox_matches_random123_known_answers`).
    #[test]
    fn lanes_equal_one_row_at_a_time() {
        // Rows across the 32-bit boundary, large and random, every draw group word.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rare = 0;
        for case in 0..500u64 {
            let rows: [u64; DRAW_LANES] = std::array::from_fn(|l| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match case % 3 {
                    0 => case * 8 + l as u64,
                    1 => (1u64 << 32) - 4 + l as u64,
                    _ => x,
                }
            });
            let (seed, key, g) = (x.rotate_left(17), (x >> 7) as u32, (case % 13) as u32);
            let got = weights4_lanes(seed, key, rows, g);
            for (l, &row) in rows.iter().enumerate() {
                assert_eq!(got[l], weights4(seed, key, row, g), "row {row}");
                // And the plain statement: each Philox word's inverse-CDF weight.
                let words = philox4x32_10(
                    [row as u32, (row >> 32) as u32, g, key],
                    [seed as u32, (seed >> 32) as u32],
                );
                assert_eq!(got[l], words.map(poisson_weight), "row {row}");
                rare += got[l].iter().filter(|&&w| w > 5).count();
            }
        }
        // Large weights occur (words past the upper CDF values are compared).
        assert!(rare > 0);
    }

    /// Weights depend on (seed, name, row, replicate) only: a shard at an offset draws
    /// the rows' own weights, and another seed or name draws others.
    #[test]
    fn weights_are_keyed_by_row_not_by_chunk() {
        let all = weights(3, name_key("a"), 0, 100, 10);
        let part = weights(3, name_key("a"), 40, 30, 10);
        assert_eq!(&all[400..700], &part[..]);
        assert_ne!(weights(4, name_key("a"), 0, 100, 10), all);
        assert_ne!(weights(3, name_key("b"), 0, 100, 10), all);
        // Replicate b's weights do not depend on how many replicates there are.
        let fewer = weights(3, name_key("a"), 0, 100, 3);
        for r in 0..100 {
            assert_eq!(&fewer[r * 3..r * 3 + 3], &all[r * 10..r * 10 + 3]);
        }
    }

    /// DESIGN.md 2.12's ranks, with decimal levels that float arithmetic gets wrong.
    #[test]
    fn percentile_ranks_follow_the_design() {
        assert_eq!(percentile_ranks(0, 0.95), None);
        // (1001)(0.025) = 25.025 -> 25; (1001)(0.975) = 975.975 -> 976.
        assert_eq!(percentile_ranks(1000, 0.95), Some((25, 976)));
        // (1000)(0.025) = 25 and (1000)(0.975) = 975 exactly, whatever f64 rounding says.
        assert_eq!(percentile_ranks(999, 0.95), Some((25, 975)));
        // Tiny B: clamped to 1..=B.
        assert_eq!(percentile_ranks(1, 0.95), Some((1, 1)));
        assert_eq!(percentile_ranks(10, 0.9), Some((1, 10)));
        assert_eq!(
            percentile_interval(&[3.0, f64::NAN, 1.0, 2.0], 0.5),
            Some([1.0, 3.0])
        );
        assert_eq!(percentile_interval(&[f64::NAN], 0.5), None);
    }
}
