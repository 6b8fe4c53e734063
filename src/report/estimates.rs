//! The words every report speaks: the estimates of a target's accuracy, the methods that
//! make them (in report order), and the two modes (`raw`, `ts`) everything comes in.

use serde::{Deserialize, Serialize};

/// The five estimates of a target's accuracy (JSON names as in the report).
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
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 5] = [
        Method::Ac,
        Method::Doc,
        Method::AtcMc,
        Method::AtcNe,
        Method::Cpc,
    ];

    /// The name in reports (JSON keys, table headers, legends).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ac => "AC",
            Method::Doc => "DoC",
            Method::AtcMc => "ATC-MC",
            Method::AtcNe => "ATC-NE",
            Method::Cpc => "CPC",
        }
    }
}

impl Estimates {
    /// The estimate of `m`.
    pub fn get(&self, m: Method) -> f64 {
        match m {
            Method::Ac => self.ac,
            Method::Doc => self.doc,
            Method::AtcMc => self.atc_mc,
            Method::AtcNe => self.atc_ne,
            Method::Cpc => self.cpc,
        }
    }

    /// `(name, value)` pairs in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
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
