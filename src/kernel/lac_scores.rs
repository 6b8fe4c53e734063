//! Contract of shaders/lac_scores.wgsl: its parameters (output: one f32 score per
//! row, NaN for an unknown label).

/// Uniform parameters. Keep in sync with `Params` in shaders/lac_scores.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LacParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}
