//! Contract of shaders/temperature_nll.wgsl: its parameters and partial layout
//! ([`NPARTIAL`] f32 per workgroup: `[nll, grad, hess, labelled]`).

/// Uniform parameters. Keep in sync with `Params` in shaders/temperature_nll.wgsl
/// (layout checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NllParams {
    /// Rows in this chunk.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Inverse temperature b = 1/T.
    pub b: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// f32 values per workgroup partial: `[nll, grad, hess, labelled]`.
pub const NPARTIAL: usize = 4;
