//! LAC conformity scores `1 - p_y` straight from logits at temperature T
//! (shaders/lac_scores.wgsl; CPU mirror: cpu::lac_scores).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::lac_scores::LacParams;

/// Scores of every row of `rows` at temperature `t`. A row with an unknown label gets
/// NaN (callers turn it into `Error::UnlabelledSource`).
pub fn lac_scores(ctx: &GpuContext, rows: &DeviceRows, t: f32) -> Result<Vec<f32>> {
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::BadTemperature(t as f64));
    }
    ctx.check_loops(
        "lac_scores",
        rows.k,
        crate::kernel::loop_budget::row_loops(rows.k, 0),
    )?;
    let pipeline = ctx.pipeline("lac_scores")?;
    let mut out = Vec::with_capacity(rows.n);
    for (_, n, logits, labels) in &rows.chunks {
        let scores = ctx.storage("lac-scores", 4 * *n as u64)?;
        let params = ctx.uniform(
            "lac-params",
            &LacParams {
                rows: *n as u32,
                k: rows.k as u32,
                t,
                _pad: 0,
            },
        );
        let mut batch = ctx.batch("lac_scores");
        batch.dispatch(
            &pipeline,
            &[
                params.as_entire_binding(),
                logits.as_entire_binding(),
                labels.as_entire_binding(),
                scores.as_entire_binding(),
            ],
            groups_for(*n as u64),
        )?;
        out.extend(batch.submit_and_read::<f32>(&scores, 0, *n)?);
    }
    Ok(out)
}
