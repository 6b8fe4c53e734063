//! Score-based estimators (DESIGN.md 2.17) from a target's rows: the nuclear norm of the
//! probability matrix (Deng et al. 2023) and MaNo (Xie et al. 2024, the official code's
//! global form). Each is a score, not an accuracy: `evaluate` reports it per target under
//! `scores[mode]`, and the sweep turns it into an accuracy by a regression across targets.
//!
//! Every sum is exact and order-free: each row's value is rounded once to a fixed grid and
//! added as an integer, so the scores do not depend on chunking, sharding or threads. The
//! rows are the ones COT keeps ([`CotRows`]), probabilities the CPU softmax's f32.
//!
//! MaNo's branch rule compares the mean delta with 5 (DESIGN.md 2.17), and delta is used
//! for nothing else. Its exact sum (libm's `exp` and `ln` on every row, rounded to the
//! 2^-40 grid) is what the rule is defined on; the rows first sum polynomial lower and
//! upper bounds of it (`delta_bounds`), and since the rule is monotone in the sum, a
//! pair of bounds on one side of 5 gives the exact sum's answer. Only a target whose mean
//! lies within the bounds' gap of 5 (a few thousandths on Camelyon-shaped data) pays for
//! the exact pass; the result is the same either way.

use nalgebra::DMatrix;
use rayon::prelude::*;

use crate::cpu::softmax::{softmax, two_class_row};
use crate::methods::cot::CotRows;
use crate::report::estimates::Modes;
use crate::report::model::ShiftScores;

/// Bits of the grid the Gram matrix and the fourth powers are summed on.
const GRID_BITS: i32 = 64;
/// Bits of the grid MaNo's `delta` terms are summed on.
const DELTA_BITS: i32 = 40;
/// A row delta at or above which the bounds leave the branch to the exact pass: its
/// grid values stay below 2^51, so a block's sum of them fits a u64 and `on_grid` takes
/// its first shortcut.
const DELTA_FAR: f64 = (1u64 << 10) as f64;
/// Rows per parallel block.
const BLOCK_ROWS: usize = 4096;

/// `x >= 0` rounded to the nearest multiple of `2^-bits` (ties to even), as an integer,
/// read from the f64's bits rather than by float -> integer conversions (f64 -> u64 and
/// u128 are instruction sequences or a software routine on x86-64):
/// - below 2^52, adding 2^52 rounds to even (an f64 add), and the sum's significand
///   bits are the integer (at 2^52 - 1/2 and up the sum is 2^53, whose bits are 2^52 past
///   2^52's: still the integer);
/// - from 2^52, `y` is an integer already: its significand shifted by its exponent;
/// - from 2^128, `u128::MAX`, as `as u128` saturates.
///
/// A sum of K fourth powers of probabilities lies in [2^64 / K^3, 2^64] on the 2^-64
/// grid (exactly 2^64 for a saturated row and, at K = 2, every Taylor row): the shift.
#[inline(always)]
fn on_grid(x: f64, bits: i32) -> u128 {
    const M: f64 = (1u64 << 52) as f64;
    let y = x * 2f64.powi(bits);
    if y < M {
        return ((y + M).to_bits() - M.to_bits()) as u128;
    }
    let b = y.to_bits();
    let e = (b >> 52) as u32 - 1075;
    if e >= 76 {
        return u128::MAX;
    }
    (((b & ((1 << 52) - 1)) | 1 << 52) as u128) << e
}

/// An f32 `p >= 0` as `(m, e)` with `p = m 2^e`, `m` its integer significand (the
/// implicit bit included for normal numbers).
#[inline(always)]
fn significand(p: f32) -> (u64, i32) {
    let bits = p.to_bits();
    let field = ((bits >> 23) & 0xff) as i32;
    let frac = (bits & 0x7f_ffff) as u64;
    if field == 0 {
        (frac, -149)
    } else {
        (frac | 1 << 23, field - 150)
    }
}

/// `on_grid(a b, GRID_BITS)` for f32 `a, b >= 0` given as [`significand`]s, in integers:
/// the product `m_a m_b 2^(e_a + e_b)` is exact (48 bits), so its place on the 2^-64 grid
/// is a shift, rounded to even where bits fall off; the same integer as the f64 path
/// without its software f64 -> u128 conversion.
#[inline(always)]
fn product_on_grid(a: (u64, i32), b: (u64, i32)) -> u128 {
    // Significands below 2^24: the product is below 2^48, a u64 (u128 shifts and masks
    // cost several instructions each, and this runs K (K + 1) / 2 times a row).
    let m = a.0 * b.0;
    let shift = a.1 + b.1 + GRID_BITS;
    if shift >= 0 {
        // p_a p_b <= 1: at most 2^64 on the grid (2^64 itself only for 1 x 1).
        return if shift <= 16 {
            (m << shift) as u128
        } else {
            (m as u128) << shift
        };
    }
    let r = (-shift) as u32;
    if r > 48 {
        // m < 2^48: below half a grid step, and never exactly half.
        return 0;
    }
    let q = m >> r;
    let rest = m & ((1u64 << r) - 1);
    let half = 1u64 << (r - 1);
    (if rest > half || (rest == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }) as u128
}

/// `on_grid`'s integer for a `y = x 2^bits` in [0, 2^65), as its high and low 32-bit
/// halves, by the same bit reading in integer operations with no branch (both of
/// `on_grid`'s cases computed, one kept), so a loop of them vectorises; halves let a
/// block's sums stay u64.
#[inline(always)]
fn grid_halves(y: f64) -> (u64, u64) {
    const M: f64 = (1u64 << 52) as f64;
    const LOW: u64 = 0xffff_ffff;
    let below = (y + M).to_bits().wrapping_sub(M.to_bits());
    let b = y.to_bits();
    // From 2^52 on: y = significand 2^e, e in 0..=12.
    let e = ((b >> 52) as u32).wrapping_sub(1075);
    let significand = (b & ((1 << 52) - 1)) | 1 << 52;
    let (high, low) = (
        significand.wrapping_shr(32u32.wrapping_sub(e)),
        significand.wrapping_shl(e) & LOW,
    );
    if y < M {
        (below >> 32, below & LOW)
    } else {
        (high, low)
    }
}

/// A sum of u64 halves from [`grid_halves`] (each half below 2^33, so 2^30 rows fit).
#[derive(Clone, Copy, Default)]
struct Halves {
    high: u64,
    low: u64,
}

impl Halves {
    #[inline(always)]
    fn add(&mut self, (high, low): (u64, u64)) {
        self.high += high;
        self.low += low;
    }

    fn total(self) -> u128 {
        ((self.high as u128) << 32) + self.low as u128
    }
}

/// The sums of a block of K = 2 rows (fewer than 2^30), the same integers as
/// [`Sums::row`] row by row on the CPU softmax's probabilities, in one branch-free loop
/// that the AVX2 build vectorises:
/// - the Gram products by `grid_halves` of their exact f64 products (`product_on_grid`'s
///   integers, see its test);
/// - both branches' fourth powers by the row's own f64 operations, in its order (a
///   two-term `sum` from -0.0 adds exactly the two terms);
/// - the delta bounds of [`delta_bounds`] at K = 2: with `x = max - min` the row's
///   terms are 1 and `e^-x`.
fn two_class_sums(block: &[f32], t: f32) -> Sums {
    crate::cpu::math::with_avx2(
        #[inline(always)]
        || {
            let scale = 2f64.powi(GRID_BITS);
            let delta_scale = 2f64.powi(DELTA_BITS);
            let tiny = 2f64.powi(-DELTA_BITS);
            let mut gram = [Halves::default(); 3];
            let (mut softmax4, mut taylor4) = (Halves::default(), Halves::default());
            let (mut delta_low, mut delta_high) = (0u64, 0u64);
            let mut far = false;
            for z in block.chunks_exact(2) {
                // The CPU softmax's bits, one exponential a row.
                let (p0, p1) = two_class_row(z[0], z[1], t);
                let (p0, p1) = (p0 as f64, p1 as f64);
                gram[0].add(grid_halves(p0 * p0 * scale));
                gram[1].add(grid_halves(p0 * p1 * scale));
                gram[2].add(grid_halves(p1 * p1 * scale));
                softmax4.add(grid_halves((p0.powi(4) + p1.powi(4)) * scale));
                let (v0, v1) = (z[0] as f64 / t as f64, z[1] as f64 / t as f64);
                // MaNo's delta bounds.
                let (m, min) = if v0 >= v1 { (v0, v1) } else { (v1, v0) };
                let mean = (v0 + v1) * 0.5;
                let x = m - min;
                let (s_low, s_high) = exp_neg_bounds(x);
                let (ln_low, ln_high) = (ln_1p_low(s_low), ln_1p_high(s_high));
                let margin = (m.abs() + mean.abs() + 8.0) * tiny;
                let a = m - mean;
                let high = (a + ln_high + margin).max(0.0);
                let low = (a + ln_low - margin).max(0.0);
                far |= high >= DELTA_FAR;
                let grid = |x: f64| {
                    const M: f64 = (1u64 << 52) as f64;
                    (x * delta_scale + M).to_bits().wrapping_sub(M.to_bits())
                };
                // Wrapping: a far row's values may overflow, and then go unused.
                delta_low = delta_low.wrapping_add(grid(low));
                delta_high = delta_high.wrapping_add(grid(high));
                // The Taylor branch, as `Sums::row`.
                let (w0, w1) = (1.0 + v0 + v0 * v0 / 2.0, 1.0 + v1 + v1 * v1 / 2.0);
                let w_min = w0.min(w1);
                let (d0, d1) = (w0 - w_min, w1 - w_min);
                let total = d0 + d1;
                let q4 = if total > 0.0 {
                    (d0 / total).powi(4) + (d1 / total).powi(4)
                } else {
                    2.0 * 0.5f64.powi(4)
                };
                taylor4.add(grid_halves(q4 * scale));
            }
            Sums {
                gram: gram.iter().map(|h| h.total()).collect(),
                delta_low: delta_low as i128,
                delta_high: delta_high as i128,
                delta_far: far,
                softmax4: softmax4.total(),
                taylor4: taylor4.total(),
            }
        },
    )
}

/// The exact sums of one mode: the Gram matrix's upper triangle, both branches' fourth
/// powers, and a lower and an upper bound of MaNo's delta sum (see [`delta_bounds`]).
#[derive(Clone, Default)]
struct Sums {
    gram: Vec<u128>,
    delta_low: i128,
    delta_high: i128,
    /// Some row's delta may reach [`DELTA_FAR`]: the bounds are not used.
    delta_far: bool,
    softmax4: u128,
    taylor4: u128,
}

/// MaNo's branch rule on a delta sum on the 2^-40 grid over `n` rows: `delta > 5`, the
/// softmax branch. Monotone in `sum` (each step rounds monotonically), so a bound of the
/// sum on either side that decides it decides the exact sum alike.
fn delta_above_five(sum: i128, n: usize) -> bool {
    sum as f64 * 2f64.powi(-DELTA_BITS) / n as f64 > 5.0
}

/// One row's MaNo delta term, `logsumexp(v) - mean(v)` for `v = z / T` (as f64, in
/// `v`), on the 2^-40 grid: the exact term the branch rule is defined on (libm's `exp`
/// and `ln`). Only computed when the bounds leave the rule undecided.
#[inline(always)]
fn delta_term(z: &[f32], t: f32, v: &mut [f64]) -> i128 {
    for (vk, &x) in v.iter_mut().zip(z) {
        *vk = x as f64 / t as f64;
    }
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // exp(0) = 1 exactly: the top class's term costs no exponential.
    let terms = v.iter().map(|&y| {
        let d = y - m;
        if d == 0.0 {
            1.0
        } else {
            d.exp()
        }
    });
    let lse = m + terms.sum::<f64>().ln();
    let mean = v.iter().copied().sum::<f64>() / v.len() as f64;
    on_grid((lse - mean).max(0.0), DELTA_BITS) as i128
}

/// Bounds `(low, high)` of `e^-x` for `x >= 0` from polynomials (see [`delta_bounds`]):
/// above, one over a partial sum of `e^x` to `x^6/6!`; below, `c(x/8)^8` for
/// `c(y) = 1 - y + y^2/2 - y^3/6` where `c > 0` (`x < 12`), else 0. Reciprocal factorials
/// are constants: multiplies, not divides (their rounding is far inside the margin).
#[inline(always)]
fn exp_neg_bounds(x: f64) -> (f64, f64) {
    let p6 = 1.0
        + x * (1.0
            + x * (1.0 / 2.0
                + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0))))));
    let c = {
        let y = x * 0.125;
        1.0 - y * (1.0 - y * (0.5 - y * (1.0 / 6.0)))
    };
    let c8 = {
        let c2 = c * c;
        let c4 = c2 * c2;
        c4 * c4
    };
    (if x < 12.0 { c8 } else { 0.0 }, 1.0 / p6)
}

/// A lower bound of `ln(1 + s)` for `0 <= s <= 1`: `s - s^2/2`.
#[inline(always)]
fn ln_1p_low(s: f64) -> f64 {
    s - s * s * 0.5
}

/// An upper bound of `ln(1 + s)` for `s >= 0`: `s - s^2/2 + s^3/3`.
#[inline(always)]
fn ln_1p_high(s: f64) -> f64 {
    s - s * s * (0.5 - s * (1.0 / 3.0))
}

/// Bounds `(low, high)` of [`delta_term`]'s value (before the grid) for the row `v = z / T` (max `m`,
/// mean `mean`, as `delta_term` computes them), from polynomials alone: MaNo needs only
/// the side of 5 its mean delta lies on, and over a target these bounds are a few
/// thousandths apart, so `exp` and `ln` run only where the mean falls that close to 5.
/// With `x = m - v_k >= 0` and `S = sum_k e^-x`:
/// - `e^-x <= 1 / sum_{j<=6} x^j / j!` (a partial sum of `e^x`);
/// - `e^-x >= c(x/8)^8` with `c(y) = 1 - y + y^2/2 - y^3/6` (its Taylor remainder is
///   positive), for `x < 12`, where `c > 0`; else `>= 0`;
/// - for `S = 1 + s` with `s <= 1`: `s - s^2/2 <= ln(1 + s) <= s - s^2/2 + s^3/3`; above,
///   libm's `ln(S)` (only at K > 2);
/// - a margin per row, `(|m| + |mean| + 4 + K^2) 2^-40`, far above the f64 rounding of
///   either computation (libm's included) and the grid's half step.
#[inline(always)]
fn delta_bounds(v: &[f64], m: f64, mean: f64) -> (f64, f64) {
    let (mut high, mut low) = (0.0f64, 0.0f64);
    for &y in v {
        let (l, h) = exp_neg_bounds(m - y);
        low += l;
        high += h;
    }
    let ln_high = if high <= 2.0 {
        // Exact: `high` is in [1, 2].
        ln_1p_high(high - 1.0)
    } else {
        high.ln()
    };
    let ln_low = if low <= 2.0 {
        ln_1p_low((low - 1.0).max(0.0))
    } else {
        low.ln()
    };
    let k = v.len() as f64;
    let margin = (m.abs() + mean.abs() + 4.0 + k * k) * 2f64.powi(-DELTA_BITS);
    let a = m - mean;
    (
        (a + ln_low - margin).max(0.0),
        (a + ln_high + margin).max(0.0),
    )
}

impl Sums {
    fn zeros(k: usize) -> Self {
        Sums {
            gram: vec![0; k * (k + 1) / 2],
            ..Default::default()
        }
    }

    fn add(mut self, o: Sums) -> Self {
        for (a, b) in self.gram.iter_mut().zip(&o.gram) {
            *a += *b;
        }
        self.delta_low += o.delta_low;
        self.delta_high += o.delta_high;
        self.delta_far |= o.delta_far;
        self.softmax4 += o.softmax4;
        self.taylor4 += o.taylor4;
        self
    }

    /// One row's logits `z` at temperature `t`, its CPU-softmax probabilities `p` (`v`
    /// and `parts` scratch of K). Inlined into its callers: where they pass arrays of a
    /// constant K (K = 2) the compiler unrolls every class loop, the same operations in
    /// the same order.
    #[inline(always)]
    fn row(&mut self, z: &[f32], t: f32, p: &[f32], v: &mut [f64], parts: &mut [(u64, i32)]) {
        let k = z.len();
        for (part, &x) in parts.iter_mut().zip(p) {
            *part = significand(x);
        }
        let mut at = 0;
        for a in 0..k {
            for b in a..k {
                self.gram[at] += product_on_grid(parts[a], parts[b]);
                at += 1;
            }
        }
        // MaNo on z / T in f64, each class's `z / T` divided once (`v` holds them, then
        // the Taylor terms); `m` and `mean` as `delta_term` computes them.
        for (vk, &x) in v.iter_mut().zip(z) {
            *vk = x as f64 / t as f64;
        }
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().copied().sum::<f64>() / k as f64;
        let (low, high) = delta_bounds(v, m, mean);
        self.delta_low += on_grid(low, DELTA_BITS) as i128;
        self.delta_high += on_grid(high, DELTA_BITS) as i128;
        self.delta_far |= high >= DELTA_FAR;
        self.softmax4 += on_grid(p.iter().map(|&q| (q as f64).powi(4)).sum(), GRID_BITS);
        for vk in v.iter_mut() {
            let y = *vk;
            *vk = 1.0 + y + y * y / 2.0;
        }
        let low = v.iter().copied().fold(f64::INFINITY, f64::min);
        let total: f64 = v.iter().map(|x| x - low).sum();
        let q4: f64 = if total > 0.0 {
            v.iter().map(|x| ((x - low) / total).powi(4)).sum()
        } else {
            // Every class equal: the uniform row.
            k as f64 * (1.0 / k as f64).powi(4)
        };
        self.taylor4 += on_grid(q4, GRID_BITS);
    }
}

impl Sums {
    /// MaNo's branch (`delta > 5`) where the delta bounds decide it, `None` where they
    /// straddle 5.
    fn softmax_branch(&self, n: usize) -> Option<bool> {
        if self.delta_far {
            None
        } else if delta_above_five(self.delta_low, n) {
            Some(true)
        } else if !delta_above_five(self.delta_high, n) {
            Some(false)
        } else {
            None
        }
    }

    /// The scores of `n` rows of `k` classes from their sums, MaNo's branch given.
    fn scores(&self, n: usize, k: usize, softmax_branch: bool) -> ShiftScores {
        let scale = 2f64.powi(-GRID_BITS);
        let mut gram = DMatrix::<f64>::zeros(k, k);
        let mut at = 0;
        for a in 0..k {
            for b in a..k {
                let g = self.gram[at] as f64 * scale;
                gram[(a, b)] = g;
                gram[(b, a)] = g;
                at += 1;
            }
        }
        let nuclear: f64 = gram
            .symmetric_eigenvalues()
            .iter()
            .map(|&e| e.max(0.0).sqrt())
            .sum();
        let nf = n as f64;
        let q4 = if softmax_branch {
            self.softmax4
        } else {
            self.taylor4
        };
        ShiftScores {
            nuclear_norm: nuclear / (nf * nf.min(k as f64)).sqrt(),
            mano: (q4 as f64 * scale / (nf * k as f64)).powf(0.25),
        }
    }
}

/// The scores of a target's rows (`k` classes) at the temperatures `t` (raw, ts);
/// `None` without rows.
pub fn shift_scores(rows: &CotRows, k: usize, t: Modes<f32>) -> Option<Modes<ShiftScores>> {
    let chunks: Vec<&[f32]> = rows.logits().collect();
    let n: usize = chunks.iter().map(|c| c.len() / k).sum();
    if n == 0 || k < 2 {
        return None;
    }
    let mode = |t: f32| -> ShiftScores {
        let blocks: Vec<&[f32]> = chunks
            .iter()
            .flat_map(|c| c.chunks(k * BLOCK_ROWS))
            .collect();
        let sums = blocks
            .par_iter()
            .map(|block| {
                if k == 2 {
                    return two_class_sums(block, t);
                }
                let mut s = Sums::zeros(k);
                // The block's probabilities at once (vectorised exp; `softmax_row`'s bits).
                let probs = softmax(block, k, t);
                let (mut v, mut parts) = (vec![0f64; k], vec![(0u64, 0i32); k]);
                for (z, p) in block.chunks_exact(k).zip(probs.chunks_exact(k)) {
                    s.row(z, t, p, &mut v, &mut parts);
                }
                s
            })
            .reduce(|| Sums::zeros(k), Sums::add);
        let softmax_branch = sums.softmax_branch(n).unwrap_or_else(|| {
            // The bounds straddle 5: the exact delta sum, a second pass.
            let exact = blocks
                .par_iter()
                .map(|block| {
                    let mut v = vec![0f64; k];
                    block
                        .chunks_exact(k)
                        .map(|z| delta_term(z, t, &mut v))
                        .sum::<i128>()
                })
                .sum::<i128>();
            delta_above_five(exact, n)
        });
        sums.scores(n, k, softmax_branch)
    };
    Some(Modes {
        raw: mode(t.raw),
        ts: mode(t.ts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `on_grid`'s bit reading gives the integers `round_ties_even` and a saturating
    /// u128 conversion give: exact halves either side of even, the 2^52 edge (2^52 - 1/2
    /// rounds up to it), the 2^63, 2^64 and 2^65 edges, 2^64 itself (a probability sum of
    /// one on the 2^-64 grid), values past 2^128 (saturated), and seeded values over every
    /// exponent the sums take.
    #[test]
    fn on_grid_equals_the_plain_rounding() {
        let plain = |x: f64, bits: i32| (x * 2f64.powi(bits)).round_ties_even() as u128;
        let mut values = vec![0.0, 1.0, 0.5, 2.5 * 2f64.powi(-64), 3.5 * 2f64.powi(-64)];
        values.extend([2f64.powi(64), 2f64.powi(127) * 1.5, 2f64.powi(128), 1e30]);
        for e in [52, 53, 63, 64, 65] {
            let edge = 2f64.powi(e - 64);
            values.extend([
                edge,
                edge * (1.0 - f64::EPSILON),
                edge * (1.0 + f64::EPSILON),
            ]);
            values.extend([edge - 0.5 * 2f64.powi(-64), edge + 0.5 * 2f64.powi(-64)]);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for _ in 0..20000 {
            let e = rng.random_range(-80..=0);
            values.push(rng.random::<f64>() * 2f64.powi(e));
        }
        for &x in &values {
            for bits in [DELTA_BITS, GRID_BITS] {
                assert_eq!(on_grid(x, bits), plain(x, bits), "{x:e} on 2^-{bits}");
            }
        }
    }

    /// Seeded K = 2 rows over three blocks and `extra` rows past them: saturated rows
    /// (logit gaps past 87 at T = 1: probabilities 1 and a subnormal or 0, fourth powers
    /// on 2^64), exact ties, near ties, -0.0, and at the end signed-zero ties either way
    /// round and a subnormal gap.
    fn two_class_logits(seed: u64, extra: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = 3 * BLOCK_ROWS + extra;
        let mut logits = Vec::with_capacity(2 * n + 6);
        for i in 0..n {
            let a = rng.random_range(-30f32..30.0);
            let b = match i % 6 {
                0 => a,
                1 => a - 95.0,
                2 => -0.0,
                3 => a + rng.random_range(-0.001f32..0.001),
                _ => rng.random_range(-30f32..30.0),
            };
            logits.extend([a, b]);
        }
        logits.extend([0.0, -0.0, -0.0, 0.0, f32::from_bits(1), 0.0]);
        logits
    }

    /// At K = 2 the block path (one vectorised loop a block) gives the scores of the
    /// slice-scratch row loop, bit for bit, on [`two_class_logits`].
    #[test]
    fn two_class_block_path_equals_the_row_loop() {
        let logits = two_class_logits(9, 17);
        let mut rows = CotRows::default();
        rows.add(0, &logits, 2, [None, None]);
        for t in [1.0f32, 0.37] {
            let got = shift_scores(&rows, 2, Modes { raw: t, ts: t }).unwrap().raw;
            assert_eq!(got, reference_scores(&logits, 2, t), "t = {t}");
        }
    }

    /// `grid_halves` gives `on_grid`'s integer (at `bits = 0`) over [0, 2^65): the
    /// edges of its two cases (2^52 - 1/2 rounding up to 2^52), exact halves, each power
    /// of two from 2^-1 to 2^64 with its neighbours, and seeded values at every exponent.
    #[test]
    fn grid_halves_equal_on_grid() {
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            2f64.powi(52) - 0.5,
            2f64.powi(52) - 1.5,
        ];
        for e in -1..=64 {
            let x = 2f64.powi(e);
            values.extend([x, x * (1.0 - f64::EPSILON / 2.0), x * (1.0 + f64::EPSILON)]);
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for _ in 0..20000 {
            let e = rng.random_range(-10..64);
            values.push(rng.random::<f64>() * 2f64.powi(e));
        }
        for &y in values.iter().filter(|&&y| y < 2f64.powi(65)) {
            let (high, low) = grid_halves(y);
            assert!(low < 1 << 32, "{y:e}");
            assert_eq!(((high as u128) << 32) + low as u128, on_grid(y, 0), "{y:e}");
        }
    }

    /// At K = 2 the vector loop's Gram and fourth-power sums are the row loop's integers
    /// and its delta bounds hold the exact delta sum, on [`two_class_logits`]. Its
    /// probabilities (one exponential a row) are thus the CPU softmax's.
    #[test]
    fn two_class_sums_equal_the_row_loop() {
        let logits = two_class_logits(14, 5);
        for t in [1.0f32, 0.37, 4.0] {
            let probs = softmax(&logits, 2, t);
            let got = two_class_sums(&logits, t);
            let mut want = Sums::zeros(2);
            let (mut v, mut parts) = (vec![0f64; 2], vec![(0u64, 0i32); 2]);
            for (z, p) in logits.chunks_exact(2).zip(probs.chunks_exact(2)) {
                want.row(z, t, p, &mut v, &mut parts);
            }
            assert_eq!(got.gram, want.gram, "t = {t}");
            assert_eq!(got.softmax4, want.softmax4, "t = {t}");
            assert_eq!(got.taylor4, want.taylor4, "t = {t}");
            let exact: i128 = logits
                .chunks_exact(2)
                .map(|z| delta_term(z, t, &mut v))
                .sum();
            assert!(!got.delta_far, "t = {t}");
            assert!(got.delta_low <= exact && exact <= got.delta_high, "t = {t}");
        }
    }

    /// The scores by the slice-scratch row loop and MaNo's branch from the exact delta
    /// sum (libm's `exp` and `ln` on every row), with whether the bounds decided it.
    fn reference(logits: &[f32], k: usize, t: f32) -> (ShiftScores, Option<bool>) {
        let n = logits.len() / k;
        let mut sums = Sums::zeros(k);
        let probs = softmax(logits, k, t);
        let (mut v, mut parts) = (vec![0f64; k], vec![(0u64, 0i32); k]);
        for (z, p) in logits.chunks_exact(k).zip(probs.chunks_exact(k)) {
            sums.row(z, t, p, &mut v, &mut parts);
        }
        let exact: i128 = logits
            .chunks_exact(k)
            .map(|z| delta_term(z, t, &mut v))
            .sum();
        let by_bounds = sums.softmax_branch(n);
        let branch = delta_above_five(exact, n);
        if let Some(b) = by_bounds {
            assert_eq!(b, branch, "bounds decided the branch wrongly");
        }
        (sums.scores(n, k, branch), by_bounds)
    }

    fn reference_scores(logits: &[f32], k: usize, t: f32) -> ShiftScores {
        reference(logits, k, t).0
    }

    /// Every row's exact delta term lies within its polynomial bounds, on the grid:
    /// K = 2, 3, 10 and 100 (the `ln` branch above S = 2), temperatures below and above
    /// one, spreads from ties (x = 0, -0.0) through the `x < 12` edge of the lower bound
    /// to saturated rows, and magnitudes up to 1e6 (where the margin's `|m|` term counts).
    #[test]
    fn delta_bounds_hold_the_exact_term() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for k in [2usize, 3, 10, 100] {
            let mut v = vec![0f64; k];
            for t in [1.0f32, 0.37, 5.0] {
                for case in 0..4000 {
                    let scale = [0.0f32, 1e-6, 1.0, 6.0, 12.0 * t, 30.0, 1e6][case % 7];
                    let shift = [0.0f32, -0.0, 3.0, -1e5][case % 4];
                    let z: Vec<f32> = (0..k)
                        .map(|_| shift + scale * rng.random_range(-1f32..1.0))
                        .collect();
                    let exact = delta_term(&z, t, &mut v);
                    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mean = v.iter().copied().sum::<f64>() / k as f64;
                    let (low, high) = delta_bounds(&v, m, mean);
                    let far = high >= DELTA_FAR;
                    let (low, high) = (
                        on_grid(low, DELTA_BITS) as i128,
                        on_grid(high, DELTA_BITS) as i128,
                    );
                    assert!(
                        low <= exact && exact <= high,
                        "{z:?} t {t}: {low} {exact} {high}"
                    );
                    if k == 2 {
                        // The vector path's own bounds, on a block of this one row.
                        let sums = two_class_sums(&z, t);
                        assert_eq!(sums.delta_far, far, "{z:?} t {t}");
                        if !far {
                            let (low, high) = (sums.delta_low, sums.delta_high);
                            assert!(
                                low <= exact && exact <= high,
                                "two-class {z:?} t {t}: {low} {exact} {high}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The branch taken with the bounds equals the exact delta's, and so do the scores,
    /// for K = 2 targets whose mean delta walks across 5 in steps finer than the bounds'
    /// gap (so some are decided by the bounds and some by the exact pass, both asserted to
    /// occur), and for rows whose delta is past `DELTA_FAR` (the exact pass).
    #[test]
    fn branch_with_bounds_equals_the_exact_branch() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let (mut decided, mut undecided) = (0, 0);
        for step in -40i32..=40 {
            // Rows (a, a - d): delta = d/2 + ln(1 + e^-d), near 5 + step 1e-4 on average.
            let n = 2000 + step.unsigned_abs() as usize;
            let mut logits = Vec::with_capacity(2 * n);
            for i in 0..n {
                let a = rng.random_range(-3f32..3.0);
                let jitter = if i % 2 == 0 { 1.5f32 } else { -1.5 };
                let d = 10.0 + step as f32 * 2e-4 + jitter;
                logits.extend([a, a - d]);
            }
            let (want, by_bounds) = reference(&logits, 2, 1.0);
            match by_bounds {
                Some(_) => decided += 1,
                None => undecided += 1,
            }
            let mut rows = CotRows::default();
            rows.add(0, &logits, 2, [None, None]);
            let got = shift_scores(&rows, 2, Modes { raw: 1.0, ts: 1.0 }).unwrap();
            assert_eq!(got.raw, want, "step {step}");
        }
        assert!(
            decided > 0 && undecided > 0,
            "{decided} decided, {undecided} not"
        );
        // Far rows: the exact pass decides (and past a block's worth of them, the vector
        // path's bound sums wrap, unused).
        let mut logits = [3e38f32, -3e38].repeat(BLOCK_ROWS + 1);
        logits.extend([1e30f32, -1e30, 0.0, 1.0]);
        let (want, by_bounds) = reference(&logits, 2, 1.0);
        assert_eq!(by_bounds, None);
        let mut rows = CotRows::default();
        rows.add(0, &logits, 2, [None, None]);
        let got = shift_scores(&rows, 2, Modes { raw: 1.0, ts: 1.0 }).unwrap();
        assert_eq!(got.raw, want);
    }

    /// The integer product equals the f64 path's rounding on every kind of f32: zero,
    /// subnormals, the smallest normal, exact halves of a grid step (ties to even both
    /// ways), one, and seeded values over every exponent a probability takes.
    #[test]
    fn integer_products_equal_the_f64_rounding() {
        let mut values = vec![
            0.0f32,
            1.0,
            0.5,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x7f_ffff),
            2f32.powi(-32),
            2f32.powi(-33),
            2f32.powi(-33) * (1.0 + f32::EPSILON),
            3.0 * 2f32.powi(-34),
            1.0 - f32::EPSILON / 2.0,
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..2000 {
            let e = rng.random_range(-60..=0);
            values.push(rng.random::<f32>() * 2f32.powi(e));
        }
        for &a in &values {
            for &b in values.iter().step_by(7) {
                let want = on_grid(a as f64 * b as f64, GRID_BITS);
                assert_eq!(
                    product_on_grid(significand(a), significand(b)),
                    want,
                    "{a:e} x {b:e}"
                );
            }
        }
    }
}
