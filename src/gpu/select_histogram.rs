//! Exact order statistics by MSD radix select (shaders/select_histogram.wgsl; CPU mirror:
//! cpu::select_histogram). Four passes of 8-bit digits over the sortable keys, most
//! significant first: each pass counts, for every distinct prefix still in play, the
//! digits of the keys under it; the host walks each histogram to fix the requested rank's
//! digit. All ranks share each pass (up to 16 prefixes per dispatch, more in extra
//! dispatches). The keys stay on the device (one buffer per binding-sized chunk); each
//! pass reads back only `prefixes * 256` counters. Histograms are sums over keys, so the
//! chunks add into one histogram, and shards elsewhere merge the same way.

use super::context::GpuContext;
use super::radix_sort::upload_chunks;
use crate::error::{Error, Result};
use crate::kernel::common::sortable_to_f32;
use crate::kernel::radix_sort::{check_no_nan, DIGITS};
use crate::kernel::select_histogram::{distinct_prefixes, narrow, Narrow, SelectParams, IPT, MAXP};
use crate::kernel::WG;

/// Keys resident on the device for several selection passes.
pub struct DeviceKeys {
    bufs: Vec<(wgpu::Buffer, usize)>,
    n: usize,
}

/// Checks `keys` (no NaN, fewer than 2^32) and uploads them in binding-sized chunks.
pub fn upload_keys(ctx: &GpuContext, keys: &[f32]) -> Result<DeviceKeys> {
    check_no_nan("select keys", keys)?;
    if keys.len() > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{} keys: the GPU select handles at most 2^32 - 1",
            keys.len()
        )));
    }
    let chunk = (ctx.limits().max_binding_bytes / 4) as usize;
    let bits: &[u32] = bytemuck::cast_slice(keys);
    let bufs = upload_chunks(ctx, "select-keys", bits, chunk)?;
    let lens = bits.chunks(chunk.max(1)).map(|c| c.len());
    Ok(DeviceKeys {
        bufs: bufs.into_iter().zip(lens).collect(),
        n: keys.len(),
    })
}

/// `WG`-wide sub-blocks of keys per workgroup: [`IPT`], or fewer under
/// [`GpuOptions::max_tile_blocks`](super::GpuOptions).
pub fn tile_blocks(ctx: &GpuContext) -> u32 {
    IPT.min(ctx.limits().max_tile_blocks).max(1)
}

/// One pass: histograms (`[r * 256 + d]`) of the digit at `shift` under each of
/// `prefixes`, summed over every chunk (bit-equal to `cpu::select_histogram`).
pub fn select_histogram(
    ctx: &GpuContext,
    keys: &DeviceKeys,
    shift: u32,
    prefixes: &[u32],
) -> Result<Vec<u64>> {
    let pipeline = ctx.pipeline("select_histogram")?;
    let ipt = tile_blocks(ctx);
    let mut total = vec![0u64; prefixes.len() * DIGITS];
    for (gi, group) in prefixes.chunks(MAXP).enumerate() {
        let pre = ctx.upload("select-prefixes", group)?;
        // Workgroups add into it: it must start at zero.
        let hist = ctx.zeroed("select-hist", (group.len() * DIGITS * 4) as u64)?;
        let mut batch = ctx.batch("select_histogram");
        for (buf, len) in &keys.bufs {
            let params = ctx.uniform(
                "select-params",
                &SelectParams {
                    len: *len as u32,
                    shift,
                    nprefix: group.len() as u32,
                    ipt,
                },
            );
            batch.dispatch(
                &pipeline,
                &[
                    params.as_entire_binding(),
                    buf.as_entire_binding(),
                    pre.as_entire_binding(),
                    hist.as_entire_binding(),
                ],
                (*len as u64).div_ceil(ipt as u64 * WG as u64),
            )?;
        }
        let h: Vec<u32> = batch.submit_and_read(&hist, 0, group.len() * DIGITS)?;
        let off = gi * MAXP * DIGITS;
        for (t, v) in total[off..off + h.len()].iter_mut().zip(h) {
            *t += v as u64;
        }
    }
    Ok(total)
}

/// The `ks`-th smallest of resident keys (1-based, `total_cmp` order).
pub fn select_resident(ctx: &GpuContext, keys: &DeviceKeys, ks: &[usize]) -> Result<Vec<f32>> {
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > keys.n) {
        return Err(Error::Invalid(format!(
            "rank {k} is outside 1..={} (the number of keys)",
            keys.n
        )));
    }
    let mut state: Vec<Narrow> = ks
        .iter()
        .map(|&k| Narrow {
            prefix: 0,
            rank: k as u64,
        })
        .collect();
    if state.is_empty() {
        return Ok(Vec::new());
    }
    for shift in [24u32, 16, 8, 0] {
        let prefixes = distinct_prefixes(&state);
        let hist = select_histogram(ctx, keys, shift, &prefixes)?;
        narrow(&mut state, &prefixes, &hist, shift);
    }
    Ok(state.iter().map(|s| sortable_to_f32(s.prefix)).collect())
}

/// The `ks`-th smallest of `keys` (1-based ranks in `1..=n`, `total_cmp` order: exact
/// order statistics without sorting). NaN keys are rejected.
pub fn select(ctx: &GpuContext, keys: &[f32], ks: &[usize]) -> Result<Vec<f32>> {
    let dk = upload_keys(ctx, keys)?;
    select_resident(ctx, &dk, ks)
}
