//! What this crate does differently on a software adapter (Mesa's llvmpipe behind
//! lavapipe, SwiftShader, WARP): every such decision is made here, once per context, from
//! the adapter's info, and the kernels read the answer.
//!
//! - `auto` passes a software adapter over (`GpuContext::new` with `allow_software =
//!   false`): it is slower than the CPU path.
//! - llvmpipe ends an invocation's loops after [`LLVMPIPE_LOOP_LIMIT`] iterations in all,
//!   silently: [`AdapterQuirks::loop_limit`] bounds every kernel's iterations per
//!   invocation (`kernel::loop_budget`), and a row past it is a typed error.
//! - A team of lanes a row (the tally at large K) costs a CPU rasteriser more in barriers
//!   than coalesced reads save: [`AdapterQuirks::team_lanes`] is off there.

use crate::kernel::loop_budget::LLVMPIPE_LOOP_LIMIT;

/// True for adapters that run on the CPU (llvmpipe/lavapipe report `DeviceType::Cpu`).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    software(&info.name, info.device_type)
}

fn software(name: &str, device_type: wgpu::DeviceType) -> bool {
    let name = name.to_lowercase();
    device_type == wgpu::DeviceType::Cpu
        || name.contains("llvmpipe")
        || name.contains("swiftshader")
}

/// The adapter-specific choices of one context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterQuirks {
    /// A CPU rasteriser: correct, slower than the CPU path.
    pub software: bool,
    /// The most loop iterations one invocation may run (`None`: nothing known caps them).
    pub loop_limit: Option<u64>,
    /// Whether a team of lanes a row pays (hardware: coalesced reads).
    pub team_lanes: bool,
}

impl AdapterQuirks {
    /// The choices for `info`'s adapter.
    pub fn of(info: &wgpu::AdapterInfo) -> Self {
        Self::for_adapter(&info.name, info.device_type)
    }

    /// The choices for an adapter of this name and type.
    fn for_adapter(name: &str, device_type: wgpu::DeviceType) -> Self {
        let software = software(name, device_type);
        AdapterQuirks {
            software,
            loop_limit: software.then_some(LLVMPIPE_LOOP_LIMIT),
            team_lanes: !software,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_adapters_get_the_loop_cap_and_no_lanes() {
        let lvp = AdapterQuirks::for_adapter("llvmpipe (LLVM 15)", wgpu::DeviceType::Cpu);
        assert_eq!(lvp.loop_limit, Some(LLVMPIPE_LOOP_LIMIT));
        assert!(lvp.software && !lvp.team_lanes);
        // Named llvmpipe but reported as another type: still software.
        let named = AdapterQuirks::for_adapter("llvmpipe", wgpu::DeviceType::Other);
        assert!(named.software);
        let hw = AdapterQuirks::for_adapter("NVIDIA H100", wgpu::DeviceType::DiscreteGpu);
        assert_eq!(hw.loop_limit, None);
        assert!(!hw.software && hw.team_lanes);
    }
}
