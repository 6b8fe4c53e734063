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
