//! Per-row summaries (shaders/row_stats.wgsl; CPU mirror: cpu::row_stats).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::row_stats::{
    pipeline_constants, RowStats, RowStatsParams, MAX_ALPHA_PER_PASS, NSTAT,
};

/// Row summaries of every chunk of `rows`, in row order.
pub fn row_stats(ctx: &GpuContext, rows: &DeviceRows, t: f32, qhats: &[f32]) -> Result<RowStats> {
    if qhats.len() > MAX_ALPHA_PER_PASS {
        return Err(Error::Invalid(format!(
            "row_stats takes at most {MAX_ALPHA_PER_PASS} thresholds per pass, got {}",
            qhats.len()
        )));
    }
    let pipeline =
        ctx.specialized_pipeline("row_stats", &pipeline_constants(rows.k, qhats.len()))?;
    let q = ctx.upload("qhats", qhats)?;
    let stride = 1 + qhats.len();
    let mut out = RowStats {
        n_alpha: qhats.len(),
        ..Default::default()
    };
    for (_, n, logits, labels) in &rows.chunks {
        let mut batch = ctx.batch("row_stats");
        let (stats, info) = record(
            ctx,
            &mut batch,
            &pipeline,
            (*n, rows.k, t),
            (&q, qhats.len()),
            (logits, labels),
        )?;
        batch.submit()?;
        let s: Vec<f32> = ctx.readback(&stats, 0, *n * NSTAT)?;
        // Planar on the device (column c at c * n): back to one record per row.
        out.stats
            .extend((0..*n).map(|r| std::array::from_fn(|c| s[c * *n + r])));
        out.info.extend(ctx.readback::<u32>(&info, 0, *n * stride)?);
    }
    Ok(out)
}

/// The five statistics columns of `rows` at temperature `t` (see [`crate::kernel::row_stats::col`]),
/// each sorted ascending by `total_cmp`, computed and sorted on the device: only the
/// sorted columns come back (20 bytes a row). `rows` must be one binding chunk that one
/// sort chunk holds; `None` when it is not (the caller sorts on the host instead).
pub fn sorted_columns(
    ctx: &GpuContext,
    rows: &DeviceRows,
    t: f32,
) -> Result<Option<[Vec<f32>; NSTAT]>> {
    let [(_, n, logits, labels)] = rows.chunks.as_slice() else {
        return Ok(None);
    };
    let n = *n;
    if n > super::radix_sort::plan(ctx).chunk {
        return Ok(None);
    }
    let pipeline = ctx.specialized_pipeline("row_stats", &pipeline_constants(rows.k, 0))?;
    let q = ctx.upload("qhats", &[0f32])?;
    let mut batch = ctx.batch("row_stats");
    let (stats, _info) = record(
        ctx,
        &mut batch,
        &pipeline,
        (n, rows.k, t),
        (&q, 0),
        (logits, labels),
    )?;
    // Each column copied into its own buffer on the device (same submission).
    let bytes = n as u64 * 4;
    let columns: Vec<wgpu::Buffer> = (0..NSTAT)
        .map(|c| {
            let col = ctx.storage("row-stats-column", bytes)?;
            batch.copy(&stats, c as u64 * bytes, &col, bytes);
            Ok(col)
        })
        .collect::<Result<_>>()?;
    batch.submit()?;
    let mut out: [Vec<f32>; NSTAT] = Default::default();
    for (o, col) in out.iter_mut().zip(columns) {
        *o = super::radix_sort::sort_resident(ctx, col, n)?;
    }
    Ok(Some(out))
}

/// Records one row_stats dispatch over `n` rows of `k` classes at temperature `t` into
/// `batch`, against `n_alpha` thresholds in `qhats`; returns its fresh (planar) `stats`
/// and `info` output buffers.
fn record(
    ctx: &GpuContext,
    batch: &mut super::buffers::Batch<'_>,
    pipeline: &wgpu::ComputePipeline,
    (n, k, t): (usize, usize, f32),
    (qhats, n_alpha): (&wgpu::Buffer, usize),
    (logits, labels): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    ctx.check_loops(
        "row_stats",
        k,
        crate::kernel::loop_budget::row_loops(k, n_alpha),
    )?;
    let stats = ctx.storage("row-stats", (n * NSTAT * 4) as u64)?;
    let info = ctx.storage("row-info", (n * (1 + n_alpha)) as u64 * 4)?;
    let params = ctx.uniform(
        "row-stats-params",
        &RowStatsParams {
            rows: n as u32,
            k: k as u32,
            t,
            n_alpha: n_alpha as u32,
        },
    );
    batch.dispatch(
        pipeline,
        &[
            params.as_entire_binding(),
            logits.as_entire_binding(),
            labels.as_entire_binding(),
            qhats.as_entire_binding(),
            stats.as_entire_binding(),
            info.as_entire_binding(),
        ],
        groups_for(n as u64),
    )?;
    Ok((stats, info))
}
