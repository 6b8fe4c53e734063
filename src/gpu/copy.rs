//! Device-to-device copy (shaders/copy.wgsl; CPU mirror: cpu::copy): the bandwidth
//! ceiling that benches compare every streaming kernel with.

use super::buffers::groups_for;
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::copy::CopyParams;

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
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
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
