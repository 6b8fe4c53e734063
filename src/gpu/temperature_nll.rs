//! Partial sums for the temperature fit (shaders/temperature_nll.wgsl; CPU mirror:
//! cpu::temperature_nll).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::Result;
use crate::kernel::temperature_nll::{NllParams, NPARTIAL};

/// Per-workgroup `[nll, grad, hess, labelled]` partials (f32) of every chunk, in order.
pub fn temperature_nll(ctx: &GpuContext, rows: &DeviceRows, b: f32) -> Result<Vec<[f32; 4]>> {
    let pipeline = ctx.pipeline("temperature_nll")?;
    let mut out = Vec::new();
    for (_, n, logits, labels) in &rows.chunks {
        let groups = groups_for(*n as u64);
        let partials = ctx.storage("nll-partials", groups * NPARTIAL as u64 * 4)?;
        let params = ctx.uniform(
            "nll-params",
            &NllParams {
                rows: *n as u32,
                k: rows.k as u32,
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
            groups,
        )?;
        let flat: Vec<f32> = batch.submit_and_read(&partials, 0, groups as usize * NPARTIAL)?;
        out.extend(
            flat.chunks_exact(NPARTIAL)
                .map(|c| [c[0], c[1], c[2], c[3]]),
        );
    }
    Ok(out)
}
