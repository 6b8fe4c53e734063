//! The report's data model: what an evaluation says about the source, each target and
//! its groups, and the MAE rows. JSON, table and plots are renderings of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kernel::calibration::CalibrationStats;
pub use crate::provenance::InputFile;
pub use crate::report::estimates::{Estimates, Method, Modes};

/// The CPC threshold chosen on the source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CpcChoice {
    /// `q*` (`None` = +inf).
    pub q: Option<f64>,
    /// `alpha* = 1 - i/(n+1)`.
    pub alpha: f64,
}

/// Conformal diagnostics at one level.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConformalStats {
    /// Level.
    pub alpha: f64,
    /// The conformal rank `k = ceil((n+1)(1-alpha))` on the source's n (DESIGN.md 2.5).
    pub k: usize,
    /// `qhat(alpha) = s_(k)`; `None` (`null` in JSON) = +inf: k > n.
    pub qhat: Option<f64>,
    /// Mean prediction-set size.
    pub mean_set_size: f64,
    /// Share of singleton sets.
    pub singleton_rate: f64,
    /// Share of empty sets.
    pub empty_rate: f64,
    /// Share of labelled rows whose label is in the set (`None` without labels).
    pub coverage: Option<f64>,
}

/// One group (slide or hospital) of a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    /// Group id.
    pub id: i64,
    /// Rows.
    pub n: usize,
    /// Accuracy over the group's labelled rows.
    pub true_accuracy: Option<f64>,
    /// Estimates on the group's rows.
    pub estimates: Modes<Estimates>,
    /// Bootstrap intervals (`ci`, `true_accuracy_ci`, `error_ci`), with a bootstrap.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<crate::report::intervals::Intervals>,
}

/// Everything reported for one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    /// Set name.
    pub name: String,
    /// Rows.
    pub n: usize,
    /// Rows with a known label.
    pub n_labelled: usize,
    /// Every label known.
    pub labelled: bool,
    /// Accuracy over the known rows (`None` when no label is known).
    pub true_accuracy: Option<f64>,
    /// The estimates.
    pub estimates: Modes<Estimates>,
    /// The CPC threshold (a source property, repeated per target for reading ease).
    pub cpc: Modes<CpcChoice>,
    /// Conformal diagnostics per level.
    pub conformal: Modes<Vec<ConformalStats>>,
    /// Per group array present (`hospital`, `slide`): per group id.
    pub groups: BTreeMap<String, Vec<GroupReport>>,
    /// Bootstrap intervals (`ci`, `true_accuracy_ci`, `error_ci`), with a bootstrap.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<crate::report::intervals::Intervals>,
}

/// The source set's calibration summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Set name.
    pub name: String,
    /// Rows.
    pub n: usize,
    /// Classes.
    pub k: usize,
    /// Accuracy of the argmax of the logits.
    pub accuracy: f64,
    /// Temperature of the `ts` mode.
    pub temperature: f64,
    /// Whether the fit converged (true for a given temperature).
    pub converged: bool,
    /// Newton passes of the fit (0 for a given temperature).
    pub iterations: u32,
    /// Mean NLL at T = 1.
    pub nll_before: f64,
    /// Mean NLL at the `ts` temperature.
    pub nll_after: f64,
    /// ECE at T = 1.
    pub ece_before: f64,
    /// ECE at the `ts` temperature.
    pub ece_after: f64,
    /// Per level: the conformal quantile on the source, per mode.
    pub qhat: Modes<Vec<Option<f64>>>,
    /// Warning from the fit, if any.
    pub warning: Option<String>,
    /// ECE bins before (`raw`) and after (`ts`) scaling, for reliability diagrams.
    pub calibration: Modes<CalibrationStats>,
}

/// MAE per method (`None` when no target has labels).
pub type MaeRow = BTreeMap<&'static str, Option<f64>>;

/// Per-row outputs of one mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowMode {
    /// Largest probability.
    pub max_prob: Vec<f32>,
    /// Credibility: the largest conformal p-value, `(1 + #{i : s_i >= 1 - p_(1)}) / (n + 1)`.
    pub credibility: Vec<f64>,
    /// Confidence: 1 - the second largest conformal p-value.
    pub confidence: Vec<f64>,
    /// Set size per row and level, `[rows, A]` row-major.
    pub set_size: Vec<i64>,
}

impl RowMode {
    /// Appends the rows of `more` (same levels).
    pub fn append(&mut self, mut more: RowMode) {
        self.max_prob.append(&mut more.max_prob);
        self.credibility.append(&mut more.credibility);
        self.confidence.append(&mut more.confidence);
        self.set_size.append(&mut more.set_size);
    }
}

/// Per-row outputs of one set (the source or a target), both modes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowOutputs {
    /// Set name.
    pub name: String,
    /// Predicted class (the same in both modes: argmax of the logits).
    pub yhat: Vec<i64>,
    /// Per mode.
    pub modes: Modes<RowMode>,
}

/// Milliseconds per phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading inputs (filled by the caller).
    pub load: f64,
    /// Temperature fit and calibration statistics.
    pub temperature: f64,
    /// Source row statistics, sorting, thresholds.
    pub sort: f64,
    /// Target passes and counting.
    pub estimate: f64,
    /// Everything.
    pub total: f64,
}

/// Result of an evaluation (`methods::evaluate::evaluate`, or a calibration and merged
/// tallies).
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// `"cpu"` or `"gpu: <adapter>"`.
    pub device: String,
    /// Levels.
    pub alphas: Vec<f64>,
    /// Source summary.
    pub source: SourceReport,
    /// One report per target, in the order given.
    pub targets: Vec<TargetReport>,
    /// MAE rows: `raw`, `ts`, and `<group>_raw`, `<group>_ts` for each group array seen.
    pub mae: BTreeMap<String, MaeRow>,
    /// Per-row outputs when asked for.
    pub rows: Vec<RowOutputs>,
    /// Phase timings.
    pub timings_ms: Timings,
    /// MAE intervals, keyed as `mae` (with a bootstrap).
    pub mae_ci: Option<BTreeMap<String, crate::report::intervals::MethodIntervals>>,
    /// Replicates, confidence and seed (with a bootstrap).
    pub bootstrap: Option<BootstrapMeta>,
}

/// The bootstrap settings of a report (`meta.bootstrap`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BootstrapMeta {
    /// Replicates B.
    pub replicates: usize,
    /// Confidence of the intervals.
    pub confidence: f64,
    /// Seed of the weights.
    pub seed: u64,
}

/// Host-device traffic since the context was built or `GpuContext::reset_transfers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfers {
    /// Bytes written to device buffers: buffers created with contents (data, uniforms)
    /// and `write_buffer` calls. The test-only output poisoning is not counted.
    pub upload_bytes: u64,
    /// Bytes copied into mappable staging buffers and read back (padded to 4 bytes, as
    /// copied), timestamp readbacks included.
    pub download_bytes: u64,
    /// Queue submissions.
    pub submissions: u64,
}

/// Field-wise sum (ledgers of several contexts or runs).
impl std::ops::Add for Transfers {
    type Output = Transfers;

    fn add(self, other: Transfers) -> Transfers {
        Transfers {
            upload_bytes: self.upload_bytes + other.upload_bytes,
            download_bytes: self.download_bytes + other.download_bytes,
            submissions: self.submissions + other.submissions,
        }
    }
}

impl std::ops::AddAssign for Transfers {
    fn add_assign(&mut self, other: Transfers) {
        *self = *self + other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON keys of [`Estimates`] (serde renames) are the [`Method`] names, in order.
    #[test]
    fn estimate_keys_are_the_method_names() {
        let e = Estimates {
            ac: 1.0,
            doc: 2.0,
            atc_mc: 3.0,
            atc_ne: 4.0,
            cpc: 5.0,
            cot: Some(6.0),
        };
        let v = serde_json::to_value(e).unwrap();
        for (i, m) in Method::ALL.into_iter().enumerate() {
            assert_eq!(
                v[m.name()],
                serde_json::json!(i as f64 + 1.0),
                "{}",
                m.name()
            );
            assert_eq!(e.get(m), i as f64 + 1.0);
        }
        assert_eq!(v.as_object().unwrap().len(), Method::ALL.len());
    }
}
