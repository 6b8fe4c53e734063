//! CPU mirror of shaders/calibration.wgsl: ECE bins and accuracy counts per workgroup.

use rayon::prelude::*;

use super::common::row_max;
use super::math::exp;
pub use crate::kernel::calibration::CalibrationStats;
use crate::kernel::calibration::{CalibrationPartial, BINS};
use crate::kernel::class_sum::class_sum_of;
use crate::kernel::WG;

/// `clamp(ceil(15 c) - 1, 0, 14)` computed in f64 (exact for an f32 `c`), DESIGN.md 2.2.
pub fn ece_bin(c: f32) -> usize {
    let b = (15.0 * c as f64).ceil() - 1.0;
    b.clamp(0.0, (BINS - 1) as f64) as usize
}

/// Confidence `max_k p_k = 1 / sum_j exp((z_j - m)/T)` (summed by the rule of
/// `kernel::class_sum`) and argmax of one row.
#[inline]
pub fn row_confidence(row: &[f32], t: f32) -> (f32, usize) {
    let (m, arg) = row_max(row);
    let s = class_sum_of(row.len(), row.iter().map(|&z| exp((z - m) / t)));
    (1.0 / s, arg)
}

/// Per-workgroup partials over `labels.len()` rows at temperature `t`.
pub fn calibration(logits: &[f32], labels: &[i32], k: usize, t: f32) -> Vec<CalibrationPartial> {
    let n = labels.len();
    (0..n.div_ceil(WG))
        .into_par_iter()
        .map(|g| {
            let mut p = CalibrationPartial::default();
            let mut lanes = [[0.0f32; 1]; WG];
            let mut bins = [BINS; WG];
            for lane in 0..WG {
                let row = g * WG + lane;
                if row >= n || labels[row] < 0 {
                    continue;
                }
                let (c, arg) = row_confidence(&logits[row * k..(row + 1) * k], t);
                let b = ece_bin(c);
                let correct = (arg as i32 == labels[row]) as u32;
                p.counts[b] += 1;
                p.counts[BINS + b] += correct;
                p.counts[30] += correct;
                p.counts[31] += 1;
                lanes[lane][0] = c;
                bins[lane] = b;
            }
            for b in 0..=BINS {
                let mut l = [[0.0f32; 1]; WG];
                for lane in 0..WG {
                    let hit = bins[lane] == b || (b == BINS && bins[lane] < BINS);
                    l[lane][0] = if hit { lanes[lane][0] } else { 0.0 };
                }
                p.sums[b] = super::temperature_nll::tree_sum(&mut l)[0];
            }
            p
        })
        .collect()
}
