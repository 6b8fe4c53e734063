//! Conformal scores beyond LAC (DESIGN.md 2.13), exact, on the host: APS, RAPS, SAPS and
//! TopK, deterministic (`u = 1`) or randomised (one Philox draw per row), their conformal
//! quantile and prediction sets, marginal or per class (Mondrian). This is the reference
//! the score kernels and the report's set metrics will be checked against; the reports do
//! not carry these scores yet (README).
//!
//! For a row's f32 probabilities and a class k: `A` = the mass strictly above `p_k`, `E` =
//! the mass of k's tie group (k included), `Sigma` = the row's total, each a sum of the
//! probabilities rounded to the nearest multiple of 2^-40 (ties to even) and added as
//! integers, so a score does not depend on the order of the classes; `o = #{j : p_j >=
//! p_k}` (a tie group takes the last rank it spans, so tied classes enter a set together).

use crate::error::{Error, Result};
use crate::kernel::bootstrap::{name_key, philox4x32_10};
use crate::kernel::score_ranks::{prob_grid, ClassRank, RANK_WORDS};
use crate::methods::quantile::{check_alpha, conformal_k};

/// Bits of the probability grid.
pub use crate::kernel::score_ranks::PROB_GRID_BITS;

/// The counter word that no bootstrap replicate reaches: a row's `u` draws there.
pub const U_DRAW_WORD: u32 = 0xFFFF_FFFF;

/// A conformal score and its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Score {
    /// `1 - p_k` (in f32).
    Lac,
    /// Adaptive prediction sets (Romano et al. 2020): `(A + u E) / Sigma`.
    Aps,
    /// Regularised APS (Angelopoulos et al. 2021): APS `+ lambda max(0, o - k_reg)`.
    Raps {
        /// Penalty per rank past `k_reg` (>= 0).
        lambda: f64,
        /// Ranks without penalty.
        k_reg: usize,
    },
    /// Sorted APS (Huang et al. 2024): `u p_max` for the top class, else
    /// `p_max + lambda (o - 2 + u)`.
    Saps {
        /// Weight of a rank (> 0).
        lambda: f64,
    },
    /// The rank: `o - 1 + u`.
    TopK,
}

impl Score {
    /// The score named `name` with the given parameters, checked: a bad parameter is an
    /// error naming it.
    pub fn named(
        name: &str,
        raps_lambda: f64,
        raps_k_reg: usize,
        saps_lambda: f64,
    ) -> Result<Self> {
        match name {
            "lac" => Ok(Score::Lac),
            "aps" => Ok(Score::Aps),
            "raps" => {
                if !(raps_lambda.is_finite() && raps_lambda >= 0.0) {
                    return Err(Error::Invalid(format!(
                        "--raps-lambda {raps_lambda}: must be a finite number >= 0"
                    )));
                }
                Ok(Score::Raps {
                    lambda: raps_lambda,
                    k_reg: raps_k_reg,
                })
            }
            "saps" => {
                if !(saps_lambda.is_finite() && saps_lambda > 0.0) {
                    return Err(Error::Invalid(format!(
                        "--saps-lambda {saps_lambda}: must be a finite number > 0"
                    )));
                }
                Ok(Score::Saps {
                    lambda: saps_lambda,
                })
            }
            "topk" => Ok(Score::TopK),
            other => Err(Error::Invalid(format!(
                "--score {other:?}: expected lac, aps, raps, saps or topk"
            ))),
        }
    }

    /// The name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Score::Lac => "lac",
            Score::Aps => "aps",
            Score::Raps { .. } => "raps",
            Score::Saps { .. } => "saps",
            Score::TopK => "topk",
        }
    }
}

/// The uniform `u` of row `row` of set `name` under `seed` (`--randomize true`): word 0
/// of the bootstrap's Philox4x32-10 (same key and counter layout) at the replicate word
/// [`U_DRAW_WORD`], `(x + 0.5) 2^-32`, never 0 or 1.
pub fn randomized_u(seed: u64, name: &str, row: u64) -> f64 {
    let x = philox4x32_10(
        [row as u32, (row >> 32) as u32, U_DRAW_WORD, name_key(name)],
        [seed as u32, (seed >> 32) as u32],
    )[0];
    (x as f64 + 0.5) * 2f64.powi(-32)
}

/// The score of every class of one row (`probs`, its K f32 probabilities) under `score`
/// with the row's uniform `u` (1 for the deterministic score).
pub fn row_scores(probs: &[f32], score: Score, u: f64) -> Vec<f64> {
    let mut out = vec![0.0f64; probs.len()];
    row_scores_into(probs, score, u, &mut Vec::new(), &mut out);
    out
}

/// [`row_scores`] into `out` (K long), with `order` as reusable scratch: the row loop of
/// a tally calls it once per row and score without allocating.
pub fn row_scores_into(
    probs: &[f32],
    score: Score,
    u: f64,
    order: &mut Vec<usize>,
    out: &mut [f64],
) {
    let k = probs.len();
    if let Score::Lac = score {
        for (o, &p) in out.iter_mut().zip(probs) {
            *o = (1.0 - p) as f64;
        }
        return;
    }
    // Classes by probability, descending; tie groups are runs of equal probabilities.
    order.clear();
    order.extend(0..k);
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let sigma: u64 = probs.iter().map(|&p| prob_grid(p)).sum();
    let p_max = probs.iter().copied().fold(0.0f32, f32::max) as f64;
    let mut above: u64 = 0;
    let mut start = 0;
    while start < k {
        let p = probs[order[start]];
        let end = (start..k).find(|&i| probs[order[i]] != p).unwrap_or(k);
        let group: u64 = order[start..end].iter().map(|&j| prob_grid(probs[j])).sum();
        let rank = ClassRank {
            above,
            group,
            // o: every class at or above p.
            rank: end as u32,
        };
        let s = score_from_rank(score, rank, sigma, p_max, u);
        for &j in &order[start..end] {
            out[j] = s;
        }
        above += group;
        start = end;
    }
}

/// The score of a class from its rank words (`kernel::score_ranks`: mass above, tie
/// group mass, rank), the row's total `sigma` on the grid, its largest probability and
/// its `u`: the one formula of DESIGN.md 2.13 that the host sort ([`row_scores_into`])
/// and the rank kernels' words ([`scores_from_ranks`]) both finish with. Not for LAC.
#[inline]
pub fn score_from_rank(score: Score, r: ClassRank, sigma: u64, p_max: f64, u: f64) -> f64 {
    let aps = || {
        if sigma == 0 {
            0.0
        } else {
            (r.above as f64 + u * r.group as f64) / sigma as f64
        }
    };
    let rank = r.rank as usize;
    match score {
        // LAC does not rank; its score is `1 - p_k` (see `row_scores_into`).
        Score::Lac => f64::NAN,
        Score::Aps => aps(),
        Score::Raps { lambda, k_reg } => aps() + lambda * rank.saturating_sub(k_reg) as f64,
        Score::Saps { lambda } => {
            if rank == 1 {
                u * p_max
            } else {
                p_max + lambda * (rank as f64 - 2.0 + u)
            }
        }
        Score::TopK => rank as f64 - 1.0 + u,
    }
}

/// [`row_scores_into`] from a row's rank words (`ranks`, `K x RANK_WORDS`, made by either
/// backend's `score_ranks` from the same `probs`): the same f64 scores bit for bit.
pub fn scores_from_ranks(probs: &[f32], ranks: &[u32], score: Score, u: f64, out: &mut [f64]) {
    if let Score::Lac = score {
        for (o, &p) in out.iter_mut().zip(probs) {
            *o = (1.0 - p) as f64;
        }
        return;
    }
    let p_max = probs.iter().copied().fold(0.0f32, f32::max) as f64;
    // Decoded where read (this runs once a row: no allocation).
    let ranks = || ranks.chunks_exact(RANK_WORDS).map(ClassRank::from_words);
    // The row's total: the last tie group's mass above and its own.
    let k = probs.len() as u32;
    let sigma = ranks()
        .find(|r| r.rank == k)
        .map_or(0, |r| r.above + r.group);
    for (o, r) in out.iter_mut().zip(ranks()) {
        *o = score_from_rank(score, r, sigma, p_max, u);
    }
}

/// The conformal quantile of `scores` at level `alpha` (DESIGN.md 2.5 on f64 scores):
/// the k-th smallest, `None` (+inf) where `k > n`.
pub fn score_qhat(scores: &[f64], alpha: f64) -> Result<Option<f64>> {
    check_alpha(alpha)?;
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::Invalid(format!("score {i} is NaN")));
    }
    let Some(k) = conformal_k(scores.len(), alpha) else {
        return Ok(None);
    };
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(Some(sorted[k - 1]))
}

/// Per class c, the quantile of the scores of the rows labelled c (Mondrian): `None`
/// (+inf) where that class has fewer rows than its k needs (and for a class with none).
pub fn class_qhats(
    scores: &[f64],
    labels: &[i64],
    k: usize,
    alpha: f64,
) -> Result<Vec<Option<f64>>> {
    if scores.len() != labels.len() {
        return Err(Error::LengthMismatch {
            what: "class-conditional scores".into(),
            detail: format!("{} scores for {} labels", scores.len(), labels.len()),
        });
    }
    (0..k)
        .map(|c| {
            let of_c: Vec<f64> = scores
                .iter()
                .zip(labels)
                .filter(|(_, &y)| y == c as i64)
                .map(|(&s, _)| s)
                .collect();
            score_qhat(&of_c, alpha)
        })
        .collect()
}

/// The prediction set of a row: the classes whose score is at most their threshold
/// (`qhats[k]`; one threshold for every class when marginal; `None` = +inf).
pub fn prediction_set(row_scores: &[f64], qhats: &[Option<f64>]) -> Vec<usize> {
    row_scores
        .iter()
        .enumerate()
        .filter(|&(c, &s)| {
            let q = if qhats.len() == 1 { qhats[0] } else { qhats[c] };
            q.is_none_or(|q| s <= q)
        })
        .map(|(c, _)| c)
        .collect()
}

/// The source scores of `score`: row i's score of its label `labels[i]` (every label
/// known), with each row's `u` from `u_of(i)`.
pub fn label_scores(
    probs: &[f32],
    k: usize,
    labels: &[i64],
    score: Score,
    u_of: impl Fn(usize) -> f64,
) -> Result<Vec<f64>> {
    if k == 0 || probs.len() != labels.len() * k {
        return Err(Error::LengthMismatch {
            what: "source scores".into(),
            detail: format!(
                "{} probabilities for {} labels of K = {k}",
                probs.len(),
                labels.len()
            ),
        });
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y < 0 || y >= k as i64 {
                return Err(Error::LabelOutOfRange {
                    what: "source labels".into(),
                    row: i,
                    label: y,
                    k,
                });
            }
            Ok(row_scores(&probs[i * k..(i + 1) * k], score, u_of(i))[y as usize])
        })
        .collect()
}
