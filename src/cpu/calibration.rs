//! CPU mirror of shaders/calibration.wgsl: ECE bins and accuracy counts per workgroup.

use rayon::prelude::*;

use super::common::row_max;
use super::math::exp;
use super::WG;

/// ECE bins (DESIGN.md 2.2).
pub const BINS: usize = 15;
/// u32 counters per workgroup: 15 bin counts, 15 bin correct counts, correct, labelled.
pub const NCOUNT: usize = 32;
/// f32 sums per workgroup: 15 bin confidence sums, then the sum over all labelled rows.
pub const NSUM: usize = 16;

/// One workgroup's partial (what the shader writes for it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationPartial {
    /// Bin counts, bin correct counts, correct, labelled.
    pub counts: [u32; NCOUNT],
    /// Bin confidence sums, total confidence.
    pub sums: [f32; NSUM],
}

impl Default for CalibrationPartial {
    fn default() -> Self {
        CalibrationPartial {
            counts: [0; NCOUNT],
            sums: [0.0; NSUM],
        }
    }
}

/// `clamp(ceil(15 c) - 1, 0, 14)` computed in f64 (exact for an f32 `c`), DESIGN.md 2.2.
pub fn ece_bin(c: f32) -> usize {
    let b = (15.0 * c as f64).ceil() - 1.0;
    b.clamp(0.0, (BINS - 1) as f64) as usize
}

/// Confidence `max_k p_k = 1 / sum_j exp((z_j - m)/T)` and argmax of one row.
#[inline]
pub fn row_confidence(row: &[f32], t: f32) -> (f32, usize) {
    let (m, arg) = row_max(row);
    let mut s = 0.0f32;
    for &z in row {
        s += exp((z - m) / t);
    }
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

/// Totals of a list of partials (f64 sums of f32 partials; counts exact).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CalibrationStats {
    /// Rows per bin.
    pub bin_count: [u64; BINS],
    /// Correct rows per bin.
    pub bin_correct: [u64; BINS],
    /// Sum of confidence per bin.
    pub bin_conf: [f64; BINS],
    /// Correct labelled rows.
    pub correct: u64,
    /// Labelled rows.
    pub labelled: u64,
    /// Sum of confidence over labelled rows.
    pub conf_sum: f64,
}

impl CalibrationStats {
    /// Adds partials (mergeable: chunks and shards combine by addition).
    pub fn merge(&mut self, parts: &[CalibrationPartial]) {
        for p in parts {
            for b in 0..BINS {
                self.bin_count[b] += p.counts[b] as u64;
                self.bin_correct[b] += p.counts[BINS + b] as u64;
                self.bin_conf[b] += p.sums[b] as f64;
            }
            self.correct += p.counts[30] as u64;
            self.labelled += p.counts[31] as u64;
            self.conf_sum += p.sums[BINS] as f64;
        }
    }

    /// Builds totals from partials.
    pub fn from_partials(parts: &[CalibrationPartial]) -> Self {
        let mut s = Self::default();
        s.merge(parts);
        s
    }

    /// `ECE = sum_b (n_b/n) |mean conf_b - mean correct_b|`; 0 for an empty set.
    pub fn ece(&self) -> f64 {
        if self.labelled == 0 {
            return 0.0;
        }
        let n = self.labelled as f64;
        (0..BINS)
            .filter(|&b| self.bin_count[b] > 0)
            .map(|b| (self.bin_conf[b] - self.bin_correct[b] as f64).abs() / n)
            .sum()
    }

    /// Accuracy over labelled rows (NaN when none).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.labelled as f64
    }
}
