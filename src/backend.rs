//! The backend trait: the kernels the estimators need, implemented by the CPU path and
//! the GPU path. Methods in `methods/` are written once, generic over `Backend`.

use crate::cpu;
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

/// Rows per block of a host tally: small enough that a block's statistics
/// (`(5 + 1 + A) * 4` bytes per row) stay in a core's L2 cache.
pub const ROW_BLOCK: usize = 1 << 14;

/// The row ranges of a host tally over `n` rows, in parallel.
fn row_blocks(
    n: usize,
) -> impl rayon::iter::IndexedParallelIterator<Item = std::ops::Range<usize>> {
    use rayon::prelude::*;
    (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(move |b| b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n))
}

pub use crate::kernel::row_stats::{INF_QHAT, MAX_ALPHA_PER_PASS};

/// Appends `more`'s set sizes to `out`'s (same rows).
fn merge_sizes(out: RowStats, more: &RowStats) -> RowStats {
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

/// `Error::UnlabelledSource` for the first NaN score (a row whose label is unknown).
fn check_scores(scores: Vec<f32>) -> Result<Vec<f32>> {
    match scores.iter().position(|s| s.is_nan()) {
        Some(row) => Err(Error::UnlabelledSource {
            what: "LAC scores".into(),
            row,
        }),
        None => Ok(scores),
    }
}

/// [`Backend::sorted_columns`] by the row statistics and one sort per column.
fn host_sorted_columns<B: Backend + ?Sized>(
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

/// Group id arrays must have one entry per label.
fn check_plan(plan: &TallyPlan<'_>) -> Result<()> {
    for (g, name) in plan.groups.iter().zip(crate::kernel::tally::GROUP_ARRAYS) {
        if let Some(g) = g {
            if g.len() != plan.labels.len() {
                return Err(Error::LengthMismatch {
                    what: format!("tally {name} ids"),
                    detail: format!("{} ids for {} rows", g.len(), plan.labels.len()),
                });
            }
        }
    }
    Ok(())
}

/// A bootstrap plan's labels and group ids must be one per row, its temperatures valid.
fn check_bootstrap_plan(plan: &BootstrapTallyPlan<'_>, n: usize) -> Result<()> {
    if plan.modes[0].len() != plan.modes[1].len() {
        return Err(Error::LengthMismatch {
            what: "bootstrap plans".into(),
            detail: format!(
                "{} raw and {} ts replicates",
                plan.modes[0].len(),
                plan.modes[1].len()
            ),
        });
    }
    for r in plan.modes.iter().flat_map(|m| m.iter()) {
        check_t(r.t)?;
    }
    let lens = [
        ("labels", Some(plan.labels.len())),
        ("hospital", plan.groups[0].map(|g| g.len())),
        ("slide", plan.groups[1].map(|g| g.len())),
    ];
    for (what, len) in lens {
        if let Some(len) = len.filter(|&l| l != n) {
            return Err(Error::LengthMismatch {
                what: format!("bootstrap tally {what}"),
                detail: format!("{len} entries for {n} rows"),
            });
        }
    }
    Ok(())
}

fn check_t(t: f32) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::BadTemperature(t as f64))
    }
}

fn check_sorted_scores(sorted: &[f32]) -> Result<()> {
    if sorted.is_empty() {
        return Err(Error::Empty {
            what: "calibration scores".into(),
            detail: "p-values need at least one score".into(),
        });
    }
    crate::kernel::radix_sort::check_no_nan("calibration scores", sorted)?;
    if let Some(i) = sorted
        .windows(2)
        .position(|w| w[0].total_cmp(&w[1]).is_gt())
    {
        return Err(Error::Invalid(format!(
            "calibration scores are not sorted ascending at index {}",
            i + 1
        )));
    }
    Ok(())
}

/// The CPU path (rayon over workgroups; f64 sums for the temperature fit).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// A set as the CPU path reads it (borrowed).
pub struct CpuRows<'a> {
    logits: &'a [f32],
    labels: &'a [i32],
    k: usize,
}

impl Backend for CpuBackend {
    type Rows<'a> = CpuRows<'a>;
    type TallyAcc = PairCounts;

    fn tally_start(&self, _n_alpha: usize) -> Result<PairCounts> {
        Ok(PairCounts::new())
    }

    fn tally_add(
        &self,
        acc: &mut PairCounts,
        rows: &CpuRows<'_>,
        plan: &TallyPlan<'_>,
    ) -> Result<()> {
        merge_pairs(acc, self.tally(rows, plan)?);
        Ok(())
    }

    fn tally_finish(&self, acc: PairCounts) -> Result<PairCounts> {
        Ok(acc)
    }

    fn bootstrap_tally(
        &self,
        rows: &CpuRows<'_>,
        plan: &BootstrapTallyPlan<'_>,
    ) -> Result<[PairRepCounts; MODES]> {
        check_bootstrap_plan(plan, rows.labels.len())?;
        Ok(cpu::bootstrap::bootstrap_tally(rows.logits, rows.k, plan))
    }

    fn device_name(&self) -> String {
        "cpu".into()
    }

    fn prepare<'a>(
        &'a self,
        logits: &'a [f32],
        labels: &'a [i32],
        k: usize,
    ) -> Result<CpuRows<'a>> {
        let n = check_rows(logits, labels, k)?;
        if labels.len() != n {
            return Err(Error::LengthMismatch {
                what: "labels".into(),
                detail: format!("{} entries for {n} logit rows", labels.len()),
            });
        }
        Ok(CpuRows { logits, labels, k })
    }

    fn nll_sums(&self, rows: &CpuRows<'_>, b: f64) -> Result<NllSums> {
        let s = cpu::temperature_nll::nll_sums_f64(rows.logits, rows.labels, rows.k, b);
        Ok(NllSums {
            nll: s[0],
            grad: s[1],
            hess: s[2],
            rows: s[3],
        })
    }

    fn calibration(&self, rows: &CpuRows<'_>, t: f32) -> Result<CalibrationStats> {
        let parts = cpu::calibration::calibration(rows.logits, rows.labels, rows.k, t);
        Ok(CalibrationStats::from_partials(&parts))
    }

    fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
        check_rows(logits, &[], k)?;
        Ok(cpu::softmax::softmax(logits, k, t))
    }

    fn row_stats_pass(&self, rows: &CpuRows<'_>, t: f32, qhats: &[f32]) -> Result<RowStats> {
        Ok(cpu::row_stats::row_stats(
            rows.logits,
            rows.labels,
            rows.k,
            t,
            qhats,
        ))
    }

    fn tally(&self, rows: &CpuRows<'_>, plan: &TallyPlan<'_>) -> Result<PairCounts> {
        use rayon::prelude::*;
        check_t(plan.t)?;
        check_plan(plan)?;
        if rows.labels.len() != plan.labels.len() {
            return Err(Error::LengthMismatch {
                what: "tally labels".into(),
                detail: format!(
                    "{} labels for {} rows",
                    plan.labels.len(),
                    rows.labels.len()
                ),
            });
        }
        // The CPU kernel takes any number of thresholds in one pass.
        let q: Vec<f32> = plan.qhats.iter().map(|q| q.unwrap_or(INF_QHAT)).collect();
        let k = rows.k;
        // One row-statistics buffer per thread for the whole run: a fresh one per block
        // (or per rayon split) is a fresh mapping, and its page faults cost as much as
        // the counting.
        thread_local! {
            static BUF: std::cell::RefCell<RowStats> = std::cell::RefCell::new(RowStats::default());
        }
        let block = |buf: &mut RowStats, r: std::ops::Range<usize>| {
            let logits = &rows.logits[r.start * k..r.end * k];
            cpu::row_stats::row_stats_into(logits, &rows.labels[r.clone()], k, plan.t, &q, buf);
            let mut part = PairCounts::new();
            count_block(buf.block(0..r.len()), r.start, plan, &mut part);
            part
        };
        Ok(row_blocks(rows.labels.len())
            .map(|r| {
                BUF.with(|b| match b.try_borrow_mut() {
                    Ok(mut buf) => block(&mut buf, r),
                    Err(_) => block(&mut RowStats::default(), r),
                })
            })
            .reduce(PairCounts::new, |mut a, b| {
                merge_pairs(&mut a, b);
                a
            }))
    }

    // The CPU path sorts and selects with radix algorithms shaped for a CPU
    // (cpu::host_radix: an 11-bit MSD pass then buckets in parallel; a 16-bit histogram
    // then the few buckets asked for), not by emulating the GPU's tiles; the mirrors
    // (cpu::radix_sort, cpu::select_histogram) exist to check the GPU stage by stage.
    // The output of a stable sort and of a selection is unique, so both paths give the
    // same bits.
    fn sort_keys(&self, keys: &[f32]) -> Result<Vec<f32>> {
        cpu::radix_sort::check_no_nan("sort keys", keys)?;
        Ok(cpu::host_radix::sort_keys(keys))
    }

    fn sort_pairs(&self, keys: &[f32], payload: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
        cpu::radix_sort::check_no_nan("sort keys", keys)?;
        if payload.len() != keys.len() {
            return Err(Error::LengthMismatch {
                what: "sort payload".into(),
                detail: format!("{} payload entries for {} keys", payload.len(), keys.len()),
            });
        }
        if keys.len() > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{} keys: at most 2^32 - 1",
                keys.len()
            )));
        }
        Ok(cpu::host_radix::sort_pairs(keys, payload))
    }

    fn select(&self, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>> {
        cpu::radix_sort::check_no_nan("select keys", keys)?;
        if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > keys.len()) {
            return Err(Error::Invalid(format!(
                "rank {k} is outside 1..={} (the number of keys)",
                keys.len()
            )));
        }
        Ok(cpu::host_radix::select(keys, ks))
    }

    fn lac_scores(&self, rows: &CpuRows<'_>, t: f32) -> Result<Vec<f32>> {
        check_t(t)?;
        check_scores(cpu::lac_scores::lac_scores(
            rows.logits,
            rows.labels,
            rows.k,
            t,
        ))
    }

    fn pvalues(
        &self,
        rows: &CpuRows<'_>,
        t: f32,
        sorted: &[f32],
        qhats: &[f32],
        want_numerators: bool,
    ) -> Result<PValueRows> {
        check_t(t)?;
        check_sorted_scores(sorted)?;
        Ok(cpu::pvalues::pvalues(
            rows.logits,
            rows.k,
            t,
            false,
            sorted,
            qhats,
            want_numerators,
        ))
    }
}

#[cfg(feature = "gpu")]
pub use gpu_backend::{GpuBackend, GpuTally};

#[cfg(feature = "gpu")]
mod gpu_backend {
    use super::*;
    use crate::gpu::{self, DeviceRows, GpuContext};

    /// The GPU path over a [`GpuContext`].
    #[derive(Debug)]
    pub struct GpuBackend<'c> {
        /// The context every kernel runs on.
        pub ctx: &'c GpuContext,
    }

    impl<'c> GpuBackend<'c> {
        /// Wraps a context.
        pub fn new(ctx: &'c GpuContext) -> Self {
            GpuBackend { ctx }
        }
    }

    /// The GPU's running tally: on the device, or (more levels than one tally pass
    /// takes) the host count of downloaded row statistics.
    pub enum GpuTally {
        /// Words on the device.
        Device(gpu::tally::DeviceTally),
        /// Counted on the host.
        Host(PairCounts),
    }

    impl Backend for GpuBackend<'_> {
        type Rows<'a>
            = DeviceRows
        where
            Self: 'a;
        type TallyAcc = GpuTally;

        fn tally_start(&self, n_alpha: usize) -> Result<GpuTally> {
            if n_alpha > MAX_ALPHA_PER_PASS {
                return Ok(GpuTally::Host(PairCounts::new()));
            }
            Ok(GpuTally::Device(gpu::tally::DeviceTally::new(n_alpha)?))
        }

        fn tally_add(
            &self,
            acc: &mut GpuTally,
            rows: &DeviceRows,
            plan: &TallyPlan<'_>,
        ) -> Result<()> {
            check_t(plan.t)?;
            check_plan(plan)?;
            if rows.n != plan.labels.len() {
                return Err(Error::LengthMismatch {
                    what: "tally labels".into(),
                    detail: format!("{} labels for {} rows", plan.labels.len(), rows.n),
                });
            }
            match acc {
                GpuTally::Device(d) => d.add(self.ctx, rows, plan),
                GpuTally::Host(h) => {
                    merge_pairs(h, self.tally(rows, plan)?);
                    Ok(())
                }
            }
        }

        fn sorted_columns(&self, rows: &DeviceRows, t: f32) -> Result<[Vec<f32>; NSTAT]> {
            check_t(t)?;
            match gpu::row_stats::sorted_columns(self.ctx, rows, t)? {
                Some(cols) => Ok(cols),
                // A source larger than one binding or sort chunk: statistics downloaded, then each
                // column sorted by the backend.
                None => host_sorted_columns(self, rows, t),
            }
        }

        fn bootstrap_tally(
            &self,
            rows: &DeviceRows,
            plan: &BootstrapTallyPlan<'_>,
        ) -> Result<[PairRepCounts; MODES]> {
            check_bootstrap_plan(plan, rows.n)?;
            gpu::bootstrap::bootstrap_tally(self.ctx, rows, plan)
        }

        fn tally_finish(&self, acc: GpuTally) -> Result<PairCounts> {
            match acc {
                GpuTally::Device(d) => d.finish(self.ctx),
                GpuTally::Host(h) => Ok(h),
            }
        }

        fn device_name(&self) -> String {
            format!("gpu: {}", self.ctx.adapter_name())
        }

        fn prepare<'a>(
            &'a self,
            logits: &'a [f32],
            labels: &'a [i32],
            k: usize,
        ) -> Result<DeviceRows> {
            check_rows(logits, labels, k)?;
            self.ctx.upload_rows(logits, labels, k)
        }

        fn nll_sums(&self, rows: &DeviceRows, b: f64) -> Result<NllSums> {
            let parts = gpu::temperature_nll::temperature_nll(self.ctx, rows, b as f32)?;
            let mut s = NllSums::default();
            for p in parts {
                s.nll += p[0] as f64;
                s.grad += p[1] as f64;
                s.hess += p[2] as f64;
                s.rows += p[3] as f64;
            }
            Ok(s)
        }

        fn calibration(&self, rows: &DeviceRows, t: f32) -> Result<CalibrationStats> {
            let parts = gpu::calibration::calibration(self.ctx, rows, t)?;
            Ok(CalibrationStats::from_partials(&parts))
        }

        fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
            check_rows(logits, &[], k)?;
            gpu::softmax::softmax(self.ctx, logits, k, t)
        }

        fn row_stats_pass(&self, rows: &DeviceRows, t: f32, qhats: &[f32]) -> Result<RowStats> {
            gpu::row_stats::row_stats(self.ctx, rows, t, qhats)
        }

        fn sort_keys(&self, keys: &[f32]) -> Result<Vec<f32>> {
            gpu::radix_sort::sort_keys(self.ctx, keys)
        }

        fn sort_pairs(&self, keys: &[f32], payload: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
            gpu::radix_sort::sort_pairs(self.ctx, keys, payload)
        }

        fn select(&self, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>> {
            gpu::select_histogram::select(self.ctx, keys, ks)
        }

        fn lac_scores(&self, rows: &DeviceRows, t: f32) -> Result<Vec<f32>> {
            check_t(t)?;
            check_scores(gpu::lac_scores::lac_scores(self.ctx, rows, t)?)
        }

        fn pvalues(
            &self,
            rows: &DeviceRows,
            t: f32,
            sorted: &[f32],
            qhats: &[f32],
            want_numerators: bool,
        ) -> Result<PValueRows> {
            check_t(t)?;
            check_sorted_scores(sorted)?;
            gpu::pvalues::pvalues(self.ctx, rows, t, false, sorted, qhats, want_numerators)
        }
    }
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
