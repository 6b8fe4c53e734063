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
