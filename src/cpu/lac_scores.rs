//! CPU mirror of shaders/lac_scores.wgsl: `s_i = 1 - p_{y_i}` (DESIGN.md 2.4).

use rayon::prelude::*;

use super::common::row_max;
use super::math::exp;
use crate::kernel::class_sum::class_sum_of;

/// LAC score of one row with known label `y`, in f32 exactly as the shader (and as
/// `softmax_row`) computes `p_y`.
#[inline]
pub fn lac_score_row(row: &[f32], y: usize, t: f32) -> f32 {
    let (m, _) = row_max(row);
    let mut ey = 0.0f32;
    let terms = row.iter().enumerate().map(|(j, &z)| {
        let e = exp((z - m) / t);
        if j == y {
            ey = e;
        }
        e
    });
    let s = class_sum_of(row.len(), terms);
    1.0 - ey / s
}

/// Scores of every row; NaN where the label is not in `0..k` (as the shader).
pub fn lac_scores(logits: &[f32], labels: &[i32], k: usize, t: f32) -> Vec<f32> {
    logits
        .par_chunks(k.max(1))
        .zip(labels.par_iter())
        .map(|(row, &y)| {
            if y < 0 || y as usize >= k {
                f32::NAN
            } else {
                lac_score_row(row, y as usize, t)
            }
        })
        .collect()
}
