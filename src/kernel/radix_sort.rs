//! Contract of the GPU radix sort (shaders/radix_histogram.wgsl, radix_scan.wgsl,
//! radix_scatter.wgsl): their shared parameters, digit widths, how an input is cut into
//! chunks and tiles, and the input check both paths run.

use rayon::prelude::*;

use super::WG;
use crate::error::{Error, Result};

/// Uniform parameters of the three radix kernels. Keep in sync with `Params` in
/// shaders/radix_histogram.wgsl, radix_scan.wgsl and radix_scatter.wgsl (layout checked
/// against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RadixParams {
    /// Keys in this chunk.
    pub len: u32,
    /// Tiles in this chunk.
    pub tiles: u32,
    /// WG-wide sub-blocks per tile.
    pub ipt: u32,
    /// Digit shift (0, 8, 16, 24).
    pub shift: u32,
    /// Keys are raw f32 bits (first pass).
    pub map_in: u32,
    /// Write keys back as f32 bits (last pass).
    pub map_out: u32,
    /// Move the payload along.
    pub has_payload: u32,
    /// First chunk of the scan.
    pub first: u32,
    /// First global position of the destination chunk.
    pub dst_lo: u32,
    /// Keys in the destination chunk.
    pub dst_len: u32,
    /// Padding to 48 bytes.
    pub _pad0: u32,
    /// Padding.
    pub _pad1: u32,
}

/// Sub-blocks of `WG` keys per tile on real bindings (a tile = 4096 keys).
pub const IPT: usize = 16;

/// Chunks of at most this many tiles are scanned by one workgroup, a thread per digit
/// walking its row serially; larger ones by a workgroup per digit (shaders/radix_scan.wgsl).
pub const SERIAL_SCAN_TILES: usize = 256;

/// Workgroups of the `radix_scan` dispatch over a chunk of `tiles` tiles.
pub fn scan_workgroups(tiles: usize) -> u64 {
    if tiles <= SERIAL_SCAN_TILES {
        1
    } else {
        DIGITS as u64
    }
}

/// Bits per radix digit (4 passes over 32-bit keys, both sort and select).
pub const DIGIT_BITS: u32 = 8;
/// Values of one digit: counters per histogram.
pub const DIGITS: usize = 1 << DIGIT_BITS;

/// How an input is cut: `chunk` keys per binding (a multiple of `tile`), `tile` keys per
/// workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortPlan {
    /// Keys per chunk (buffer / binding).
    pub chunk: usize,
    /// Keys per tile (workgroup).
    pub tile: usize,
}

impl SortPlan {
    /// The plan for bindings of at most `max_binding_bytes`: tiles of up to [`IPT`]
    /// sub-blocks of `WG` keys, chunks of whole tiles. A tile's 256 counters are 1 KiB,
    /// so a chunk's histograms (`1024 * chunk / tile` bytes) always fit one binding too.
    pub fn for_binding(max_binding_bytes: u64) -> SortPlan {
        Self::for_binding_and_blocks(max_binding_bytes, IPT)
    }

    /// [`for_binding`](Self::for_binding) with tiles of at most `max_blocks` sub-blocks
    /// (tests: tiles of 256 keys make more than 65535 tiles from 2^24 keys).
    pub fn for_binding_and_blocks(max_binding_bytes: u64, max_blocks: usize) -> SortPlan {
        let max_keys = ((max_binding_bytes / 4) as usize).max(WG);
        let ipt = IPT.min(max_blocks).min(max_keys / WG).max(1);
        let tile = ipt * WG;
        SortPlan {
            chunk: (max_keys / tile) * tile,
            tile,
        }
    }
}

/// Rejects NaN keys, naming the first one's index.
pub fn check_no_nan(what: &str, keys: &[f32]) -> Result<()> {
    // By chunks: rayon's per-element `position_first` costs ~20 ns a key, more than the
    // sort it guards.
    const CHUNK: usize = 1 << 16;
    let first = keys
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(c, ch)| ch.iter().position(|k| k.is_nan()).map(|i| c * CHUNK + i));
    match first {
        Some(row) => Err(Error::NonFinite {
            what: what.to_string(),
            row,
            col: 0,
            value: keys[row],
        }),
        None => Ok(()),
    }
}
