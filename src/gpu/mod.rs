//! The GPU path: context, buffers, and one wrapper per WGSL kernel (same names as the
//! shaders in `shaders/` and the CPU mirrors in `cpu/`).

pub mod bootstrap;
pub mod buffers;
pub mod calibration;
pub mod context;
pub mod copy;
pub mod cot_collect;
pub mod cot_two_class;
pub mod lac_scores;
pub mod ledger;
pub mod pvalues;
pub mod quirks;
pub mod radix_sort;
pub mod row_stats;
pub mod score_ranks;
pub mod select_histogram;
pub mod softmax;
pub mod staging;
pub mod tally;
pub mod temperature_nll;
pub mod warm_up;

pub use buffers::DeviceRows;
pub use context::{
    is_software, quiet_start, ContextLimits, Fault, GpuContext, GpuOptions, KernelTime,
};
pub use ledger::Transfers;
