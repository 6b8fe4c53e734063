//! The backend trait: the kernels the estimators need, implemented by the CPU path and
//! the GPU path. Methods in `methods/` are written once, generic over `Backend`.

use std::borrow::Cow;

use crate::cpu;
use crate::cpu::calibration::CalibrationStats;
use crate::data::PredictionSet;
use crate::error::Result;

/// Sums over labelled rows for the temperature fit at one `b = 1/T` (f64 totals).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSums {
    /// `sum_i NLL_i`.
    pub nll: f64,
    /// `sum_i dNLL_i/db`.
    pub grad: f64,
    /// `sum_i d2NLL_i/db2`.
    pub hess: f64,
    /// Labelled rows.
    pub rows: f64,
}

/// Labels as the kernels take them: i32, -1 = unknown (also for every row when absent).
pub fn labels_i32(set: &PredictionSet) -> Vec<i32> {
    match &set.labels {
        Some(l) => l
            .iter()
            .map(|&y| y.clamp(-1, i32::MAX as i64) as i32)
            .collect(),
        None => vec![-1; set.n()],
    }
}

/// The kernels every estimator is built from.
pub trait Backend {
    /// A prediction set prepared for this backend (resident on the device for the GPU).
    type Rows<'a>
    where
        Self: 'a;

    /// `"cpu"` or `"gpu: <adapter name>"`.
    fn device_name(&self) -> String;

    /// Prepares (uploads) a set once for several passes.
    fn prepare<'a>(&'a self, set: &'a PredictionSet) -> Result<Self::Rows<'a>>;

    /// Temperature-fit sums at inverse temperature `b`.
    fn nll_sums(&self, rows: &Self::Rows<'_>, b: f64) -> Result<NllSums>;

    /// ECE bins and accuracy at temperature `t`.
    fn calibration(&self, rows: &Self::Rows<'_>, t: f32) -> Result<CalibrationStats>;

    /// Row-wise softmax of `logits` (`n * k`) at temperature `t`.
    fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>>;
}

/// The CPU path (rayon over workgroups; f64 sums for the temperature fit).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// A set as the CPU path reads it.
pub struct CpuRows<'a> {
    logits: Cow<'a, [f32]>,
    labels: Vec<i32>,
    k: usize,
}

impl Backend for CpuBackend {
    type Rows<'a> = CpuRows<'a>;

    fn device_name(&self) -> String {
        "cpu".into()
    }

    fn prepare<'a>(&'a self, set: &'a PredictionSet) -> Result<CpuRows<'a>> {
        Ok(CpuRows {
            logits: set.logits_slice(),
            labels: labels_i32(set),
            k: set.k(),
        })
    }

    fn nll_sums(&self, rows: &CpuRows<'_>, b: f64) -> Result<NllSums> {
        let s = cpu::temperature_nll::nll_sums_f64(&rows.logits, &rows.labels, rows.k, b);
        Ok(NllSums {
            nll: s[0],
            grad: s[1],
            hess: s[2],
            rows: s[3],
        })
    }

    fn calibration(&self, rows: &CpuRows<'_>, t: f32) -> Result<CalibrationStats> {
        let parts = cpu::calibration::calibration(&rows.logits, &rows.labels, rows.k, t);
        Ok(CalibrationStats::from_partials(&parts))
    }

    fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
        Ok(cpu::softmax::softmax(logits, k, t))
    }
}

#[cfg(feature = "gpu")]
pub use gpu_backend::GpuBackend;

#[cfg(feature = "gpu")]
mod gpu_backend {
    use super::*;
    use crate::gpu::{self, DeviceRows, GpuContext};

    /// The GPU path over a [`GpuContext`].
    #[derive(Debug)]
    pub struct GpuBackend<'c> {
        /// The context every kernel runs on.
        pub ctx: &'c GpuContext,
    }

    impl<'c> GpuBackend<'c> {
        /// Wraps a context.
        pub fn new(ctx: &'c GpuContext) -> Self {
            GpuBackend { ctx }
        }
    }

    impl Backend for GpuBackend<'_> {
        type Rows<'a>
            = DeviceRows
        where
            Self: 'a;

        fn device_name(&self) -> String {
            format!("gpu: {}", self.ctx.adapter_name())
        }

        fn prepare<'a>(&'a self, set: &'a PredictionSet) -> Result<DeviceRows> {
            self.ctx
                .upload_rows(&set.logits_slice(), &labels_i32(set), set.k())
        }

        fn nll_sums(&self, rows: &DeviceRows, b: f64) -> Result<NllSums> {
            let parts = gpu::temperature_nll::temperature_nll(self.ctx, rows, b as f32)?;
            let mut s = NllSums::default();
            for p in parts {
                s.nll += p[0] as f64;
                s.grad += p[1] as f64;
                s.hess += p[2] as f64;
                s.rows += p[3] as f64;
            }
            Ok(s)
        }

        fn calibration(&self, rows: &DeviceRows, t: f32) -> Result<CalibrationStats> {
            let parts = gpu::calibration::calibration(self.ctx, rows, t)?;
            Ok(CalibrationStats::from_partials(&parts))
        }

        fn softmax(&self, logits: &[f32], k: usize, t: f32) -> Result<Vec<f32>> {
            gpu::softmax::softmax(self.ctx, logits, k, t)
        }
    }
}
