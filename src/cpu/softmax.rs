//! CPU mirror of shaders/softmax.wgsl.

use rayon::prelude::*;

use super::common::row_max;
use super::math::{exp, exp_in_place};
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bulk path (all x, then all exps) gives `softmax_row`'s bits, across the
    /// 4096-row chunks; logits with ties and a huge spread (exp underflows to 0).
    #[test]
    fn bulk_equals_rows_bit_for_bit() {
        for k in [2usize, 3, 1000] {
            for n in [0usize, 1, 4095, 4096, 4097] {
                let logits: Vec<f32> = (0..n * k)
                    .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as f32 - 128.0)
                    .collect();
                let got = softmax(&logits, k, 0.37);
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
