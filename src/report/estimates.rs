//! The words every report speaks: the estimates of a target's accuracy, the methods that
//! make them (in report order), and the two modes (`raw`, `ts`) everything comes in.

use serde::{Deserialize, Serialize};

/// The estimates of a target's accuracy (JSON names as in the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Average confidence.
    #[serde(rename = "AC")]
    pub ac: f64,
    /// Difference of confidences.
    #[serde(rename = "DoC")]
    pub doc: f64,
    /// Average thresholded confidence, max-probability score.
    #[serde(rename = "ATC-MC")]
    pub atc_mc: f64,
    /// Average thresholded confidence, negative-entropy score.
    #[serde(rename = "ATC-NE")]
    pub atc_ne: f64,
    /// Conformal prediction confidence (singleton rate at the source-matched q*).
    #[serde(rename = "CPC")]
    pub cpc: f64,
    /// CPC under the APS score's sets (with `--score` naming `aps`; absent otherwise).
    #[serde(rename = "CPC-APS", default, skip_serializing_if = "Option::is_none")]
    pub cpc_aps: Option<f64>,
    /// CPC under RAPS.
    #[serde(rename = "CPC-RAPS", default, skip_serializing_if = "Option::is_none")]
    pub cpc_raps: Option<f64>,
    /// CPC under SAPS.
    #[serde(rename = "CPC-SAPS", default, skip_serializing_if = "Option::is_none")]
    pub cpc_saps: Option<f64>,
    /// Confidence optimal transport (`None`, `null` in JSON: not computed, e.g. a report
    /// merged from tally files, which do not carry COT's rows).
    #[serde(rename = "COT")]
    pub cot: Option<f64>,
    /// COT with a threshold (DESIGN.md 2.16; `null` where COT is, or with a calibration
    /// written before COTT).
    #[serde(rename = "COTT", default)]
    pub cott: Option<f64>,
    /// COT as the authors' code computes it (`--cot-reference`; ts, target level, no
    /// interval, not a [`Method`]: out of the MAE rows). Absent unless asked for.
    #[serde(
        rename = "COT-ref",
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub cot_ref: Option<Option<f64>>,
    /// COTT as the authors' code computes it (`null`: a source of more than 10,000 rows
    /// without their subsample's indices).
    #[serde(
        rename = "COTT-ref",
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub cott_ref: Option<Option<f64>>,
}

/// A key that is present (even as `null`) is `Some`: the reference values are absent
/// when not asked for, `null` when asked for and not computable.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// The estimators of a target's accuracy, in report order: the one list every table,
/// plot, MAE row and JSON key is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// Average confidence.
    Ac,
    /// Difference of confidences.
    Doc,
    /// Average thresholded confidence, max-probability score.
    AtcMc,
    /// Average thresholded confidence, negative-entropy score.
    AtcNe,
    /// Conformal prediction confidence.
    Cpc,
    /// CPC under APS sets.
    CpcAps,
    /// CPC under RAPS sets.
    CpcRaps,
    /// CPC under SAPS sets.
    CpcSaps,
    /// Confidence optimal transport.
    Cot,
    /// COT with a threshold.
    Cott,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 10] = [
        Method::Ac,
        Method::Doc,
        Method::AtcMc,
        Method::AtcNe,
        Method::Cpc,
        Method::CpcAps,
        Method::CpcRaps,
        Method::CpcSaps,
        Method::Cot,
        Method::Cott,
    ];

    /// Whether the method is reported only when asked for (the CPC of a `--score`).
    pub fn is_optional(self) -> bool {
        matches!(self, Method::CpcAps | Method::CpcRaps | Method::CpcSaps)
    }

    /// Whether a bootstrap gives the method's estimate an interval (not yet for a
    /// score's CPC: its intervals are `null`).
    pub fn has_intervals(self) -> bool {
        !self.is_optional()
    }

    /// The method named `name` in reports.
    pub fn named(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The methods of a report whose estimates include `sample`: every method but the
    /// optional ones `sample` lacks.
    pub fn present(sample: Option<&Estimates>) -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|&m| !m.is_optional() || sample.is_some_and(|e| e.has(m)))
            .collect()
    }

    /// The name in reports (JSON keys, table headers, legends).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ac => "AC",
            Method::Doc => "DoC",
            Method::AtcMc => "ATC-MC",
            Method::AtcNe => "ATC-NE",
            Method::Cpc => "CPC",
            Method::CpcAps => "CPC-APS",
            Method::CpcRaps => "CPC-RAPS",
            Method::CpcSaps => "CPC-SAPS",
            Method::Cot => "COT",
            Method::Cott => "COTT",
        }
    }
}

impl Estimates {
    /// The estimate of `m` (NaN where it was not computed: the convention of replicate
    /// values, which intervals and MAE leave out).
    pub fn get(&self, m: Method) -> f64 {
        match m {
            Method::Ac => self.ac,
            Method::Doc => self.doc,
            Method::AtcMc => self.atc_mc,
            Method::AtcNe => self.atc_ne,
            Method::Cpc => self.cpc,
            Method::CpcAps => self.cpc_aps.unwrap_or(f64::NAN),
            Method::CpcRaps => self.cpc_raps.unwrap_or(f64::NAN),
            Method::CpcSaps => self.cpc_saps.unwrap_or(f64::NAN),
            Method::Cot => self.cot.unwrap_or(f64::NAN),
            Method::Cott => self.cott.unwrap_or(f64::NAN),
        }
    }

    /// Whether the estimates carry method `m` (an optional method only when asked for).
    pub fn has(&self, m: Method) -> bool {
        match m {
            Method::CpcAps => self.cpc_aps.is_some(),
            Method::CpcRaps => self.cpc_raps.is_some(),
            Method::CpcSaps => self.cpc_saps.is_some(),
            _ => true,
        }
    }

    /// Sets the estimate of the optional method named `name` (`CPC-APS`, ...).
    pub fn set_optional(&mut self, name: &str, v: f64) {
        match name {
            "CPC-APS" => self.cpc_aps = Some(v),
            "CPC-RAPS" => self.cpc_raps = Some(v),
            "CPC-SAPS" => self.cpc_saps = Some(v),
            _ => {}
        }
    }

    /// `(name, value)` pairs of the methods present, in report order.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        Method::ALL
            .into_iter()
            .filter(|&m| self.has(m))
            .map(|m| (m.name(), self.get(m)))
            .collect()
    }
}

/// Per-mode pair of values (`raw` = T = 1, `ts` = temperature-scaled).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Modes<T> {
    /// At T = 1.
    pub raw: T,
    /// At the fitted or given temperature.
    pub ts: T,
}

impl<T> Modes<T> {
    /// The `ts` value when `ts`, else the `raw` one.
    pub fn of(&self, ts: bool) -> &T {
        if ts {
            &self.ts
        } else {
            &self.raw
        }
    }
}
