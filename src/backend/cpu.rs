//! The CPU path: the mirrors in `cpu/` run over row blocks in parallel (rayon).

use super::*;

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
        Ok(crate::cpu::bootstrap::bootstrap_tally(
            rows.logits,
            rows.k,
            plan,
        ))
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
        let s = crate::cpu::temperature_nll::nll_sums_f64(rows.logits, rows.labels, rows.k, b);
        Ok(NllSums {
            nll: s[0],
            grad: s[1],
            hess: s[2],
            rows: s[3],
        })
    }

    fn calibration(&self, rows: &CpuRows<'_>, t: f32) -> Result<CalibrationStats> {
        let parts = crate::cpu::calibration::calibration(rows.logits, rows.labels, rows.k, t);
        Ok(CalibrationStats::from_partials(&parts))
    }

    fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
        check_rows(logits, &[], k)?;
        Ok(crate::cpu::softmax::softmax(logits, k, t))
    }

    fn row_stats_pass(&self, rows: &CpuRows<'_>, t: f32, qhats: &[f32]) -> Result<RowStats> {
        Ok(crate::cpu::row_stats::row_stats(
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
            crate::cpu::row_stats::row_stats_into(
                logits,
                &rows.labels[r.clone()],
                k,
                plan.t,
                &q,
                buf,
            );
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
        crate::cpu::radix_sort::check_no_nan("sort keys", keys)?;
        Ok(crate::cpu::host_radix::sort_keys(keys))
    }

    fn sort_pairs(&self, keys: &[f32], payload: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
        crate::cpu::radix_sort::check_no_nan("sort keys", keys)?;
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
        Ok(crate::cpu::host_radix::sort_pairs(keys, payload))
    }

    fn select(&self, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>> {
        crate::cpu::radix_sort::check_no_nan("select keys", keys)?;
        if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > keys.len()) {
            return Err(Error::Invalid(format!(
                "rank {k} is outside 1..={} (the number of keys)",
                keys.len()
            )));
        }
        Ok(crate::cpu::host_radix::select(keys, ks))
    }

    fn lac_scores(&self, rows: &CpuRows<'_>, t: f32) -> Result<Vec<f32>> {
        check_t(t)?;
        check_scores(crate::cpu::lac_scores::lac_scores(
            rows.logits,
            rows.labels,
            rows.k,
            t,
        ))
    }

    fn score_ranks(&self, probs: &[f32], k: usize) -> Result<Vec<u32>> {
        crate::kernel::score_ranks::check_probabilities(probs, k)?;
        Ok(crate::cpu::score_ranks::score_ranks(probs, k))
    }

    fn cot_two_class(
        &self,
        probs: &[f32],
        whole: u64,
    ) -> Result<crate::kernel::cot_two_class::TwoClassSums> {
        use crate::cpu::cot_two_class::{histogram, sums};
        crate::kernel::score_ranks::check_probabilities(probs, 2)?;
        crate::kernel::cot_two_class::two_class_sums(
            (probs.len() / 2) as u64,
            whole,
            |shift, prefixes| Ok(histogram(probs, shift, prefixes)),
            |boundary| Ok(sums(probs, boundary)),
        )
    }

    fn cot_two_class_pass(
        &self,
        probs: &[f32],
        pass: crate::kernel::cot_two_class::CotPass<'_>,
    ) -> Result<crate::kernel::cot_two_class::CotPassOutput> {
        crate::kernel::score_ranks::check_probabilities(probs, 2)?;
        if let crate::kernel::cot_two_class::CotPass::Histogram { prefixes, .. } = pass {
            if prefixes.len() > crate::kernel::cot_two_class::MAXP {
                return Err(Error::Invalid(format!(
                    "COT: {} prefixes in one pass (at most {})",
                    prefixes.len(),
                    crate::kernel::cot_two_class::MAXP
                )));
            }
        }
        Ok(crate::cpu::cot_two_class::pass(probs, pass))
    }

    fn cot_collect(
        &self,
        probs: &[f32],
        point: &crate::kernel::cot_collect::CollectPoint,
    ) -> Result<crate::kernel::cot_collect::CollectSums> {
        crate::kernel::score_ranks::check_probabilities(probs, point.k())?;
        Ok(crate::cpu::cot_collect::collect(probs, point))
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
        Ok(crate::cpu::pvalues::pvalues(
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
