//! `GpuContext`: adapter choice, device limits, the pipeline cache, error capture.
//!
//! Built once per process (or from a caller's own device/queue); every kernel wrapper
//! borrows it. Pipelines are compiled the first time a kernel runs and kept for the
//! context's lifetime (`warm_up` compiles all of them up front).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ledger::{Ledger, Transfers};
use crate::error::{Error, Result};
use crate::shaders;

/// Options for building a [`GpuContext`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Accept a software adapter (llvmpipe, lavapipe, WARP). `GpuContext::new` with
    /// `allow_software = false` fails with `NoAdapter` when only a software adapter exists.
    pub allow_software: bool,
    /// Cap on the bytes one storage binding may cover (the device limit applies anyway).
    /// Tests set it small so chunk boundaries are crossed on small inputs.
    pub max_binding_bytes: Option<u64>,
    /// Record timestamp queries around every dispatch when the adapter supports them.
    pub timestamps: bool,
    /// Make the next GPU operation fail with this fault (tests of the CPU fallback).
    pub inject_fault: Option<Fault>,
    /// Cap on workgroups per dispatch dimension (the device limit applies anyway). Tests
    /// set it small so dispatches go 2-D, with padding workgroups, on small inputs.
    pub max_workgroups_per_dim: Option<u32>,
    /// Fill every buffer made by [`GpuContext::storage`] with NaN and noise bit patterns
    /// instead of wgpu's zeros (tests: a kernel that leaves part of its output unwritten,
    /// or writes for a padding workgroup, shows up). Buffers that must start at zero come
    /// from [`GpuContext::zeroed`] and are never poisoned.
    pub poison_outputs: bool,
    /// Cap on the `WG`-wide sub-blocks of keys (rows) one workgroup of the radix sort,
    /// the radix select and the tally handles (16 by default: tiles of 4096). Tests set it
    /// to 1 (tiles of 256) so that a dispatch of more than 65535 workgroups fits a 128 MiB
    /// binding (2^24 keys instead of 2^28).
    pub max_tile_blocks: Option<u32>,
    /// Never specialise a pipeline on its shape (every override constant left at 0, its
    /// "read it from the uniform" value). Tests compare both variants bit for bit.
    pub generic_pipelines: bool,
    /// Threads per row of the tally kernel (1 or `kernel::tally::TALLY_LANES`, the team
    /// only where K >= `kernel::tally::TALLY_LANES_MIN_K`) instead of the adapter's choice
    /// (`gpu::tally::tally_constants`): tests and benches run both kernels on any adapter.
    /// Any other value makes `GpuContext::new` fail.
    pub tally_lanes: Option<u32>,
}

/// Timed GPU work of one shader: total nanoseconds inside its compute passes, and passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTime {
    /// Nanoseconds between the passes' begin and end timestamps, summed.
    pub ns: u64,
    /// Timed dispatches.
    pub dispatches: u64,
}

/// GPU failures that can be injected to test fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Buffer creation reports out-of-memory.
    OutOfMemory,
    /// The device is reported lost.
    DeviceLost,
    /// Mapping a readback buffer fails.
    MapFailure,
}

/// What the kernels need to know about the device's limits.
#[derive(Debug, Clone, Copy)]
pub struct ContextLimits {
    /// Largest byte length of one storage binding (after `max_binding_bytes`), a multiple of 256.
    pub max_binding_bytes: u64,
    /// Largest buffer the device can create.
    pub max_buffer_bytes: u64,
    /// Workgroups per dispatch dimension (65535 on most adapters).
    pub max_workgroups_per_dim: u32,
    /// Storage-offset alignment for binding sub-ranges.
    pub offset_alignment: u64,
    /// Most `WG`-wide sub-blocks of keys per workgroup of the radix sort and select
    /// (`u32::MAX` unless [`GpuOptions::max_tile_blocks`] caps it; the kernels' own
    /// constants apply anyway).
    pub max_tile_blocks: u32,
}

/// A compiled pipeline: its shader and the values of its pipeline-overridable constants.
type PipelineKey = (&'static str, Vec<(&'static str, u32)>);

/// A pipeline once compiled (see `GpuContext::pipelines`).
type PipelineSlot = Arc<Mutex<Option<Arc<wgpu::ComputePipeline>>>>;

/// Device, queue and compiled pipelines.
pub struct GpuContext {
    /// The device (shared with the caller when built from theirs).
    pub device: wgpu::Device,
    /// The queue.
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: ContextLimits,
    /// One slot per pipeline, filled by the first caller: the map's lock is held only to
    /// find a slot, so pipelines compile in parallel (a warm-up thread beside the work)
    /// and a second caller of the same one waits for it instead of compiling it again.
    pipelines: Mutex<HashMap<PipelineKey, PipelineSlot>>,
    generic_pipelines: bool,
    tally_lanes: Option<u32>,
    captured: Arc<Mutex<Option<Error>>>,
    lost: Arc<AtomicBool>,
    fault: Mutex<Option<Fault>>,
    timestamps: bool,
    kernel_ns: AtomicU64,
    kernel_ns_by_name: Mutex<std::collections::BTreeMap<&'static str, KernelTime>>,
    poison: bool,
    ledger: Ledger,
    /// Readback staging buffers kept for the next readback (`buffers::StagingPool`).
    pub(crate) staging: super::staging::StagingPool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Ranks adapters: discrete first, software last (`auto` wants real hardware).
fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

pub use super::quirks::is_software;
use super::quirks::AdapterQuirks;

impl GpuContext {
    /// Picks an adapter and creates the device.
    ///
    /// Honours wgpu's environment variables: `WGPU_BACKEND` (e.g. `vulkan`),
    /// `WGPU_ADAPTER_NAME` (substring of the adapter name), `WGPU_POWER_PREF`.
    ///
    /// Quiet start: on a machine without `XDG_RUNTIME_DIR` (no Wayland session), the first
    /// call sets `NODEVICE_SELECT=1` for this process, unless the caller set it or asks the
    /// Mesa device-select layer for something (see [`quiet_start`]); otherwise that layer
    /// prints "error: XDG_RUNTIME_DIR is invalid or not set" twice per instance.
    pub fn new(options: GpuOptions) -> Result<Self> {
        quiet_start();
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(
                "wgpu found no adapter (install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers for a software one)".into(),
            ));
        }
        if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
            if adapters.is_empty() {
                return Err(Error::NoAdapter(format!(
                    "no adapter name contains WGPU_ADAPTER_NAME={want:?}"
                )));
            }
        }
        adapters.sort_by_key(|a| {
            let info = a.get_info();
            // Vulkan first: the backend this crate is tested on.
            (
                preference(info.device_type),
                info.backend != wgpu::Backend::Vulkan,
            )
        });
        let adapter = adapters.swap_remove(0);
        let info = adapter.get_info();
        if !options.allow_software && is_software(&info) {
            return Err(Error::NoAdapter(format!(
                "only a software adapter is present ({}); use --device gpu to run on it anyway",
                info.name
            )));
        }
        let supported = adapter.limits();
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = supported.max_storage_buffer_binding_size;
        limits.max_buffer_size = supported.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage =
            supported.max_storage_buffers_per_shader_stage.min(8);
        limits.max_compute_workgroup_storage_size =
            supported.max_compute_workgroup_storage_size.min(32 * 1024);
        limits.max_compute_invocations_per_workgroup =
            supported.max_compute_invocations_per_workgroup.min(256);
        limits.max_compute_workgroup_size_x = supported.max_compute_workgroup_size_x.min(256);
        limits.max_compute_workgroups_per_dimension =
            supported.max_compute_workgroups_per_dimension;
        let mut features = wgpu::Features::empty();
        let timestamps = options.timestamps
            && adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY)
            && !matches!(info.backend, wgpu::Backend::Gl);
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("conformal-gpu"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("request_device on {}: {e}", info.name)))?;
        Self::from_device(
            device,
            queue,
            info,
            GpuOptions {
                timestamps,
                ..options
            },
        )
    }

    /// Wraps a caller's own device and queue (embedding). `info` is used for reports
    /// (`adapter.get_info()`). Timestamps are recorded only if the device has
    /// `TIMESTAMP_QUERY` enabled and `options.timestamps` asks for them.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        options: GpuOptions,
    ) -> Result<Self> {
        let team = crate::kernel::tally::TALLY_LANES;
        if let Some(lanes) = options.tally_lanes.filter(|&l| l != 1 && l != team) {
            return Err(Error::Invalid(format!(
                "tally_lanes = {lanes}: the tally runs 1 or {team} threads a row"
            )));
        }
        let dl = device.limits();
        if dl.max_compute_invocations_per_workgroup < 256 || dl.max_compute_workgroup_size_x < 256 {
            return Err(Error::Gpu(format!(
                "device allows {} invocations per workgroup; the kernels need 256",
                dl.max_compute_invocations_per_workgroup
            )));
        }
        let mut max_binding = dl.max_storage_buffer_binding_size.min(dl.max_buffer_size);
        if let Some(cap) = options.max_binding_bytes {
            max_binding = max_binding.min(cap);
        }
        // Multiples of 256 bytes keep every chunk offset storage-aligned.
        max_binding = (max_binding / 256) * 256;
        if max_binding < 1024 {
            return Err(Error::Invalid(format!(
                "max binding size {max_binding} bytes is too small (need >= 1024)"
            )));
        }
        let mut max_wg = dl.max_compute_workgroups_per_dimension;
        if let Some(cap) = options.max_workgroups_per_dim {
            max_wg = max_wg.min(cap);
        }
        let limits = ContextLimits {
            max_binding_bytes: max_binding,
            max_buffer_bytes: dl.max_buffer_size,
            max_workgroups_per_dim: max_wg.max(1),
            offset_alignment: dl.min_storage_buffer_offset_alignment.max(4) as u64,
            max_tile_blocks: options.max_tile_blocks.unwrap_or(u32::MAX).max(1),
        };
        let captured: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let sink = captured.clone();
        // Without a handler wgpu panics on validation and OOM errors; we turn them into
        // typed errors that the next `check()` returns.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match &e {
                wgpu::Error::OutOfMemory { .. } => Error::GpuOutOfMemory(e.to_string()),
                _ => Error::Gpu(e.to_string()),
            };
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert(err);
            }
        }));
        let lost = Arc::new(AtomicBool::new(false));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |_reason, _msg| {
            lost_flag.store(true, Ordering::SeqCst);
        });
        let timestamps =
            options.timestamps && device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            generic_pipelines: options.generic_pipelines,
            tally_lanes: options.tally_lanes,
            captured,
            lost,
            fault: Mutex::new(options.inject_fault),
            timestamps,
            kernel_ns: AtomicU64::new(0),
            kernel_ns_by_name: Mutex::new(Default::default()),
            poison: options.poison_outputs,
            ledger: Ledger::default(),
            staging: Default::default(),
        })
    }

    /// Adapter name, backend and driver, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Mesa 22.3.6)`.
    pub fn adapter_name(&self) -> String {
        self.info.name.clone()
    }

    /// Adapter info as wgpu reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// True when the adapter is a CPU rasteriser (llvmpipe): correct but slower than the CPU path.
    pub fn is_software(&self) -> bool {
        self.quirks().software
    }

    /// What this context does differently on its adapter (`gpu::quirks`).
    pub fn quirks(&self) -> AdapterQuirks {
        AdapterQuirks::of(&self.info)
    }

    /// Limits the kernels chunk against.
    pub fn limits(&self) -> ContextLimits {
        self.limits
    }

    /// Whether dispatches are being timed with timestamp queries.
    pub fn timestamps_enabled(&self) -> bool {
        self.timestamps
    }

    /// GPU time (ns) spent inside compute passes since the last call; 0 without timestamps.
    pub fn take_kernel_ns(&self) -> u64 {
        self.kernel_ns.swap(0, Ordering::SeqCst)
    }

    /// GPU time per shader since the last call (timed dispatches only), by shader name;
    /// empty without timestamps. Where a run's kernel time goes.
    pub fn take_kernel_times(&self) -> std::collections::BTreeMap<&'static str, KernelTime> {
        self.kernel_ns_by_name
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }

    /// Adds one timed dispatch of shader `name` (`None`: a pipeline made outside the cache).
    pub(crate) fn add_kernel_ns(&self, name: Option<&'static str>, ns: u64) {
        self.kernel_ns.fetch_add(ns, Ordering::SeqCst);
        if let Ok(mut m) = self.kernel_ns_by_name.lock() {
            let t = m.entry(name.unwrap_or("other")).or_default();
            t.ns += ns;
            t.dispatches += 1;
        }
    }

    /// The shader name of a cached pipeline (pointer identity), for timing by kernel.
    pub(crate) fn pipeline_name(&self, pipeline: &wgpu::ComputePipeline) -> Option<&'static str> {
        let cache = self.pipelines.lock().ok()?;
        cache
            .iter()
            // A slot being compiled is not the pipeline being recorded: no waiting.
            .find(|(_, slot)| {
                slot.try_lock().is_ok_and(|p| {
                    p.as_ref()
                        .is_some_and(|p| std::ptr::eq(p.as_ref(), pipeline))
                })
            })
            .map(|((name, _), _)| *name)
    }

    /// Bytes up, bytes down and queue submissions since the context was built or the last
    /// [`reset_transfers`](Self::reset_transfers) (see [`Transfers`]).
    pub fn transfers(&self) -> Transfers {
        self.ledger.snapshot()
    }

    /// Zeroes the transfer ledger, returning what it held.
    pub fn reset_transfers(&self) -> Transfers {
        self.ledger.take()
    }

    /// Records `bytes` uploaded by code that writes through `self.queue` directly.
    pub fn count_upload(&self, bytes: u64) {
        self.ledger.upload(bytes);
    }

    /// Records `bytes` read back by code that maps its own staging buffers.
    pub fn count_download(&self, bytes: u64) {
        self.ledger.download(bytes);
    }

    /// Records one queue submission made through `self.queue` directly.
    pub fn count_submission(&self) {
        self.ledger.submission();
    }

    /// Whether fresh storage buffers are poisoned ([`GpuOptions::poison_outputs`]).
    pub fn poisons_outputs(&self) -> bool {
        self.poison
    }

    /// Makes the next GPU operation fail with `fault` (tests of fallbacks).
    pub fn inject_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = Some(fault);
        }
    }

    /// Consumes an injected fault of the given kind, if one is pending.
    pub(crate) fn take_fault(&self, kinds: &[Fault]) -> Option<Fault> {
        let mut f = self.fault.lock().ok()?;
        match *f {
            Some(k) if kinds.contains(&k) => f.take(),
            _ => None,
        }
    }

    /// Returns the first GPU error captured since the last check (validation, OOM) or a
    /// device-lost error; injected `DeviceLost` faults surface here too.
    pub fn check(&self) -> Result<()> {
        if self.take_fault(&[Fault::DeviceLost]).is_some() {
            self.lost.store(true, Ordering::SeqCst);
        }
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::DeviceLost(format!("{} was lost", self.info.name)));
        }
        let taken = self.captured.lock().ok().and_then(|mut s| s.take());
        match taken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The pipeline for shader `name` (a file in `shaders/`), compiled on first use.
    pub(crate) fn pipeline(&self, name: &'static str) -> Result<Arc<wgpu::ComputePipeline>> {
        self.specialized_pipeline(name, &[])
    }

    /// The most loop iterations one shader invocation may run on this adapter: `Some` on
    /// software adapters (llvmpipe cuts an invocation's loops short past
    /// [`LLVMPIPE_LOOP_LIMIT`](crate::kernel::loop_budget::LLVMPIPE_LOOP_LIMIT) in all,
    /// silently), `None` where nothing is known to cap them.
    pub fn loop_limit(&self) -> Option<u64> {
        self.quirks().loop_limit
    }

    /// Refuses a dispatch whose invocations would each run `iterations` loop iterations,
    /// past [`loop_limit`](Self::loop_limit): a typed error naming the kernel and K, not
    /// counts cut short.
    pub(crate) fn check_loops(&self, kernel: &str, k: usize, iterations: u64) -> Result<()> {
        match self.loop_limit() {
            Some(limit) if iterations > limit => Err(self.loop_cap_error(kernel, k, iterations)),
            _ => Ok(()),
        }
    }

    /// The error of a dispatch whose invocations would run `iterations` loop iterations,
    /// past [`loop_limit`](Self::loop_limit).
    pub(crate) fn loop_cap_error(&self, kernel: &str, k: usize, iterations: u64) -> Error {
        let limit = self.loop_limit().unwrap_or(u64::MAX);
        Error::Gpu(format!(
            "{kernel} at K = {k}: about {iterations} loop iterations per shader invocation, \
             more than the {limit} that {} runs before it cuts loops short (its results would \
             be wrong): use the CPU path (--device cpu)",
            self.info.name
        ))
    }

    /// [`GpuOptions::tally_lanes`], when set.
    pub(crate) fn forced_tally_lanes(&self) -> Option<u32> {
        self.tally_lanes
    }

    /// Whether [`specialized_pipeline`](Self::specialized_pipeline) applies its constants
    /// (false with [`GpuOptions::generic_pipelines`]): callers whose dispatch shape
    /// follows a constant (the tally's lanes per row) ask.
    pub(crate) fn specialises_pipelines(&self) -> bool {
        !self.generic_pipelines
    }

    /// The pipeline for shader `name` with its pipeline-overridable constants set to
    /// `constants` (compiled on first use of that combination, then cached). A shader's
    /// override constants default to 0, meaning "read the value from the uniform"; a value
    /// turns its loops into fixed-count loops the compiler unrolls (and per-thread arrays
    /// into registers). Arithmetic is unchanged, so results are the same bits.
    /// With [`GpuOptions::generic_pipelines`] every constant stays 0.
    pub(crate) fn specialized_pipeline(
        &self,
        name: &'static str,
        constants: &[(&'static str, u32)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        self.compile(name, constants, false)?
            .ok_or_else(|| Error::Gpu(format!("pipeline {name} was not compiled")))
    }

    /// Compiles (or finds) a pipeline. `warm`: a warm-up on its own thread, which must
    /// neither take errors other threads' work left in the captured slot (`check`) nor
    /// leave its own there: its errors go to its own (thread-local) error scopes, and a
    /// pipeline that fails is not cached (`Ok(None)`), so the call that needs it compiles
    /// it again and reports the error itself.
    pub(crate) fn compile(
        &self,
        name: &'static str,
        constants: &[(&'static str, u32)],
        warm: bool,
    ) -> Result<Option<Arc<wgpu::ComputePipeline>>> {
        let constants: Vec<(&'static str, u32)> = match self.generic_pipelines {
            true => Vec::new(),
            false => constants.iter().copied().filter(|&(_, v)| v != 0).collect(),
        };
        let key = (name, constants);
        let slot = {
            let mut cache = self
                .pipelines
                .lock()
                .map_err(|_| Error::Gpu("pipeline cache poisoned".into()))?;
            cache.entry(key.clone()).or_default().clone()
        };
        let mut slot = slot
            .lock()
            .map_err(|_| Error::Gpu("pipeline cache poisoned".into()))?;
        if let Some(p) = slot.as_ref() {
            return Ok(Some(p.clone()));
        }
        let scopes = warm.then(|| {
            [
                wgpu::ErrorFilter::Validation,
                wgpu::ErrorFilter::OutOfMemory,
                wgpu::ErrorFilter::Internal,
            ]
            .map(|f| self.device.push_error_scope(f))
        });
        let source =
            shaders::source(name).ok_or_else(|| Error::Gpu(format!("no shader named {name}")))?;
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let values: Vec<(&str, f64)> = key.1.iter().map(|&(c, v)| (c, v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &values,
                    // Every shader writes each workgroup variable it reads before the
                    // barrier that publishes it (each shader's first block does that);
                    // zeroing them first would cost a pass over up to 16 KiB per workgroup.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        match scopes {
            Some(scopes) => {
                // Innermost first; any error: not cached.
                let mut failed = false;
                for scope in scopes.into_iter().rev() {
                    failed |= pollster::block_on(scope.pop()).is_some();
                }
                if failed {
                    return Ok(None);
                }
            }
            None => self.check()?,
        }
        let p = Arc::new(pipeline);
        *slot = Some(p.clone());
        Ok(Some(p))
    }

    /// Compiles every shader now, so the first real call is not the slow one.
    pub fn warm_up(&self) -> Result<()> {
        for name in shaders::NAMES {
            self.pipeline(name)?;
        }
        Ok(())
    }
}

/// Keeps the Vulkan loader's implicit Mesa device-select layer from printing
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." (twice, from
/// libwayland-client) when the process has no Wayland session.
///
/// wgpu enables `VK_KHR_wayland_surface` whenever the driver offers it (for surfaces this
/// crate never makes), and the layer then calls `wl_display_connect` while enumerating
/// devices to find the compositor's GPU; libwayland logs that line to stderr when
/// `XDG_RUNTIME_DIR` is unset or not absolute. Without a runtime directory that lookup
/// cannot succeed anyway, and the adapter ranking here does not use the layer's order, so
/// the layer is disabled for this process (`NODEVICE_SELECT=1`, the switch in its
/// manifest) exactly when it could only print noise: `XDG_RUNTIME_DIR` unset or relative,
/// `WAYLAND_DISPLAY` not an absolute socket path, and none of `NODEVICE_SELECT`,
/// `MESA_VK_DEVICE_SELECT`, `MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE`, `DRI_PRIME` set
/// (a user who asks the layer for a device keeps it, and its message). Runs once per
/// process, before the first instance is created; concurrent callers wait for it.
/// [`GpuContext::from_device`] (the caller's own device) never touches the environment.
pub fn quiet_start() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if needs_device_select_off(|k| std::env::var_os(k)) {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    });
}

/// The rule of [`quiet_start`] over an environment lookup (pure, for tests).
pub fn needs_device_select_off(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let absolute =
        |k: &str| get(k).is_some_and(|v| std::path::Path::new(&v).is_absolute() && !v.is_empty());
    let set = |k: &str| get(k).is_some();
    !absolute("XDG_RUNTIME_DIR")
        && !absolute("WAYLAND_DISPLAY")
        && !set("NODEVICE_SELECT")
        && !set("MESA_VK_DEVICE_SELECT")
        && !set("MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE")
        && !set("DRI_PRIME")
}
