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
    /// Confidence optimal transport (`None`, `null` in JSON: not computed, e.g. a report
    /// merged from tally files, which do not carry COT's rows).
    #[serde(rename = "COT")]
    pub cot: Option<f64>,
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
    /// Confidence optimal transport.
    Cot,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 6] = [
        Method::Ac,
        Method::Doc,
        Method::AtcMc,
        Method::AtcNe,
        Method::Cpc,
        Method::Cot,
    ];

    /// The name in reports (JSON keys, table headers, legends).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ac => "AC",
            Method::Doc => "DoC",
            Method::AtcMc => "ATC-MC",
            Method::AtcNe => "ATC-NE",
            Method::Cpc => "CPC",
            Method::Cot => "COT",
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
            Method::Cot => self.cot.unwrap_or(f64::NAN),
        }
    }

    /// `(name, value)` pairs in report order.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        Method::ALL.map(|m| (m.name(), self.get(m)))
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
