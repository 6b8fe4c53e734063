//! Reports of an evaluation: the JSON document (field names fixed by the CLI contract),
//! a readable table, and SVG plots. Every file is written atomically.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use crate::data::npz::{save_npz_arrays, write_atomic, NpzArray};
use crate::error::{Error, Result};
use crate::methods::evaluate::Evaluation;

/// Provenance recorded in the report's `meta`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// Crate version.
    pub version: String,
    /// Git commit the binary was built from (or "unknown").
    pub commit: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Generator seed when the data was generated here.
    pub seed: Option<u64>,
    /// Input files with their SHA-256.
    pub inputs: Vec<InputFile>,
    /// GPU adapter name (`None` on the CPU path).
    pub adapter: Option<String>,
    /// GPU driver and its version (`None` on the CPU path).
    pub driver: Option<String>,
}

/// One input file.
#[derive(Clone, Debug, Serialize)]
pub struct InputFile {
    /// Path as given.
    pub file: String,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl InputFile {
    /// Hashes `path`.
    pub fn hash(path: &Path) -> Result<Self> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let digest = h.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        Ok(InputFile {
            file: path.display().to_string(),
            sha256: hex,
        })
    }
}

/// Finite numbers as JSON numbers, everything else (NaN, inf) as `null`.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// The JSON report, in exactly the documented shape.
pub fn to_json(eval: &Evaluation, meta: &Meta) -> Result<Value> {
    let enc = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))
    };
    let s = &eval.source;
    let source = json!({
        "name": s.name, "n": s.n, "k": s.k, "accuracy": num(s.accuracy),
        "temperature": num(s.temperature), "converged": s.converged, "iterations": s.iterations,
        "nll_before": num(s.nll_before), "nll_after": num(s.nll_after),
        "ece_before": num(s.ece_before), "ece_after": num(s.ece_after),
    });
    let targets = enc(serde_json::to_value(&eval.targets))?;
    let mae = enc(serde_json::to_value(&eval.mae))?;
    let timings = enc(serde_json::to_value(&eval.timings_ms))?;
    let meta = enc(serde_json::to_value(meta))?;
    Ok(json!({
        "device": eval.device,
        "alphas": eval.alphas,
        "meta": meta,
        "source": source,
        "targets": targets,
        "mae": mae,
        "timings_ms": timings,
    }))
}

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
    let methods = ["AC", "DoC", "ATC-MC", "ATC-NE", "CPC"];
    let mut header = format!("{:<20} {:>9} {:>6} {:>4}", "target", "n", "true%", "TS");
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
            let truth = if mode == "raw" {
                pct(t.true_accuracy)
            } else {
                String::new()
            };
            let mut line = format!("{name:<20} {n:>9} {truth:>6} {mode:>4}");
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

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting: {e}"))
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A titled, labelled chart over `x` by `y` on a fresh 720x640 SVG area.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<Chart<'a, 'b>> {
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// A line through `pts` with a dot on each point, labelled in the legend.
fn line_with_points(
    chart: &mut Chart<'_, '_>,
    pts: Vec<(f64, f64)>,
    c: RGBAColor,
    label: String,
) -> Result<()> {
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(pts, c.stroke_width(2)))
        .map_err(plot_err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
    Ok(())
}

/// Draws the legend at `pos` and flushes the SVG.
fn finish<'a, 'b>(
    mut chart: Chart<'a, 'b>,
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(pos)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Predicted vs true accuracy per slide (or hospital), one series per method, for one mode.
fn groups_svg(eval: &Evaluation, group: &str, ts: bool) -> Result<Option<String>> {
    let mut points: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 5];
    for t in &eval.targets {
        for g in t.groups.get(group).into_iter().flatten() {
            if let Some(acc) = g.true_accuracy {
                let est = if ts { g.estimates.ts } else { g.estimates.raw };
                for (i, (_, v)) in est.named().iter().enumerate() {
                    points[i].push((acc, *v));
                }
            }
        }
    }
    if points[0].is_empty() {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 640)).into_drawing_area();
        let mode = if ts { "temperature-scaled" } else { "raw" };
        let title = format!("Estimated vs true accuracy per {group} ({mode})");
        let axes = ("true accuracy", "estimated accuracy");
        let mut chart = frame(&root, &title, 0.3..1.0, 0.3..1.0, axes)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.3, 0.3), (1.0, 1.0)],
                BLACK.mix(0.4),
            ))
            .map_err(plot_err)?;
        for (i, name) in ["AC", "DoC", "ATC-MC", "ATC-NE", "CPC"].iter().enumerate() {
            let c = COLORS[i];
            // Shrinking markers keep coinciding methods visible (CPC = ATC-MC for K = 2).
            let r = 7 - i as i32;
            chart
                .draw_series(
                    points[i]
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), r, c.filled())),
                )
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
        }
        finish(chart, &root, SeriesLabelPosition::LowerRight)?;
    }
    Ok(Some(svg))
}

/// Reliability diagram of the source before and after temperature scaling.
fn reliability_svg(eval: &Evaluation) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 640)).into_drawing_area();
        let title = format!("Reliability on {} (15 bins)", eval.source.name);
        let axes = ("mean confidence in bin", "accuracy in bin");
        let mut chart = frame(&root, &title, 0.0..1.0, 0.0..1.0, axes)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.4),
            ))
            .map_err(plot_err)?;
        let s = &eval.source;
        let before = format!("before (T = 1, ECE {:.4})", s.ece_before);
        let after = format!("after (T = {:.3}, ECE {:.4})", s.temperature, s.ece_after);
        for (i, (label, stats)) in [(before, &s.calibration.raw), (after, &s.calibration.ts)]
            .into_iter()
            .enumerate()
        {
            let pts: Vec<(f64, f64)> = (0..stats.bin_count.len())
                .filter(|&b| stats.bin_count[b] > 0)
                .map(|b| {
                    let n = stats.bin_count[b] as f64;
                    (stats.bin_conf[b] / n, stats.bin_correct[b] as f64 / n)
                })
                .collect();
            line_with_points(&mut chart, pts, COLORS[i].to_rgba(), label)?;
        }
        finish(chart, &root, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(svg)
}

/// Coverage (labelled targets) and mean set size against alpha, one series per target.
fn conformal_svg(eval: &Evaluation, coverage: bool) -> Result<String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = eval
        .targets
        .iter()
        .map(|t| {
            let pts: Vec<(f64, f64)> = t
                .conformal
                .ts
                .iter()
                .filter_map(|c| {
                    let y = if coverage {
                        c.coverage
                    } else {
                        Some(c.mean_set_size)
                    };
                    y.map(|y| (c.alpha, y))
                })
                .collect();
            (t.name.clone(), pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let amax = eval.alphas.iter().cloned().fold(0.0f64, f64::max).max(0.01) * 1.1;
    let (ymin, ymax) = if coverage {
        (0.4, 1.0)
    } else {
        let top = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .fold(1.0f64, f64::max);
        (0.0, top * 1.1)
    };
    let (title, ydesc) = if coverage {
        ("Coverage against alpha (temperature-scaled)", "coverage")
    } else {
        (
            "Mean prediction-set size against alpha (temperature-scaled)",
            "mean set size",
        )
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 640)).into_drawing_area();
        let mut chart = frame(&root, title, 0.0..amax, ymin..ymax, ("alpha", ydesc))?;
        if coverage {
            let grey = BLACK.mix(0.4);
            chart
                .draw_series(LineSeries::new(vec![(0.0, 1.0), (amax, 1.0 - amax)], grey))
                .map_err(plot_err)?
                .label("1 - alpha")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
        }
        for (i, (name, pts)) in series.into_iter().enumerate() {
            line_with_points(&mut chart, pts, Palette99::pick(i).to_rgba(), name)?;
        }
        finish(chart, &root, SeriesLabelPosition::LowerLeft)?;
    }
    Ok(svg)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// Renders every output in memory first, then writes `report.json`, the plots and (when
/// present) per-row `.npz` files into `dir`, each atomically. Returns the paths written.
/// All or nothing: on an error the files already written (and `dir`, when this call
/// created it) are removed again.
pub fn write_outputs(
    eval: &Evaluation,
    meta: &Meta,
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<(String, String)> = Vec::new();
    let report = to_json(eval, meta)?;
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
    files.push(("report.json".into(), text + "\n"));
    for group in ["slide", "hospital"] {
        for ts in [false, true] {
            if let Some(svg) = groups_svg(eval, group, ts)? {
                let mode = if ts { "ts" } else { "raw" };
                files.push((format!("{group}_accuracy_{mode}.svg"), svg));
            }
        }
    }
    files.push(("reliability.svg".into(), reliability_svg(eval)?));
    files.push(("coverage_vs_alpha.svg".into(), conformal_svg(eval, true)?));
    files.push(("set_size_vs_alpha.svg".into(), conformal_svg(eval, false)?));
    let created = !dir.is_dir();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    let result = write_all(eval, dir, &files, &mut written);
    if result.is_err() {
        // All or nothing: a failed run leaves no output file (DESIGN.md section 6).
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result.map(|()| written)
}

fn write_all(
    eval: &Evaluation,
    dir: &Path,
    files: &[(String, String)],
    written: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        write_text(&path, text)?;
        written.push(path);
    }
    let a = eval.alphas.len();
    for rows in &eval.rows {
        let path = dir.join(format!("{}_rows.npz", rows.name));
        let n = rows.yhat.len();
        save_npz_arrays(
            &path,
            &[
                ("yhat", NpzArray::I64(&rows.yhat)),
                ("max_prob", NpzArray::F32(&rows.max_prob)),
                ("credibility", NpzArray::F32(&rows.credibility)),
                ("confidence", NpzArray::F32(&rows.confidence)),
                ("set_size", NpzArray::I64x2(&rows.set_size, n, a)),
                ("alphas", NpzArray::F64(&eval.alphas)),
            ],
            false,
        )?;
        written.push(path);
    }
    Ok(())
}
