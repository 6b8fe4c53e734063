//! Contract of shaders/select_histogram.wgsl and the MSD radix select both paths drive
//! with it: parameters, per-dispatch limits, and the host's narrowing step (from each
//! pass's merged histograms to the next pass's prefixes).

use super::radix_sort::DIGITS;

/// Uniform parameters. Keep in sync with `Params` in shaders/select_histogram.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SelectParams {
    /// Keys in this chunk.
    pub len: u32,
    /// Digit shift (24, 16, 8, 0).
    pub shift: u32,
    /// Prefixes in this dispatch (at most [`MAXP`]).
    pub nprefix: u32,
    /// WG-wide sub-blocks per workgroup.
    pub ipt: u32,
}

/// Prefixes one dispatch handles (the shader's workgroup histograms). Keep in sync with
/// `MAXP` in shaders/select_histogram.wgsl.
pub const MAXP: usize = 16;
/// Sub-blocks of `WG` keys per workgroup.
pub const IPT: u32 = 16;

/// Narrowing state of one requested rank: the prefix found so far and the rank left
/// within the keys that share it (1-based). `P`: the key's integer (u32 for the f32
/// select, u64 for COT's 42-bit gains, `kernel::cot_two_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Narrow<P = u32> {
    /// Key bits fixed so far.
    pub prefix: P,
    /// Rank within the keys under `prefix`, 1-based.
    pub rank: u64,
}

/// Distinct prefixes of `state` in first-seen order.
pub fn distinct_prefixes<P: Copy + PartialEq>(state: &[Narrow<P>]) -> Vec<P> {
    let mut out: Vec<P> = Vec::new();
    for s in state {
        if !out.contains(&s.prefix) {
            out.push(s.prefix);
        }
    }
    out
}

/// Fixes the digit at `shift` of every rank from the merged histograms of this pass
/// (`hist[r * 256 + d]` for `prefixes[r]`).
pub fn narrow<P>(state: &mut [Narrow<P>], prefixes: &[P], hist: &[u64], shift: u32)
where
    P: Copy + PartialEq + From<u8> + std::ops::Shl<u32, Output = P> + std::ops::BitOrAssign,
{
    for s in state.iter_mut() {
        let Some(r) = prefixes.iter().position(|&p| p == s.prefix) else {
            continue;
        };
        let mut cum = 0u64;
        for d in 0..DIGITS {
            let h = hist[r * DIGITS + d];
            if cum + h >= s.rank {
                s.rank -= cum;
                s.prefix |= P::from(d as u8) << shift;
                break;
            }
            cum += h;
        }
    }
}
