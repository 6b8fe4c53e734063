//! Score-based estimators (DESIGN.md 2.17) from a target's rows: the nuclear norm of the
//! probability matrix (Deng et al. 2023) and MaNo (Xie et al. 2024, the official code's
//! global form). Each is a score, not an accuracy: `evaluate` reports it per target under
//! `scores[mode]`, and the sweep turns it into an accuracy by a regression across targets.
//!
//! Every sum is exact and order-free: each row's value is rounded once to a fixed grid and
//! added as an integer, so the scores do not depend on chunking, sharding or threads. The
//! rows are the ones COT keeps ([`CotRows`]), probabilities the CPU softmax's f32.

use nalgebra::DMatrix;
use rayon::prelude::*;

use crate::cpu::softmax::softmax;
use crate::methods::cot::CotRows;
use crate::report::estimates::Modes;
use crate::report::model::ShiftScores;

/// Bits of the grid the Gram matrix and the fourth powers are summed on.
const GRID_BITS: i32 = 64;
/// Bits of the grid MaNo's `delta` terms are summed on.
const DELTA_BITS: i32 = 40;
/// Rows per parallel block.
const BLOCK_ROWS: usize = 4096;

/// `x >= 0` rounded to the nearest multiple of `2^-bits` (ties to even), as an integer.
/// Below 2^52 adding and subtracting 2^52 rounds to even (an f64 add, not a libm call);
/// above, `y` is an integer already. Below 2^65 the conversion is a u64 one and a carry
/// (f64 -> u128 is a software routine): a sum of K fourth powers of probabilities lies
/// in [2^64 / K^3, 2^64] on the 2^-64 grid, exactly 2^64 for a saturated row and, at
/// K = 2, for every Taylor row. (Each call site's branches go one way for almost every row.)
#[inline(always)]
fn on_grid(x: f64, bits: i32) -> u128 {
    const M: f64 = (1u64 << 52) as f64;
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    let y = x * 2f64.powi(bits);
    let r = if y < M { (y + M) - M } else { y };
    if r < TWO_64 {
        r as u64 as u128
    } else if r < 2.0 * TWO_64 {
        // r in [2^64, 2^65) has an ulp of 2^12: r - 2^64 is exact.
        (1u128 << 64) | (r - TWO_64) as u64 as u128
    } else {
        r as u128
    }
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

/// The exact sums of one mode: the Gram matrix's upper triangle, MaNo's delta terms and
/// both branches' fourth powers.
#[derive(Clone, Default)]
struct Sums {
    gram: Vec<u128>,
    delta: i128,
    softmax4: u128,
    taylor4: u128,
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
        self.delta += o.delta;
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
        // the Taylor terms).
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
        let mean = v.iter().copied().sum::<f64>() / k as f64;
        self.delta += on_grid((lse - mean).max(0.0), DELTA_BITS) as i128;
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
    /// The scores of `n` rows of `k` classes from their sums.
    fn scores(&self, n: usize, k: usize) -> ShiftScores {
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
        let delta = self.delta as f64 * 2f64.powi(-DELTA_BITS) / nf;
        let q4 = if delta > 5.0 {
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
                let mut s = Sums::zeros(k);
                // The block's probabilities at once (vectorised exp; `softmax_row`'s bits).
                let probs = softmax(block, k, t);
                if k == 2 {
                    // Scratch of a constant K: the row's class loops unroll.
                    let (mut v, mut parts) = ([0f64; 2], [(0u64, 0i32); 2]);
                    for (z, p) in block.chunks_exact(2).zip(probs.chunks_exact(2)) {
                        s.row(z, t, p, &mut v, &mut parts);
                    }
                } else {
                    let (mut v, mut parts) = (vec![0f64; k], vec![(0u64, 0i32); k]);
                    for (z, p) in block.chunks_exact(k).zip(probs.chunks_exact(k)) {
                        s.row(z, t, p, &mut v, &mut parts);
                    }
                }
                s
            })
            .reduce(|| Sums::zeros(k), Sums::add);
        sums.scores(n, k)
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

    /// `on_grid`'s f64 adds and u64 conversion give the integers `round_ties_even` and a
    /// u128 conversion give: exact halves either side of even, the 2^52 and 2^63 edges
    /// of its two shortcuts, 2^64 (a probability sum of one on the 2^-64 grid), and
    /// seeded values over every exponent the sums take.
    #[test]
    fn on_grid_equals_the_plain_rounding() {
        let plain = |x: f64, bits: i32| (x * 2f64.powi(bits)).round_ties_even() as u128;
        let mut values = vec![0.0, 1.0, 0.5, 2.5 * 2f64.powi(-64), 3.5 * 2f64.powi(-64)];
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

    /// At K = 2 the block path (scratch arrays of a constant K, so the class loops
    /// unroll) gives the scores of the slice-scratch row loop, bit for bit: rows spanning
    /// several blocks, saturated rows (probabilities 1 and 0, fourth powers on 2^64),
    /// ties and -0.0.
    #[test]
    fn two_class_block_path_equals_the_row_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 3 * BLOCK_ROWS + 17;
        let mut logits = Vec::with_capacity(2 * n);
        for i in 0..n {
            let a = rng.random_range(-30f32..30.0);
            let b = match i % 5 {
                0 => a,
                1 => a - 80.0,
                2 => -0.0,
                _ => rng.random_range(-30f32..30.0),
            };
            logits.extend([a, b]);
        }
        let mut rows = CotRows::default();
        rows.add(0, &logits, 2, [None, None]);
        for t in [1.0f32, 0.37] {
            let got = shift_scores(&rows, 2, Modes { raw: t, ts: t }).unwrap().raw;
            let mut want = Sums::zeros(2);
            let probs = softmax(&logits, 2, t);
            let (mut v, mut parts) = (vec![0f64; 2], vec![(0u64, 0i32); 2]);
            for (z, p) in logits.chunks_exact(2).zip(probs.chunks_exact(2)) {
                want.row(z, t, p, &mut v, &mut parts);
            }
            assert_eq!(got, want.scores(n, 2), "t = {t}");
        }
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
