//! CPU mirror of shaders/common.wgsl.

/// f32 -> u32 whose unsigned order equals `f32::total_cmp` (sign-flip positives, invert
/// negatives). Keep in sync with `f32_to_sortable` in shaders/common.wgsl.
pub fn f32_to_sortable(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`f32_to_sortable`].
pub fn sortable_to_f32(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// Row max and argmax (lowest index on ties), as every shader computes them.
#[inline]
pub fn row_max(row: &[f32]) -> (f32, usize) {
    let mut m = row[0];
    let mut arg = 0;
    for (j, &z) in row.iter().enumerate().skip(1) {
        if z > m {
            m = z;
            arg = j;
        }
    }
    (m, arg)
}
