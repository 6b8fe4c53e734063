//! Input checks every backend runs before a kernel: plans' array lengths, temperatures,
//! sorted scores, unlabelled source rows.

use super::*;

/// `Error::UnlabelledSource` for the first NaN score (a row whose label is unknown).
pub(super) fn check_scores(scores: Vec<f32>) -> Result<Vec<f32>> {
    match scores.iter().position(|s| s.is_nan()) {
        Some(row) => Err(Error::UnlabelledSource {
            what: "LAC scores".into(),
            row,
        }),
        None => Ok(scores),
    }
}

/// Group id arrays must have one entry per label.
pub(super) fn check_plan(plan: &TallyPlan<'_>) -> Result<()> {
    for (g, name) in plan.groups.iter().zip(crate::kernel::tally::GROUP_ARRAYS) {
        if let Some(g) = g {
            if g.len() != plan.labels.len() {
                return Err(Error::LengthMismatch {
                    what: format!("tally {name} ids"),
                    detail: format!("{} ids for {} rows", g.len(), plan.labels.len()),
                });
            }
        }
    }
    Ok(())
}

/// A bootstrap plan's labels and group ids must be one per row, its temperatures valid.
pub(super) fn check_bootstrap_plan(plan: &BootstrapTallyPlan<'_>, n: usize) -> Result<()> {
    if plan.modes[0].len() != plan.modes[1].len() {
        return Err(Error::LengthMismatch {
            what: "bootstrap plans".into(),
            detail: format!(
                "{} raw and {} ts replicates",
                plan.modes[0].len(),
                plan.modes[1].len()
            ),
        });
    }
    for r in plan.modes.iter().flat_map(|m| m.iter()) {
        check_t(r.t)?;
    }
    let lens = [
        ("labels", Some(plan.labels.len())),
        ("hospital", plan.groups[0].map(|g| g.len())),
        ("slide", plan.groups[1].map(|g| g.len())),
    ];
    for (what, len) in lens {
        if let Some(len) = len.filter(|&l| l != n) {
            return Err(Error::LengthMismatch {
                what: format!("bootstrap tally {what}"),
                detail: format!("{len} entries for {n} rows"),
            });
        }
    }
    Ok(())
}

pub(super) fn check_t(t: f32) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::BadTemperature(t as f64))
    }
}

pub(super) fn check_sorted_scores(sorted: &[f32]) -> Result<()> {
    if sorted.is_empty() {
        return Err(Error::Empty {
            what: "calibration scores".into(),
            detail: "p-values need at least one score".into(),
        });
    }
    crate::kernel::radix_sort::check_no_nan("calibration scores", sorted)?;
    if let Some(i) = sorted
        .windows(2)
        .position(|w| w[0].total_cmp(&w[1]).is_gt())
    {
        return Err(Error::Invalid(format!(
            "calibration scores are not sorted ascending at index {}",
            i + 1
        )));
    }
    Ok(())
}
