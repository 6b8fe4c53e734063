//! Contract of shaders/softmax.wgsl: its parameters (output: `n * k` probabilities, row-major).

/// Uniform parameters. Keep in sync with `Params` in shaders/softmax.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftmaxParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}
