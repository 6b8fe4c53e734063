//! The bootstrap intervals a report carries (DESIGN.md 2.12), and the replicate values
//! they are taken from: data and percentile arithmetic only; the replicates themselves
//! are made in `methods::bootstrap`.

use serde::Serialize;

use crate::kernel::bootstrap::percentile_interval;
use crate::report::estimates::{Estimates, Method, Modes};

/// Every replicate's estimates and true accuracy of a target (or a group), from its
/// replicate counts in both modes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicateValues {
    /// Estimates per replicate.
    pub estimates: Modes<Vec<Estimates>>,
    /// True accuracy per replicate (NaN where the replicate drew no labelled row).
    pub truth: Vec<f64>,
}

impl ReplicateValues {
    /// Marks the optional methods named in `names` as present in every replicate, with
    /// no value (NaN: their intervals are `null`; the replicates do not recompute them).
    pub fn mark_optional(&mut self, names: &[&str]) {
        for e in self.estimates.raw.iter_mut().chain(&mut self.estimates.ts) {
            for n in names {
                e.set_optional(n, f64::NAN);
            }
        }
    }

    /// Per replicate, the absolute error of method `m` in mode `ts` or `raw`.
    pub fn errors(&self, ts: bool, m: Method) -> Vec<f64> {
        self.estimates
            .of(ts)
            .iter()
            .zip(&self.truth)
            .map(|(e, t)| (e.get(m) - t).abs())
            .collect()
    }

    /// The intervals of every estimate.
    pub fn estimate_intervals(&self, confidence: f64) -> Modes<MethodIntervals> {
        let of = |est: &[Estimates]| -> MethodIntervals {
            Method::present(est.first())
                .into_iter()
                .map(|m| {
                    let v: Vec<f64> = est.iter().map(|e| e.get(m)).collect();
                    (m.name(), percentile_interval(&v, confidence))
                })
                .collect()
        };
        Modes {
            raw: of(&self.estimates.raw),
            ts: of(&self.estimates.ts),
        }
    }

    /// The intervals of every absolute error.
    pub fn error_intervals(&self, confidence: f64) -> Modes<MethodIntervals> {
        let of = |ts: bool| -> MethodIntervals {
            Method::present(self.estimates.raw.first())
                .into_iter()
                .map(|m| {
                    (
                        m.name(),
                        percentile_interval(&self.errors(ts, m), confidence),
                    )
                })
                .collect()
        };
        Modes {
            raw: of(false),
            ts: of(true),
        }
    }

    /// The interval of the true accuracy.
    pub fn truth_interval(&self, confidence: f64) -> Option<[f64; 2]> {
        percentile_interval(&self.truth, confidence)
    }
}

/// An interval per method name (`None`: no replicate had a value).
pub type MethodIntervals = std::collections::BTreeMap<&'static str, Option<[f64; 2]>>;

/// Intervals of one target or group, as the report carries them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Intervals {
    /// Every estimate's interval per mode.
    pub ci: Modes<MethodIntervals>,
    /// The true accuracy's (`None` when unlabelled).
    pub true_accuracy_ci: Option<[f64; 2]>,
    /// Every absolute error's per mode (`None` when unlabelled).
    pub error_ci: Option<Modes<MethodIntervals>>,
    /// The replicate values the intervals come from (MAE intervals need them).
    #[serde(skip)]
    pub values: ReplicateValues,
}

impl Intervals {
    /// The intervals of `values`; `labelled` says whether the truth exists.
    pub fn new(values: ReplicateValues, labelled: bool, confidence: f64) -> Self {
        Intervals {
            ci: values.estimate_intervals(confidence),
            true_accuracy_ci: if labelled {
                values.truth_interval(confidence)
            } else {
                None
            },
            error_ci: labelled.then(|| values.error_intervals(confidence)),
            values,
        }
    }
}
