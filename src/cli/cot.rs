//! `cot`: COT of one K = 2 target in bounded memory (DESIGN.md 2.11's rounds). The
//! target's files are read once a pass, chunk by chunk, through the CPU softmax at each
//! mode's temperature (the probabilities a report's COT uses) into the mergeable passes
//! of `kernel::cot_two_class` on the chosen device: seven passes a mode, fourteen reads
//! of every file. Each file is hashed on every pass; a file whose bytes change between
//! passes is an error, not a wrong number.

use std::path::{Path, PathBuf};

use crate::cli::commands::read_calibration;
use crate::cli::outputs::{check_json_target, emit_json, open_device};
use crate::cpu::softmax::softmax;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::methods::cot::cot_two_class_streamed;
use crate::methods::evaluate::TARGET_CHUNK_ROWS;
use crate::{with_backend, Error, Result};

/// Passes a mode takes (six histograms, one sums).
const PASSES: u64 = 7;

/// `cot --calibration CAL FILE...`: COT raw and ts of the target made of `data`.
pub fn run_cot(
    calibration: &Path,
    data: &[PathBuf],
    device: &str,
    json: &Option<String>,
) -> Result<()> {
    check_json_target(json)?;
    let cal = read_calibration(calibration)?;
    if cal.k != 2 {
        return Err(Error::Invalid(format!(
            "{}: K = {}; `cot` streams K = 2 targets (evaluate and merge report COT at any K)",
            calibration.display(),
            cal.k
        )));
    }
    if cal.class_counts.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no source class counts (a calibration of an earlier version): calibrate again",
            calibration.display()
        )));
    }
    // Every file once for its shape: K must be the calibration's, the rows add up.
    let mut n = 0u64;
    for path in data {
        let r = NpzRowReader::open(path)?;
        crate::methods::calibration::check_k(&path.display().to_string(), r.k(), &cal)?;
        n += r.n() as u64;
    }
    let (engine, choice) = open_device(device)?;
    let bar = indicatif::ProgressBar::new(2 * PASSES);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} passes [{elapsed}]")
    {
        bar.set_style(style);
    }
    let mut hashes: Vec<Option<String>> = vec![None; data.len()];
    let counts = cal.class_counts.clone();
    let temperatures = [cal.modes.raw.t, cal.modes.ts.t];
    let (values, device_name) = with_backend!(&engine, choice, |b| {
        use crate::backend::Backend;
        let mut out = [0f64; 2];
        for (v, &t) in out.iter_mut().zip(&temperatures) {
            *v = cot_two_class_streamed(b, n, &counts, |feed| {
                let mut chunk = RowChunk::default();
                for (path, hash) in data.iter().zip(hashes.iter_mut()) {
                    let mut r = NpzRowReader::open(path)?;
                    while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
                        feed(&softmax(&chunk.logits, 2, t))?;
                    }
                    let h = r.finish()?;
                    match hash {
                        Some(first) if *first != h => {
                            return Err(Error::Invalid(format!(
                                "{}: its bytes changed between COT's passes",
                                path.display()
                            )));
                        }
                        _ => *hash = Some(h),
                    }
                }
                bar.inc(1);
                Ok(())
            })?;
        }
        Ok::<_, Error>((out, b.device_name()))
    })?;
    bar.finish_and_clear();
    let files: Vec<serde_json::Value> = data
        .iter()
        .zip(&hashes)
        .map(|(p, h)| serde_json::json!({ "path": p.display().to_string(), "sha256": h }))
        .collect();
    let value = serde_json::json!({
        "calibration": calibration.display().to_string(),
        "files": files,
        "n": n,
        "passes": 2 * PASSES,
        "device": device_name,
        "cot": { "raw": values[0], "ts": values[1] },
    });
    eprintln!(
        "COT of {n} rows: raw {:.6}, ts {:.6} ({} passes)",
        values[0],
        values[1],
        2 * PASSES
    );
    emit_json(&value, json)
}
