//! The CPU path: one mirror per WGSL kernel (same name), reproducing its outputs with a
//! plain loop in the same partition (per-256-row workgroup partials), plus f64 helpers.
//! Mirrors run workgroups in parallel with rayon; each workgroup is a serial loop, so the
//! results do not depend on the thread count. Layouts, parameters and pure host steps
//! shared with the GPU wrappers live in `kernel` (never in `gpu`).

pub mod bootstrap;
pub mod calibration;
pub mod common;
pub mod copy;
pub mod cot_collect;
pub mod cot_two_class;
pub mod host_radix;
pub mod lac_scores;
pub mod math;
pub mod pvalues;
pub mod radix_histogram;
pub mod radix_scan;
pub mod radix_scatter;
pub mod radix_sort;
pub mod row_stats;
pub mod score_ranks;
pub mod select_histogram;
pub mod softmax;
pub mod tally;
pub mod temperature_nll;
