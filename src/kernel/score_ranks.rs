//! Contract of shaders/score_ranks.wgsl: the per-row rank of K probabilities that the
//! APS, RAPS, SAPS and TopK scores are made from (DESIGN.md 2.13).
//!
//! For each row and class k the kernel writes [`RANK_WORDS`] u32 words: the mass strictly
//! above `p_k` (`A`), the mass of k's tie group (`E`, k included), both exact sums of the
//! probabilities on the 2^-40 grid ([`prob_grid`]) as (low, high) word pairs, and the rank
//! `o = #{j : p_j >= p_k}` (a tie group takes the last rank it spans). These are integers,
//! so they do not depend on the order of the classes or of the additions: the GPU and its
//! CPU mirror give the same words bit for bit on the same probabilities, whatever sort
//! each uses inside a row. The host turns them into f64 scores (`methods::scores`).
//!
//! Input: `rows x k` probabilities, each finite in `[0, 1]` (`-0.0` is `0`), checked by
//! [`check_probabilities`] before either path runs.

use crate::error::{Error, Result};

/// Uniform parameters. Keep in sync with `Params` in shaders/score_ranks.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScoreRankParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Padding to 16 bytes.
    pub _pad0: u32,
    /// Padding to 16 bytes.
    pub _pad1: u32,
}

/// Words per (row, class). Keep in sync with `RANK_WORDS` in shaders/score_ranks.wgsl.
pub const RANK_WORDS: usize = 5;

/// Indices of a (row, class)'s words.
pub mod word {
    /// `A`, low 32 bits.
    pub const ABOVE_LO: usize = 0;
    /// `A`, high 32 bits.
    pub const ABOVE_HI: usize = 1;
    /// `E`, low 32 bits.
    pub const GROUP_LO: usize = 2;
    /// `E`, high 32 bits.
    pub const GROUP_HI: usize = 3;
    /// `o`.
    pub const RANK: usize = 4;
}

/// Bits below the binary point of the probability grid (DESIGN.md 2.13).
pub const PROB_GRID_BITS: u32 = 40;

/// One class's rank data, decoded from its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRank {
    /// Mass strictly above, on the grid.
    pub above: u64,
    /// Mass of the tie group, on the grid.
    pub group: u64,
    /// `#{j : p_j >= p_k}`.
    pub rank: u32,
}

impl ClassRank {
    /// The words of one class, in [`word`] order.
    pub fn to_words(self) -> [u32; RANK_WORDS] {
        [
            self.above as u32,
            (self.above >> 32) as u32,
            self.group as u32,
            (self.group >> 32) as u32,
            self.rank,
        ]
    }

    /// Decodes the words of one class.
    pub fn from_words(w: &[u32]) -> Self {
        ClassRank {
            above: w[word::ABOVE_LO] as u64 | (w[word::ABOVE_HI] as u64) << 32,
            group: w[word::GROUP_LO] as u64 | (w[word::GROUP_HI] as u64) << 32,
            rank: w[word::RANK],
        }
    }
}

/// `p` (finite, `0 <= p < 2^15`) rounded to the nearest multiple of 2^-40, ties to even,
/// as an integer, from the f32's bits: what `(p as f64 * 2^40).round_ties_even()` gives,
/// with integer operations only. Keep in sync with `prob_grid` in
/// shaders/score_ranks.wgsl (a transliteration).
#[inline]
pub fn prob_grid(p: f32) -> u64 {
    let bits = p.to_bits();
    let e = (bits >> 23) & 0xff;
    if e == 0 {
        // +-0 and subnormals: below 2^-126, far under half a grid step.
        return 0;
    }
    let m = ((bits & 0x7f_ffff) | 0x80_0000) as u64;
    // p 2^40 = m 2^(e - 110).
    if e >= 110 {
        return m << (e - 110);
    }
    let r = 110 - e;
    if r >= 25 {
        // m < 2^24 <= half a step of 2^r: rounds to 0.
        return 0;
    }
    super::common::shift_round_even(m, r)
}

/// Checks `probs` (`rows x k`) for the kernel: `k >= 1`, whole rows, every value finite
/// in `[0, 1]`. The error names the row and class.
pub fn check_probabilities(probs: &[f32], k: usize) -> Result<()> {
    if k == 0 || !probs.len().is_multiple_of(k) {
        return Err(Error::Invalid(format!(
            "{} probabilities do not make rows of K = {k}",
            probs.len()
        )));
    }
    // A branch-free pass first (it vectorises; NaN fails both comparisons), the position
    // only where it fails.
    let fine = |c: &[f32]| c.iter().fold(true, |ok, &p| ok & (0.0..=1.0).contains(&p));
    if probs.chunks(1 << 12).all(fine) {
        return Ok(());
    }
    if let Some(i) = probs.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::Invalid(format!(
            "probability {} at row {}, class {} is not in [0, 1]",
            probs[i],
            i / k,
            i % k
        )));
    }
    Ok(())
}

/// Loop iterations of one invocation on K classes, bounded from above (llvmpipe's cap,
/// see [`crate::kernel::loop_budget`]):
/// - the index fill, K;
/// - the heap's K / 2 builds and K - 1 removals, each an outer iteration and a sift of at
///   most `floor(log2 K) + 1` steps;
/// - the walk over the sorted classes: its group loop (at most K), and its member and
///   write loops.
///
/// llvmpipe runs 8 invocations as one SIMD vector and counts a data-dependent loop's
/// iterations while any of them is still in it. Summed over the group loop, the member
/// and write loops can then take as many iterations as all 8 rows' classes together:
/// 8 K each, plus one exit test a group. Hence the 18 K, plus a margin for the rest.
pub fn rank_loops(k: usize) -> u64 {
    let k = k as u64;
    let depth = 64 - k.max(1).leading_zeros() as u64;
    (k / 2 + k) * (depth + 1) + k + 18 * k + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(p: f32) -> u64 {
        (p as f64 * (1u64 << PROB_GRID_BITS) as f64).round_ties_even() as u64
    }

    #[test]
    fn prob_grid_equals_the_f64_rounding() {
        // Exact halves and their neighbours at every shift that rounds (2^-41 .. 2^-17),
        // the extremes (0, -0, subnormals, 1, just below 1) and seeded values.
        let mut cases = vec![0.0f32, -0.0, f32::from_bits(1), f32::MIN_POSITIVE, 1.0];
        cases.push(f32::from_bits(1.0f32.to_bits() - 1));
        for e in -66..=-16 {
            let step = 2f64.powi(-40);
            for j in 0..4 {
                let half = (j as f64 + 0.5) * step;
                let p = (2f64.powi(e) + half) as f32;
                for d in [-1i32, 0, 1] {
                    cases.push(f32::from_bits((p.to_bits() as i32 + d) as u32));
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = (x >> 40) as f32 / (1u64 << 24) as f32 * 2f32.powi(-((x & 31) as i32));
            cases.push(p);
        }
        for p in cases {
            assert_eq!(prob_grid(p), plain(p), "p = {p:e} ({:#x})", p.to_bits());
        }
    }

    #[test]
    fn bad_probabilities_are_named() {
        assert!(check_probabilities(&[0.5, 0.5, 1.0], 2).is_err());
        assert!(check_probabilities(&[], 0).is_err());
        let e = check_probabilities(&[0.5, 0.5, 0.2, f32::NAN], 2).unwrap_err();
        assert!(e.to_string().contains("row 1, class 1"), "{e}");
        let e = check_probabilities(&[0.5, 1.5], 2).unwrap_err();
        assert!(e.to_string().contains("row 0, class 1"), "{e}");
        assert!(check_probabilities(&[-0.0, 1.0], 2).is_ok());
    }

    #[test]
    fn rank_loops_stay_under_llvmpipe_cap_up_to_k_1000() {
        use crate::kernel::loop_budget::LLVMPIPE_LOOP_LIMIT;
        // DESIGN asks for K up to 1000 (the GPU test runs it on lavapipe).
        assert!(rank_loops(1000) < LLVMPIPE_LOOP_LIMIT);
        assert!(rank_loops(1024) < LLVMPIPE_LOOP_LIMIT);
        // From about 1,800 classes a row may pass the cap: refused there (the backend then
        // ranks on the CPU: the same words).
        assert!(rank_loops(2000) > LLVMPIPE_LOOP_LIMIT);
    }
}
