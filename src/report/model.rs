//! The report's data model: what an evaluation says about the source, each target and
//! its groups, and the MAE rows. JSON, table and plots are renderings of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kernel::calibration::CalibrationStats;
pub use crate::provenance::InputFile;
pub use crate::report::estimates::{Estimates, Method, Modes};

/// The CPC threshold chosen on the source.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpcChoice {
    /// `q*` (`None` = +inf).
    pub q: Option<f64>,
    /// `alpha* = 1 - i/(n+1)`.
    pub alpha: f64,
}

/// The conformal options of an evaluation (`--score`, `--randomize`, the score
/// parameters, `--class-conditional`), recorded in calibrations and reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetOptions {
    /// Scores, in report order (`lac`, `aps`, `raps`, `saps`, `topk`; no repeats).
    pub scores: Vec<String>,
    /// One uniform draw per row (`true`) or the deterministic score (`u = 1`).
    pub randomize: bool,
    /// Seed of the draws (the evaluation's `--seed`).
    pub seed: u64,
    /// RAPS penalty per rank past `k_reg` (>= 0).
    pub raps_lambda: f64,
    /// RAPS ranks without penalty.
    pub raps_k_reg: usize,
    /// SAPS weight of a rank (> 0).
    pub saps_lambda: f64,
    /// Mondrian thresholds per class as well (entries after the marginal ones).
    pub class_conditional: bool,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            scores: vec!["lac".into()],
            randomize: false,
            seed: 0,
            raps_lambda: 0.01,
            raps_k_reg: 1,
            saps_lambda: 0.2,
            class_conditional: false,
        }
    }
}

/// One value, or one per class (a class-conditional entry's `k` and `qhat`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerClass<T> {
    /// Marginal.
    One(T),
    /// Per class.
    Each(Vec<T>),
}

impl<T: Clone> PerClass<T> {
    /// The marginal value (`None` for a per-class list).
    pub fn marginal(&self) -> Option<T> {
        match self {
            PerClass::One(v) => Some(v.clone()),
            PerClass::Each(_) => None,
        }
    }

    /// `One` for a single value, else `Each`.
    pub fn of(v: Vec<T>) -> Self {
        if v.len() == 1 {
            PerClass::One(v[0].clone())
        } else {
            PerClass::Each(v)
        }
    }
}

/// Class-conditional coverage of an entry (target level only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassCoverage {
    /// Mean of `|cov_c - (1 - alpha)|` over the classes with a labelled row (`None`
    /// without labels).
    pub covgap: Option<f64>,
    /// `cov_c` per class (`None` for a class without labelled rows; the whole list
    /// `None` without labels).
    pub class_coverage: Option<Vec<Option<f64>>>,
}

/// Conformal diagnostics of one entry: a score, marginal or class-conditional, at one
/// level (DESIGN.md 2.14).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConformalStats {
    /// Score (`lac`, `aps`, `raps`, `saps`, `topk`).
    pub score: String,
    /// Mondrian thresholds (per class).
    pub class_conditional: bool,
    /// Level.
    pub alpha: f64,
    /// The conformal rank `k = ceil((n+1)(1-alpha))` on the source's n (DESIGN.md 2.5);
    /// per class on `n_c` when class-conditional.
    pub k: PerClass<usize>,
    /// `qhat(alpha) = s_(k)`; `None` (`null` in JSON) = +inf: k > n. Per class when
    /// class-conditional.
    pub qhat: PerClass<Option<f64>>,
    /// Mean prediction-set size.
    pub mean_set_size: f64,
    /// Share of singleton sets.
    pub singleton_rate: f64,
    /// Share of empty sets.
    pub empty_rate: f64,
    /// Share of labelled rows whose label is in the set (`None` without labels).
    pub coverage: Option<f64>,
    /// Size-stratified coverage violation (`None` without labels).
    pub sscv: Option<f64>,
    /// Per-class coverage and CovGap (target level only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub by_class: Option<ClassCoverage>,
}

/// One group (slide or hospital) of a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupReport {
    /// Group id.
    pub id: i64,
    /// Rows.
    pub n: usize,
    /// Rows with a known label.
    pub n_labelled: usize,
    /// Accuracy over the group's labelled rows.
    pub true_accuracy: Option<f64>,
    /// Estimates on the group's rows.
    pub estimates: Modes<Estimates>,
    /// Conformal diagnostics per entry (no class coverage: target level only).
    pub conformal: Modes<Vec<ConformalStats>>,
    /// Bootstrap intervals (`ci`, `true_accuracy_ci`, `error_ci`), with a bootstrap.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<crate::report::intervals::Intervals>,
}

/// A target's score-based estimators (DESIGN.md 2.17): scores, not accuracies.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShiftScores {
    /// `||P||_* / sqrt(N min(N, K))`.
    pub nuclear_norm: f64,
    /// MaNo (global form).
    pub mano: f64,
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
    /// Score-based estimators per mode (absent when the rows are not known, as in a
    /// report merged from tallies without them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Modes<ShiftScores>>,
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
    /// The conformal options (scores, randomize, seed, score parameters,
    /// class_conditional; absent in calibrations written before scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conformal: Option<SetOptions>,
    /// Per mode and score: the marginal qhat per level (the report's `source.qhat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_qhat: Option<Modes<BTreeMap<String, Vec<Option<f64>>>>>,
    /// Per mode and score (`lac`, `aps`, `raps`, `saps`): CPC's threshold (the report's
    /// `source.cpc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_cpc: Option<Modes<BTreeMap<String, CpcChoice>>>,
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
    /// Globs of target names kept out of the MAE rows (`--exclude`).
    pub mae_exclude: Vec<String>,
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
            cpc_aps: Some(6.0),
            cpc_raps: Some(7.0),
            cpc_saps: Some(8.0),
            cot: Some(9.0),
            cott: Some(10.0),
            cot_ref: None,
            cott_ref: None,
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
        // Without a score's CPC its key is absent, not null (default reports unchanged).
        let plain = Estimates {
            cpc_aps: None,
            cpc_raps: None,
            cpc_saps: None,
            ..e
        };
        let v = serde_json::to_value(plain).unwrap();
        assert_eq!(v.as_object().unwrap().len(), Method::ALL.len() - 3);
        assert_eq!(Method::present(Some(&plain)).len(), Method::ALL.len() - 3);
        assert_eq!(Method::present(Some(&e)), Method::ALL.to_vec());
        // The reference values: absent when not asked for, `null` when not computable,
        // and read back as they were written (present-null stays present).
        let with_ref = Estimates {
            cot_ref: Some(Some(0.5)),
            cott_ref: Some(None),
            ..e
        };
        let v = serde_json::to_value(with_ref).unwrap();
        assert_eq!(v["COT-ref"], serde_json::json!(0.5));
        assert!(v["COTT-ref"].is_null() && v.as_object().unwrap().contains_key("COTT-ref"));
        let back: Estimates = serde_json::from_value(v).unwrap();
        assert_eq!(back, with_ref);
        let back: Estimates = serde_json::from_value(serde_json::to_value(e).unwrap()).unwrap();
        assert_eq!(back.cot_ref, None);
    }
}
