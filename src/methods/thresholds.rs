//! The source's thresholds of one mode (DESIGN.md 2.5, 2.7, 2.8): ATC's threshold and tie
//! share, CPC's sweep to q*, qhat per level, and the sorted LAC scores p-values count
//! against; and the tally plan they give a chunk.

use serde::{Deserialize, Serialize};

use crate::kernel::row_stats::NSTAT;
use crate::kernel::tally::TallyPlan;
use crate::methods::quantile::conformal_k;

/// ATC threshold on the source: `t`, and the share `lambda` of the tie group at `t`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AtcThreshold {
    /// The c-th largest source score (`None` when no source row is correct).
    #[serde(with = "crate::serde_exact::opt")]
    pub t: Option<f32>,
    /// `(c - #{g > t}) / #{g = t}`.
    pub lambda: f64,
}

impl AtcThreshold {
    /// From the ascending-sorted source scores and the number of correct rows `c`.
    pub fn new(sorted: &[f32], c: usize) -> Self {
        if c == 0 || sorted.is_empty() {
            return AtcThreshold {
                t: None,
                lambda: 0.0,
            };
        }
        let n = sorted.len();
        let c = c.min(n);
        let t = sorted[n - c];
        let upper = sorted.partition_point(|&x| x <= t);
        let lower = sorted.partition_point(|&x| x < t);
        let above = n - upper;
        let ties = upper - lower;
        AtcThreshold {
            t: Some(t),
            lambda: (c - above) as f64 / ties as f64,
        }
    }

    /// ATC from the counts of target scores above and equal to `t` over `n` rows.
    pub fn estimate(&self, above: u64, equal: u64, n: u64) -> f64 {
        match self.t {
            None => 0.0,
            Some(_) => (above as f64 + self.lambda * equal as f64) / n as f64,
        }
    }
}

/// Chooses CPC's `q*` by the sweep of DESIGN.md 2.8. `scores` are the ascending LAC
/// scores, `one_minus_p1`/`one_minus_p2` the ascending `1 - p_(1)` and `1 - p_(2)` of the
/// same rows, `correct` the number of correct source rows. Returns `(q*, i)` with `i` the
/// 1-based index of q*'s first occurrence (`n + 1` and `None` for +inf).
/// Generic over the score type: the same sweep serves every score's smallest and
/// second-smallest class scores (DESIGN.md 2.15, in f64).
pub fn cpc_sweep<F: PartialOrd + Copy>(
    scores: &[F],
    one_minus_p1: &[F],
    one_minus_p2: &[F],
    correct: usize,
) -> (Option<F>, usize) {
    let n = scores.len();
    // +inf: no singleton (1 - p_(2) > inf never holds), |R - acc| = c / n.
    let mut best: (Option<F>, usize, usize) = (None, n + 1, usize::MAX);
    let (mut ia, mut ib) = (0usize, 0usize);
    for (i, &q) in scores.iter().enumerate() {
        if i > 0 && scores[i - 1] == q {
            continue; // same candidate: R is equal, the first index stands
        }
        while ia < n && one_minus_p1[ia] <= q {
            ia += 1;
        }
        while ib < n && one_minus_p2[ib] <= q {
            ib += 1;
        }
        // Singletons at q: rows with 1 - p_(1) <= q minus rows with 1 - p_(2) <= q
        // (the second implies the first). |R_S - acc(S)| = |count - c| / n, in integers.
        let diff = (ia - ib).abs_diff(correct);
        if diff < best.2 {
            best = (Some(q), i + 1, diff);
        }
    }
    if best.0.is_none() || correct < best.2 {
        // +inf (count 0) is strictly better than every finite candidate.
        return (None, n + 1);
    }
    (best.0, best.1)
}

/// Everything the targets need from the source in one mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeCalibration {
    /// Temperature of the mode (1 for `raw`).
    #[serde(with = "crate::serde_exact::one")]
    pub t: f32,
    /// Source rows.
    pub n: usize,
    /// Correct source rows.
    pub correct: usize,
    /// AC(S): mean largest probability on the source.
    pub ac: f64,
    /// ATC-MC threshold.
    pub atc_mc: AtcThreshold,
    /// ATC-NE threshold.
    pub atc_ne: AtcThreshold,
    /// qhat per level (`None` = +inf: k > n).
    #[serde(with = "crate::serde_exact::vec_opt")]
    pub qhats: Vec<Option<f32>>,
    /// CPC's q* (`None` = +inf).
    #[serde(with = "crate::serde_exact::opt")]
    pub cpc_q: Option<f32>,
    /// `alpha* = 1 - i/(n+1)`.
    pub cpc_alpha: f64,
    /// The source's LAC scores, ascending (p-values count against them).
    #[serde(with = "crate::serde_exact::vec")]
    pub sorted_lac: Vec<f32>,
}

impl ModeCalibration {
    /// Accuracy of the source.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n as f64
    }

    /// From the source's sorted statistics columns at temperature `t` and its number
    /// of correct rows `correct` (argmax of the logits: the same in every mode).
    pub(crate) fn from_columns(
        cols: [Vec<f32>; NSTAT],
        correct: usize,
        t: f32,
        alphas: &[f64],
    ) -> Self {
        let [mc, ne, lac, a, b] = cols;
        let n = lac.len();
        // AC(S): summed in sorted order, the same on every backend.
        let ac = mc.iter().map(|&p| p as f64).sum::<f64>() / n as f64;
        let qhats = alphas
            .iter()
            .map(|&alpha| conformal_k(n, alpha).map(|k| lac[k - 1]))
            .collect();
        let (cpc_q, i) = cpc_sweep(&lac, &a, &b, correct);
        ModeCalibration {
            t,
            n,
            correct,
            ac,
            atc_mc: AtcThreshold::new(&mc, correct),
            atc_ne: AtcThreshold::new(&ne, correct),
            qhats,
            cpc_q,
            cpc_alpha: 1.0 - i as f64 / (n as f64 + 1.0),
            sorted_lac: lac,
        }
    }

    /// The tally plan of this mode for a chunk's labels and group ids.
    pub fn plan<'a>(&'a self, labels: &'a [i32], groups: [Option<&'a [i64]>; 2]) -> TallyPlan<'a> {
        TallyPlan {
            t: self.t,
            atc_mc: self.atc_mc.t,
            atc_ne: self.atc_ne.t,
            cpc_q: self.cpc_q,
            qhats: &self.qhats,
            labels,
            groups,
        }
    }
}
