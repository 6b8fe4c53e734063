//! CPU mirror of shaders/row_stats.wgsl: per-row summaries for the estimators.

use rayon::prelude::*;

use super::common::row_max;

/// Per-row outputs of the row_stats kernel, for `n` rows and `A` thresholds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowStats {
    /// `(p_(1), ne, lac, r_(1), r_(2))` per row: largest probability, negative entropy,
    /// lac = 1 - p_y (-1 when the label is unknown), `1 - p_(1)` and `1 - p_(2)`.
    pub stats: Vec<[f32; 5]>,
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
        self.info[i * (1 + self.n_alpha)]
    }

    /// Set size of row `i` at threshold `a`.
    pub fn set_size(&self, i: usize, a: usize) -> u32 {
        self.info[i * (1 + self.n_alpha) + 1 + a]
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
    pub stats: &'a [[f32; 5]],
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

/// One row, exactly as the shader computes it. `info` has `1 + qhats.len()` slots.
pub fn row_stats_row(row: &[f32], y: i32, t: f32, qhats: &[f32], info: &mut [u32]) -> [f32; 5] {
    let (m, arg) = row_max(row);
    // exp is deterministic: computing e_k once (small K) gives the shader's values with
    // half the exps.
    let mut cache = [0.0f32; 16];
    let small = row.len() <= cache.len();
    let mut s = 0.0f32;
    for (j, &z) in row.iter().enumerate() {
        let x = (z - m) / t;
        // exp(0) = 1 exactly (here and in the shader): skipping the call at the max
        // changes no bit and saves one exp per row (half of them for K = 2).
        let e = if x == 0.0 { 1.0 } else { x.exp() };
        if small {
            cache[j] = e;
        }
        s += e;
    }
    let log_s = s.ln();
    let (mut p1, mut r1, mut r2, mut ne, mut lac) = (-1.0f32, 2.0f32, 2.0f32, 0.0f32, -1.0f32);
    info[1..].fill(0);
    for (j, &z) in row.iter().enumerate() {
        let x = (z - m) / t;
        let e = if small {
            cache[j]
        } else if x == 0.0 {
            1.0
        } else {
            x.exp()
        };
        let p = e / s;
        let r = 1.0 - p;
        p1 = p1.max(p);
        if r < r1 {
            r2 = r1;
            r1 = r;
        } else if r < r2 {
            r2 = r;
        }
        if p > 0.0 {
            // ln p_k = x_k - ln S: one log per row, and accurate for tiny p_k.
            ne += p * (x - log_s);
        }
        if j as i32 == y {
            lac = r;
        }
        for (slot, &q) in info[1..].iter_mut().zip(qhats) {
            if r <= q {
                *slot += 1;
            }
        }
    }
    info[0] = arg as u32;
    [p1, ne, lac, r1, r2]
}

/// Row summaries of `labels.len()` rows at temperature `t` and thresholds `qhats`
/// (+inf should be passed as 2.0, as the GPU path does).
pub fn row_stats(logits: &[f32], labels: &[i32], k: usize, t: f32, qhats: &[f32]) -> RowStats {
    let n = labels.len();
    let stride = 1 + qhats.len();
    let mut stats = vec![[0.0f32; 5]; n];
    let mut info = vec![0u32; n * stride];
    const BLOCK: usize = 4096;
    stats
        .par_chunks_mut(BLOCK)
        .zip(info.par_chunks_mut(BLOCK * stride))
        .enumerate()
        .for_each(|(b, (st, inf))| {
            let rows = b * BLOCK..b * BLOCK + st.len();
            fill(
                &logits[rows.start * k..rows.end * k],
                &labels[rows],
                k,
                t,
                qhats,
                st,
                inf,
            );
        });
    RowStats {
        stats,
        info,
        n_alpha: qhats.len(),
    }
}

/// [`row_stats`] of a few rows, serially, into `out` (resized; its buffers are reused).
pub fn row_stats_into(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    t: f32,
    qhats: &[f32],
    out: &mut RowStats,
) {
    let n = labels.len();
    out.n_alpha = qhats.len();
    out.stats.resize(n, [0.0; 5]);
    out.info.resize(n * (1 + qhats.len()), 0);
    fill(logits, labels, k, t, qhats, &mut out.stats, &mut out.info);
}

fn fill(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    t: f32,
    qhats: &[f32],
    stats: &mut [[f32; 5]],
    info: &mut [u32],
) {
    let rows = logits.chunks_exact(k).zip(labels);
    for ((s, slot), (row, &y)) in stats
        .iter_mut()
        .zip(info.chunks_exact_mut(1 + qhats.len()))
        .zip(rows)
    {
        *s = row_stats_row(row, y, t, qhats, slot);
    }
}
