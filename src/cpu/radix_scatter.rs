//! CPU mirror of shaders/radix_scatter.wgsl: stable scatter of one source chunk to the
//! positions inside one destination chunk.

use crate::kernel::common::{f32_to_sortable, sortable_to_f32};

/// Arguments of one scatter dispatch (the shader's `Params`).
#[derive(Clone, Copy, Debug)]
pub struct Scatter {
    /// Keys per tile.
    pub tile: usize,
    /// Digit shift.
    pub shift: u32,
    /// Source keys are raw f32 bits.
    pub map_in: bool,
    /// Write keys back as f32 bits.
    pub map_out: bool,
    /// First global position of the destination chunk.
    pub dst_lo: usize,
}

/// Moves `src` (and `src_vals` when given) to `dst`/`dst_vals` (the destination chunk):
/// key `i` of tile `t` with digit `d` goes to `base[d] + hist[d * tiles + t] + rank`,
/// `base` the exclusive scan of `carry`.
pub fn radix_scatter(
    src: &[u32],
    src_vals: Option<&[u32]>,
    hist: &[u32],
    carry: &[u32; 256],
    s: Scatter,
    dst: &mut [u32],
    mut dst_vals: Option<&mut [u32]>,
) {
    let tiles = src.len().div_ceil(s.tile);
    let mut base = [0u32; 256];
    let mut acc = 0u32;
    for d in 0..256 {
        base[d] = acc;
        acc = acc.wrapping_add(carry[d]);
    }
    for (t, chunk) in src.chunks(s.tile).enumerate() {
        let mut run = [0u32; 256];
        for d in 0..256 {
            run[d] = base[d].wrapping_add(hist[d * tiles + t]);
        }
        for (j, &raw) in chunk.iter().enumerate() {
            let key = if s.map_in {
                f32_to_sortable(f32::from_bits(raw))
            } else {
                raw
            };
            let d = ((key >> s.shift) & 255) as usize;
            let pos = run[d] as usize;
            run[d] += 1;
            if pos >= s.dst_lo && pos - s.dst_lo < dst.len() {
                let out = if s.map_out {
                    sortable_to_f32(key).to_bits()
                } else {
                    key
                };
                dst[pos - s.dst_lo] = out;
                if let (Some(sv), Some(dv)) = (src_vals, dst_vals.as_deref_mut()) {
                    dv[pos - s.dst_lo] = sv[t * s.tile + j];
                }
            }
        }
    }
}
