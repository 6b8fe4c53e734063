//! COT at K = 2 on the device (shaders/cot_two_class.wgsl; CPU mirror:
//! cpu::cot_two_class; contract and driver: kernel::cot_two_class). In memory
//! ([`two_class_sums`]) the probabilities go up once (binding-sized chunks, resident for
//! all passes); each of the six histogram passes reads back `prefixes x 256` counters and
//! the sums pass [`SUM_WORDS`] words, so nothing per row comes down. Streamed
//! ([`one_pass`]), each chunk goes up for the pass that reads it.

use super::context::GpuContext;
use super::radix_sort::upload_chunks;
use crate::error::{Error, Result};
use crate::kernel::cot_two_class::{
    self as contract, CotPass, CotPassOutput, CotPassParams, PassSums, TwoClassSums, DIGITS, IPT,
    MAXP, MODE_HISTOGRAM, MODE_SUMS, SUM_WORDS,
};
use crate::kernel::score_ranks::check_probabilities;
use crate::kernel::WG;

/// A set's probabilities resident on the device: `(buffer, rows)` per chunk.
struct DeviceRows {
    bufs: Vec<(wgpu::Buffer, usize)>,
}

/// `WG`-wide sub-blocks of rows per workgroup: [`IPT`], or fewer under
/// [`GpuOptions::max_tile_blocks`](super::GpuOptions).
fn tile_blocks(ctx: &GpuContext) -> u32 {
    IPT.min(ctx.limits().max_tile_blocks).max(1)
}

/// Checks `probs` (`rows x 2`, finite in `[0, 1]`, fewer than 2^32 rows: the sums pass
/// counts a set's rows in one word) and uploads them in binding-sized chunks.
fn upload(ctx: &GpuContext, probs: &[f32]) -> Result<DeviceRows> {
    check_probabilities(probs, 2)?;
    let n = probs.len() / 2;
    if n > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "COT: {n} rows; the device pass takes at most 2^32 - 1 at once"
        )));
    }
    // Whole rows a chunk: an even number of words.
    let chunk = ((ctx.limits().max_binding_bytes / 4) as usize & !1).max(2);
    let bits: &[u32] = bytemuck::cast_slice(probs);
    let bufs = upload_chunks(ctx, "cot-two-class-probs", bits, chunk)?;
    let lens = bits.chunks(chunk).map(|c| c.len() / 2);
    Ok(DeviceRows {
        bufs: bufs.into_iter().zip(lens).collect(),
    })
}

/// One pass over every chunk into one zeroed accumulator of `words` words, read back.
fn dispatch(
    ctx: &GpuContext,
    rows: &DeviceRows,
    base: CotPassParams,
    words: usize,
) -> Result<Vec<u32>> {
    let pipeline = ctx.pipeline("cot_two_class")?;
    // Workgroups add into it: it must start at zero (never poisoned).
    let out = ctx.zeroed("cot-two-class-out", (words * 4) as u64)?;
    let ipt = tile_blocks(ctx);
    let mut batch = ctx.batch("cot_two_class");
    for (buf, n) in &rows.bufs {
        let params = ctx.uniform(
            "cot-two-class-params",
            &CotPassParams {
                rows: *n as u32,
                ipt,
                ..base
            },
        );
        batch.dispatch(
            &pipeline,
            &[
                params.as_entire_binding(),
                buf.as_entire_binding(),
                out.as_entire_binding(),
            ],
            (*n as u64).div_ceil(ipt as u64 * WG as u64),
        )?;
    }
    batch.submit_and_read(&out, 0, words)
}

/// A histogram pass over resident rows: the digits at `shift` under each of `prefixes`.
fn histogram(
    ctx: &GpuContext,
    rows: &DeviceRows,
    shift: u32,
    prefixes: &[u64],
) -> Result<Vec<u64>> {
    if prefixes.len() > MAXP {
        return Err(Error::Invalid(format!(
            "COT: {} prefixes in one pass (at most {MAXP})",
            prefixes.len()
        )));
    }
    let key = |r: usize| prefixes.get(r).copied().unwrap_or(0);
    let h = dispatch(
        ctx,
        rows,
        CotPassParams {
            mode: MODE_HISTOGRAM,
            shift,
            nprefix: prefixes.len() as u32,
            key0_lo: key(0) as u32,
            key0_hi: (key(0) >> 32) as u32,
            key1_lo: key(1) as u32,
            key1_hi: (key(1) >> 32) as u32,
            ..Default::default()
        },
        prefixes.len() * DIGITS,
    )?;
    Ok(h.into_iter().map(u64::from).collect())
}

/// The sums pass over resident rows: the base and the keys above `boundary`.
fn sums(ctx: &GpuContext, rows: &DeviceRows, boundary: u64) -> Result<PassSums> {
    let w = dispatch(
        ctx,
        rows,
        CotPassParams {
            mode: MODE_SUMS,
            key0_lo: boundary as u32,
            key0_hi: (boundary >> 32) as u32,
            ..Default::default()
        },
        SUM_WORDS,
    )?;
    let mut s = PassSums::default();
    s.add_words(&w);
    Ok(s)
}

/// One [`CotPass`] over a chunk of `probs` (`rows x 2`): uploaded, passed, read back.
pub fn one_pass(ctx: &GpuContext, probs: &[f32], pass: CotPass<'_>) -> Result<CotPassOutput> {
    let rows = upload(ctx, probs)?;
    Ok(match pass {
        CotPass::Histogram { shift, prefixes } => {
            CotPassOutput::Histogram(histogram(ctx, &rows, shift, prefixes)?)
        }
        CotPass::Sums { boundary } => CotPassOutput::Sums(sums(ctx, &rows, boundary)?),
    })
}

/// COT's K = 2 sums of `probs` (`rows x 2`, finite in `[0, 1]`) for the `whole` largest
/// gains: the passes of [`contract::two_class_sums`] over rows uploaded once, bit-equal
/// to the CPU mirror's.
pub fn two_class_sums(ctx: &GpuContext, probs: &[f32], whole: u64) -> Result<TwoClassSums> {
    let rows = upload(ctx, probs)?;
    contract::two_class_sums(
        (probs.len() / 2) as u64,
        whole,
        |shift, prefixes| histogram(ctx, &rows, shift, prefixes),
        |boundary| sums(ctx, &rows, boundary),
    )
}
