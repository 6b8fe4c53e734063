//! CPU mirror of shaders/bootstrap.wgsl: every replicate's weighted counts of one chunk in
//! both modes (DESIGN.md 2.12). Replicates in groups of four (one Philox draw per row and
//! group, shared by the two modes) run in parallel. Row summaries come from the
//! vectorised row_stats loop, a block of rows at a time: once per chunk for a mode whose
//! replicates share one temperature (`raw`, a fixed T), else per block and replicate.

use rayon::prelude::*;

use super::common::row_max;
use super::row_stats::{row_stats, row_stats_into, RowStats};
use crate::kernel::bootstrap::{
    add_row, rep, weights4, BootstrapTallyPlan, PairRepCounts, RepCounts, MODES, REPS_PER_DRAW,
};
use crate::kernel::tally::SlotMap;

/// Rows per block: a block's logits and summaries stay in L1/L2.
const BLOCK: usize = 1024;

/// The replicate counts of `plan.labels.len()` rows of `k` logits each, per mode.
pub fn bootstrap_tally(
    logits: &[f32],
    k: usize,
    plan: &BootstrapTallyPlan<'_>,
) -> [PairRepCounts; MODES] {
    let n = plan.labels.len();
    let reps = plan.reps();
    if n == 0 || reps == 0 {
        return Default::default();
    }
    let mut slot_map = SlotMap::default();
    let slot_of = slot_map.assign(plan.groups, n);
    let slots = slot_map.keys.len();
    let slot = |i: usize| slot_of.as_ref().map_or(0, |s| s[i] as usize);
    // The prediction (argmax of the logits) does not depend on T.
    let yhat: Vec<u32> = logits
        .par_chunks(k)
        .map(|row| row_max(row).1 as u32)
        .collect();
    // Summaries at the one temperature of a mode whose replicates share it.
    let shared: Vec<Option<RowStats>> = plan
        .modes
        .iter()
        .map(|m| {
            let one_t = m.windows(2).all(|w| w[0].t.to_bits() == w[1].t.to_bits());
            one_t.then(|| row_stats(logits, plan.labels, k, m[0].t, &[]))
        })
        .collect();
    let draws = reps.div_ceil(REPS_PER_DRAW);
    // Per draw group: counts and sums indexed [(mode * slots + slot) * 4 + j].
    type Part = (Vec<[u64; rep::LEN]>, Vec<u128>);
    let parts: Vec<Part> = (0..draws)
        .into_par_iter()
        .map(|g| {
            let cells = MODES * slots * REPS_PER_DRAW;
            let mut counts = vec![[0u64; rep::LEN]; cells];
            let mut sums = vec![0u128; cells];
            let live = (reps - g * REPS_PER_DRAW).min(REPS_PER_DRAW);
            let mut block_stats: Vec<RowStats> = vec![RowStats::default(); REPS_PER_DRAW];
            let mut w = vec![[0u32; REPS_PER_DRAW]; BLOCK];
            for start in (0..n).step_by(BLOCK) {
                let end = (start + BLOCK).min(n);
                let mut any = [false; REPS_PER_DRAW];
                for (i, wi) in (start..end).zip(w.iter_mut()) {
                    *wi = weights4(
                        plan.seed,
                        plan.name_key,
                        plan.row_offset + i as u64,
                        g as u32,
                    );
                    for (a, &x) in any.iter_mut().zip(wi.iter()) {
                        *a |= x != 0;
                    }
                }
                for (m, reps_m) in plan.modes.iter().enumerate() {
                    for j in 0..live {
                        if !any[j] {
                            continue;
                        }
                        let rp = &reps_m[g * REPS_PER_DRAW + j];
                        let stats: &[[f32; 5]] = match &shared[m] {
                            Some(sh) => &sh.stats[start..end],
                            None => {
                                let bs = &mut block_stats[j];
                                row_stats_into(
                                    &logits[start * k..end * k],
                                    &plan.labels[start..end],
                                    k,
                                    rp.t,
                                    &[],
                                    bs,
                                );
                                &bs.stats
                            }
                        };
                        for (o, i) in (start..end).enumerate() {
                            let wj = w[o][j];
                            if wj == 0 {
                                continue;
                            }
                            let y = plan.labels[i];
                            let cell = (m * slots + slot(i)) * REPS_PER_DRAW + j;
                            add_row(
                                &mut counts[cell],
                                &mut sums[cell],
                                wj as u64,
                                &stats[o],
                                y >= 0,
                                yhat[i] as i32 == y,
                                rp,
                            );
                        }
                    }
                }
            }
            (counts, sums)
        })
        .collect();
    let mut out: [PairRepCounts; MODES] = Default::default();
    for (m, out_m) in out.iter_mut().enumerate() {
        for (sl, key) in slot_map.keys.iter().enumerate() {
            let mut rc = RepCounts::zeros(reps);
            for (g, (counts, sums)) in parts.iter().enumerate() {
                for j in 0..REPS_PER_DRAW {
                    let b = g * REPS_PER_DRAW + j;
                    if b < reps {
                        let cell = (m * slots + sl) * REPS_PER_DRAW + j;
                        rc.counts[b] = counts[cell];
                        rc.sum_p1[b] = sums[cell];
                    }
                }
            }
            out_m.insert(*key, rc);
        }
    }
    out
}
