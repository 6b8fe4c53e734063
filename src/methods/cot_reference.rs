//! Reference mode (`--cot-reference`; DESIGN.md 2.16): COT and COTT as the authors' code
//! computes them (luyuzhe111/COT at 392c0ff, `run_estimation.py` and `utils.py`), so
//! users can set the crate's exact COT beside published numbers. Reported as `COT-ref`
//! and `COTT-ref`: ts mode, target level, no intervals, out of the MAE rows.
//!
//! What is replayed, step by step:
//! - Probabilities: the crate's f32 softmax at the ts temperature (their calibrated
//!   model's softmax).
//! - Batches: `b = min(10000, N)` rows, `n_batch = ceil(N / b)`. Python's `random` is
//!   seeded with `seed(10)` (MT19937, `init_by_array([10])`); per batch, when `N > 10000`,
//!   the row indices first (`choices(range(N), k=b)`: `floor(random() N)`, with
//!   replacement), then the label multiset of `sample_label_dist`: `int(pi_k b)` copies of
//!   each class, in class order, and the remainder drawn by `choices(range(K), weights=pi)`
//!   (cumulative f64 sums, `bisect_right(cum, random() total, 0, K - 1)`), as CPython
//!   computes them, so the batches are theirs bit for bit.
//! - The cost: their f32 `torch.cdist(one_hot, p, p=1)`, summed over classes in class
//!   order (torch's vectorised sum may order the terms differently for K >= 8: an ulp of
//!   f32 at most).
//! - COT-ref: each batch's EMD between its rows and its labels (mass `1/b` each) is the
//!   K-column problem with the label counts as column masses, solved exactly
//!   ([`transport::solve`], costs on the 2^-40 grid); like their `ot.emd2` on a float32
//!   matrix, the batch cost is returned as f32, halved, and the batches averaged in f64.
//!   COT-ref = 1 - that mean (an accuracy, as every estimate in a report; their script
//!   prints the error).
//! - COTT-ref: their threshold on the source (`compute_cott`): the source's rows against
//!   their own one-hot labels (no sampling), `costs = -(Pi N M).sum(1)` in f32 with M the
//!   unhalved L1 cost, and `t` the e-th smallest negated cost (e = misclassified rows,
//!   the argmax of the logits against the label; e = 0 takes the last, as Python's index
//!   -1 does). On a target batch, the share of rows whose negated cost is `< t`,
//!   averaged over batches; COTT-ref = 1 - that mean.
//!
//! Where it departs from their code (each said in the docs of the report):
//! - Their COTT branch never seeds Python's `random` (it seeds torch only), so its target
//!   batches differ from run to run; here both COT-ref and COTT-ref use `seed(10)` and
//!   see the same batches.
//! - A source of more than 10,000 rows is subsampled by `torch.randperm` after
//!   `torch.manual_seed(0)`, which is not replayed: COTT-ref is null unless the caller
//!   gives those indices (`--cott-reference-subsample`, the first 10,000 of the
//!   permutation); with 10,000 rows or fewer an index file is ignored, as their code does.
//! - Where the optimal plan is not unique (tied costs), the per-row costs COTT-ref counts
//!   are those of this crate's plan (successive shortest paths), not network simplex's.
//! - Their single-batch COT averages f32 per-row costs with torch's f32 `mean`; here the
//!   exact EMD is rounded to f32 once (they agree to f32 accumulation noise, ~1e-7).

use rand_mt::Mt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cpu::softmax::softmax;
use crate::error::{Error, Result};
use crate::methods::transport::{self, grid_cost};

/// Rows a batch of the reference holds (`batch_size = min(10000, N)`).
pub const BATCH_ROWS: usize = 10_000;
/// `random.seed(10)` in their `run_estimation.py`.
const PYTHON_SEED: u32 = 10;

/// The label shares pi of the reference's label sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CotPrior {
    /// The source's label shares `n_k / n` (their WILDS setting).
    #[default]
    Source,
    /// `1 / K` each (their CIFAR and ImageNet setting).
    Uniform,
}

impl CotPrior {
    /// `source` or `uniform` (a typed error naming the option otherwise).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "source" => Ok(CotPrior::Source),
            "uniform" => Ok(CotPrior::Uniform),
            other => Err(Error::Invalid(format!(
                "--cot-prior {other:?}: expected source or uniform"
            ))),
        }
    }

    /// pi as their code computes it: `count_k / n` or `1 / K`, in f64.
    pub fn shares(self, class_counts: &[u64]) -> Vec<f64> {
        let k = class_counts.len();
        match self {
            CotPrior::Source => {
                let n: u64 = class_counts.iter().sum();
                class_counts.iter().map(|&c| c as f64 / n as f64).collect()
            }
            CotPrior::Uniform => vec![1.0 / k as f64; k],
        }
    }
}

/// What a caller asks of the reference mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CotReferenceOptions {
    /// The label shares.
    pub prior: CotPrior,
    /// For a source of more than [`BATCH_ROWS`] rows: the rows their threshold was
    /// computed on (`torch.randperm(n)[:10000]` after `torch.manual_seed(0)`).
    pub subsample: Option<Vec<u64>>,
}

/// The reference mode's part of a calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CotReference {
    /// The label shares' rule.
    pub prior: CotPrior,
    /// pi, as their code computes it (f64).
    pub shares: Vec<f64>,
    /// COTT-ref's threshold, a negated f32 cost in `[-2, 0]` (null: a source of more than
    /// 10,000 rows without the subsample's indices).
    pub cott_threshold: Option<f32>,
    /// Source rows the threshold was computed on (0 without one).
    pub threshold_rows: usize,
}

impl CotReference {
    /// Fits the reference's source side: pi from the source's `class_counts`, and COTT's
    /// threshold from the source's f32 `logits` (`n x k`), `labels` and the ts
    /// temperature `t`.
    pub fn fit(
        options: &CotReferenceOptions,
        logits: &[f32],
        labels: &[i32],
        k: usize,
        class_counts: &[u64],
        t: f32,
    ) -> Result<Self> {
        let n = labels.len();
        let rows: Option<Vec<usize>> = if n <= BATCH_ROWS {
            Some((0..n).collect())
        } else {
            options
                .subsample
                .as_deref()
                .map(|s| subsample_rows(s, n))
                .transpose()?
        };
        let mut threshold_rows = 0;
        let cott_threshold = match rows {
            None => None,
            Some(rows) => {
                threshold_rows = rows.len();
                let picked: Vec<f32> = rows
                    .iter()
                    .flat_map(|&i| logits[i * k..(i + 1) * k].iter().copied())
                    .collect();
                let probs = softmax(&picked, k, t);
                let mut counts = vec![0u64; k];
                let mut errors = 0usize;
                for &i in &rows {
                    let y = labels[i] as usize;
                    counts[y] += 1;
                    if argmax(&logits[i * k..(i + 1) * k]) != y {
                        errors += 1;
                    }
                }
                let l1 = assigned_l1(&probs, k, &counts)?.1;
                let scale = plan_scale(rows.len());
                let mut negated: Vec<f32> = l1.iter().map(|&d| -(scale * d)).collect();
                negated.sort_by(f32::total_cmp);
                // Their `sorted[n_incorrect - 1]`: with no error, Python's index -1.
                let at = if errors == 0 {
                    negated.len() - 1
                } else {
                    errors - 1
                };
                Some(negated[at])
            }
        };
        Ok(CotReference {
            prior: options.prior,
            shares: options.prior.shares(class_counts),
            cott_threshold,
            threshold_rows,
        })
    }

    /// Why this cannot come from [`CotReference::fit`] for K classes, if it cannot (a
    /// calibration file is untrusted input).
    pub fn inconsistency(&self, k: usize) -> Option<String> {
        let shares_ok = self.shares.len() == k
            && self.shares.iter().all(|s| s.is_finite() && *s >= 0.0)
            && self.shares.iter().sum::<f64>() > 0.0;
        if !shares_ok {
            return Some("COT reference: label shares do not match K".into());
        }
        if let Some(t) = self.cott_threshold {
            if !(-2.0..=0.0).contains(&t) || self.threshold_rows == 0 {
                return Some("COT reference: COTT threshold outside [-2, 0]".into());
            }
        }
        None
    }

    /// `(COT-ref, COTT-ref)` of a target's f32 `logits` (`N x k`, row order) at the ts
    /// temperature `t`: accuracies (see the module docs). COTT-ref is `None` without a
    /// threshold.
    pub fn estimate(&self, logits: &[f32], k: usize, t: f32) -> Result<(f64, Option<f64>)> {
        let n = logits.len() / k;
        let probs = softmax(logits, k, t);
        let batches = batches(n, &self.shares)?;
        let b = n.min(BATCH_ROWS);
        let scale = plan_scale(b);
        let threshold = self.cott_threshold;
        let per_batch: Vec<(f64, f64)> = batches
            .par_iter()
            .map(|batch| -> Result<(f64, f64)> {
                let gathered;
                let rows = match &batch.rows {
                    None => &probs[..],
                    Some(idx) => {
                        gathered = idx
                            .iter()
                            .flat_map(|&i| probs[i * k..(i + 1) * k].iter().copied())
                            .collect::<Vec<f32>>();
                        &gathered[..]
                    }
                };
                let (emd_l1, l1) = assigned_l1(rows, k, &batch.counts)?;
                // `ot.emd2` on a float32 matrix returns a float32 cost; then `/ 2`.
                let cot_error = ((emd_l1 as f32) / 2.0) as f64;
                let cott_error = threshold.map_or(0.0, |t| {
                    let below = l1.iter().filter(|&&d| -(scale * d) < t).count();
                    below as f64 / b as f64
                });
                Ok((cot_error, cott_error))
            })
            .collect::<Result<_>>()?;
        // Their `est += ...` in batch order, then `est / n_batch`.
        let mut cot = 0.0f64;
        let mut cott = 0.0f64;
        for (c, t) in &per_batch {
            cot += c;
            cott += t;
        }
        let n_batch = per_batch.len() as f64;
        Ok((1.0 - cot / n_batch, threshold.map(|_| 1.0 - cott / n_batch)))
    }
}

/// One batch of the reference: its rows (`None`: every row in order, `N <= 10000`) and
/// its label counts per class.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Row indices drawn with replacement, in draw order.
    pub rows: Option<Vec<usize>>,
    /// Labels of each class in the batch's label multiset.
    pub counts: Vec<u64>,
}

/// The reference's batches of a target of `n` rows with label shares `shares`: data
/// independent, so they are drawn before any row is read.
pub fn batches(n: usize, shares: &[f64]) -> Result<Vec<Batch>> {
    if n == 0 {
        return Err(Error::Empty {
            what: "COT reference target".into(),
            detail: "no rows".into(),
        });
    }
    let k = shares.len();
    let b = n.min(BATCH_ROWS);
    // `math.ceil(n / b)` on Python floats.
    let n_batch = (n as f64 / b as f64).ceil() as usize;
    let mut cum = Vec::with_capacity(k);
    let mut acc = 0.0f64;
    for &s in shares {
        acc += s;
        cum.push(acc);
    }
    let total = acc + 0.0;
    if !(total.is_finite() && total > 0.0) || k == 0 {
        return Err(Error::Invalid(
            "COT reference: the label shares must sum to a positive finite total".into(),
        ));
    }
    let base: Vec<u64> = shares.iter().map(|&s| (s * b as f64) as u64).collect();
    let placed: u64 = base.iter().sum();
    let remainder = (b as u64).checked_sub(placed).ok_or_else(|| {
        Error::Invalid(format!(
            "COT reference: the label shares give {placed} labels for a batch of {b}"
        ))
    })?;
    let mut rng = PythonRandom::seeded(PYTHON_SEED);
    let mut out = Vec::with_capacity(n_batch);
    for _ in 0..n_batch {
        let rows = (n_batch > 1).then(|| {
            (0..b)
                .map(|_| (rng.random() * n as f64).floor() as usize)
                .collect()
        });
        let mut counts = base.clone();
        for _ in 0..remainder {
            let x = rng.random() * total;
            counts[bisect_right(&cum, x, k - 1)] += 1;
        }
        out.push(Batch { rows, counts });
    }
    Ok(out)
}

/// `bisect.bisect_right(a, x, 0, hi)`.
fn bisect_right(a: &[f64], x: f64, hi: usize) -> usize {
    let (mut lo, mut hi) = (0, hi);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < a[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// CPython's `random.Random`: MT19937 seeded by `init_by_array` with the seed's 32-bit
/// words, `random()` from two outputs (53 bits).
struct PythonRandom(Mt);

impl PythonRandom {
    /// `random.seed(seed)` for a seed below 2^32.
    fn seeded(seed: u32) -> Self {
        PythonRandom(Mt::new_with_key([seed]))
    }

    /// `random.random()`.
    fn random(&mut self) -> f64 {
        let a = (self.0.next_u32() >> 5) as f64;
        let b = (self.0.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// The index of the first maximum of a row of logits.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// `fl32(fl32(1 / n) n)`: their plan's entry (`1/n` as float32) times `M.shape[0]`, the
/// factor each row's L1 cost is multiplied by in `(Pi * n * M).sum(1)`.
fn plan_scale(n: usize) -> f32 {
    (1.0f64 / n as f64) as f32 * n as f32
}

/// Their f32 L1 distance between a probability row and the one-hot of class `c`, summed
/// in class order.
fn l1_to_class(p: &[f32], c: usize) -> f32 {
    let mut s = 0.0f32;
    for (j, &v) in p.iter().enumerate() {
        s += if j == c { 1.0 - v } else { v };
    }
    s
}

/// The exact optimal plan of `rows` (f32 probabilities, `m x k`, one unit each) to
/// classes needing `counts` units, under the L1 cost: its mean L1 cost (f64, exact up to
/// the 2^-40 grid) and each row's L1 cost to the class it goes to.
fn assigned_l1(rows: &[f32], k: usize, counts: &[u64]) -> Result<(f64, Vec<f32>)> {
    let l1: Vec<f32> = rows
        .chunks_exact(k)
        .flat_map(|p| (0..k).map(move |c| l1_to_class(p, c)))
        .collect();
    let grid: Vec<i64> = l1.iter().map(|&d| grid_cost(d as f64)).collect();
    let plan = transport::solve(&grid, k, 1, counts)?;
    let assigned = plan
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| l1[i * k + f.first().map_or(0, |&(c, _)| c as usize)])
        .collect();
    Ok((plan.mean_cost(), assigned))
}

/// The subsample's rows, checked: 10,000 distinct indices below `n`.
fn subsample_rows(s: &[u64], n: usize) -> Result<Vec<usize>> {
    if s.len() != BATCH_ROWS {
        return Err(Error::Invalid(format!(
            "COTT reference subsample: {} indices, expected {BATCH_ROWS} (the first of \
             torch.randperm(n))",
            s.len()
        )));
    }
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(s.len());
    for (at, &i) in s.iter().enumerate() {
        if i >= n as u64 {
            return Err(Error::Invalid(format!(
                "COTT reference subsample: index {i} at {at} is past the source's {n} rows"
            )));
        }
        if std::mem::replace(&mut seen[i as usize], true) {
            return Err(Error::Invalid(format!(
                "COTT reference subsample: index {i} at {at} is repeated"
            )));
        }
        out.push(i as usize);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPython 3: `random.seed(10); random.random()` and the next 32-bit word.
    #[test]
    fn python_random_is_replayed() {
        let mut r = PythonRandom::seeded(10);
        assert_eq!(r.random(), 0.5714025946899135);
        assert_eq!(r.0.next_u32(), 1842064464);
    }

    #[test]
    fn bisect_right_matches_python() {
        let cum = [0.25, 0.5, 0.5, 1.0];
        // bisect_right([.25,.5,.5,1.0], x, 0, 3)
        assert_eq!(bisect_right(&cum, 0.0, 3), 0);
        assert_eq!(bisect_right(&cum, 0.25, 3), 1);
        assert_eq!(bisect_right(&cum, 0.5, 3), 3);
        assert_eq!(bisect_right(&cum, 0.99, 3), 3);
    }

    #[test]
    fn batches_are_data_independent_and_sized() {
        // One batch at 10,000 rows, two at 10,001 (rows drawn then), labels summing to b.
        let shares = CotPrior::Source.shares(&[3, 7]);
        let one = batches(10_000, &shares).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].rows.is_none());
        assert_eq!(one[0].counts.iter().sum::<u64>(), 10_000);
        let two = batches(10_001, &shares).unwrap();
        assert_eq!(two.len(), 2);
        for b in &two {
            let rows = b.rows.as_ref().unwrap();
            assert_eq!(rows.len(), 10_000);
            assert!(rows.iter().all(|&i| i < 10_001));
            assert_eq!(b.counts.iter().sum::<u64>(), 10_000);
        }
        assert_ne!(two[0].rows, two[1].rows);
        assert!(batches(0, &shares).is_err());
        assert!(batches(5, &[0.0, 0.0]).is_err());
    }

    #[test]
    fn subsample_is_checked() {
        let good: Vec<u64> = (0..BATCH_ROWS as u64).rev().collect();
        assert_eq!(subsample_rows(&good, 20_000).unwrap().len(), BATCH_ROWS);
        assert!(subsample_rows(&good[1..], 20_000).is_err());
        let mut repeated = good.clone();
        repeated[5] = repeated[6];
        assert!(subsample_rows(&repeated, 20_000).is_err());
        assert!(subsample_rows(&good, 9_000).is_err());
    }

    #[test]
    fn prior_parses() {
        assert_eq!(CotPrior::parse("uniform").unwrap(), CotPrior::Uniform);
        assert!(CotPrior::parse("flat").is_err());
        assert_eq!(CotPrior::Uniform.shares(&[1, 2, 3]), vec![1.0 / 3.0; 3]);
    }
}
