//! Contract of shaders/calibration.wgsl: parameters, the per-workgroup partial layout
//! (`NCOUNT` u32 counters and `NSUM` f32 sums per workgroup) and the partials' merge.

/// Uniform parameters. Keep in sync with `Params` in shaders/calibration.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CalibrationParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// ECE bins (DESIGN.md 2.2). Keep in sync with `BINS` in shaders/calibration.wgsl.
pub const BINS: usize = 15;
/// u32 counters per workgroup: 15 bin counts, 15 bin correct counts, correct, labelled.
/// Keep in sync with `NCOUNT` in shaders/calibration.wgsl.
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
