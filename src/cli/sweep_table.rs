//! The main job's reading of a sweep: its MAE summary as one block per dataset (methods
//! down, model and mode across) and the paired comparison of CPC with ATC.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::cli::sweep::SweepOutcome;

/// Points (percent) with two decimals, or `-` for an empty field.
fn points(field: &str) -> String {
    field
        .parse::<f64>()
        .map_or("-".to_string(), |v| format!("{:.2}", 100.0 * v))
}

/// `summary.csv`'s target-level rows (MAE keys `raw`, `ts`) as one block per dataset:
/// a row per method, a column per (model, mode), each cell `MAE +- std` over runs in
/// points.
pub fn mae_blocks(summary: &[Vec<String>]) -> String {
    // dataset -> (columns in order, method -> column -> cell), methods in first-seen order.
    let mut datasets: Vec<String> = Vec::new();
    let mut columns: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut methods: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut cells: BTreeMap<(&str, String, String), String> = BTreeMap::new();
    for r in summary {
        let [dataset, model, key, method, _runs, mae, std, ..] = r.as_slice() else {
            continue;
        };
        if key != "raw" && key != "ts" {
            continue;
        }
        if !datasets.contains(dataset) {
            datasets.push(dataset.clone());
        }
        let column = format!("{model} {key}");
        let cols = columns.entry(dataset).or_default();
        if !cols.contains(&column) {
            cols.push(column.clone());
        }
        let ms = methods.entry(dataset).or_default();
        if !ms.contains(method) {
            ms.push(method.clone());
        }
        let cell = if std.is_empty() {
            points(mae)
        } else {
            format!("{}±{}", points(mae), points(std))
        };
        cells.insert((dataset, method.clone(), column), cell);
    }
    let mut out = String::new();
    for d in &datasets {
        let cols = &columns[d.as_str()];
        let width = cols
            .iter()
            .map(|c| c.chars().count())
            .chain(cells.values().map(|c| c.chars().count()))
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "{d}: MAE (points) +- std over runs, by model and mode");
        let mut header = format!("  {:<12}", "method");
        for c in cols {
            let _ = write!(header, "  {c:>width$}");
        }
        let _ = writeln!(out, "{header}");
        for m in &methods[d.as_str()] {
            let mut line = format!("  {m:<12}");
            for c in cols {
                let cell = cells
                    .get(&(d.as_str(), m.clone(), c.clone()))
                    .map_or("-", |s| s.as_str());
                let _ = write!(line, "  {cell:>width$}");
            }
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }
    out
}

/// Where CPC and ATC differ: per dataset and mode, the mean over (model, run) cells of
/// CPC's MAE minus ATC-MC's, its 95% interval, and the cells each wins (`paired.csv`).
pub fn cpc_vs_atc(outcome: &SweepOutcome) -> String {
    let mut out = String::from("CPC vs ATC-MC (MAE_CPC - MAE_ATC, points; negative: CPC closer)\n");
    for r in outcome.paired_of("CPC", "ATC-MC") {
        let [dataset, key, _, _, cells, mean, lo, hi, wins, losses, ties] = r.as_slice() else {
            continue;
        };
        if key != "raw" && key != "ts" {
            continue;
        }
        let _ = writeln!(
            out,
            "  {dataset:<16} {key:<3} {:>7} [{}, {}] over {cells} cells: CPC closer in {wins}, ATC in {losses}, ties {ties}",
            points(mean),
            points(lo),
            points(hi),
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn blocks_keep_target_keys_and_order() {
        let summary = vec![
            row(&["d", "m1", "raw", "CPC", "2", "0.01", "0.002", "0", "0"]),
            row(&["d", "m1", "hospital_raw", "CPC", "2", "0.5", "", "0", "0"]),
            row(&["d", "m1", "ts", "CPC", "1", "0.02", "", "0", ""]),
            row(&["d", "m1", "raw", "AC", "2", "", "", "", ""]),
        ];
        let text = mae_blocks(&summary);
        assert!(text.contains("1.00±0.20"), "{text}");
        assert!(text.contains("2.00"), "{text}");
        assert!(!text.contains("50.00"), "group keys are left out: {text}");
        let cpc = text.find("CPC").unwrap();
        let ac = text.find("  AC").unwrap();
        assert!(cpc < ac, "methods in first-seen order: {text}");
    }

    #[test]
    fn paired_rows_turn_round() {
        let outcome = SweepOutcome {
            cells: 2,
            failed: 0,
            failures_path: "f".into(),
            summary: vec![],
            paired: vec![row(&[
                "d", "raw", "ATC-MC", "CPC", "5", "0.01", "0.005", "0.02", "1", "4", "0",
            ])],
        };
        let r = &outcome.paired_of("CPC", "ATC-MC")[0];
        assert_eq!(
            r,
            &row(&["d", "raw", "CPC", "ATC-MC", "5", "-0.01", "-0.02", "-0.005", "4", "1", "0"])
        );
        assert!(cpc_vs_atc(&outcome)
            .contains("-1.00 [-2.00, -0.50] over 5 cells: CPC closer in 4, ATC in 1"));
    }
}
