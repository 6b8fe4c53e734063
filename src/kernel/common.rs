//! What shaders/common.wgsl shares with the host: the order-preserving key mapping.

/// f32 -> u32 whose unsigned order equals `f32::total_cmp` (sign-flip positives, invert
/// negatives). Keep in sync with `f32_to_sortable` in shaders/common.wgsl.
#[inline]
pub fn f32_to_sortable(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`f32_to_sortable`]. Keep in sync with `sortable_to_f32` in
/// shaders/common.wgsl.
#[inline]
pub fn sortable_to_f32(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// `m / 2^r` rounded to the nearest integer, ties to even (`1 <= r < 64`): the rounding
/// of an f32 significand onto a coarser grid (`score_ranks::prob_grid`,
/// `cot_two_class::units_53`; their shaders carry the same lines).
#[inline(always)]
pub fn shift_round_even(m: u64, r: u32) -> u64 {
    let q = m >> r;
    let rem = m & ((1u64 << r) - 1);
    let half = 1u64 << (r - 1);
    q + (rem > half || (rem == half && q & 1 == 1)) as u64
}
