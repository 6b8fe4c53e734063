//! CPU mirror of shaders/radix_histogram.wgsl: per-tile digit histograms of one chunk.

use crate::kernel::common::f32_to_sortable;

/// Digit of `key` at `shift` (after the optional f32 -> sortable mapping).
#[inline]
pub fn digit(key: u32, shift: u32, map_in: bool) -> usize {
    let k = if map_in {
        f32_to_sortable(f32::from_bits(key))
    } else {
        key
    };
    ((k >> shift) & 255) as usize
}

/// Tile histograms of `keys` (one chunk) in the shader's layout `hist[d * tiles + t]`,
/// tiles of `tile` keys.
pub fn radix_histogram(keys: &[u32], tile: usize, shift: u32, map_in: bool) -> Vec<u32> {
    let tiles = keys.len().div_ceil(tile);
    let mut hist = vec![0u32; 256 * tiles];
    for (t, chunk) in keys.chunks(tile).enumerate() {
        for &k in chunk {
            hist[digit(k, shift, map_in) * tiles + t] += 1;
        }
    }
    hist
}
