//! ECE bins and accuracy counts (shaders/calibration.wgsl; CPU mirror: cpu::calibration).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::Result;
use crate::kernel::calibration::{CalibrationParams, CalibrationPartial, NCOUNT, NSUM};

/// Per-workgroup calibration partials of every chunk, in order.
pub fn calibration(ctx: &GpuContext, rows: &DeviceRows, t: f32) -> Result<Vec<CalibrationPartial>> {
    let mut out = Vec::new();
    for (_, n, logits, labels) in &rows.chunks {
        let groups = groups_for(*n as u64);
        let counts = ctx.storage("calib-counts", groups * NCOUNT as u64 * 4)?;
        let sums = ctx.storage("calib-sums", groups * NSUM as u64 * 4)?;
        calibration_into(ctx, logits, labels, *n, rows.k, t, &counts, &sums)?;
        let c: Vec<u32> = ctx.readback(&counts, 0, groups as usize * NCOUNT)?;
        let s: Vec<f32> = ctx.readback(&sums, 0, groups as usize * NSUM)?;
        for (cc, ss) in c.chunks_exact(NCOUNT).zip(s.chunks_exact(NSUM)) {
            let mut p = CalibrationPartial::default();
            p.counts.copy_from_slice(cc);
            p.sums.copy_from_slice(ss);
            out.push(p);
        }
    }
    Ok(out)
}

/// One dispatch over `n` rows of one chunk (`logits`: `n * k` f32, `labels`: `n` i32),
/// submitted and waited for: `NCOUNT` u32 per workgroup into `counts` and `NSUM` f32 into
/// `sums` (room for at least `groups_for(n)` workgroups each; the kernel writes nothing
/// past them). Tests pass longer, poisoned buffers to see that padding workgroups write
/// nothing.
#[allow(clippy::too_many_arguments)]
pub fn calibration_into(
    ctx: &GpuContext,
    logits: &wgpu::Buffer,
    labels: &wgpu::Buffer,
    n: usize,
    k: usize,
    t: f32,
    counts: &wgpu::Buffer,
    sums: &wgpu::Buffer,
) -> Result<()> {
    ctx.check_loops(
        "calibration",
        k,
        crate::kernel::loop_budget::row_loops(k, 0),
    )?;
    let pipeline = ctx.pipeline("calibration")?;
    let params = ctx.uniform(
        "calib-params",
        &CalibrationParams {
            rows: n as u32,
            k: k as u32,
            t,
            _pad: 0,
        },
    );
    let mut batch = ctx.batch("calibration");
    batch.dispatch(
        &pipeline,
        &[
            params.as_entire_binding(),
            logits.as_entire_binding(),
            labels.as_entire_binding(),
            counts.as_entire_binding(),
            sums.as_entire_binding(),
        ],
        groups_for(n as u64),
    )?;
    batch.submit()
}
