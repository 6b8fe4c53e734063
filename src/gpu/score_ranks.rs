//! The rank words of each row's K probabilities (shaders/score_ranks.wgsl; CPU mirror:
//! cpu::score_ranks; contract: kernel::score_ranks).

use super::buffers::groups_for;
use super::context::GpuContext;
use crate::error::Result;
use crate::kernel::score_ranks::{check_probabilities, rank_loops, ScoreRankParams, RANK_WORDS};

/// The words of every row of `probs` (`rows x k`, finite in `[0, 1]`): `rows x k x
/// RANK_WORDS`, row-major, streamed through the device in binding-sized row chunks with
/// its buffers built once. Bad probabilities are an error naming the row and class.
pub fn score_ranks(ctx: &GpuContext, probs: &[f32], k: usize) -> Result<Vec<u32>> {
    check_probabilities(probs, k)?;
    let n = probs.len() / k;
    let mut out = Vec::with_capacity(probs.len() * RANK_WORDS);
    if n == 0 {
        return Ok(out);
    }
    ctx.check_loops("score_ranks", k, rank_loops(k))?;
    let pipeline = ctx.pipeline("score_ranks")?;
    // The ranks are the widest buffer: RANK_WORDS words a class.
    let per = ctx.rows_per_chunk((4 * RANK_WORDS * k) as u64)?.min(n);
    let input = ctx.storage("score-ranks-probs", (per * k * 4) as u64)?;
    let order = ctx.storage("score-ranks-order", (per * k * 4) as u64)?;
    let ranks = ctx.storage("score-ranks-out", (per * k * RANK_WORDS * 4) as u64)?;
    let mut start = 0;
    while start < n {
        let rows = per.min(n - start);
        ctx.write_buffer(&input, 0, &probs[start * k..(start + rows) * k]);
        let params = ctx.uniform(
            "score-ranks-params",
            &ScoreRankParams {
                rows: rows as u32,
                k: k as u32,
                _pad0: 0,
                _pad1: 0,
            },
        );
        let mut batch = ctx.batch("score_ranks");
        batch.dispatch(
            &pipeline,
            &[
                params.as_entire_binding(),
                input.as_entire_binding(),
                order.as_entire_binding(),
                ranks.as_entire_binding(),
            ],
            groups_for(rows as u64),
        )?;
        out.extend(batch.submit_and_read::<u32>(&ranks, 0, rows * k * RANK_WORDS)?);
        start += rows;
    }
    Ok(out)
}
