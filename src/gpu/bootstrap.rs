//! The bootstrap tally on the device (shaders/bootstrap.wgsl; contract, weights and
//! decoding: kernel::bootstrap). One dispatch per at most [`DEVICE_ROWS`] rows covers every
//! replicate of both modes (the grid is row workgroups x draw groups); its words come back
//! in the same submission and are added on the host in u64/u128, so counts stay exact at
//! any size.

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::bootstrap::{
    add_device_words, plan_words, BootstrapParams, BootstrapTallyPlan, PairRepCounts, RepCounts,
    DEVICE_ROWS, MODES, REPS_PER_DRAW, REP_WORDS,
};
use crate::kernel::row_stats::pipeline_constants;
use crate::kernel::tally::SlotMap;

/// Every replicate's counts of `rows` (a prepared chunk) under `plan`, per mode.
pub fn bootstrap_tally(
    ctx: &GpuContext,
    rows: &DeviceRows,
    plan: &BootstrapTallyPlan<'_>,
) -> Result<[PairRepCounts; MODES]> {
    let reps = plan.reps();
    let mut out: [PairRepCounts; MODES] = Default::default();
    if rows.n == 0 || reps == 0 {
        return Ok(out);
    }
    let mut slot_map = SlotMap::default();
    let slot_ids = slot_map.assign(plan.groups, rows.n);
    let slots = slot_map.keys.len();
    let word_count = MODES * slots * reps * REP_WORDS;
    let bytes = word_count as u64 * 4;
    if bytes > ctx.limits().max_binding_bytes {
        return Err(Error::Invalid(format!(
            "{reps} bootstrap replicates over {slots} groups need {bytes} bytes of device \
             counters, more than one binding holds: use fewer replicates or tally by group"
        )));
    }
    let loops = crate::kernel::loop_budget::bootstrap_row_loops(rows.k);
    ctx.check_loops("bootstrap", rows.k, loops)?;
    let pipeline = ctx.specialized_pipeline("bootstrap", &pipeline_constants(rows.k, 0))?;
    let plans = ctx.upload(
        "bootstrap-plans",
        &plan_words(plan.modes.iter().flat_map(|m| m.iter())),
    )?;
    let qhats = ctx.storage("bootstrap-qhats", 4)?;
    // (mode, slot) major, as the words.
    let words = ctx.zeroed("bootstrap-words", bytes)?;
    let mut totals: Vec<RepCounts> = (0..MODES * slots).map(|_| RepCounts::zeros(reps)).collect();
    let draws = reps.div_ceil(REPS_PER_DRAW) as u64;
    let slot_buffers = match &slot_ids {
        Some(ids) => Some(rows.slot_buffers(ctx, "slot-ids", ids)?),
        None => None,
    };
    for (c, (start, n, logits, labels)) in rows.chunks.iter().enumerate() {
        let slot_buf = match &slot_buffers {
            Some(b) => b[c].clone(),
            None => ctx.storage("bootstrap-slots", 4)?,
        };
        let mut first = 0usize;
        while first < *n {
            let m = (*n - first).min(DEVICE_ROWS);
            let row_wgs = groups_for(m as u64);
            let groups = row_wgs * draws;
            let offset = plan.row_offset + (*start + first) as u64;
            let params = ctx.uniform(
                "bootstrap-params",
                &BootstrapParams {
                    rows: m as u32,
                    k: rows.k as u32,
                    t: 1.0,
                    n_alpha: 0,
                    reps: reps as u32,
                    row_wgs: row_wgs as u32,
                    num_wgs: u32::try_from(groups).map_err(|_| {
                        Error::Invalid(format!(
                            "{reps} bootstrap replicates make {groups} workgroups per dispatch"
                        ))
                    })?,
                    one_slot: slot_ids.is_none() as u32,
                    row_offset_lo: offset as u32,
                    row_offset_hi: (offset >> 32) as u32,
                    seed_lo: plan.seed as u32,
                    seed_hi: (plan.seed >> 32) as u32,
                    name_key: plan.name_key,
                    slots: slots as u32,
                    first: first as u32,
                    _pad: 0,
                },
            );
            // The accumulator, built once, starts every dispatch at 0 (never a poisoned
            // test buffer).
            let mut batch = ctx.batch("bootstrap");
            batch.clear(&words);
            batch.dispatch(
                &pipeline,
                &[
                    params.as_entire_binding(),
                    logits.as_entire_binding(),
                    labels.as_entire_binding(),
                    qhats.as_entire_binding(),
                    slot_buf.as_entire_binding(),
                    plans.as_entire_binding(),
                    words.as_entire_binding(),
                ],
                groups,
            )?;
            let all: Vec<u32> = batch.submit_and_read(&words, 0, word_count)?;
            for (total, w) in totals.iter_mut().zip(all.chunks_exact(reps * REP_WORDS)) {
                add_device_words(w, total);
            }
            first += m;
        }
    }
    for (m, out_m) in out.iter_mut().enumerate() {
        for (key, rc) in slot_map
            .keys
            .iter()
            .zip(&totals[m * slots..(m + 1) * slots])
        {
            out_m.insert(*key, rc.clone());
        }
    }
    Ok(out)
}
