//! Per-row summaries (shaders/row_stats.wgsl; CPU mirror: cpu::row_stats).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::row_stats::{RowStats, RowStatsParams, MAX_ALPHA_PER_PASS, NSTAT};

/// Row summaries of every chunk of `rows`, in row order.
pub fn row_stats(ctx: &GpuContext, rows: &DeviceRows, t: f32, qhats: &[f32]) -> Result<RowStats> {
    if qhats.len() > MAX_ALPHA_PER_PASS {
        return Err(Error::Invalid(format!(
            "row_stats takes at most {MAX_ALPHA_PER_PASS} thresholds per pass, got {}",
            qhats.len()
        )));
    }
    let pipeline = ctx.pipeline("row_stats")?;
    let q = ctx.upload("qhats", qhats)?;
    let stride = 1 + qhats.len();
    let mut out = RowStats {
        n_alpha: qhats.len(),
        ..Default::default()
    };
    for (_, n, logits, labels) in &rows.chunks {
        let stats = ctx.storage("row-stats", (*n * NSTAT * 4) as u64)?;
        let info = ctx.storage("row-info", (*n * stride) as u64 * 4)?;
        let params = ctx.uniform(
            "row-stats-params",
            &RowStatsParams {
                rows: *n as u32,
                k: rows.k as u32,
                t,
                n_alpha: qhats.len() as u32,
            },
        );
        let mut batch = ctx.batch("row_stats");
        batch.dispatch(
            &pipeline,
            &[
                params.as_entire_binding(),
                logits.as_entire_binding(),
                labels.as_entire_binding(),
                q.as_entire_binding(),
                stats.as_entire_binding(),
                info.as_entire_binding(),
            ],
            groups_for(*n as u64),
        )?;
        batch.submit()?;
        let s: Vec<f32> = ctx.readback(&stats, 0, *n * NSTAT)?;
        out.stats.extend(
            s.chunks_exact(NSTAT)
                .map(|c| [c[0], c[1], c[2], c[3], c[4]]),
        );
        out.info.extend(ctx.readback::<u32>(&info, 0, *n * stride)?);
    }
    Ok(out)
}
