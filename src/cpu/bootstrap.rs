//! CPU mirror of shaders/bootstrap.wgsl: every replicate's weighted counts of one chunk in
//! one mode (DESIGN.md 2.12). Replicates in groups of four (one Philox draw per row and
//! group) run in parallel; each row's summary is computed once when every replicate has
//! the same temperature (`raw`, a fixed T), else once per replicate that weighs it.

use rayon::prelude::*;

use super::row_stats::row_summary;
use crate::kernel::bootstrap::{
    add_row, rep, weights4, BootstrapTallyPlan, PairRepCounts, RepCounts, REPS_PER_DRAW,
};
use crate::kernel::tally::SlotMap;

/// The replicate counts of `plan.labels.len()` rows of `k` logits each.
pub fn bootstrap_tally(logits: &[f32], k: usize, plan: &BootstrapTallyPlan<'_>) -> PairRepCounts {
    let n = plan.labels.len();
    let reps = plan.reps.len();
    if n == 0 || reps == 0 {
        return PairRepCounts::new();
    }
    let mut slot_map = SlotMap::default();
    let slot_of = slot_map.assign(plan.groups, n);
    let slots = slot_map.keys.len();
    let slot = |i: usize| slot_of.as_ref().map_or(0, |s| s[i] as usize);
    let row = |i: usize| &logits[i * k..(i + 1) * k];
    let one_t = plan
        .reps
        .windows(2)
        .all(|w| w[0].t.to_bits() == w[1].t.to_bits());
    // (summary, yhat) per row at the shared temperature.
    let shared: Option<Vec<([f32; 5], u32)>> = (one_t && reps > 0).then(|| {
        (0..n)
            .into_par_iter()
            .map_init(Vec::new, |scratch, i| {
                let mut info = [0u32; 1];
                let s = row_summary(
                    row(i),
                    plan.labels[i],
                    plan.reps[0].t,
                    &[],
                    &mut info,
                    scratch,
                );
                (s, info[0])
            })
            .collect()
    });
    let draws = reps.div_ceil(REPS_PER_DRAW);
    let parts: Vec<(Vec<[u64; rep::LEN]>, Vec<u128>)> = (0..draws)
        .into_par_iter()
        .map(|g| {
            let mut counts = vec![[0u64; rep::LEN]; slots * REPS_PER_DRAW];
            let mut sums = vec![0u128; slots * REPS_PER_DRAW];
            let mut scratch = Vec::new();
            let live = (reps - g * REPS_PER_DRAW).min(REPS_PER_DRAW);
            for i in 0..n {
                let w = weights4(
                    plan.seed,
                    plan.name_key,
                    plan.row_offset + i as u64,
                    g as u32,
                );
                if w[..live].iter().all(|&w| w == 0) {
                    continue;
                }
                let y = plan.labels[i];
                let s = slot(i) * REPS_PER_DRAW;
                let mut cur: Option<(u32, [f32; 5], u32)> = None;
                for (j, &wj) in w.iter().enumerate().take(live) {
                    if wj == 0 {
                        continue;
                    }
                    let rp = &plan.reps[g * REPS_PER_DRAW + j];
                    let (stats, yhat) = match &shared {
                        Some(sh) => sh[i],
                        None => match cur {
                            Some((t, st, yh)) if t == rp.t.to_bits() => (st, yh),
                            _ => {
                                let mut info = [0u32; 1];
                                let st = row_summary(row(i), y, rp.t, &[], &mut info, &mut scratch);
                                cur = Some((rp.t.to_bits(), st, info[0]));
                                (st, info[0])
                            }
                        },
                    };
                    add_row(
                        &mut counts[s + j],
                        &mut sums[s + j],
                        wj as u64,
                        &stats,
                        y >= 0,
                        yhat as i32 == y,
                        rp,
                    );
                }
            }
            (counts, sums)
        })
        .collect();
    let mut out = PairRepCounts::new();
    for (sl, key) in slot_map.keys.iter().enumerate() {
        let mut rc = RepCounts::zeros(reps);
        for (g, (counts, sums)) in parts.iter().enumerate() {
            for j in 0..REPS_PER_DRAW {
                let b = g * REPS_PER_DRAW + j;
                if b < reps {
                    rc.counts[b] = counts[sl * REPS_PER_DRAW + j];
                    rc.sum_p1[b] = sums[sl * REPS_PER_DRAW + j];
                }
            }
        }
        out.insert(*key, rc);
    }
    out
}
