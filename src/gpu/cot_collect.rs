//! COT's collect pass at K > 2 on the device (shaders/cot_collect.wgsl; CPU mirror:
//! cpu::cot_collect; contract: kernel::cot_collect). The rows go up in binding-sized
//! chunks through buffers built once a call; each chunk is one submission of the two
//! dispatches (the pass, then the slacks' low words) and one readback of the
//! accumulators (`4 + 4K + 2K^2` words), then one of its free list (4 bytes a free row):
//! nothing else per row comes down.

use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::cot_collect::{
    collect_loops, word, CollectParams, CollectPoint, CollectSums, IPT, MAX_DEVICE_CLASSES,
    MODE_COLLECT, MODE_SLACK_LOW,
};
use crate::kernel::score_ranks::check_probabilities;
use crate::kernel::WG;

/// The collect pass at `point` over `probs` (`rows x k`, finite in `[0, 1]`, else an
/// error naming the row and class; `2 <= k <= MAX_DEVICE_CLASSES`), free rows indexed
/// from 0: the mirror's sums bit for bit.
pub fn collect(ctx: &GpuContext, probs: &[f32], point: &CollectPoint) -> Result<CollectSums> {
    let k = point.k();
    if !(2..=MAX_DEVICE_CLASSES).contains(&k) {
        return Err(Error::Invalid(format!(
            "COT collect pass: K = {k} on the device (it takes 2 to {MAX_DEVICE_CLASSES} classes)"
        )));
    }
    check_probabilities(probs, k)?;
    let n = probs.len() / k;
    let mut sums = CollectSums::empty(k);
    if n == 0 {
        return Ok(sums);
    }
    let ipt = IPT.min(ctx.limits().max_tile_blocks).max(1);
    ctx.check_loops("cot_collect", k, collect_loops(k, ipt))?;
    let pipeline = ctx.pipeline("cot_collect")?;
    let per = ctx.rows_per_chunk((4 * k) as u64)?.min(n);
    let words = word::count(k);
    let input = ctx.storage("cot-collect-probs", (per * k * 4) as u64)?;
    let classes = ctx.upload("cot-collect-classes", &point.words())?;
    let out = ctx.zeroed("cot-collect-out", (words * 4) as u64)?;
    // Written only where a row is free: its unwritten words are never read.
    let free = ctx.storage("cot-collect-free", (per * 4) as u64)?;
    let mut start = 0;
    while start < n {
        let rows = per.min(n - start);
        ctx.write_buffer(&input, 0, &probs[start * k..(start + rows) * k]);
        let mut batch = ctx.batch("cot_collect");
        if start > 0 {
            batch.clear(&out);
        }
        for mode in [MODE_COLLECT, MODE_SLACK_LOW] {
            let params = ctx.uniform(
                "cot-collect-params",
                &CollectParams {
                    rows: rows as u32,
                    k: k as u32,
                    ipt,
                    mode,
                },
            );
            batch.dispatch(
                &pipeline,
                &[
                    params.as_entire_binding(),
                    input.as_entire_binding(),
                    classes.as_entire_binding(),
                    out.as_entire_binding(),
                    free.as_entire_binding(),
                ],
                (rows as u64).div_ceil(ipt as u64 * WG as u64),
            )?;
        }
        let w: Vec<u32> = batch.submit_and_read(&out, 0, words)?;
        let count = (w[word::FREE_COUNT] as usize).min(rows);
        let free_rows: Vec<u32> = ctx.readback(&free, 0, count)?;
        let mut chunk = CollectSums::from_words(k, rows as u64, &w, free_rows)?;
        for i in &mut chunk.free {
            *i += start as u64;
        }
        sums.merge(&chunk);
        start += rows;
    }
    Ok(sums)
}
