//! GPU LSD radix sort of f32 keys (optionally with a u32 payload): 4 passes of 8-bit
//! digits over the keys mapped to order-preserving u32 (`f32_to_sortable`, order =
//! `f32::total_cmp`), reduce-then-scan, stable, no workgroup ever waits on another.
//!
//! Each pass records, per chunk `c` (a chunk is one binding's worth of keys, its own
//! buffer): `radix_histogram` (tile histograms), then `radix_scan` per chunk in order
//! (digit prefixes carried across chunks in a 256-entry `carry` buffer, which ends as the
//! digit totals), then `radix_scatter` once per (source chunk, destination chunk) pair,
//! each writing only the positions that fall in its destination chunk. With one chunk
//! (inputs up to one binding, 128 MiB and more on most adapters) that is 3 dispatches a
//! pass; with C chunks the scatter reads each source chunk C times.
//!
//! CPU mirror of the whole driver: `cpu::radix_sort::radix_sort`.

use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::radix_sort::{check_no_nan, scan_workgroups, RadixParams, SortPlan};
use crate::kernel::WG;

/// The plan for this context's binding limit (see [`SortPlan::for_binding`]) and tile cap
/// ([`GpuOptions::max_tile_blocks`](super::GpuOptions)).
pub fn plan(ctx: &GpuContext) -> SortPlan {
    let limits = ctx.limits();
    SortPlan::for_binding_and_blocks(limits.max_binding_bytes, limits.max_tile_blocks as usize)
}

/// Uploads `data` as one buffer per `chunk` elements.
pub(crate) fn upload_chunks(
    ctx: &GpuContext,
    label: &str,
    data: &[u32],
    chunk: usize,
) -> Result<Vec<wgpu::Buffer>> {
    data.chunks(chunk.max(1))
        .map(|c| ctx.upload(label, c))
        .collect()
}

fn storage_chunks(ctx: &GpuContext, label: &str, lens: &[usize]) -> Result<Vec<wgpu::Buffer>> {
    lens.iter()
        .map(|&l| ctx.storage(label, 4 * l as u64))
        .collect()
}

// Chunk indices address several parallel lists (keys, payloads, histograms, lengths).
#[allow(clippy::needless_range_loop)]
/// Sorts `keys` by `f32::total_cmp` (so -0.0 before +0.0), stably carrying `payload`
/// (same length) along. NaN keys are rejected (`Error::NonFinite` naming the first index).
pub fn radix_sort(
    ctx: &GpuContext,
    keys: &[f32],
    payload: Option<&[u32]>,
) -> Result<(Vec<f32>, Option<Vec<u32>>)> {
    check_no_nan("sort keys", keys)?;
    let n = keys.len();
    if let Some(p) = payload {
        if p.len() != n {
            return Err(Error::LengthMismatch {
                what: "sort payload".into(),
                detail: format!("{} payload entries for {n} keys", p.len()),
            });
        }
    }
    if n > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{n} keys: the GPU sort handles at most 2^32 - 1"
        )));
    }
    if n == 0 {
        return Ok((Vec::new(), payload.map(|_| Vec::new())));
    }
    let SortPlan { chunk, .. } = plan(ctx);
    let bits: &[u32] = bytemuck::cast_slice(keys);
    let lens: Vec<usize> = bits.chunks(chunk).map(|c| c.len()).collect();
    let a = upload_chunks(ctx, "sort-keys-a", bits, chunk)?;
    let pa = payload
        .map(|p| upload_chunks(ctx, "sort-vals-a", p, chunk))
        .transpose()?;
    sort_chunks(ctx, a, &lens, pa)
}

/// Sorts `n` f32 keys already on the device (`keys`, one chunk of the sort plan: `n`
/// at most its chunk size) and reads them back sorted: the only transfer is the
/// result. NaN keys are an error (found in the result, where they sort last).
pub fn sort_resident(ctx: &GpuContext, keys: wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
    let SortPlan { chunk, .. } = plan(ctx);
    if n > chunk {
        return Err(Error::Invalid(format!(
            "{n} resident keys exceed one sort chunk of {chunk}"
        )));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let (sorted, _) = sort_chunks(ctx, vec![keys], &[n], None)?;
    check_no_nan("sort keys", &sorted)?;
    Ok(sorted)
}

// Chunk indices address several parallel lists (keys, payloads, histograms, lengths).
#[allow(clippy::needless_range_loop)]
/// The passes of the sort over key chunks `a` (raw f32 bits, chunk lengths `lens`) and
/// optional payload chunks `pa`, then the readback.
fn sort_chunks(
    ctx: &GpuContext,
    a: Vec<wgpu::Buffer>,
    lens: &[usize],
    pa: Option<Vec<wgpu::Buffer>>,
) -> Result<(Vec<f32>, Option<Vec<u32>>)> {
    let SortPlan { chunk, tile } = plan(ctx);
    let ipt = (tile / WG) as u32;
    let n: usize = lens.iter().sum();
    let tiles: Vec<usize> = lens.iter().map(|l| l.div_ceil(tile)).collect();
    let b = storage_chunks(ctx, "sort-keys-b", lens)?;
    let with_payload = pa.is_some();
    let (pa, pb) = match pa {
        Some(pa) => (pa, storage_chunks(ctx, "sort-vals-b", lens)?),
        // Distinct dummies: one binding is read-only, the other read-write.
        None => (
            vec![ctx.storage("sort-vals-dummy-a", 4)?],
            vec![ctx.storage("sort-vals-dummy-b", 4)?],
        ),
    };
    let hists: Vec<wgpu::Buffer> = tiles
        .iter()
        .map(|&t| ctx.storage("sort-hist", 1024 * t as u64))
        .collect::<Result<_>>()?;
    let carry = ctx.storage("sort-carry", 1024)?;
    let hist_p = ctx.pipeline("radix_histogram")?;
    let scan_p = ctx.pipeline("radix_scan")?;
    let scatter_p = ctx.pipeline("radix_scatter")?;
    let has_payload = with_payload as u32;
    let mut batch = ctx.batch("radix_sort");
    for pass in 0..4u32 {
        let (src, dst, sv, dv) = if pass % 2 == 0 {
            (&a, &b, &pa, &pb)
        } else {
            (&b, &a, &pb, &pa)
        };
        let base = RadixParams {
            ipt,
            shift: 8 * pass,
            map_in: (pass == 0) as u32,
            map_out: (pass == 3) as u32,
            has_payload,
            ..Default::default()
        };
        let chunk_params = |c: usize| RadixParams {
            len: lens[c] as u32,
            tiles: tiles[c] as u32,
            first: (c == 0) as u32,
            ..base
        };
        for c in 0..lens.len() {
            let params = ctx.uniform("radix-params", &chunk_params(c));
            batch.dispatch(
                &hist_p,
                &[
                    params.as_entire_binding(),
                    src[c].as_entire_binding(),
                    hists[c].as_entire_binding(),
                ],
                tiles[c] as u64,
            )?;
        }
        for c in 0..lens.len() {
            let params = ctx.uniform("radix-params", &chunk_params(c));
            batch.dispatch(
                &scan_p,
                &[
                    params.as_entire_binding(),
                    hists[c].as_entire_binding(),
                    carry.as_entire_binding(),
                ],
                scan_workgroups(tiles[c]),
            )?;
        }
        for c in 0..lens.len() {
            for e in 0..lens.len() {
                let params = ctx.uniform(
                    "radix-params",
                    &RadixParams {
                        dst_lo: (e * chunk) as u32,
                        dst_len: lens[e] as u32,
                        ..chunk_params(c)
                    },
                );
                // Without a payload both lists hold one dummy buffer.
                let svc = &sv[c.min(sv.len() - 1)];
                let dve = &dv[e.min(dv.len() - 1)];
                batch.dispatch(
                    &scatter_p,
                    &[
                        params.as_entire_binding(),
                        src[c].as_entire_binding(),
                        svc.as_entire_binding(),
                        hists[c].as_entire_binding(),
                        carry.as_entire_binding(),
                        dst[e].as_entire_binding(),
                        dve.as_entire_binding(),
                    ],
                    tiles[c] as u64,
                )?;
            }
        }
    }
    batch.submit()?;
    let mut out_keys: Vec<f32> = Vec::with_capacity(n);
    for (c, buf) in a.iter().enumerate() {
        let part: Vec<f32> = ctx.readback(buf, 0, lens[c])?;
        out_keys.extend(part);
    }
    let out_vals = match with_payload {
        true => {
            let mut v: Vec<u32> = Vec::with_capacity(n);
            for (c, buf) in pa.iter().enumerate() {
                v.extend(ctx.readback::<u32>(buf, 0, lens[c])?);
            }
            Some(v)
        }
        false => None,
    };
    Ok((out_keys, out_vals))
}

/// Keys sorted by `total_cmp`.
pub fn sort_keys(ctx: &GpuContext, keys: &[f32]) -> Result<Vec<f32>> {
    Ok(radix_sort(ctx, keys, None)?.0)
}

/// Stable sort of `keys` carrying `payload`.
pub fn sort_pairs(ctx: &GpuContext, keys: &[f32], payload: &[u32]) -> Result<(Vec<f32>, Vec<u32>)> {
    let (k, v) = radix_sort(ctx, keys, Some(payload))?;
    Ok((k, v.unwrap_or_default()))
}

/// First-pass tile histograms after the scan (one `Vec` per chunk, `[d * tiles + t]`)
/// and the digit totals: the intermediate buffers, for stage-by-stage comparison with
/// `cpu::radix_histogram` + `cpu::radix_scan`.
pub fn first_pass_offsets(ctx: &GpuContext, keys: &[f32]) -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
    check_no_nan("sort keys", keys)?;
    if keys.is_empty() {
        return Ok((Vec::new(), vec![0; 256]));
    }
    let SortPlan { chunk, tile } = plan(ctx);
    let bits: &[u32] = bytemuck::cast_slice(keys);
    let lens: Vec<usize> = bits.chunks(chunk).map(|c| c.len()).collect();
    let a = upload_chunks(ctx, "sort-keys-a", bits, chunk)?;
    let carry = ctx.storage("sort-carry", 1024)?;
    let hist_p = ctx.pipeline("radix_histogram")?;
    let scan_p = ctx.pipeline("radix_scan")?;
    let mut hists = Vec::new();
    let mut batch = ctx.batch("radix_first_pass");
    for (c, &len) in lens.iter().enumerate() {
        let tiles = len.div_ceil(tile);
        let h = ctx.storage("sort-hist", 1024 * tiles as u64)?;
        let params = ctx.uniform(
            "radix-params",
            &RadixParams {
                len: len as u32,
                tiles: tiles as u32,
                ipt: (tile / WG) as u32,
                map_in: 1,
                first: (c == 0) as u32,
                ..Default::default()
            },
        );
        batch.dispatch(
            &hist_p,
            &[
                params.as_entire_binding(),
                a[c].as_entire_binding(),
                h.as_entire_binding(),
            ],
            tiles as u64,
        )?;
        batch.dispatch(
            &scan_p,
            &[
                params.as_entire_binding(),
                h.as_entire_binding(),
                carry.as_entire_binding(),
            ],
            scan_workgroups(tiles),
        )?;
        hists.push((h, tiles));
    }
    batch.submit()?;
    let mut out = Vec::new();
    for (h, tiles) in &hists {
        out.push(ctx.readback::<u32>(h, 0, 256 * tiles)?);
    }
    Ok((out, ctx.readback::<u32>(&carry, 0, 256)?))
}
