//! The CPU mirror of the whole GPU radix sort (src/gpu/radix_sort.rs): the same chunks,
//! tiles and passes through the mirrors of radix_histogram, radix_scan and radix_scatter,
//! so every intermediate buffer can be compared. Plus the plain oracles the CPU backend
//! uses (`sort_by(total_cmp)` semantics, faster).

use rayon::prelude::*;

use super::radix_histogram::radix_histogram;
use super::radix_scan::radix_scan;
use super::radix_scatter::{radix_scatter, Scatter};
use crate::kernel::common::{f32_to_sortable, sortable_to_f32};
pub use crate::kernel::radix_sort::check_no_nan;

/// Mirror of the GPU sort with `chunk` keys per chunk (a multiple of `tile`) and `tile`
/// keys per tile: 4 LSD passes of 8-bit digits. Returns the sorted keys and, when given,
/// the payload in the same (stable) order. Keys must not be NaN.
pub fn radix_sort(
    keys: &[f32],
    payload: Option<&[u32]>,
    chunk: usize,
    tile: usize,
) -> (Vec<f32>, Option<Vec<u32>>) {
    let n = keys.len();
    let mut a: Vec<u32> = keys.iter().map(|k| k.to_bits()).collect();
    let mut b = vec![0u32; n];
    let mut pa: Option<Vec<u32>> = payload.map(|p| p.to_vec());
    let mut pb: Option<Vec<u32>> = payload.map(|_| vec![0u32; n]);
    let chunk = chunk.max(1);
    for pass in 0..4u32 {
        let shift = 8 * pass;
        let map_in = pass == 0;
        let mut carry = [0u32; 256];
        let mut hists = Vec::new();
        for (c, src) in a.chunks(chunk).enumerate() {
            let mut h = radix_histogram(src, tile, shift, map_in);
            radix_scan(&mut h, src.len().div_ceil(tile), &mut carry, c == 0);
            hists.push(h);
        }
        for (c, src) in a.chunks(chunk).enumerate() {
            let sv = pa.as_ref().map(|p| &p[c * chunk..c * chunk + src.len()]);
            // One call covering every destination chunk does what the per-chunk
            // dispatches do together.
            radix_scatter(
                src,
                sv,
                &hists[c],
                &carry,
                Scatter {
                    tile,
                    shift,
                    map_in,
                    map_out: pass == 3,
                    dst_lo: 0,
                },
                &mut b,
                pb.as_deref_mut(),
            );
        }
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut pa, &mut pb);
    }
    (a.into_iter().map(f32::from_bits).collect(), pa)
}

/// Oracle: keys sorted by `f32::total_cmp` (NaN must be rejected first).
pub fn sort_keys(keys: &[f32]) -> Vec<f32> {
    let mut u: Vec<u32> = keys.par_iter().map(|&k| f32_to_sortable(k)).collect();
    u.par_sort_unstable();
    u.into_par_iter().map(sortable_to_f32).collect()
}

/// Oracle: a stable sort of `keys` by `total_cmp` carrying `payload` along.
pub fn sort_pairs(keys: &[f32], payload: &[u32]) -> (Vec<f32>, Vec<u32>) {
    // (key, original position) packed in a u64: an unstable sort of distinct u64s is stable.
    let mut u: Vec<u64> = keys
        .par_iter()
        .enumerate()
        .map(|(i, &k)| ((f32_to_sortable(k) as u64) << 32) | i as u64)
        .collect();
    u.par_sort_unstable();
    u.into_par_iter()
        .map(|x| {
            (
                sortable_to_f32((x >> 32) as u32),
                payload[(x & 0xffff_ffff) as usize],
            )
        })
        .unzip()
}
