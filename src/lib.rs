//! # conformal-gpu
//!
//! Estimates a classifier's accuracy on an unlabelled, shifted target domain with
//! conformal prediction and its baselines, with WGSL compute shaders (through wgpu) doing
//! the numerical work and a CPU reference path that computes the same thing.
//!
//! Every GPU kernel (`shaders/x.wgsl`, `gpu::x`) has a CPU mirror of the same name
//! (`cpu::x`); what the two share (parameter structs, output layouts, constants, partials
//! and their merge, pure host steps) is the contract in `kernel::x`, so neither path
//! imports the other. Estimators are written once over the [`backend::Backend`] trait.
//! Method definitions follow DESIGN.md section 2 to the letter.
//!
//! `methods/` is a ladder, each file importing only those below it: the source math
//! (`thresholds`, `temperature`, `quantile`) and the mergeable `tally`; the `bootstrap`
//! refit; the `calibration`; a target's `report`; the targets (`target`: rows in memory,
//! `files`: `.npz` streamed); and one driver, [`methods::evaluate::run`], that the
//! command line and Python both call.
//!
//! ```
//! use conformal_gpu::backend::CpuBackend;
//! use conformal_gpu::data::PredictionSet;
//! use conformal_gpu::methods::temperature::temperature_report;
//! use ndarray::{array, Array1};
//!
//! // Four rows, two classes: overconfident logits with one mistake.
//! let logits = array![[0.0f32, 4.0], [3.0, 0.0], [0.0, 5.0], [2.0, 0.0]];
//! let set = PredictionSet::new("demo", logits).with_labels(Array1::from(vec![1, 0, 1, 1]));
//! let report = temperature_report(&CpuBackend, &set)?;
//! assert!(report.nll_after <= report.nll_before);
//! assert_eq!(report.accuracy, 0.75);
//! # Ok::<(), conformal_gpu::Error>(())
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backend;
// The command line lives in the library so that the binary and Python's `sweep` run the
// same code (one option parser, one sweep); it is the top rung, imported by nothing here,
// and not a stable API: its items are documented by `--help`.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod cli;
pub mod cpu;
pub mod data;
pub mod device;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod kernel;
pub mod methods;
pub mod provenance;
pub mod report;
pub mod serde_bytes;
pub mod serde_exact;
pub mod shaders;

pub use error::{Error, Result};
