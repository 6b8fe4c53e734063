//! Partial sums for the temperature fit (shaders/temperature_nll.wgsl; CPU mirror:
//! cpu::temperature_nll).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::Result;
use crate::kernel::temperature_nll::{NllParams, NPARTIAL};

/// Per-workgroup `[nll, grad, hess, labelled]` partials (f32) of every chunk, in order.
pub fn temperature_nll(ctx: &GpuContext, rows: &DeviceRows, b: f32) -> Result<Vec<[f32; 4]>> {
    let mut out = Vec::new();
    for (_, n, logits, labels) in &rows.chunks {
        let groups = groups_for(*n as u64) as usize;
        let partials = ctx.storage("nll-partials", (groups * NPARTIAL * 4) as u64)?;
        let flat = temperature_nll_into(
            ctx,
            logits,
            labels,
            *n,
            rows.k,
            b,
            &partials,
            groups * NPARTIAL,
        )?;
        out.extend(
            flat.chunks_exact(NPARTIAL)
                .map(|c| [c[0], c[1], c[2], c[3]]),
        );
    }
    Ok(out)
}

/// One dispatch over `n` rows of one chunk (`logits`: `n * k` f32, `labels`: `n` i32)
/// writing `NPARTIAL` f32 per workgroup into `partials` (at least
/// `groups_for(n) * NPARTIAL` of them; the kernel writes nothing past them), then reads
/// back the first `read` f32 of `partials` in the same submission. Tests pass a longer,
/// poisoned buffer and read it all, to see that padding workgroups write nothing.
#[allow(clippy::too_many_arguments)]
pub fn temperature_nll_into(
    ctx: &GpuContext,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    n: usize,
    k: usize,
    b: f32,
    partials: &wgpu::Buffer,
    read: usize,
) -> Result<Vec<f32>> {
    ctx.check_loops(
        "temperature_nll",
        k,
        crate::kernel::loop_budget::row_loops(k, 0),
    )?;
    let pipeline = ctx.pipeline("temperature_nll")?;
    let params = ctx.uniform(
        "nll-params",
        &NllParams {
            rows: n as u32,
            k: k as u32,
            b,
            _pad: 0,
        },
    );
    let mut batch = ctx.batch("temperature_nll");
    batch.dispatch(
        &pipeline,
        &[
            params.as_entire_binding(),
            logits.as_entire_binding(),
            labels.as_entire_binding(),
            partials.as_entire_binding(),
        ],
        groups_for(n as u64),
    )?;
    batch.submit_and_read(partials, 0, read)
}
