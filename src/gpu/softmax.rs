//! Row-wise softmax at temperature T (shaders/softmax.wgsl; CPU mirror: cpu::softmax).

use super::buffers::groups_for;
use super::context::GpuContext;
use crate::error::Result;
use crate::kernel::softmax::SoftmaxParams;

/// Softmax of `logits` (`n * k`, row-major) at temperature `t`, streamed through the
/// device in binding-sized row chunks (any `n` that fits in host memory).
pub fn softmax(ctx: &GpuContext, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
    ctx.check_loops("softmax", k, crate::kernel::loop_budget::row_loops(k, 0))?;
    let n = logits.len() / k.max(1);
    let mut out = Vec::with_capacity(n * k);
    if n == 0 {
        return Ok(out);
    }
    let pipeline = ctx.pipeline("softmax")?;
    let per = ctx.rows_per_chunk(4 * k as u64)?.min(n);
    // One input and one output buffer, reused by every chunk.
    let input = ctx.storage("softmax-in", (per * k * 4) as u64)?;
    let output = ctx.storage("softmax-out", (per * k * 4) as u64)?;
    let mut start = 0;
    while start < n {
        let rows = per.min(n - start);
        ctx.write_buffer(&input, 0, &logits[start * k..(start + rows) * k]);
        let params = ctx.uniform(
            "softmax-params",
            &SoftmaxParams {
                rows: rows as u32,
                k: k as u32,
                t,
                _pad: 0,
            },
        );
        let mut batch = ctx.batch("softmax");
        batch.dispatch(
            &pipeline,
            &[
                params.as_entire_binding(),
                input.as_entire_binding(),
                output.as_entire_binding(),
            ],
            groups_for(rows as u64),
        )?;
        out.extend(batch.submit_and_read::<f32>(&output, 0, rows * k)?);
        start += rows;
    }
    Ok(out)
}
