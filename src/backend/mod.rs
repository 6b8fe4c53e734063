//! The backend trait: the kernels the estimators need, implemented by the CPU path and
//! the GPU path. Methods in `methods/` are written once, generic over `Backend`.

use crate::data::PredictionSet;
use crate::error::{Error, Result};
use crate::kernel::bootstrap::{BootstrapTallyPlan, PairRepCounts, MODES};
use crate::kernel::calibration::CalibrationStats;
pub use crate::kernel::pvalues::PValueRows;
use crate::kernel::row_stats::{RowStats, NSTAT};
use crate::kernel::tally::{count_block, merge_pairs, PairCounts, TallyPlan};

/// Sums over labelled rows for the temperature fit at one `b = 1/T` (f64 totals).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSums {
    /// `sum_i NLL_i`.
    pub nll: f64,
    /// `sum_i dNLL_i/db`.
    pub grad: f64,
    /// `sum_i d2NLL_i/db2`.
    pub hess: f64,
    /// Labelled rows.
    pub rows: f64,
}

/// Labels as the kernels take them: i32, -1 = unknown (also for every row when absent).
pub fn labels_i32(set: &PredictionSet) -> Vec<i32> {
    match &set.labels {
        Some(l) => l
            .iter()
            .map(|&y| y.clamp(-1, i32::MAX as i64) as i32)
            .collect(),
        None => vec![-1; set.n()],
    }
}

/// Checks the shapes a backend is handed: `k >= 1`, `logits.len()` a multiple of `k`,
/// and `labels` either empty (all unknown) or one per row, each in `-1..k`. Returns the
/// row count.
pub fn check_rows(logits: &[f32], labels: &[i32], k: usize) -> Result<usize> {
    if k == 0 || !logits.len().is_multiple_of(k) {
        return Err(Error::Invalid(format!(
            "{} logit values do not make rows of K = {k}",
            logits.len()
        )));
    }
    let n = logits.len() / k;
    if !labels.is_empty() && labels.len() != n {
        return Err(Error::LengthMismatch {
            what: "labels".into(),
            detail: format!("{} entries for {n} logit rows", labels.len()),
        });
    }
    if let Some((row, &y)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| y < -1 || y as i64 >= k as i64)
    {
        return Err(Error::LabelOutOfRange {
            what: "labels".into(),
            row,
            label: y as i64,
            k,
        });
    }
    Ok(n)
}

/// The kernels every estimator is built from.
pub trait Backend {
    /// A prediction set prepared for this backend (resident on the device for the GPU).
    type Rows<'a>
    where
        Self: 'a;

    /// `"cpu"` or `"gpu: <adapter name>"`.
    fn device_name(&self) -> String;

    /// Prepares (uploads) `logits` (`n * k`, row-major) and `labels` (`n`, -1 = unknown)
    /// once for several passes.
    fn prepare<'a>(
        &'a self,
        logits: &'a [f32],
        labels: &'a [i32],
        k: usize,
    ) -> Result<Self::Rows<'a>>;

    /// Temperature-fit sums at inverse temperature `b`.
    fn nll_sums(&self, rows: &Self::Rows<'_>, b: f64) -> Result<NllSums>;

    /// ECE bins and accuracy at temperature `t`.
    fn calibration(&self, rows: &Self::Rows<'_>, t: f32) -> Result<CalibrationStats>;

    /// Row-wise softmax of `logits` (`n * k`) at temperature `t`.
    fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>>;

    /// Per-row summaries at temperature `t` with set sizes at each of `qhats`
    /// (`None` = +inf), any number of thresholds.
    fn row_stats(&self, rows: &Self::Rows<'_>, t: f32, qhats: &[Option<f32>]) -> Result<RowStats> {
        // Thresholds in batches the kernel takes; the first pass also carries the stats.
        let q: Vec<f32> = qhats.iter().map(|q| q.unwrap_or(INF_QHAT)).collect();
        let mut batches = q.chunks(MAX_ALPHA_PER_PASS);
        let first = batches.next().unwrap_or(&[]);
        let mut out = self.row_stats_pass(rows, t, first)?;
        for batch in batches {
            let more = self.row_stats_pass(rows, t, batch)?;
            out = merge_sizes(out, &more);
        }
        Ok(out)
    }

    /// Counts one prepared chunk of target rows in one mode (DESIGN.md 3: the seam
    /// between the estimators and a backend is the tally, not per-row arrays). `plan`'s
    /// labels and group ids are the chunk's, one per row. The default computes the row
    /// statistics (the GPU downloads them) and counts them on the host, block by block;
    /// the CPU path computes each block where it is counted, in cache.
    fn tally(&self, rows: &Self::Rows<'_>, plan: &TallyPlan<'_>) -> Result<PairCounts> {
        use rayon::prelude::*;
        check_plan(plan)?;
        let st = self.row_stats(rows, plan.t, plan.qhats)?;
        if st.len() != plan.labels.len() {
            return Err(Error::LengthMismatch {
                what: "tally labels".into(),
                detail: format!("{} labels for {} rows", plan.labels.len(), st.len()),
            });
        }
        Ok(row_blocks(st.len())
            .map(|r| {
                let mut part = PairCounts::new();
                count_block(st.block(r.clone()), r.start, plan, &mut part);
                part
            })
            .reduce(PairCounts::new, |mut a, b| {
                merge_pairs(&mut a, b);
                a
            }))
    }

    /// The five row-statistics columns ([`crate::kernel::row_stats::col`]) of `rows` at
    /// temperature `t`, each sorted ascending by `total_cmp`: what the calibration needs
    /// from the source. The default computes the statistics and sorts each column; the
    /// GPU computes and sorts them on the device, so only the sorted columns come back.
    fn sorted_columns(&self, rows: &Self::Rows<'_>, t: f32) -> Result<[Vec<f32>; NSTAT]> {
        host_sorted_columns(self, rows, t)
    }

    /// A target's running tally in one mode, across its chunks (on the device for the
    /// GPU, so that only the final counts cross the bus).
    type TallyAcc: Send;

    /// An empty running tally for `n_alpha` levels.
    fn tally_start(&self, n_alpha: usize) -> Result<Self::TallyAcc>;

    /// Counts a prepared chunk into `acc` (see [`Backend::tally`]).
    fn tally_add(
        &self,
        acc: &mut Self::TallyAcc,
        rows: &Self::Rows<'_>,
        plan: &TallyPlan<'_>,
    ) -> Result<()>;

    /// The counts of everything added.
    fn tally_finish(&self, acc: Self::TallyAcc) -> Result<PairCounts>;

    /// Every bootstrap replicate's weighted counts of a prepared chunk in both modes
    /// (DESIGN.md 2.12): weights drawn where the rows are counted (in the kernel on the
    /// GPU), never stored; all replicates of both modes in one pass over the chunk.
    fn bootstrap_tally(
        &self,
        rows: &Self::Rows<'_>,
        plan: &BootstrapTallyPlan<'_>,
    ) -> Result<[PairRepCounts; MODES]>;

    /// One row_stats pass with at most [`MAX_ALPHA_PER_PASS`] finite thresholds.
    fn row_stats_pass(&self, rows: &Self::Rows<'_>, t: f32, qhats: &[f32]) -> Result<RowStats>;

    /// `keys` sorted ascending by `f32::total_cmp` (-0.0 before +0.0); NaN is rejected
    /// (`Error::NonFinite` naming the first index).
    fn sort_keys(&self, keys: &[f32]) -> Result<Vec<f32>>;

    /// Stable sort of `keys` (as [`Backend::sort_keys`]) carrying `payload` along.
    fn sort_pairs(&self, keys: &[f32], payload: &[u32]) -> Result<(Vec<f32>, Vec<u32>)>;

    /// Sorted keys and the original index of each (stable: ties keep index order).
    fn argsort(&self, keys: &[f32]) -> Result<(Vec<f32>, Vec<u32>)> {
        if keys.len() > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "argsort of {} keys: indices are u32",
                keys.len()
            )));
        }
        let idx: Vec<u32> = (0..keys.len() as u32).collect();
        self.sort_pairs(keys, &idx)
    }

    /// The `ks[j]`-th smallest key for each j (1-based ranks in `1..=n`, `total_cmp`
    /// order), without a full sort. NaN is rejected; a rank outside `1..=n` is
    /// `Error::Invalid`.
    fn select(&self, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>>;

    /// LAC scores `1 - p_y` of every row at temperature `t` (every label must be known:
    /// `Error::UnlabelledSource` otherwise).
    fn lac_scores(&self, rows: &Self::Rows<'_>, t: f32) -> Result<Vec<f32>>;

    /// The rank words (`kernel::score_ranks`: mass above, tie group mass, rank) of every
    /// class of every row of `probs` (`rows x k`, each finite in `[0, 1]`, else an error
    /// naming the row and class): what APS, RAPS, SAPS and TopK scores are made from.
    /// Integers: both backends give the same words bit for bit.
    fn score_ranks(&self, probs: &[f32], k: usize) -> Result<Vec<u32>>;

    /// What COT's K = 2 closed form needs of the rows of `probs` (`rows x 2`, each finite
    /// in `[0, 1]`, else an error naming the row and class): the base `sum c_i0`, the sum
    /// of the `whole` largest gains and the next gain, by the mergeable passes of
    /// `kernel::cot_two_class`. Integers: both backends give the same sums bit for bit.
    fn cot_two_class(
        &self,
        probs: &[f32],
        whole: u64,
    ) -> Result<crate::kernel::cot_two_class::TwoClassSums>;

    /// One pass of COT's K = 2 select over a chunk of rows (`probs`, `rows x 2`, checked
    /// as for [`Backend::cot_two_class`]): the streamed form, whose passes add over a
    /// set's chunks (and shards). The same integers on both backends.
    fn cot_two_class_pass(
        &self,
        probs: &[f32],
        pass: crate::kernel::cot_two_class::CotPass<'_>,
    ) -> Result<crate::kernel::cot_two_class::CotPassOutput>;

    /// COT's collect pass at K > 2 over a chunk of rows (`probs`, `rows x k`, each
    /// finite in `[0, 1]`, else an error naming the row and class) at `point`
    /// (`kernel::cot_collect`): sums, counts and least slacks, and the free rows' indices
    /// (from 0). Integers: both backends give the same sums bit for bit.
    fn cot_collect(
        &self,
        probs: &[f32],
        point: &crate::kernel::cot_collect::CollectPoint,
    ) -> Result<crate::kernel::cot_collect::CollectSums>;

    /// Conformal p-value summaries of every row at temperature `t` against the ascending
    /// calibration scores `sorted`, set sizes at each of `qhats` (+inf allowed), and every
    /// numerator when `want_numerators`.
    fn pvalues(
        &self,
        rows: &Self::Rows<'_>,
        t: f32,
        sorted: &[f32],
        qhats: &[f32],
        want_numerators: bool,
    ) -> Result<PValueRows>;
}

mod checks;
use checks::*;
mod cpu;
#[cfg(feature = "gpu")]
mod gpu;

pub use cpu::{CpuBackend, CpuRows};
#[cfg(feature = "gpu")]
pub use gpu::{GpuBackend, GpuTally};

/// Rows per block of a host tally: small enough that a block's statistics
/// (`(5 + 1 + A) * 4` bytes per row) stay in a core's L2 cache.
pub const ROW_BLOCK: usize = 1 << 14;

/// The row ranges of a host tally over `n` rows, in parallel.
pub(crate) fn row_blocks(
    n: usize,
) -> impl rayon::iter::IndexedParallelIterator<Item = std::ops::Range<usize>> {
    use rayon::prelude::*;
    (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(move |b| b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n))
}

pub use crate::kernel::row_stats::{INF_QHAT, MAX_ALPHA_PER_PASS};

/// Appends `more`'s set sizes to `out`'s (same rows).
pub(crate) fn merge_sizes(out: RowStats, more: &RowStats) -> RowStats {
    let (a, b) = (out.n_alpha, more.n_alpha);
    let mut info = Vec::with_capacity(out.len() * (1 + a + b));
    for i in 0..out.len() {
        info.extend_from_slice(&out.info[i * (1 + a)..(i + 1) * (1 + a)]);
        info.extend_from_slice(&more.info[i * (1 + b) + 1..(i + 1) * (1 + b)]);
    }
    RowStats {
        stats: out.stats,
        info,
        n_alpha: a + b,
    }
}

/// [`Backend::sorted_columns`] by the row statistics and one sort per column.
pub(crate) fn host_sorted_columns<B: Backend + ?Sized>(
    b: &B,
    rows: &B::Rows<'_>,
    t: f32,
) -> Result<[Vec<f32>; NSTAT]> {
    let stats = b.row_stats(rows, t, &[])?;
    let mut out: [Vec<f32>; NSTAT] = Default::default();
    for (c, o) in out.iter_mut().enumerate() {
        *o = b.sort_keys(&stats.stats.iter().map(|s| s[c]).collect::<Vec<_>>())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that keeps only the required methods: `tally` takes the trait's default
    /// (row_stats, then host counts), the path the GPU uses.
    struct DefaultPath(CpuBackend);

    impl Backend for DefaultPath {
        type Rows<'a> = CpuRows<'a>;
        type TallyAcc = PairCounts;
        fn tally_start(&self, _: usize) -> Result<PairCounts> {
            Ok(PairCounts::new())
        }
        fn tally_add(&self, a: &mut PairCounts, r: &CpuRows<'_>, p: &TallyPlan<'_>) -> Result<()> {
            merge_pairs(a, self.tally(r, p)?);
            Ok(())
        }
        fn tally_finish(&self, a: PairCounts) -> Result<PairCounts> {
            Ok(a)
        }
        fn bootstrap_tally(
            &self,
            r: &CpuRows<'_>,
            p: &BootstrapTallyPlan<'_>,
        ) -> Result<[PairRepCounts; MODES]> {
            self.0.bootstrap_tally(r, p)
        }
        fn device_name(&self) -> String {
            "default".into()
        }
        fn prepare<'a>(&'a self, l: &'a [f32], y: &'a [i32], k: usize) -> Result<CpuRows<'a>> {
            self.0.prepare(l, y, k)
        }
        fn nll_sums(&self, r: &CpuRows<'_>, b: f64) -> Result<NllSums> {
            self.0.nll_sums(r, b)
        }
        fn calibration(&self, r: &CpuRows<'_>, t: f32) -> Result<CalibrationStats> {
            self.0.calibration(r, t)
        }
        fn softmax(&self, l: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
            self.0.softmax(l, k, t)
        }
        fn row_stats_pass(&self, r: &CpuRows<'_>, t: f32, q: &[f32]) -> Result<RowStats> {
            self.0.row_stats_pass(r, t, q)
        }
        fn sort_keys(&self, keys: &[f32]) -> Result<Vec<f32>> {
            self.0.sort_keys(keys)
        }
        fn sort_pairs(&self, keys: &[f32], p: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
            self.0.sort_pairs(keys, p)
        }
        fn select(&self, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>> {
            self.0.select(keys, ks)
        }
        fn lac_scores(&self, r: &CpuRows<'_>, t: f32) -> Result<Vec<f32>> {
            self.0.lac_scores(r, t)
        }
        fn score_ranks(&self, p: &[f32], k: usize) -> Result<Vec<u32>> {
            self.0.score_ranks(p, k)
        }
        fn cot_two_class(
            &self,
            p: &[f32],
            whole: u64,
        ) -> Result<crate::kernel::cot_two_class::TwoClassSums> {
            self.0.cot_two_class(p, whole)
        }
        fn cot_two_class_pass(
            &self,
            p: &[f32],
            pass: crate::kernel::cot_two_class::CotPass<'_>,
        ) -> Result<crate::kernel::cot_two_class::CotPassOutput> {
            self.0.cot_two_class_pass(p, pass)
        }
        fn cot_collect(
            &self,
            p: &[f32],
            point: &crate::kernel::cot_collect::CollectPoint,
        ) -> Result<crate::kernel::cot_collect::CollectSums> {
            self.0.cot_collect(p, point)
        }
        fn pvalues(
            &self,
            r: &CpuRows<'_>,
            t: f32,
            sorted: &[f32],
            qhats: &[f32],
            num: bool,
        ) -> Result<PValueRows> {
            self.0.pvalues(r, t, sorted, qhats, num)
        }
    }

    /// The CPU override (each block computed where it is counted, every threshold in one
    /// pass) gives the same counts as the default (whole row_stats in passes of
    /// MAX_ALPHA_PER_PASS thresholds, then counted): sizes around one block, more
    /// thresholds than one pass takes, groups in runs that cross blocks, thresholds on
    /// tied values.
    #[test]
    fn cpu_tally_equals_default_tally() {
        let q: Vec<Option<f32>> = (0..40)
            .map(|i| (i != 5).then_some(i as f32 / 40.0))
            .collect();
        for n in [
            0,
            1,
            ROW_BLOCK - 1,
            ROW_BLOCK,
            ROW_BLOCK + 1,
            2 * ROW_BLOCK + 7,
        ] {
            // Deterministic pseudo-random logits with ties (multiples of 1/4).
            let logits: Vec<f32> = (0..n * 3)
                .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59) as f32 / 4.0)
                .collect();
            let labels: Vec<i32> = (0..n).map(|i| (i % 4) as i32 - 1).collect();
            let slide: Vec<i64> = (0..n).map(|i| (i / 5000) as i64).collect();
            let hospital: Vec<i64> = (0..n).map(|i| (i / 12000) as i64 % 3).collect();
            let plan = TallyPlan {
                t: 0.8,
                atc_mc: Some(0.5),
                atc_ne: Some(-0.75),
                cpc_q: Some(0.5),
                qhats: &q,
                labels: &labels,
                groups: [Some(&hospital), Some(&slide)],
            };
            let rows = CpuBackend.prepare(&logits, &labels, 3).unwrap();
            let got = CpuBackend.tally(&rows, &plan).unwrap();
            let want = DefaultPath(CpuBackend).tally(&rows, &plan).unwrap();
            assert_eq!(got, want, "n={n}");
            let total: u64 = got.values().map(|c| c.n()).sum();
            assert_eq!(total, n as u64);
        }
    }
}
