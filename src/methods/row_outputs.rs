//! Per-row outputs (`--rows`): each row's predicted class, largest probability,
//! credibility and confidence (conformal p-values against the source's LAC scores) and
//! set sizes per level, in both modes.

use crate::backend::Backend;
use crate::error::Result;
use crate::kernel::row_stats::col;
use crate::methods::calibration::Calibration;
use crate::methods::tally::TargetRows;
use crate::report::model::{RowMode, RowOutputs};

impl Calibration {
    /// Per-row outputs of one chunk in both modes: predicted class, largest probability,
    /// credibility and confidence (conformal p-values against the source's LAC scores),
    /// set sizes per level.
    pub fn row_outputs<B: Backend>(
        &self,
        backend: &B,
        rows: &TargetRows<'_>,
    ) -> Result<RowOutputs> {
        rows.validate(self.k)?;
        let n = rows.rows();
        let unknown;
        let labels: &[i32] = match rows.labels {
            Some(l) => l,
            None => {
                unknown = vec![-1; n];
                &unknown
            }
        };
        let prepared = backend.prepare(rows.logits, labels, self.k)?;
        let mut out = RowOutputs {
            name: rows.name.to_string(),
            ..Default::default()
        };
        for (m, is_ts) in [(&self.modes.raw, false), (&self.modes.ts, true)] {
            let st = backend.row_stats(&prepared, m.t, &m.qhats)?;
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
}
