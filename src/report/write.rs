//! Writing every output of a report into a directory, all or nothing.

use std::path::Path;

use crate::data::npz::{save_npz_arrays, write_atomic, NpzArray};
use crate::error::{Error, Result};
use crate::report::json::{to_json, Meta};
use crate::report::model::Evaluation;
use crate::report::plots::{conformal_svg, groups_svg, reliability_svg};

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
        let (r, t) = (&rows.modes.raw, &rows.modes.ts);
        save_npz_arrays(
            &path,
            &[
                ("yhat", NpzArray::I64(&rows.yhat)),
                ("max_prob_raw", NpzArray::F32(&r.max_prob)),
                ("credibility_raw", NpzArray::F64(&r.credibility)),
                ("confidence_raw", NpzArray::F64(&r.confidence)),
                ("set_size_raw", NpzArray::I64x2(&r.set_size, n, a)),
                ("max_prob_ts", NpzArray::F32(&t.max_prob)),
                ("credibility_ts", NpzArray::F64(&t.credibility)),
                ("confidence_ts", NpzArray::F64(&t.confidence)),
                ("set_size_ts", NpzArray::I64x2(&t.set_size, n, a)),
                ("alphas", NpzArray::F64(&eval.alphas)),
            ],
            false,
        )?;
        written.push(path);
    }
    Ok(())
}
