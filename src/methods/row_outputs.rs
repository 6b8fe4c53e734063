//! Per-row outputs (`--rows`): each row's predicted class, largest probability,
//! credibility and confidence (conformal p-values against the source's LAC scores) and
//! set sizes per level, in both modes.

use crate::backend::Backend;
use crate::error::Result;
use crate::kernel::row_stats::col;
use crate::methods::thresholds::ModeCalibration;
use crate::report::model::{Modes, RowMode, RowOutputs};

/// Per-row outputs of rows already prepared on `backend` (labels uploaded with them), in
/// both modes of `modes`: predicted class, largest probability, credibility and
/// confidence (conformal p-values against the source's LAC scores), set sizes per level.
/// The tally stream calls it on the rows it has just counted, so `--rows` validates and
/// uploads each chunk once.
pub fn prepared_row_outputs<B: Backend>(
    backend: &B,
    prepared: &B::Rows<'_>,
    modes: &Modes<ModeCalibration>,
    name: &str,
) -> Result<RowOutputs> {
    let mut out = RowOutputs {
        name: name.to_string(),
        ..Default::default()
    };
    for (m, is_ts) in [(&modes.raw, false), (&modes.ts, true)] {
        let st = backend.row_stats(prepared, m.t, &m.qhats)?;
        let s = &m.sorted_lac;
        // The p-value kernel's own count (mirror of shaders/pvalues.wgsl's search).
        let pvalue =
            |r: f32| (1 + crate::cpu::pvalues::count_ge(s, r)) as f64 / (s.len() + 1) as f64;
        let mut mode = RowMode::default();
        for (i, row) in st.stats.iter().enumerate() {
            if !is_ts {
                out.yhat.push(st.yhat(i) as i64);
            }
            mode.max_prob.push(row[col::P1]);
            mode.credibility.push(pvalue(row[col::R1]));
            mode.confidence.push(1.0 - pvalue(row[col::R2]));
            mode.set_size
                .extend(st.all().sizes(i).iter().map(|&c| c as i64));
        }
        if is_ts {
            out.modes.ts = mode;
        } else {
            out.modes.raw = mode;
        }
    }
    Ok(out)
}

/// Conformal p-values (DESIGN.md 2.6) of every class of every row of `logits` (`n * k`,
/// row-major) at temperature `t` against the ascending source scores `sorted`:
/// `[row * k + class]` = `(1 + #{i : s_i >= 1 - p_k})/(n_cal + 1)`, the numerator counted
/// by the p-value kernel (exact, by binary search) and divided once in f64.
pub fn pvalue_matrix<B: Backend>(
    backend: &B,
    logits: &[f32],
    k: usize,
    t: f32,
    sorted: &[f32],
) -> Result<Vec<f64>> {
    if k < 2 {
        return Err(crate::error::Error::TooFewClasses {
            what: "p-values: logits".into(),
            k,
        });
    }
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(crate::error::Error::NonFinite {
            what: "p-values: logits".into(),
            row: i / k,
            col: i % k,
            value: logits[i],
        });
    }
    let n = logits.len() / k;
    if n == 0 {
        return Ok(Vec::new());
    }
    let labels = vec![-1i32; n];
    let rows = backend.prepare(logits, &labels, k)?;
    let found = backend.pvalues(&rows, t, sorted, &[], true)?;
    let denominator = (sorted.len() + 1) as f64;
    Ok(found
        .numerators
        .unwrap_or_default()
        .iter()
        .map(|&c| c as f64 / denominator)
        .collect())
}
