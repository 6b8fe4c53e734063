//! Contract of shaders/row_stats.wgsl: parameters, limits and the output layout
//! ([`NSTAT`] f32 `stats` and `1 + A` u32 `info` per row, read back into [`RowStats`]).

/// Uniform parameters. Keep in sync with `Params` in shaders/row_stats.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowStatsParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Thresholds.
    pub n_alpha: u32,
}

/// Thresholds per row_stats pass: `(1 + A) * 4` output bytes per row stay within the 128
/// bytes per row that `GpuContext::upload_rows` budgets for outputs.
pub const MAX_ALPHA_PER_PASS: usize = 31;

/// Largest K the row-summary pipelines are specialised for (their loops over classes
/// unrolled); past it the loop body dominates and unrolling only grows the code.
pub const SPECIALISE_MAX_CLASSES: usize = 32;

/// The override constants of the shaders built on row_summary.wgsl (row_stats, tally,
/// bootstrap) for rows of `k` classes and `levels` thresholds: `CLASSES` (0 = read K from
/// the uniform, for K past [`SPECIALISE_MAX_CLASSES`]) and `LEVELS` (0 = read it; a pass
/// with no levels loops zero times either way).
pub fn pipeline_constants(k: usize, levels: usize) -> [(&'static str, u32); 2] {
    let classes = if k <= SPECIALISE_MAX_CLASSES { k } else { 0 };
    [("CLASSES", classes as u32), ("LEVELS", levels as u32)]
}

/// Stand-in for `qhat = +inf`: every `1 - p_k` lies in [0, 1], so 2.0 admits every class.
pub const INF_QHAT: f32 = 2.0;

/// f32 values per row in `stats` (see [`col`]).
pub const NSTAT: usize = 5;

/// Per-row outputs of the row_stats kernel, for `n` rows and `A` thresholds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowStats {
    /// `(p_(1), ne, lac, r_(1), r_(2))` per row: largest probability, negative entropy,
    /// lac = 1 - p_y (-1 when the label is unknown), `1 - p_(1)` and `1 - p_(2)`.
    pub stats: Vec<[f32; NSTAT]>,
    /// `[yhat, |C_0|, ..., |C_{A-1}|]` per row (stride `1 + A`).
    pub info: Vec<u32>,
    /// Number of thresholds `A`.
    pub n_alpha: usize,
}

impl RowStats {
    /// Rows.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Predicted class of row `i`.
    pub fn yhat(&self, i: usize) -> u32 {
        self.all().yhat(i)
    }

    /// Set size of row `i` at threshold `a`.
    pub fn set_size(&self, i: usize, a: usize) -> u32 {
        self.all().sizes(i)[a]
    }

    /// Every row as one borrowed block.
    pub fn all(&self) -> RowBlock<'_> {
        RowBlock {
            stats: &self.stats,
            info: &self.info,
            n_alpha: self.n_alpha,
        }
    }

    /// Rows `range` as a borrowed block.
    pub fn block(&self, range: std::ops::Range<usize>) -> RowBlock<'_> {
        let stride = 1 + self.n_alpha;
        RowBlock {
            stats: &self.stats[range.clone()],
            info: &self.info[range.start * stride..range.end * stride],
            n_alpha: self.n_alpha,
        }
    }

    /// Appends another chunk's rows (same `n_alpha`).
    pub fn extend(&mut self, other: RowStats) {
        self.n_alpha = other.n_alpha;
        self.stats.extend(other.stats);
        self.info.extend(other.info);
    }
}

/// Consecutive rows of a [`RowStats`], borrowed (what estimators fold over).
#[derive(Clone, Copy, Debug)]
pub struct RowBlock<'a> {
    /// As [`RowStats::stats`].
    pub stats: &'a [[f32; NSTAT]],
    /// As [`RowStats::info`].
    pub info: &'a [u32],
    /// Number of thresholds `A`.
    pub n_alpha: usize,
}

impl RowBlock<'_> {
    /// Rows.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Predicted class of row `i`.
    pub fn yhat(&self, i: usize) -> u32 {
        self.info[i * (1 + self.n_alpha)]
    }

    /// Set sizes of row `i`, one per threshold.
    pub fn sizes(&self, i: usize) -> &[u32] {
        let stride = 1 + self.n_alpha;
        &self.info[i * stride + 1..(i + 1) * stride]
    }
}

/// Index of each value in a `RowStats::stats` record.
pub mod col {
    /// Largest probability.
    pub const P1: usize = 0;
    /// `sum_k p_k ln p_k`.
    pub const NE: usize = 1;
    /// `1 - p_y`, or -1 when the label is unknown.
    pub const LAC: usize = 2;
    /// `1 - p_(1)`.
    pub const R1: usize = 3;
    /// `1 - p_(2)`.
    pub const R2: usize = 4;
}
