//! SVG plots: estimated vs true accuracy per group, reliability, coverage and set size
//! against alpha.

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::report::model::Evaluation;
use crate::report::model::Method;

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

const COLORS: [RGBColor; Method::ALL.len()] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// One group's point: true accuracy, estimate, and their bootstrap intervals.
type GroupPoint = (f64, f64, Option<[f64; 2]>, Option<[f64; 2]>);

/// Predicted vs true accuracy per slide (or hospital), one series per method, for one mode;
/// with a bootstrap, error bars: the estimate's interval vertically, the true accuracy's
/// horizontally.
pub(crate) fn groups_svg(eval: &Evaluation, group: &str, ts: bool) -> Result<Option<String>> {
    let mut points: Vec<Vec<GroupPoint>> = vec![Vec::new(); Method::ALL.len()];
    for t in &eval.targets {
        for g in t.groups.get(group).into_iter().flatten() {
            if let Some(acc) = g.true_accuracy {
                let est = if ts { g.estimates.ts } else { g.estimates.raw };
                let iv = g.intervals.as_ref();
                let truth_ci = iv.and_then(|i| i.true_accuracy_ci);
                for (i, method) in Method::ALL.into_iter().enumerate() {
                    let (m, v) = (&method.name(), &est.get(method));
                    // A method not computed (NaN) has no point.
                    if v.is_nan() {
                        continue;
                    }
                    let est_ci = iv
                        .and_then(|i| if ts { i.ci.ts.get(m) } else { i.ci.raw.get(m) })
                        .copied()
                        .flatten();
                    points[i].push((acc, *v, est_ci, truth_ci));
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
        for (i, name) in Method::ALL.map(Method::name).iter().enumerate() {
            let c = COLORS[i];
            // Shrinking markers keep coinciding methods visible (CPC = ATC-MC for K = 2).
            let r = (7 - i as i32).max(2);
            let style = c.mix(0.6).stroke_width(1);
            let vertical = points[i].iter().filter_map(|&(x, y, e, _)| {
                e.map(|[lo, hi]| ErrorBar::new_vertical(x, lo, y, hi, style, 6))
            });
            chart.draw_series(vertical).map_err(plot_err)?;
            let horizontal = points[i].iter().filter_map(|&(x, y, _, t)| {
                t.map(|[lo, hi]| ErrorBar::new_horizontal(y, lo, x, hi, style, 6))
            });
            chart.draw_series(horizontal).map_err(plot_err)?;
            chart
                .draw_series(
                    points[i]
                        .iter()
                        .map(|&(x, y, _, _)| Circle::new((x, y), r, c.filled())),
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
pub(crate) fn reliability_svg(eval: &Evaluation) -> Result<String> {
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
pub(crate) fn conformal_svg(eval: &Evaluation, coverage: bool) -> Result<String> {
    let series: Vec<(String, Vec<(f64, f64)>)> = eval
        .targets
        .iter()
        .map(|t| {
            // The first score's entries (marginal or not, as listed first).
            let first = t.conformal.ts.first();
            let pts: Vec<(f64, f64)> = t
                .conformal
                .ts
                .iter()
                .filter(|c| {
                    first.is_some_and(|f| {
                        f.score == c.score && f.class_conditional == c.class_conditional
                    })
                })
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

/// One point of a sweep's scatter: model index, method, true accuracy, estimate.
pub type ScatterPoint = (usize, Method, f64, f64);

/// The sweep's estimate-vs-true scatter of one dataset and mode (DESIGN.md 3): every
/// labelled (cell, target), one colour per method, one marker per model (circle,
/// triangle, square, cross, repeating), the line y = x. Axes span the points.
pub fn scatter_svg(title: &str, models: &[String], points: &[ScatterPoint]) -> Result<String> {
    let lo = points
        .iter()
        .flat_map(|p| [p.2, p.3])
        .fold(1.0f64, f64::min)
        .clamp(0.0, 1.0);
    let lo = ((lo * 10.0).floor() / 10.0).min(0.9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 680)).into_drawing_area();
        let axes = ("true accuracy", "estimated accuracy");
        let mut chart = frame(&root, title, lo..1.0, lo..1.0, axes)?;
        chart
            .draw_series(LineSeries::new(vec![(lo, lo), (1.0, 1.0)], BLACK.mix(0.4)))
            .map_err(plot_err)?;
        for (i, m) in Method::ALL.into_iter().enumerate() {
            let c = COLORS[i].mix(0.8);
            let mut labelled = false;
            for j in 0..models.len() {
                let at: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.1 == m && p.0 == j)
                    .map(|p| (p.2, p.3))
                    .collect();
                if at.is_empty() {
                    continue;
                }
                let drawn = match j % 4 {
                    0 => chart.draw_series(at.into_iter().map(|p| Circle::new(p, 4, c.filled()))),
                    1 => chart.draw_series(
                        at.into_iter()
                            .map(|p| TriangleMarker::new(p, 5, c.filled())),
                    ),
                    2 => chart.draw_series(at.into_iter().map(|p| {
                        EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], c.filled())
                    })),
                    _ => chart
                        .draw_series(at.into_iter().map(|p| Cross::new(p, 4, c.stroke_width(2)))),
                }
                .map_err(plot_err)?;
                if !labelled {
                    drawn
                        .label(m.name())
                        .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
                    labelled = true;
                }
            }
        }
        // The markers' models, as legend entries in grey.
        let g = BLACK.mix(0.7);
        for (j, model) in models.iter().enumerate() {
            let none = std::iter::empty::<Circle<(f64, f64), i32>>();
            let anno = chart.draw_series(none).map_err(plot_err)?;
            let anno = anno.label(format!("model {model}"));
            match j % 4 {
                0 => anno.legend(move |(x, y)| Circle::new((x, y), 4, g.filled())),
                1 => anno.legend(move |(x, y)| TriangleMarker::new((x, y), 5, g.filled())),
                2 => anno.legend(move |(x, y)| {
                    Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], g.filled())
                }),
                _ => anno.legend(move |(x, y)| Cross::new((x, y), 4, g.stroke_width(2))),
            };
        }
        finish(chart, &root, SeriesLabelPosition::LowerRight)?;
    }
    Ok(svg)
}
