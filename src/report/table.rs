//! The readable table printed on stdout.

use std::fmt::Write as _;

use crate::methods::evaluate::Evaluation;
use crate::report::model::Method;

fn pct(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{:6.2}", 100.0 * v),
        _ => "     -".into(),
    }
}

/// A readable table: per target n, true accuracy, every estimate with and without TS
/// (and its error where the truth is known); then the MAE rows.
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
    let _ = writeln!(out, "device: {}\n", eval.device);
    let methods = Method::ALL.map(Method::name);
    let mut header = format!("{:<20} {:>9} {:>7} {:>4}", "target", "n", "true% ", "TS");
    for m in methods {
        let _ = write!(header, " {m:>14}");
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
            let truth = if mode == "raw" {
                pct(t.true_accuracy) + if partly { "*" } else { " " }
            } else {
                String::new()
            };
            let mut line = format!("{name:<20} {n:>9} {truth:>7} {mode:>4}");
            for (_, v) in est.named() {
                let err = t
                    .true_accuracy
                    .map(|acc| format!("({:+5.1})", 100.0 * (v - acc)))
                    .unwrap_or_default();
                let _ = write!(line, " {:>6}{:>8}", pct(Some(v)), err);
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
    let _ = writeln!(out, "\nMAE (points of accuracy; lower is better)");
    for (row, vals) in &eval.mae {
        let mut line = format!("{row:<20}");
        for m in methods {
            let _ = write!(line, " {m}={}", pct(vals.get(m).copied().flatten()));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
