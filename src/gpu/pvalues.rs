//! Conformal p-values of a target set against sorted calibration scores
//! (shaders/pvalues.wgsl; CPU mirror: cpu::pvalues).

use super::buffers::{groups_for, DeviceRows};
use super::context::GpuContext;
use super::radix_sort::upload_chunks;
use crate::error::{Error, Result};
use crate::kernel::pvalues::{PValueRows, PvalueParams};

/// P-value summaries of every row of `rows` (logits at temperature `t`, or probabilities
/// when `probs`) against the ascending calibration scores `sorted`, set sizes at each of
/// `qhats` (+inf allowed), and every numerator when `want_numerators`.
pub fn pvalues(
    ctx: &GpuContext,
    rows: &DeviceRows,
    t: f32,
    probs: bool,
    sorted: &[f32],
    qhats: &[f32],
    want_numerators: bool,
) -> Result<PValueRows> {
    if !(probs || (t.is_finite() && t > 0.0)) {
        return Err(Error::BadTemperature(t as f64));
    }
    if sorted.len() >= u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{} calibration scores: at most 2^32 - 2",
            sorted.len()
        )));
    }
    let k = rows.k;
    let a = qhats.len();
    let stride = 3 + a;
    let mut res = PValueRows {
        n_cal: sorted.len(),
        nalpha: a,
        ..Default::default()
    };
    let mut nums = Vec::new();
    if rows.n == 0 {
        res.numerators = want_numerators.then(Vec::new);
        return Ok(res);
    }
    let loops = crate::kernel::loop_budget::pvalue_row_loops(k, a, sorted.len());
    ctx.check_loops("pvalues", k, loops)?;
    let pipeline = ctx.pipeline("pvalues")?;
    let chunk = (ctx.limits().max_binding_bytes / 4) as usize;
    let bits: &[u32] = bytemuck::cast_slice(sorted);
    let mut score_bufs: Vec<(wgpu::Buffer, usize)> = upload_chunks(ctx, "cal-scores", bits, chunk)?
        .into_iter()
        .zip(bits.chunks(chunk.max(1)).map(|c| c.len()))
        .collect();
    if score_bufs.is_empty() {
        score_bufs.push((ctx.storage("cal-scores", 4)?, 0));
    }
    let qbuf = ctx.upload("qhats", qhats)?;
    // Sub-chunks of rows whose counts and outputs fit one binding.
    let per = ctx.rows_per_chunk(4 * k.max(stride) as u64)?;
    let counts = ctx.storage("pvalue-counts", (per.min(rows.n) * k * 4) as u64)?;
    let out = ctx.storage("pvalue-out", (per.min(rows.n) * stride * 4) as u64)?;
    for (_, n, logits, _) in &rows.chunks {
        let mut r0 = 0;
        while r0 < *n {
            let m = per.min(n - r0);
            let mut batch = ctx.batch("pvalues");
            let last_j = score_bufs.len() - 1;
            for (j, (sb, len)) in score_bufs.iter().enumerate() {
                let params = ctx.uniform(
                    "pvalue-params",
                    &PvalueParams {
                        rows: m as u32,
                        row0: r0 as u32,
                        k: k as u32,
                        t,
                        n_chunk: *len as u32,
                        nalpha: a as u32,
                        first: (j == 0) as u32,
                        last: (j == last_j) as u32,
                        want_counts: want_numerators as u32,
                        probs: probs as u32,
                        ..Default::default()
                    },
                );
                batch.dispatch(
                    &pipeline,
                    &[
                        params.as_entire_binding(),
                        logits.as_entire_binding(),
                        sb.as_entire_binding(),
                        qbuf.as_entire_binding(),
                        counts.as_entire_binding(),
                        out.as_entire_binding(),
                    ],
                    groups_for(m as u64),
                )?;
            }
            let o: Vec<u32> = batch.submit_and_read(&out, 0, m * stride)?;
            for row in o.chunks_exact(stride) {
                res.yhat.push(row[0]);
                res.top.push(row[1]);
                res.second.push(row[2]);
                res.set_sizes.extend_from_slice(&row[3..]);
            }
            if want_numerators {
                let c: Vec<u32> = ctx.readback(&counts, 0, m * k)?;
                nums.extend(c.into_iter().map(|x| x + 1));
            }
            r0 += m;
        }
    }
    if want_numerators {
        res.numerators = Some(nums);
    }
    Ok(res)
}
