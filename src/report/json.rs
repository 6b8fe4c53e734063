//! The JSON report (field names fixed by the CLI contract).

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::report::model::Evaluation;
pub use crate::report::model::{InputFile, Transfers};

/// Provenance recorded in the report's `meta`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// Crate version.
    pub version: String,
    /// Git commit the binary was built from (or "unknown").
    pub commit: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Generator seed when the data was generated here.
    pub seed: Option<u64>,
    /// Input files with their SHA-256.
    pub inputs: Vec<InputFile>,
    /// GPU adapter name (`None` on the CPU path).
    pub adapter: Option<String>,
    /// GPU driver and its version (`None` on the CPU path).
    pub driver: Option<String>,
    /// What crossed the bus on a GPU run: bytes up, bytes down, queue submissions
    /// (absent on the CPU path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Transfers>,
    /// GPU kernel time in milliseconds (timestamp queries; with
    /// `CONFORMAL_GPU_TIMESTAMPS=1` on an adapter that has them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_kernel_ms: Option<f64>,
    /// The same time by shader: `{"tally": {"ms": .., "dispatches": ..}, ..}` (with
    /// `gpu_kernel_ms`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub gpu_kernels: std::collections::BTreeMap<String, KernelMs>,
    /// Files of the dataset directory that are not readable prediction sets, skipped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedFile>,
    /// A sweep cell's fingerprint: what the report depends on (see the sweep's docs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Timed GPU work of one shader in the report's `meta.gpu_kernels`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KernelMs {
    /// Milliseconds inside its compute passes.
    pub ms: f64,
    /// Timed dispatches.
    pub dispatches: u64,
}

/// A file skipped by `evaluate`, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedFile {
    /// Path.
    pub file: String,
    /// The error that made it unreadable.
    pub error: String,
}

/// Finite numbers as JSON numbers, everything else (NaN, inf) as `null`.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The JSON report, in exactly the documented shape.
pub fn to_json(eval: &Evaluation, meta: &Meta) -> Result<Value> {
    let enc = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))
    };
    let s = &eval.source;
    let mut source = json!({
        "name": s.name, "n": s.n, "k": s.k, "accuracy": num(s.accuracy),
        "temperature": num(s.temperature), "converged": s.converged, "iterations": s.iterations,
        "nll_before": num(s.nll_before), "nll_after": num(s.nll_after),
        "ece_before": num(s.ece_before), "ece_after": num(s.ece_after),
    });
    // The conformal options and, keyed by score, qhat and CPC's threshold (sources
    // fitted before scores have neither).
    if let Some(c) = &s.conformal {
        source["conformal"] = enc(serde_json::to_value(c))?;
    }
    if let Some(q) = &s.score_qhat {
        source["qhat"] = enc(serde_json::to_value(q))?;
    }
    if let Some(c) = &s.score_cpc {
        source["cpc"] = enc(serde_json::to_value(c))?;
    }
    let targets = enc(serde_json::to_value(&eval.targets))?;
    let mae = enc(serde_json::to_value(&eval.mae))?;
    let timings = enc(serde_json::to_value(&eval.timings_ms))?;
    let mut meta = enc(serde_json::to_value(meta))?;
    let mut out = json!({
        "device": eval.device,
        "alphas": eval.alphas,
        "meta": meta,
        "source": source,
        "targets": targets,
        "mae": mae,
        "timings_ms": timings,
    });
    if !eval.mae_exclude.is_empty() {
        out["mae_exclude"] = json!(eval.mae_exclude);
    }
    // With a bootstrap: the MAE intervals beside the MAE, and the settings in `meta`.
    if let (Some(b), Some(ci)) = (&eval.bootstrap, &eval.mae_ci) {
        if let Some(m) = meta.as_object_mut() {
            m.insert("bootstrap".into(), enc(serde_json::to_value(b))?);
        }
        out["meta"] = meta;
        out["mae_ci"] = enc(serde_json::to_value(ci))?;
    }
    Ok(out)
}
