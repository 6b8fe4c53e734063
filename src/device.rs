//! Choosing where to run: `--device auto|gpu|cpu`.
//!
//! `auto` takes a hardware GPU when one exists (a software adapter such as llvmpipe is
//! slower than the CPU path, so `auto` passes it over), else the CPU; `gpu` takes any
//! adapter, software included, and fails with a clear error when none exists.

use crate::error::{Error, Result};
#[cfg(feature = "gpu")]
use crate::gpu::{GpuContext, GpuOptions};

/// The `--device` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A hardware GPU if present, else the CPU; GPU failures fall back to the CPU.
    #[default]
    Auto,
    /// Any GPU adapter (software included); failures are errors.
    Gpu,
    /// The CPU path.
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "gpu" => Ok(DeviceChoice::Gpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            other => Err(Error::Invalid(format!(
                "--device {other:?}: expected auto, gpu or cpu"
            ))),
        }
    }
}

/// Where work runs.
#[derive(Debug)]
pub enum Engine {
    /// The CPU path.
    Cpu,
    /// A GPU context.
    #[cfg(feature = "gpu")]
    Gpu(Box<GpuContext>),
}

impl Engine {
    /// Opens the engine for `choice`, returning it and a sentence for stderr saying which
    /// device is used and why.
    pub fn open(choice: DeviceChoice, timestamps: bool) -> Result<(Engine, String)> {
        #[cfg(not(feature = "gpu"))]
        let _ = timestamps;
        match choice {
            DeviceChoice::Cpu => Ok((Engine::Cpu, "device: cpu (--device cpu)".into())),
            #[cfg(feature = "gpu")]
            DeviceChoice::Gpu => {
                let ctx = GpuContext::new(GpuOptions {
                    allow_software: true,
                    timestamps,
                    ..Default::default()
                })?;
                let note = format!("device: gpu: {}", ctx.adapter_name());
                Ok((Engine::Gpu(Box::new(ctx)), note))
            }
            #[cfg(not(feature = "gpu"))]
            DeviceChoice::Gpu => Err(Error::NoAdapter(
                "this build has no GPU support (built without the `gpu` feature)".into(),
            )),
            #[cfg(feature = "gpu")]
            DeviceChoice::Auto => match GpuContext::new(GpuOptions {
                timestamps,
                ..Default::default()
            }) {
                Ok(ctx) => {
                    let note = format!("device: gpu: {} (auto)", ctx.adapter_name());
                    Ok((Engine::Gpu(Box::new(ctx)), note))
                }
                Err(e) => Ok((Engine::Cpu, format!("device: cpu (auto: {e})"))),
            },
            #[cfg(not(feature = "gpu"))]
            DeviceChoice::Auto => Ok((
                Engine::Cpu,
                "device: cpu (auto: built without the `gpu` feature)".into(),
            )),
        }
    }
}

/// Runs `$body` with `$b` bound to the engine's backend. Under `auto`, a GPU failure
/// (out of memory, device lost, map failure) reruns the body on the CPU and says so on
/// stderr; under `gpu` it is returned as the error.
#[macro_export]
macro_rules! with_backend {
    ($engine:expr, $choice:expr, |$b:ident| $body:expr) => {{
        match $engine {
            $crate::device::Engine::Cpu => {
                let $b = &$crate::backend::CpuBackend;
                $body
            }
            #[cfg(feature = "gpu")]
            $crate::device::Engine::Gpu(ctx) => {
                let gpu_result = {
                    let $b = &$crate::backend::GpuBackend::new(ctx);
                    $body
                };
                match gpu_result {
                    Err(e)
                        if $choice == $crate::device::DeviceChoice::Auto && e.is_gpu_failure() =>
                    {
                        eprintln!("warning: GPU failed ({e}); falling back to the CPU path");
                        let $b = &$crate::backend::CpuBackend;
                        $body
                    }
                    other => other,
                }
            }
        }
    }};
}
