//! conformal-gpu: GPU (WGSL via wgpu) and CPU estimation of a classifier's accuracy
//! under distribution shift. See DESIGN.md.

pub mod data;
pub mod error;

pub use error::{Error, Result};
