//! CPU mirror of shaders/pvalues.wgsl: conformal p-value numerators by binary search in
//! sorted calibration scores (DESIGN.md 2.6), per-row summaries and set sizes.

use rayon::prelude::*;

use super::common::row_max;
use super::math::exp;
use crate::kernel::class_sum::class_sum_of;
pub use crate::kernel::pvalues::PValueRows;

/// `#{i : sorted[i] >= v}` (lower-bound search, as the shader). A branch-free variant
/// (a select per halving) measured slower here (150 -> 178 ms for the 1M-row p-value
/// bench): the predicted branch lets loads of both halves start early.
#[inline]
pub fn count_ge(sorted: &[f32], v: f32) -> usize {
    let (mut lo, mut hi) = (0usize, sorted.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if sorted[mid] < v {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    sorted.len() - lo
}

/// One row: `(yhat, top, second, sizes, numerators)`; `probs` = the row holds probabilities.
fn row_pvalues(
    row: &[f32],
    t: f32,
    probs: bool,
    sorted: &[f32],
    qhats: &[f32],
    sizes: &mut [u32],
    nums: &mut [u32],
) -> (u32, u32, u32) {
    let (m, yhat) = row_max(row);
    let s = if probs {
        0.0
    } else {
        class_sum_of(row.len(), row.iter().map(|&z| exp((z - m) / t)))
    };
    sizes.iter_mut().for_each(|x| *x = 0);
    let (mut best, mut second) = (0u32, 0u32);
    for (j, &z) in row.iter().enumerate() {
        let p = if probs { z } else { exp((z - m) / t) / s };
        let v = 1.0 - p;
        let num = 1 + count_ge(sorted, v) as u32;
        nums[j] = num;
        if num > best {
            second = best;
            best = num;
        } else if num > second {
            second = num;
        }
        for (sz, &q) in sizes.iter_mut().zip(qhats) {
            if v <= q {
                *sz += 1;
            }
        }
    }
    (yhat as u32, best, second)
}

/// P-value summaries of every row of `rows` (`n * k`: logits at temperature `t`, or
/// probabilities when `probs`) against ascending `sorted` calibration scores, with set
/// sizes at each of `qhats` (+inf allowed).
pub fn pvalues(
    rows: &[f32],
    k: usize,
    t: f32,
    probs: bool,
    sorted: &[f32],
    qhats: &[f32],
    want_numerators: bool,
) -> PValueRows {
    let n = rows.len() / k.max(1);
    let a = qhats.len();
    let mut out = PValueRows {
        n_cal: sorted.len(),
        nalpha: a,
        yhat: vec![0; n],
        top: vec![0; n],
        second: vec![0; n],
        // One slot per row even with no levels (keeps the chunking simple); cut below.
        set_sizes: vec![0; n * a.max(1)],
        numerators: None,
    };
    let mut nums = vec![0u32; n * k];
    let res: Vec<(u32, u32, u32)> = rows
        .par_chunks(k.max(1))
        .zip(out.set_sizes.par_chunks_mut(a.max(1)))
        .zip(nums.par_chunks_mut(k.max(1)))
        .map(|((row, sizes), nu)| row_pvalues(row, t, probs, sorted, qhats, &mut sizes[..a], nu))
        .collect();
    out.set_sizes.truncate(n * a);
    for (i, (y, b, s)) in res.into_iter().enumerate() {
        out.yhat[i] = y;
        out.top[i] = b;
        out.second[i] = s;
    }
    if want_numerators {
        out.numerators = Some(nums);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain count: lengths 0..=40 (every halving pattern of small arrays),
    /// heavy ties, queries equal to each element, between them, beyond both ends, NaN.
    #[test]
    fn count_ge_equals_plain_count() {
        for n in 0..=40usize {
            let sorted: Vec<f32> = (0..n).map(|i| (i / 3) as f32 * 0.5).collect();
            let mut queries: Vec<f32> = sorted
                .iter()
                .flat_map(|&s| [s, s + 0.25, s - 0.25])
                .collect();
            queries.extend([f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0, f32::NAN]);
            for v in queries {
                let want = if v.is_nan() {
                    n
                } else {
                    sorted.iter().filter(|&&s| s >= v).count()
                };
                assert_eq!(count_ge(&sorted, v), want, "n={n} v={v}");
            }
        }
    }
}
