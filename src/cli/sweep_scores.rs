//! The sweep's own estimators from the targets' scores (DESIGN.md 3 and 2.17): per
//! dataset, model, mode and score (`nuclear_norm`, `mano`), an ordinary least-squares
//! line of true accuracy on the score over the labelled target-level points (run, target)
//! of that dataset and model; a target's estimate comes from the line fitted on the points
//! whose target name differs (so a target never predicts itself, in any run), null with
//! fewer than 3 such points or a constant score. Targets the report keeps out of its MAE
//! (`mae_exclude`) are not points. `scores.csv` holds each fit over all its points:
//! in-sample R^2 and Spearman's rho (average ranks for ties).

use std::collections::BTreeMap;

use serde_json::Value;

/// The sweep's methods, in method order, with the report score they regress on.
pub const SWEEP_METHODS: [(&str, &str); 2] = [("NuclearNorm", "nuclear_norm"), ("MaNo", "mano")];

/// The sweep's own methods in method order (GDE from `sweep_gde`, then the score fits).
pub const SWEEP_NAMES: [&str; 3] = ["GDE", "NuclearNorm", "MaNo"];

/// `scores.csv`'s header.
pub const SCORES_HEADER: &[&str] = &[
    "dataset", "model", "mode", "score", "points", "r2", "spearman",
];

/// One target's score and truth in one report.
struct Point<'a> {
    report: usize,
    target: &'a str,
    score: f64,
    truth: Option<f64>,
}

/// Estimates keyed by (report index, mode, target name, method name).
pub type SweepEstimates = BTreeMap<(usize, String, String, &'static str), f64>;

/// `(slope, intercept)` of y on x, `None` below 3 points or for a constant x.
fn ols(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    // A constant score fits no line (its mean can differ from it by an ulp, so the
    // spread is checked on the values themselves).
    if points.len() < 3 || points.iter().all(|p| p.0 == points[0].0) {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let b = sxy / sxx;
    Some((b, my - b * mx))
}

/// Average ranks (1-based) of `v`, ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            out[o] = r;
        }
        i = j + 1;
    }
    out
}

/// Pearson's correlation (`None` for a constant side or fewer than 2 points).
fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() < 2 {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let syy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Whether `name` is kept out of the report's MAE.
pub fn excluded(v: &Value, name: &str) -> bool {
    v["mae_exclude"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| glob::Pattern::new(g.as_str()?).ok())
        .any(|p| p.matches(name))
}

/// Every target's sweep estimates and the `scores.csv` rows. `groups[i]` is report i's
/// (dataset, model); `reports[i]` its JSON.
pub fn sweep_estimates(
    groups: &[(String, String)],
    reports: &[&Value],
) -> (SweepEstimates, Vec<Vec<String>>) {
    let mut estimates = SweepEstimates::new();
    let mut csv = Vec::new();
    let mut keys: Vec<&(String, String)> = Vec::new();
    for g in groups {
        if !keys.contains(&g) {
            keys.push(g);
        }
    }
    for key in keys {
        let members: Vec<usize> = (0..reports.len()).filter(|&i| groups[i] == *key).collect();
        for mode in ["raw", "ts"] {
            for (method, score) in SWEEP_METHODS {
                let mut points: Vec<Point> = Vec::new();
                for &i in &members {
                    for t in reports[i]["targets"].as_array().into_iter().flatten() {
                        let name = t["name"].as_str().unwrap_or_default();
                        if let Some(x) = t["scores"][mode][score].as_f64() {
                            let truth = t["true_accuracy"].as_f64();
                            let out = excluded(reports[i], name);
                            points.push(Point {
                                report: i,
                                target: name,
                                score: x,
                                truth: if out { None } else { truth },
                            });
                        }
                    }
                }
                let labelled: Vec<&Point> = points.iter().filter(|p| p.truth.is_some()).collect();
                for p in &points {
                    let fit_on: Vec<(f64, f64)> = labelled
                        .iter()
                        .filter(|q| q.target != p.target)
                        .map(|q| (q.score, q.truth.unwrap_or(f64::NAN)))
                        .collect();
                    if let Some((b, a)) = ols(&fit_on) {
                        estimates.insert(
                            (p.report, mode.to_string(), p.target.to_string(), method),
                            a + b * p.score,
                        );
                    }
                }
                let all: Vec<(f64, f64)> = labelled
                    .iter()
                    .map(|q| (q.score, q.truth.unwrap_or(f64::NAN)))
                    .collect();
                let r2 = ols(&all).and_then(|(b, a)| {
                    let my = all.iter().map(|p| p.1).sum::<f64>() / all.len() as f64;
                    let ss_tot: f64 = all.iter().map(|p| (p.1 - my) * (p.1 - my)).sum();
                    let ss_res: f64 = all.iter().map(|p| (p.1 - a - b * p.0).powi(2)).sum();
                    (ss_tot > 0.0).then(|| 1.0 - ss_res / ss_tot)
                });
                let xs: Vec<f64> = all.iter().map(|p| p.0).collect();
                let ys: Vec<f64> = all.iter().map(|p| p.1).collect();
                let rho = pearson(&ranks(&xs), &ranks(&ys));
                if !points.is_empty() {
                    csv.push(vec![
                        key.0.clone(),
                        key.1.clone(),
                        mode.to_string(),
                        score.to_string(),
                        all.len().to_string(),
                        r2.map(|v| format!("{v}")).unwrap_or_default(),
                        rho.map(|v| format!("{v}")).unwrap_or_default(),
                    ]);
                }
            }
        }
    }
    (estimates, csv)
}
