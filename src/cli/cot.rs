//! `cot`: COT of one target and of each of its groups (hospital, slide) without holding
//! its rows (DESIGN.md 2.11's rounds). The target's files are read once for the group
//! ids, then once a pass, chunk by chunk, through the CPU softmax at each mode's
//! temperature (the probabilities a report's COT uses), the target and every group in
//! lockstep. K = 2: the mergeable passes of `kernel::cot_two_class` on the chosen device,
//! seven a mode, fifteen reads of every file. K > 2: the dual's rounds of
//! `methods::cot_dual` on the host, typically two passes a mode (a sample, then the rows
//! near a class boundary), one more a widening. Each file is hashed on every read; a
//! file whose bytes change between reads is an error, not a wrong number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::commands::read_calibration;
use crate::cli::outputs::{check_json_target, emit_json, open_device};
use crate::cpu::softmax::softmax;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::methods::cot::{cot_two_class_streamed_sets, SetFeed};
use crate::methods::cot_dual::{cot_rounds_sets, DualBudget};
use crate::methods::evaluate::TARGET_CHUNK_ROWS;
use crate::{with_backend, Error, Result};

/// Passes a mode takes (six histograms, one sums).
const PASSES: u64 = 7;

/// `cot --calibration CAL FILE...`: COT raw and ts of the target made of `data`.
pub fn run_cot(
    calibration: &Path,
    data: &[PathBuf],
    device: &str,
    sample_rows: Option<u64>,
    json: &Option<String>,
) -> Result<()> {
    check_json_target(json)?;
    let cal = read_calibration(calibration)?;
    let k = cal.k;
    if k < 2 {
        return Err(Error::Invalid(format!(
            "{}: K = {k}; COT needs two classes or more",
            calibration.display()
        )));
    }
    if sample_rows == Some(0) {
        return Err(Error::Invalid("--sample-rows: at least 1 row".into()));
    }
    if cal.class_counts.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no source class counts (a calibration of an earlier version): calibrate again",
            calibration.display()
        )));
    }
    // A file given twice would count its rows twice.
    let mut seen = std::collections::BTreeSet::new();
    for path in data {
        let key = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        if !seen.insert(key) {
            return Err(Error::Invalid(format!(
                "{}: given twice (each of a target's files once)",
                path.display()
            )));
        }
    }
    // Every file once: K must be the calibration's; the rows and each group's add up.
    let mut hashes: Vec<Option<String>> = vec![None; data.len()];
    let mut n = 0u64;
    let mut ids: [BTreeMap<i64, u64>; 2] = Default::default();
    let mut present: Option<[bool; 2]> = None;
    for (path, hash) in data.iter().zip(hashes.iter_mut()) {
        let mut r = NpzRowReader::open(path)?;
        crate::methods::calibration::check_k(&path.display().to_string(), r.k(), &cal)?;
        let has = [r.has_hospital(), r.has_slide()];
        if *present.get_or_insert(has) != has {
            return Err(Error::Invalid(format!(
                "{}: its group arrays (hospital {}, slide {}) differ from the target's other files",
                path.display(),
                has[0],
                has[1]
            )));
        }
        let mut chunk = RowChunk::default();
        while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
            n += chunk.rows() as u64;
            for (g, arr) in [&chunk.hospital, &chunk.slide].into_iter().enumerate() {
                for &id in arr.iter().flatten() {
                    *ids[g].entry(id).or_insert(0) += 1;
                }
            }
        }
        *hash = Some(r.finish()?);
    }
    // Sets: the target, then each group array's groups by ascending id.
    let mut sizes = vec![n];
    let mut first_set = [0usize; 2];
    for (g, m) in ids.iter().enumerate() {
        first_set[g] = sizes.len();
        sizes.extend(m.values());
    }
    let slot_of: [BTreeMap<i64, usize>; 2] = [0, 1].map(|g| {
        ids[g]
            .keys()
            .enumerate()
            .map(|(j, &id)| (id, first_set[g] + j))
            .collect()
    });
    let bar = if k == 2 {
        indicatif::ProgressBar::new(2 * PASSES)
    } else {
        indicatif::ProgressBar::no_length()
    };
    let template = if k == 2 {
        "{bar:30} {pos}/{len} passes [{elapsed}]"
    } else {
        "{spinner} {pos} passes [{elapsed}]"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let counts = cal.class_counts.clone();
    let temperatures = [cal.modes.raw.t, cal.modes.ts.t];
    // One pass at temperature `t`: every file's chunks, each row to the target and to
    // its groups, every file's hash checked against its first read's.
    let mut pass = |t: f32, feed: &mut SetFeed<'_>| -> Result<()> {
        let mut chunk = RowChunk::default();
        let mut by_set: Vec<Vec<f32>> = vec![Vec::new(); sizes.len()];
        for (path, hash) in data.iter().zip(hashes.iter_mut()) {
            let mut r = NpzRowReader::open(path)?;
            while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
                let p = softmax(&chunk.logits, k, t);
                feed(0, &p)?;
                // Each group's rows of the chunk, together.
                for (g, arr) in [&chunk.hospital, &chunk.slide].into_iter().enumerate() {
                    let Some(arr) = arr else { continue };
                    for (&id, row) in arr.iter().zip(p.chunks_exact(k)) {
                        let set = slot_of[g].get(&id).copied().ok_or_else(|| {
                            Error::Invalid(format!(
                                "{}: group id {id} appeared between reads",
                                path.display()
                            ))
                        })?;
                        by_set[set].extend_from_slice(row);
                    }
                }
                for (set, rows) in by_set.iter_mut().enumerate() {
                    if !rows.is_empty() {
                        feed(set, rows)?;
                        rows.clear();
                    }
                }
            }
            let h = r.finish()?;
            if hash.as_deref() != Some(h.as_str()) {
                return Err(Error::Invalid(format!(
                    "{}: its bytes changed between COT's reads",
                    path.display()
                )));
            }
        }
        bar.inc(1);
        Ok(())
    };
    let mut values: [Vec<f64>; 2] = Default::default();
    // K > 2: the most rows the rounds held at once (a sample or the free rows).
    let mut held_rows = 0u64;
    let (device_name, passes) = if k == 2 {
        let (engine, choice) = open_device(device)?;
        let name = with_backend!(&engine, choice, |b| {
            use crate::backend::Backend;
            for (v, &t) in values.iter_mut().zip(&temperatures) {
                *v = cot_two_class_streamed_sets(b, &sizes, &counts, |feed| pass(t, feed))?;
            }
            Ok::<_, Error>(b.device_name())
        })?;
        (name, 2 * PASSES)
    } else {
        // The rounds' passes are host work on every device (no device kernel yet).
        let budget = DualBudget {
            sample_rows: sample_rows.unwrap_or(DualBudget::for_classes(k).sample_rows),
            ..DualBudget::for_classes(k)
        };
        let mut passes = 0;
        for (v, &t) in values.iter_mut().zip(&temperatures) {
            let (got, s) = cot_rounds_sets(&sizes, k, &counts, budget, |feed| pass(t, feed))?;
            *v = got;
            passes += s.passes;
            held_rows = held_rows.max(s.held_rows);
        }
        ("host CPU (K > 2 rounds)".to_string(), passes)
    };
    bar.finish_and_clear();
    let files: Vec<serde_json::Value> = data
        .iter()
        .zip(&hashes)
        .map(|(p, h)| serde_json::json!({ "path": p.display().to_string(), "sha256": h }))
        .collect();
    let mode_values =
        |set: usize| serde_json::json!({ "raw": values[0][set], "ts": values[1][set] });
    let mut groups = serde_json::Map::new();
    for (g, name) in ["hospital", "slide"].into_iter().enumerate() {
        if !present.unwrap_or_default()[g] {
            continue;
        }
        let list: Vec<serde_json::Value> = ids[g]
            .iter()
            .map(|(&id, &n)| {
                let mut v = mode_values(slot_of[g][&id]);
                v["id"] = id.into();
                v["n"] = n.into();
                v
            })
            .collect();
        groups.insert(name.into(), list.into());
    }
    let value = serde_json::json!({
        "calibration": calibration.display().to_string(),
        "files": files,
        "n": n,
        "passes": passes,
        "held_rows": held_rows,
        "device": device_name,
        "cot": mode_values(0),
        "groups": groups,
    });
    eprintln!(
        "COT of {n} rows: raw {:.6}, ts {:.6} ({} groups; {} passes)",
        values[0][0],
        values[1][0],
        sizes.len() - 1,
        passes
    );
    emit_json(&value, json)
}
