//! The readable table printed on stdout.

use std::fmt::Write as _;

use crate::report::model::Evaluation;
use crate::report::model::Method;

fn pct(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:6.2}", 100.0 * v),
        _ => "     -".into(),
    }
}

/// `83.3 [82.9, 83.7]`: a value and its interval in percent, one decimal.
fn pct_ci(v: f64, ci: Option<[f64; 2]>) -> String {
    let one = |x: f64| {
        if x.is_finite() {
            format!("{:.1}", 100.0 * x)
        } else {
            "-".into()
        }
    };
    match ci {
        Some([lo, hi]) => format!("{} [{}, {}]", one(v), one(lo), one(hi)),
        None => format!("{} [-]", one(v)),
    }
}

/// A readable table: per target n, true accuracy, every estimate with and without TS
/// (and its error where the truth is known), with its bootstrap interval when there is
/// one; then the MAE rows.
pub fn table(eval: &Evaluation) -> String {
    let mut out = String::new();
    let s = &eval.source;
    let _ = writeln!(
        out,
        "source {}: n = {}, K = {}, accuracy {:.2}%, T = {:.4}{} (NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4})",
        s.name,
        s.n,
        s.k,
        100.0 * s.accuracy,
        s.temperature,
        if s.converged { "" } else { " (not converged)" },
        s.nll_before,
        s.nll_after,
        s.ece_before,
        s.ece_after
    );
    let _ = writeln!(out, "device: {}", eval.device);
    if let Some(b) = &eval.bootstrap {
        let _ = writeln!(
            out,
            "intervals: {:.0}% percentile bootstrap, B = {} Poisson replicates, seed {}",
            100.0 * b.confidence,
            b.replicates,
            b.seed
        );
    }
    let _ = writeln!(out);
    let boot = eval.bootstrap.is_some();
    // Widths: value (and interval), then the error in brackets.
    // `100.0 [99.9, 100.0]` is the widest interval cell.
    let (vw, tw) = if boot { (19, 20) } else { (6, 7) };
    let methods: Vec<&str> = Method::present(eval.targets.first().map(|t| &t.estimates.raw))
        .into_iter()
        .map(Method::name)
        .collect();
    let mut header = format!(
        "{:<20} {:>9} {:>tw$} {:>4}",
        "target",
        "n",
        "true% ",
        "TS",
        tw = tw
    );
    for m in &methods {
        let _ = write!(header, " {m:>w$}", w = vw + 8);
    }
    let _ = writeln!(out, "{header}");
    for t in &eval.targets {
        for (mode, est) in [("raw", &t.estimates.raw), ("ts", &t.estimates.ts)] {
            let name = if mode == "raw" { t.name.as_str() } else { "" };
            let n = if mode == "raw" {
                t.n.to_string()
            } else {
                String::new()
            };
            // A partly labelled target's truth is over its labelled rows only: marked `*`.
            let partly = t.n_labelled > 0 && !t.labelled;
            let iv = t.intervals.as_ref();
            let truth = if mode == "raw" {
                let v = match (iv, t.true_accuracy) {
                    (Some(i), Some(acc)) => pct_ci(acc, i.true_accuracy_ci),
                    _ => pct(t.true_accuracy),
                };
                v + if partly { "*" } else { " " }
            } else {
                String::new()
            };
            let cis = iv.map(|i| if mode == "raw" { &i.ci.raw } else { &i.ci.ts });
            let mut line = format!("{name:<20} {n:>9} {truth:>tw$} {mode:>4}", tw = tw);
            for (m, v) in est.named() {
                let err = t
                    .true_accuracy
                    .map(|acc| format!("({:+5.1})", 100.0 * (v - acc)))
                    .unwrap_or_default();
                let value = match cis {
                    Some(c) => pct_ci(v, c.get(m).copied().flatten()),
                    None => pct(Some(v)),
                };
                let _ = write!(line, " {value:>vw$}{err:>8}", vw = vw);
            }
            let _ = writeln!(out, "{line}");
        }
    }
    for t in eval
        .targets
        .iter()
        .filter(|t| t.n_labelled > 0 && !t.labelled)
    {
        let _ = writeln!(
            out,
            "* {}: true accuracy over the {} labelled of {} rows; the estimates cover all rows",
            t.name, t.n_labelled, t.n
        );
    }
    // The reference mode's values (ts, target level), where asked for.
    for t in &eval.targets {
        if let Some(cot) = t.estimates.ts.cot_ref {
            let _ = writeln!(
                out,
                "{}: COT-ref {}, COTT-ref {} (the authors' batched code replayed, ts)",
                t.name,
                pct(cot),
                pct(t.estimates.ts.cott_ref.flatten())
            );
        }
    }
    // The first conformal entry of each target (the score and level listed first).
    if let Some(first) = eval.targets.first().and_then(|t| t.conformal.raw.first()) {
        let kind = if first.class_conditional {
            ", class-conditional"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\nPrediction sets ({}{kind}, alpha = {}): coverage, mean size, singleton, empty, SSCV, CovGap",
            first.score, first.alpha
        );
        for t in &eval.targets {
            for (mode, list) in [("raw", &t.conformal.raw), ("ts", &t.conformal.ts)] {
                if let Some(e) = list.first() {
                    let covgap = e.by_class.as_ref().and_then(|c| c.covgap);
                    let _ = writeln!(
                        out,
                        "{:<20} {mode:>4} {:>7} {:>7.3} {:>7} {:>7} {:>7} {:>7}",
                        if mode == "raw" { t.name.as_str() } else { "" },
                        pct(e.coverage),
                        e.mean_set_size,
                        pct(Some(e.singleton_rate)),
                        pct(Some(e.empty_rate)),
                        pct(e.sscv),
                        pct(covgap),
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "\nMAE (points of accuracy; lower is better)");
    for (row, vals) in &eval.mae {
        let mut line = format!("{row:<20}");
        let cis = eval.mae_ci.as_ref().and_then(|c| c.get(row));
        for &m in &methods {
            let v = vals.get(m).copied().flatten();
            let cell = match (cis, v) {
                (Some(c), Some(v)) => pct_ci(v, c.get(m).copied().flatten()),
                _ => pct(v),
            };
            let _ = write!(line, " {m}={cell}");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
