//! Independent float64 oracle for DESIGN.md section 2 (test support; include with
//! `mod oracle;`). Written from the DESIGN text only, deliberately with different
//! algorithms from the crate's estimators:
//! - temperature: bisection on the sign of dNLL/db (b = 1/T; NLL is convex in b), to
//!   f64 resolution, instead of the crate's safeguarded Newton;
//! - conformal quantile and ATC thresholds: a full f64 sort;
//! - CPC: brute force, R_S(q) counted directly at every distinct candidate, instead
//!   of the crate's sweep over sorted `1 - p_(1)` / `1 - p_(2)`.
//!
//! Everything is f64: logits are converted from f32 once, probabilities are
//! `exp((z_k - m) / T) / sum_j exp((z_j - m) / T)` with `m = max_j z_j` (shift, then scale),
//! and every threshold comparison (`1 - p_k <= q`, `g > t`, `g == t`) is on the same f64
//! values. No crate code is used: inputs are plain slices.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// Lower bound of the temperature bracket (DESIGN 2.2).
pub const T_MIN: f64 = 1e-3;
/// Upper bound of the temperature bracket (DESIGN 2.2).
pub const T_MAX: f64 = 1e3;
/// Number of ECE bins (DESIGN 2.2).
pub const ECE_BINS: usize = 15;

/// A labelled source (calibration) set: `logits` row-major `n x k`, every label known.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub logits: &'a [f32],
    pub k: usize,
    pub labels: &'a [i64],
}

/// A target set: `labels` `None` = all unknown; `-1` entries are unknown.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a str,
    pub logits: &'a [f32],
    pub k: usize,
    pub labels: Option<&'a [i64]>,
}

/// Which temperature a mode uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TempChoice {
    /// T = 1 (`raw`).
    Raw,
    /// T fitted on the source by [`fit_temperature`] (`ts`).
    Fitted,
    /// A given T > 0.
    Fixed(f64),
}

/// Result of the temperature fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TempFit {
    pub temperature: f64,
    /// false when the minimum lies outside [T_MIN, T_MAX] and the bound was returned.
    pub converged: bool,
}

/// Source numbers at one level alpha (mirrors `expected.json` `<mode>.<alpha>.source`).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceAlpha {
    pub accuracy: f64,
    pub n: usize,
    /// `None` = +inf (k > n).
    pub qhat: Option<f64>,
    /// The order-statistic index k of DESIGN 2.5 (1-based).
    pub k_index: usize,
}

/// Target numbers at one level alpha (mirrors `expected.json` `<mode>.<alpha>.targets.<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetAlpha {
    pub n: usize,
    pub n_labelled: usize,
    pub ac: f64,
    pub doc: f64,
    pub atc_mc: f64,
    pub atc_ne: f64,
    pub cpc: f64,
    /// `None` = +inf.
    pub cpc_q: Option<f64>,
    pub cpc_alpha: f64,
    pub mean_set_size: f64,
    pub singleton_rate: f64,
    pub empty_rate: f64,
    /// `None` when no row is labelled.
    pub coverage: Option<f64>,
    /// `None` when no row is labelled.
    pub true_accuracy: Option<f64>,
}

/// All numbers at one alpha within one temperature mode.
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaReport {
    pub alpha: f64,
    pub source: SourceAlpha,
    /// Keyed by target name.
    pub targets: BTreeMap<String, TargetAlpha>,
}

/// One temperature mode (`raw` or `ts`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModeReport {
    pub temperature: f64,
    /// In the order of the `alphas` given.
    pub alphas: Vec<AlphaReport>,
}

impl ModeReport {
    /// The report at level `alpha` (exact f64 match).
    pub fn at(&self, alpha: f64) -> &AlphaReport {
        self.alphas
            .iter()
            .find(|a| a.alpha == alpha)
            .unwrap_or_else(|| panic!("alpha {alpha} not in the oracle report"))
    }
}

/// The whole oracle output (mirrors `expected.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub temperature: f64,
    pub temperature_converged: bool,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
    pub raw: ModeReport,
    pub ts: ModeReport,
}

/// Source-side quantities at one temperature, everything a target needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceFit {
    pub temperature: f64,
    pub n: usize,
    pub k: usize,
    /// acc(S).
    pub accuracy: f64,
    /// Number of correct source rows, c.
    pub correct: usize,
    /// AC(S) = mean max_k p_k.
    pub ac: f64,
    /// LAC scores `1 - p_y`, sorted ascending.
    pub scores_sorted: Vec<f64>,
    /// ATC-MC threshold `(t, lambda)`; `None` when c = 0.
    pub atc_mc: Option<(f64, f64)>,
    /// ATC-NE threshold `(t, lambda)`; `None` when c = 0.
    pub atc_ne: Option<(f64, f64)>,
    /// CPC threshold q*; `None` = +inf.
    pub cpc_q: Option<f64>,
    /// alpha* = 1 - i/(n+1).
    pub cpc_alpha: f64,
    /// R_S(q*) (for checks).
    pub cpc_source_rate: f64,
}

// ---------------------------------------------------------------- basics

/// f64 softmax of one row at temperature `t`, shift then scale.
pub fn softmax_row(z: &[f32], t: f64) -> Vec<f64> {
    let m = z
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// All rows' probabilities at temperature `t`.
pub fn softmax(logits: &[f32], k: usize, t: f64) -> Vec<Vec<f64>> {
    logits.chunks_exact(k).map(|r| softmax_row(r, t)).collect()
}

/// argmax of the logits, ties to the lowest index.
pub fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = j;
        }
    }
    best
}

/// Predicted classes of every row.
pub fn predictions(logits: &[f32], k: usize) -> Vec<usize> {
    logits.chunks_exact(k).map(argmax).collect()
}

/// acc = mean 1{yhat = y} over rows with a known label; `None` when none is known.
pub fn accuracy(logits: &[f32], k: usize, labels: &[i64]) -> Option<f64> {
    let mut known = 0usize;
    let mut correct = 0usize;
    for (r, &y) in logits.chunks_exact(k).zip(labels) {
        if y >= 0 {
            known += 1;
            if argmax(r) == y as usize {
                correct += 1;
            }
        }
    }
    (known > 0).then(|| correct as f64 / known as f64)
}

/// Mean NLL at temperature `t` (all labels known).
pub fn nll(logits: &[f32], k: usize, labels: &[i64], t: f64) -> f64 {
    let mut total = 0.0;
    for (z, &y) in logits.chunks_exact(k).zip(labels) {
        let m = z
            .iter()
            .map(|&v| v as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = z
            .iter()
            .map(|&v| ((v as f64 - m) / t).exp())
            .sum::<f64>()
            .ln();
        total += lse - (z[y as usize] as f64 - m) / t;
    }
    total / labels.len() as f64
}

/// dNLL/db at b = 1/T: mean(E_p[z] - z_y), with p = softmax(b z).
pub fn nll_grad_b(logits: &[f32], k: usize, labels: &[i64], b: f64) -> f64 {
    let mut total = 0.0;
    for (z, &y) in logits.chunks_exact(k).zip(labels) {
        let m = z
            .iter()
            .map(|&v| v as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut s = 0.0;
        let mut sz = 0.0;
        for &v in z {
            let d = v as f64 - m;
            let e = (b * d).exp();
            s += e;
            sz += e * d;
        }
        total += sz / s - (z[y as usize] as f64 - m);
    }
    total / labels.len() as f64
}

/// Temperature fit: the NLL minimiser over T in [T_MIN, T_MAX], found by bisection on
/// the sign of dNLL/db (monotone, since NLL is convex in b = 1/T) down to adjacent f64s.
/// Where the minimum lies outside the bracket, the bound with `converged: false`.
pub fn fit_temperature(logits: &[f32], k: usize, labels: &[i64]) -> TempFit {
    let (mut lo, mut hi) = (1.0 / T_MAX, 1.0 / T_MIN); // in b
    if nll_grad_b(logits, k, labels, lo) >= 0.0 {
        return TempFit {
            temperature: T_MAX,
            converged: false,
        };
    }
    if nll_grad_b(logits, k, labels, hi) <= 0.0 {
        return TempFit {
            temperature: T_MIN,
            converged: false,
        };
    }
    // invariant: grad(lo) < 0 < grad(hi)
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        let g = nll_grad_b(logits, k, labels, mid);
        if g < 0.0 {
            lo = mid;
        } else if g > 0.0 {
            hi = mid;
        } else {
            lo = mid;
            hi = mid;
            break;
        }
    }
    TempFit {
        temperature: 1.0 / (0.5 * (lo + hi)),
        converged: true,
    }
}

/// Golden-section minimiser of NLL over ln T in [ln T_MIN, ln T_MAX]; a second,
/// derivative-free cross-check of [`fit_temperature`] (limited to ~1e-8 relative by
/// the flatness of the minimum).
pub fn fit_temperature_golden(logits: &[f32], k: usize, labels: &[i64]) -> f64 {
    let f = |u: f64| nll(logits, k, labels, u.exp());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (T_MIN.ln(), T_MAX.ln());
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if (b - a).abs() <= 1e-13 {
            break;
        }
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    (0.5 * (a + b)).exp()
}

/// ECE with 15 (lo, hi] bins: bin = clamp(ceil(15 c) - 1, 0, 14), c = max probability;
/// correctness by yhat = argmax logits. Rows with unknown labels are skipped.
pub fn ece(logits: &[f32], k: usize, labels: &[i64], t: f64) -> f64 {
    let mut cnt = [0usize; ECE_BINS];
    let mut conf = [0.0f64; ECE_BINS];
    let mut corr = [0.0f64; ECE_BINS];
    let mut n = 0usize;
    for (z, &y) in logits.chunks_exact(k).zip(labels) {
        if y < 0 {
            continue;
        }
        n += 1;
        let p = softmax_row(z, t);
        let c = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let bin = ((ECE_BINS as f64 * c).ceil() - 1.0).clamp(0.0, (ECE_BINS - 1) as f64) as usize;
        cnt[bin] += 1;
        conf[bin] += c;
        if argmax(z) == y as usize {
            corr[bin] += 1.0;
        }
    }
    let mut e = 0.0;
    for ((&nb, &sc), &sy) in cnt.iter().zip(&conf).zip(&corr) {
        if nb > 0 {
            let nb = nb as f64;
            e += (nb / n as f64) * (sc / nb - sy / nb).abs();
        }
    }
    e
}

/// k of DESIGN 2.5: x = (n+1)(1-alpha); round(x) if |x - round(x)| <= 1e-9 (n+1), else ceil(x).
pub fn conformal_k(n: usize, alpha: f64) -> usize {
    let n1 = n as f64 + 1.0;
    let x = n1 * (1.0 - alpha);
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * n1 {
        r
    } else {
        x.ceil()
    };
    k as usize
}

/// qhat = s_(k) (1-based, ascending) if k <= n, else `None` (+inf).
pub fn conformal_quantile(sorted_scores: &[f64], alpha: f64) -> Option<f64> {
    let k = conformal_k(sorted_scores.len(), alpha);
    if k <= sorted_scores.len() {
        // k = 0 only for alpha within ~1e-9 of 1: take the smallest score.
        Some(sorted_scores[k.max(1) - 1])
    } else {
        None
    }
}

/// `1 - p_k <= q` with `None` = +inf.
fn in_set(p: f64, q: Option<f64>) -> bool {
    match q {
        None => true,
        Some(q) => 1.0 - p <= q,
    }
}

/// Prediction-set size `|{k : 1 - p_k <= q}|`.
pub fn set_size(p: &[f64], q: Option<f64>) -> usize {
    p.iter().filter(|&&v| in_set(v, q)).count()
}

/// MC score: max_k p_k.
pub fn score_mc(p: &[f64]) -> f64 {
    p.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
}

/// NE score: sum_k p_k ln p_k with 0 ln 0 = 0 (summed in class order).
pub fn score_ne(p: &[f64]) -> f64 {
    let mut s = 0.0;
    for &v in p {
        if v > 0.0 {
            s += v * v.ln();
        }
    }
    s
}

/// ATC threshold `(t, lambda)` from source scores and the number of correct rows c:
/// t = c-th largest score, a = #{g > t}, b = #{g = t}, lambda = (c - a)/b; `None` for c = 0.
pub fn atc_threshold(g_source: &[f64], c: usize) -> Option<(f64, f64)> {
    if c == 0 {
        return None;
    }
    let mut desc = g_source.to_vec();
    desc.sort_by(|a, b| b.partial_cmp(a).expect("no NaN scores"));
    let t = desc[c - 1];
    let a = g_source.iter().filter(|&&g| g > t).count();
    let b = g_source.iter().filter(|&&g| g == t).count();
    Some((t, (c - a) as f64 / b as f64))
}

/// ATC(D) = mean 1{g > t} + lambda mean 1{g = t}; 0 when the threshold is `None`.
pub fn atc_apply(g_target: &[f64], thr: Option<(f64, f64)>) -> f64 {
    match thr {
        None => 0.0,
        Some((t, lambda)) => {
            let gt = g_target.iter().filter(|&&g| g > t).count();
            let eq = g_target.iter().filter(|&&g| g == t).count();
            (gt as f64 + lambda * eq as f64) / g_target.len() as f64
        }
    }
}

/// Number of singleton rows at q (direct count).
pub fn singleton_count(probs: &[Vec<f64>], q: Option<f64>) -> usize {
    probs.iter().filter(|p| set_size(p, q) == 1).count()
}

/// CPC by brute force: over the candidates {s_(1..n), +inf}, q* minimises
/// |R_S(q) - acc(S)| (compared exactly as |#singletons - c|, both over the same n),
/// ties to the smallest q. Returns (q*, alpha*, R_S(q*)).
pub fn cpc_fit(
    probs_s: &[Vec<f64>],
    sorted_scores: &[f64],
    correct: usize,
) -> (Option<f64>, f64, f64) {
    let n = sorted_scores.len();
    let mut best: Option<(usize, Option<f64>, usize, usize)> = None; // (dist, q, i, count)
    let mut consider = |q: Option<f64>, i: usize| {
        let cnt = singleton_count(probs_s, q);
        let dist = cnt.abs_diff(correct);
        if best.is_none_or(|b| dist < b.0) {
            best = Some((dist, q, i, cnt));
        }
    };
    for i in 0..n {
        if i > 0 && sorted_scores[i] == sorted_scores[i - 1] {
            continue; // same candidate; its smallest index is the first occurrence
        }
        consider(Some(sorted_scores[i]), i + 1);
    }
    consider(None, n + 1);
    let (_, q, i, cnt) = best.expect("at least the +inf candidate");
    (q, 1.0 - i as f64 / (n as f64 + 1.0), cnt as f64 / n as f64)
}

// ---------------------------------------------------------------- source / target

/// Resolves a temperature choice against the source.
pub fn resolve_temperature(source: Source<'_>, choice: TempChoice) -> f64 {
    match choice {
        TempChoice::Raw => 1.0,
        TempChoice::Fitted => fit_temperature(source.logits, source.k, source.labels).temperature,
        TempChoice::Fixed(t) => t,
    }
}

/// Every source-side quantity at temperature `t`.
pub fn fit_source(source: Source<'_>, t: f64) -> SourceFit {
    let k = source.k;
    let probs = softmax(source.logits, k, t);
    let n = probs.len();
    assert_eq!(n, source.labels.len(), "source labels length");
    assert!(
        source.labels.iter().all(|&y| y >= 0),
        "source labels must all be known"
    );
    let yhat = predictions(source.logits, k);
    let correct = yhat
        .iter()
        .zip(source.labels)
        .filter(|(&p, &y)| p == y as usize)
        .count();
    let mut scores: Vec<f64> = probs
        .iter()
        .zip(source.labels)
        .map(|(p, &y)| 1.0 - p[y as usize])
        .collect();
    scores.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let mc: Vec<f64> = probs.iter().map(|p| score_mc(p)).collect();
    let ne: Vec<f64> = probs.iter().map(|p| score_ne(p)).collect();
    let ac = mc.iter().sum::<f64>() / n as f64;
    let (cpc_q, cpc_alpha, cpc_source_rate) = cpc_fit(&probs, &scores, correct);
    SourceFit {
        temperature: t,
        n,
        k,
        accuracy: correct as f64 / n as f64,
        correct,
        ac,
        scores_sorted: scores,
        atc_mc: atc_threshold(&mc, correct),
        atc_ne: atc_threshold(&ne, correct),
        cpc_q,
        cpc_alpha,
        cpc_source_rate,
    }
}

/// Source numbers at level alpha.
pub fn source_alpha(fit: &SourceFit, alpha: f64) -> SourceAlpha {
    SourceAlpha {
        accuracy: fit.accuracy,
        n: fit.n,
        qhat: conformal_quantile(&fit.scores_sorted, alpha),
        k_index: conformal_k(fit.n, alpha),
    }
}

/// Target numbers at level alpha, over the rows `rows` of the target (all rows when `None`).
pub fn target_alpha_rows(
    fit: &SourceFit,
    target: Target<'_>,
    alpha: f64,
    rows: Option<&[usize]>,
) -> TargetAlpha {
    let k = target.k;
    let all: Vec<&[f32]> = target.logits.chunks_exact(k).collect();
    let idx: Vec<usize> = match rows {
        Some(r) => r.to_vec(),
        None => (0..all.len()).collect(),
    };
    let n = idx.len();
    let probs: Vec<Vec<f64>> = idx
        .iter()
        .map(|&i| softmax_row(all[i], fit.temperature))
        .collect();
    let labels: Vec<i64> = idx
        .iter()
        .map(|&i| target.labels.map_or(-1, |l| l[i]))
        .collect();
    let mc: Vec<f64> = probs.iter().map(|p| score_mc(p)).collect();
    let ne: Vec<f64> = probs.iter().map(|p| score_ne(p)).collect();
    let ac = mc.iter().sum::<f64>() / n as f64;
    let qhat = conformal_quantile(&fit.scores_sorted, alpha);
    let sizes: Vec<usize> = probs.iter().map(|p| set_size(p, qhat)).collect();
    let mut n_lab = 0usize;
    let mut covered = 0usize;
    let mut correct = 0usize;
    for (j, &y) in labels.iter().enumerate() {
        if y >= 0 {
            n_lab += 1;
            if in_set(probs[j][y as usize], qhat) {
                covered += 1;
            }
            if argmax(all[idx[j]]) == y as usize {
                correct += 1;
            }
        }
    }
    let nf = n as f64;
    TargetAlpha {
        n,
        n_labelled: n_lab,
        ac,
        doc: fit.accuracy + ac - fit.ac,
        atc_mc: atc_apply(&mc, fit.atc_mc),
        atc_ne: atc_apply(&ne, fit.atc_ne),
        cpc: singleton_count(&probs, fit.cpc_q) as f64 / nf,
        cpc_q: fit.cpc_q,
        cpc_alpha: fit.cpc_alpha,
        mean_set_size: sizes.iter().sum::<usize>() as f64 / nf,
        singleton_rate: sizes.iter().filter(|&&s| s == 1).count() as f64 / nf,
        empty_rate: sizes.iter().filter(|&&s| s == 0).count() as f64 / nf,
        coverage: (n_lab > 0).then(|| covered as f64 / n_lab as f64),
        true_accuracy: (n_lab > 0).then(|| correct as f64 / n_lab as f64),
    }
}

/// Target numbers at level alpha over all its rows.
pub fn target_alpha(fit: &SourceFit, target: Target<'_>, alpha: f64) -> TargetAlpha {
    target_alpha_rows(fit, target, alpha, None)
}

/// Target numbers at level alpha per group id (e.g. `slide`), keyed by the id.
pub fn target_alpha_by_group(
    fit: &SourceFit,
    target: Target<'_>,
    alpha: f64,
    groups: &[i64],
) -> BTreeMap<i64, TargetAlpha> {
    let mut rows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        rows.entry(g).or_default().push(i);
    }
    rows.into_iter()
        .map(|(g, r)| (g, target_alpha_rows(fit, target, alpha, Some(&r))))
        .collect()
}

/// One temperature mode: every alpha, every target.
pub fn mode_report(
    source: Source<'_>,
    targets: &[Target<'_>],
    alphas: &[f64],
    t: f64,
) -> ModeReport {
    let fit = fit_source(source, t);
    let alphas = alphas
        .iter()
        .map(|&alpha| AlphaReport {
            alpha,
            source: source_alpha(&fit, alpha),
            targets: targets
                .iter()
                .map(|tg| (tg.name.to_string(), target_alpha(&fit, *tg, alpha)))
                .collect(),
        })
        .collect();
    ModeReport {
        temperature: t,
        alphas,
    }
}

/// The full report: fitted temperature, NLL/ECE before (T = 1) and after (T*), and the
/// `raw` (T = 1) and `ts` (T*) modes.
pub fn report(source: Source<'_>, targets: &[Target<'_>], alphas: &[f64]) -> Report {
    let fit = fit_temperature(source.logits, source.k, source.labels);
    let t = fit.temperature;
    Report {
        temperature: t,
        temperature_converged: fit.converged,
        nll_before: nll(source.logits, source.k, source.labels, 1.0),
        nll_after: nll(source.logits, source.k, source.labels, t),
        ece_before: ece(source.logits, source.k, source.labels, 1.0),
        ece_after: ece(source.logits, source.k, source.labels, t),
        raw: mode_report(source, targets, alphas, 1.0),
        ts: mode_report(source, targets, alphas, t),
    }
}

/// One mode with a [`TempChoice`].
pub fn mode_report_with(
    source: Source<'_>,
    targets: &[Target<'_>],
    alphas: &[f64],
    choice: TempChoice,
) -> ModeReport {
    mode_report(source, targets, alphas, resolve_temperature(source, choice))
}
