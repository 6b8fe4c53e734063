//! The conformal quantile (DESIGN.md 2.5): `qhat(alpha) = s_(k)`, the k-th smallest
//! calibration score with `k = ceil((n+1)(1-alpha))` taken on the decimal alpha, `+inf`
//! (`None`) when `k > n`. Several levels at once, from either an exact radix selection
//! or a full sort, whichever is cheaper for the request (see [`QuantileMethod::Auto`]).
//! Also the logic of the `quantile` subcommand ([`quantile_report`], [`quantile_json`]).

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kernel::radix_sort::check_no_nan;

/// Checks that `alpha` is in the open interval (0, 1) (NaN is not).
pub fn check_alpha(alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::BadAlpha(alpha))
    }
}

/// The conformal rank `k` for `n` scores at level `alpha`, by DESIGN.md 2.5: with
/// `x = (n+1)(1-alpha)` in f64, `k = round(x)` when `|x - round(x)| <= 1e-9 (n+1)`
/// (x meant to be an integer, as with n = 9, alpha = 0.7: x = 3.0000000000000004, k = 3),
/// else `ceil(x)`; at least 1. May exceed `n` (then qhat = +inf). `alpha` must pass
/// [`check_alpha`].
pub fn conformal_rank(n: usize, alpha: f64) -> usize {
    let m = n as f64 + 1.0;
    let x = m * (1.0 - alpha);
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * m {
        r
    } else {
        x.ceil()
    };
    (k.max(1.0)) as usize
}

/// The conformal rank `k` in `1..=n`, or `None` when `k > n` (qhat = +inf) or `alpha`
/// is not in (0, 1).
pub fn conformal_k(n: usize, alpha: f64) -> Option<usize> {
    if check_alpha(alpha).is_err() {
        return None;
    }
    let k = conformal_rank(n, alpha);
    (k <= n).then_some(k)
}

/// Parses a comma-separated list of levels (`"0.1,0.05"`), each checked with
/// [`check_alpha`]; an empty list is `Error::Invalid`.
pub fn parse_alphas(s: &str) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let a: f64 = p
            .parse()
            .map_err(|_| Error::Invalid(format!("alpha {p:?} is not a number")))?;
        check_alpha(a)?;
        out.push(a);
    }
    if out.is_empty() {
        return Err(Error::Invalid("no alpha given".into()));
    }
    Ok(out)
}

/// How [`qhat_with`] finds the order statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QuantileMethod {
    /// Selection when the distinct ranks number at most [`SELECT_MAX_RANKS`], else a
    /// full sort.
    #[default]
    Auto,
    /// Full sort, then index.
    Sort,
    /// Radix selection (GPU) / `select_nth_unstable_by` (CPU).
    Select,
}

/// Up to this many distinct ranks, selection beats sorting on both paths. Measured with
/// `CONFORMAL_BENCH_SIZES=1000000 cargo bench --bench select` (1M scores, lavapipe on a
/// loaded 2-core machine): GPU select 1 rank 0.33 s, 16 ranks 0.97 s, 64 ranks 3.2 s vs
/// qhat through the GPU sort 2.7 s; CPU select 1 / 16 / 64 ranks 90 / 115 / 134 ms vs
/// sort 150 ms. On the GPU a selection is 4 histogram passes per 16 distinct prefixes
/// (64 ranks = 4 groups of passes, slower than one sort); a sort is 4 passes of
/// histogram + scan + scatter. On the CPU each extra rank is one more
/// `select_nth_unstable_by` right of the previous one.
pub const SELECT_MAX_RANKS: usize = 16;

/// `qhat` for each of `alphas` over `scores` (`None` = +inf), [`QuantileMethod::Auto`].
pub fn qhat<B: Backend>(backend: &B, scores: &[f32], alphas: &[f64]) -> Result<Vec<Option<f32>>> {
    qhat_with(backend, scores, alphas, QuantileMethod::Auto)
}

/// `qhat` for each of `alphas` over `scores` by the given method. Errors: an alpha outside
/// (0, 1) (`BadAlpha`), no scores (`Empty`), a NaN score (`NonFinite` with its index).
pub fn qhat_with<B: Backend>(
    backend: &B,
    scores: &[f32],
    alphas: &[f64],
    method: QuantileMethod,
) -> Result<Vec<Option<f32>>> {
    for &a in alphas {
        check_alpha(a)?;
    }
    let n = scores.len();
    if n == 0 {
        return Err(Error::Empty {
            what: "calibration scores".into(),
            detail: "the conformal quantile needs at least one score".into(),
        });
    }
    check_no_nan("calibration scores", scores)?;
    let ks: Vec<Option<usize>> = alphas.iter().map(|&a| conformal_k(n, a)).collect();
    let mut distinct: Vec<usize> = ks.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        return Ok(vec![None; alphas.len()]);
    }
    let use_select = match method {
        QuantileMethod::Auto => distinct.len() <= SELECT_MAX_RANKS,
        QuantileMethod::Sort => false,
        QuantileMethod::Select => true,
    };
    let values: Vec<f32> = if use_select {
        backend.select(scores, &distinct)?
    } else {
        let sorted = backend.sort_keys(scores)?;
        distinct.iter().map(|&k| sorted[k - 1]).collect()
    };
    Ok(ks
        .iter()
        .map(|k| k.map(|k| values[distinct.binary_search(&k).map_or(0, |i| i)]))
        .collect())
}

/// What the `quantile` subcommand prints: `{"n", "alphas", "k", "qhat", "device"}`,
/// levels in the order given, `qhat` null for +inf (`k > n`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantileReport {
    /// Calibration scores.
    pub n: usize,
    /// Levels, as given.
    pub alphas: Vec<f64>,
    /// Conformal rank per level (may exceed n: then qhat is null).
    pub k: Vec<usize>,
    /// `s_(k)` per level, `None` (JSON null) for +inf. The score's exact value: an f32
    /// widened for float16/float32 scores, the float64 itself for float64 scores.
    pub qhat: Vec<Option<f64>>,
    /// `"float32"` (the kernels' precision) or `"float64"` (float64 scores, taken on the
    /// host without rounding).
    pub precision: &'static str,
    /// The backend's device name (`"cpu"` or `"gpu: <adapter>"`).
    pub device: String,
}

/// The report of `conformal-gpu quantile`.
pub fn quantile_report<B: Backend>(
    backend: &B,
    scores: &[f32],
    alphas: &[f64],
) -> Result<QuantileReport> {
    let qhat = qhat(backend, scores, alphas)?;
    Ok(QuantileReport {
        n: scores.len(),
        alphas: alphas.to_vec(),
        k: alphas
            .iter()
            .map(|&a| conformal_rank(scores.len(), a))
            .collect(),
        qhat: qhat.into_iter().map(|q| q.map(|q| q as f64)).collect(),
        precision: "float32",
        device: backend.device_name(),
    })
}

/// [`quantile_report`] of float64 scores, exact: the k-th smallest in `f64::total_cmp`
/// order on the host (NaN rejected with its index).
pub fn quantile_report_f64(scores: &[f64], alphas: &[f64]) -> Result<QuantileReport> {
    for &a in alphas {
        check_alpha(a)?;
    }
    if let Some(i) = scores.iter().position(|v| v.is_nan()) {
        return Err(Error::NonFinite {
            what: "scores".into(),
            row: i,
            col: 0,
            value: f32::NAN,
        });
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = scores.len();
    Ok(QuantileReport {
        n,
        alphas: alphas.to_vec(),
        k: alphas.iter().map(|&a| conformal_rank(n, a)).collect(),
        qhat: alphas
            .iter()
            .map(|&a| conformal_k(n, a).map(|k| sorted[k - 1]))
            .collect(),
        precision: "float64",
        device: "cpu".into(),
    })
}

/// [`quantile_report`] as pretty JSON (what the subcommand writes to stdout or `--json FILE`).
pub fn quantile_json<B: Backend>(backend: &B, scores: &[f32], alphas: &[f64]) -> Result<String> {
    let r = quantile_report(backend, scores, alphas)?;
    serde_json::to_string_pretty(&r).map_err(|e| Error::Invalid(format!("JSON: {e}")))
}
