//! Device-to-device copy (shaders/copy.wgsl; CPU mirror: cpu::copy): the bandwidth
//! ceiling that benches compare every streaming kernel with.

use super::buffers::groups_for;
use super::context::GpuContext;
use crate::error::{Error, Result};

/// Uniform parameters. Keep in sync with `Params` in shaders/copy.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CopyParams {
    /// 16-byte elements to copy.
    pub n: u32,
    /// Padding to 16 bytes.
    pub _pad: [u32; 3],
}

/// Copies the first `bytes` (a multiple of 16 that fits one binding) of `src` into `dst`.
pub fn copy(ctx: &GpuContext, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) -> Result<()> {
    if !bytes.is_multiple_of(16) || bytes > ctx.limits().max_binding_bytes {
        return Err(Error::Invalid(format!(
            "copy of {bytes} bytes: need a multiple of 16 within one binding"
        )));
    }
    let n = bytes / 16;
    let pipeline = ctx.pipeline("copy")?;
    let params = ctx.uniform(
        "copy-params",
        &CopyParams {
            n: n as u32,
            _pad: [0; 3],
        },
    );
    let mut batch = ctx.batch("copy");
    batch.dispatch(
        &pipeline,
        &[
            params.as_entire_binding(),
            src.as_entire_binding(),
            dst.as_entire_binding(),
        ],
        groups_for(n),
    )?;
    batch.submit()
}
