//! Contract of shaders/pvalues.wgsl: parameters and the per-row output layout
//! (`[yhat, top, second, |C_0|, ..., |C_{A-1}|]` per row, read back into [`PValueRows`]).

/// Uniform parameters. Keep in sync with `Params` in shaders/pvalues.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PvalueParams {
    /// Rows in this dispatch.
    pub rows: u32,
    /// First row of this dispatch within the bound logits chunk.
    pub row0: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Sorted scores in the bound chunk.
    pub n_chunk: u32,
    /// Levels (qhats).
    pub nalpha: u32,
    /// First score chunk.
    pub first: u32,
    /// Last score chunk.
    pub last: u32,
    /// Keep every count (numerators) on the last chunk.
    pub want_counts: u32,
    /// Rows hold probabilities, not logits.
    pub probs: u32,
    /// Padding to 48 bytes.
    pub _pad1: u32,
    /// Padding.
    pub _pad2: u32,
}

/// Per-row p-value summaries of a target set against `n_cal` calibration scores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PValueRows {
    /// Calibration scores `n` (p-values are numerators over `n + 1`).
    pub n_cal: usize,
    /// Levels (qhats) the set sizes were counted at.
    pub nalpha: usize,
    /// Predicted class per row (argmax of the logits, lowest index on ties).
    pub yhat: Vec<u32>,
    /// Largest p-value numerator per row (credibility = top / (n + 1)).
    pub top: Vec<u32>,
    /// Second largest numerator per row (confidence = 1 - second / (n + 1)).
    pub second: Vec<u32>,
    /// `#{k : 1 - p_k <= qhat_a}`, row-major `[row * nalpha + a]`.
    pub set_sizes: Vec<u32>,
    /// Every numerator `1 + #{i : s_i >= 1 - p_k}`, `[row * k + class]`, when asked for.
    pub numerators: Option<Vec<u32>>,
}

impl PValueRows {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.yhat.len()
    }
    /// Credibility of row `i`: the largest p-value.
    pub fn credibility(&self, i: usize) -> f64 {
        self.top[i] as f64 / (self.n_cal as f64 + 1.0)
    }
    /// Confidence of row `i`: 1 - the second largest p-value.
    pub fn confidence(&self, i: usize) -> f64 {
        1.0 - self.second[i] as f64 / (self.n_cal as f64 + 1.0)
    }
    /// Set size of row `i` at level index `a`.
    pub fn set_size(&self, i: usize, a: usize) -> u32 {
        self.set_sizes[i * self.nalpha + a]
    }
}
