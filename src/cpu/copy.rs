//! CPU mirror of shaders/copy.wgsl.

/// `dst = src`.
pub fn copy(src: &[u32], dst: &mut [u32]) {
    dst.copy_from_slice(src);
}
