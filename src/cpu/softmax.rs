//! CPU mirror of shaders/softmax.wgsl.

use rayon::prelude::*;

use super::common::row_max;
use super::math::{exp, exp_in_place, with_avx2};
use crate::kernel::class_sum::{class_sum, class_sum_of};

/// Softmax of one row at temperature `t` into `out` (shift, then scale; f32 as the shader;
/// the denominator summed over classes by the rule of `kernel::class_sum`).
#[inline]
pub fn softmax_row(row: &[f32], t: f32, out: &mut [f32]) {
    let (m, _) = row_max(row);
    let s = class_sum_of(
        row.len(),
        out.iter_mut().zip(row).map(|(o, &z)| {
            *o = exp((z - m) / t);
            *o
        }),
    );
    for o in out.iter_mut() {
        *o /= s;
    }
}

/// Row-wise softmax of `logits` (`n * k`, row-major) at temperature `t`.
pub fn softmax(logits: &[f32], k: usize, t: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; logits.len()];
    if k == 0 {
        return out;
    }
    if k == 2 {
        out.par_chunks_mut(2 * 4096)
            .zip(logits.par_chunks(2 * 4096))
            .for_each(|(o, l)| two_class(l, t, o));
        return out;
    }
    // Per chunk of rows: every x_k, then every exp at once (vectorised, see `math`), then
    // the sums over classes and the divisions: the bits of `softmax_row`, row by row.
    out.par_chunks_mut(k * 4096)
        .zip(logits.par_chunks(k * 4096))
        .for_each(|(o, l)| {
            for (orow, lrow) in o.chunks_exact_mut(k).zip(l.chunks_exact(k)) {
                let (m, _) = row_max(lrow);
                for (o, &z) in orow.iter_mut().zip(lrow) {
                    *o = (z - m) / t;
                }
            }
            exp_in_place(o);
            for orow in o.chunks_exact_mut(k) {
                let s = class_sum(orow);
                for o in orow {
                    *o /= s;
                }
            }
        });
    out
}

/// One K = 2 row's probabilities `(p0, p1)`: `softmax_row`'s bits with one exponential
/// and no branch (inlined into loops the AVX2 build vectorises). The larger logit's term
/// is `exp(0) = 1` (the first of tied maxima is the max, as `row_max`), the other's `e`;
/// the f32 sum `1 + e` is the same either way round, and each term is divided by it.
#[inline(always)]
pub fn two_class_row(z0: f32, z1: f32, t: f32) -> (f32, f32) {
    let one_max = z1 > z0;
    let e = exp(if one_max {
        (z0 - z1) / t
    } else {
        (z1 - z0) / t
    });
    let sum = e + 1.0;
    let (other, max) = (e / sum, 1.0 / sum);
    if one_max {
        (other, max)
    } else {
        (max, other)
    }
}

/// K = 2 rows by [`two_class_row`], in a loop the AVX2 build vectorises. A trailing
/// value short of a row (callers validate rows, so only a direct call has one) gets what
/// the bulk path of other K gives it, `exp(0) = 1`.
fn two_class(logits: &[f32], t: f32, out: &mut [f32]) {
    with_avx2(
        #[inline(always)]
        || {
            for (o, z) in out.chunks_exact_mut(2).zip(logits.chunks_exact(2)) {
                (o[0], o[1]) = two_class_row(z[0], z[1], t);
            }
        },
    );
    if out.len() % 2 == 1 {
        out[out.len() - 1] = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bulk path (all x, then all exps; at K = 2 one exp a row) gives
    /// `softmax_row`'s bits, across the 4096-row chunks; logits with ties, a huge spread
    /// (exp underflows to 0), and at K = 2 signed-zero ties both ways round, subnormal
    /// gaps and the f32 extremes.
    #[test]
    fn bulk_equals_rows_bit_for_bit() {
        for k in [2usize, 3, 1000] {
            for n in [0usize, 1, 4095, 4096, 4097] {
                let mut logits: Vec<f32> = (0..n * k)
                    .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as f32 - 128.0)
                    .collect();
                if k == 2 && n > 0 {
                    logits.extend([
                        0.0,
                        -0.0,
                        -0.0,
                        0.0,
                        f32::from_bits(1),
                        0.0,
                        f32::MAX,
                        -f32::MAX,
                        -f32::MAX,
                        f32::MAX,
                        1e-30,
                        -1e-30,
                    ]);
                }
                let got = softmax(&logits, k, 0.37);
                if k == 2 {
                    // A value short of a row: what the bulk path of other K gives it.
                    let mut odd = logits.clone();
                    odd.push(3.0);
                    let with_odd = softmax(&odd, 2, 0.37);
                    assert_eq!(with_odd[..got.len()], got[..], "n={n}");
                    assert_eq!(with_odd[got.len()], 1.0, "n={n}");
                }
                let mut want = vec![0.0f32; k];
                for (i, row) in logits.chunks_exact(k).enumerate() {
                    softmax_row(row, 0.37, &mut want);
                    let g = &got[i * k..(i + 1) * k];
                    let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "k={k} n={n} row {i}");
                }
            }
        }
    }
}
