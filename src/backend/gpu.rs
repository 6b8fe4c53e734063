//! The GPU path: every kernel through one [`GpuContext`].

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

    fn tally_add(&self, acc: &mut GpuTally, rows: &DeviceRows, plan: &TallyPlan<'_>) -> Result<()> {
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

    fn prepare<'a>(&'a self, logits: &'a [f32], labels: &'a [i32], k: usize) -> Result<DeviceRows> {
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

    fn score_ranks(&self, probs: &[f32], k: usize) -> Result<Vec<u32>> {
        // A row past a software adapter's loop cap: the CPU mirror's words, which are the
        // same integers (the other kernels refuse instead: their outputs differ by device).
        let limit = self.ctx.loop_limit();
        if limit.is_some_and(|l| crate::kernel::score_ranks::rank_loops(k) > l) {
            crate::kernel::score_ranks::check_probabilities(probs, k)?;
            return Ok(crate::cpu::score_ranks::score_ranks(probs, k));
        }
        gpu::score_ranks::score_ranks(self.ctx, probs, k)
    }

    fn cot_two_class(
        &self,
        probs: &[f32],
        whole: u64,
    ) -> Result<crate::kernel::cot_two_class::TwoClassSums> {
        gpu::cot_two_class::two_class_sums(self.ctx, probs, whole)
    }

    fn cot_two_class_pass(
        &self,
        probs: &[f32],
        pass: crate::kernel::cot_two_class::CotPass<'_>,
    ) -> Result<crate::kernel::cot_two_class::CotPassOutput> {
        gpu::cot_two_class::one_pass(self.ctx, probs, pass)
    }

    fn cot_collect(
        &self,
        probs: &[f32],
        point: &crate::kernel::cot_collect::CollectPoint,
    ) -> Result<crate::kernel::cot_collect::CollectSums> {
        if point.k() > crate::kernel::cot_collect::MAX_DEVICE_CLASSES {
            // Wider than the kernel's workgroup sums: the host mirror (the same sums).
            crate::kernel::score_ranks::check_probabilities(probs, point.k())?;
            return Ok(crate::cpu::cot_collect::collect(probs, point));
        }
        gpu::cot_collect::collect(self.ctx, probs, point)
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
