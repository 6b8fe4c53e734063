//! The kernel contract layer (DESIGN.md section 3): what a WGSL shader and both of its host
//! sides (`gpu::x`, the wrapper that dispatches it, and `cpu::x`, its CPU mirror) share,
//! one file per kernel: `#[repr(C)]` uniform parameter structs, output layouts, constants
//! (workgroup size, digit widths), partial formats with their merge, and pure host steps
//! (radix narrowing, the sortable key mapping, input checks).
//!
//! `gpu/` and `cpu/` both depend on this module and never on each other; this module
//! depends on neither (nor on wgpu: the CPU-only build compiles it). `tests/layout.rs`
//! enforces the import rules; `tests/pod_layout.rs` checks every parameter struct against
//! naga's layout of the WGSL struct it mirrors.

pub mod bootstrap;
pub mod calibration;
pub mod class_sum;
pub mod common;
pub mod copy;
pub mod cot_collect;
pub mod cot_two_class;
pub mod lac_scores;
pub mod loop_budget;
pub mod pvalues;
pub mod radix_sort;
pub mod row_stats;
pub mod score_ranks;
pub mod select_histogram;
pub mod softmax;
pub mod tally;
pub mod temperature_nll;

/// Threads (rows, keys) per workgroup of every 1-D kernel. Keep in sync with `WG` in
/// shaders/common.wgsl.
pub const WG: usize = 256;
