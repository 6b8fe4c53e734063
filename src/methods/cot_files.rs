//! COT of one target's files and of each of its groups (hospital, slide) without
//! holding the rows (DESIGN.md 2.11's rounds): the one driver behind `conformal-gpu cot`
//! and Python's `Calibration.cot_files`. The files (one, or the target's shards in any
//! order; a file given twice is an error) are read once for the group ids, then once a
//! pass, chunk by chunk, through the CPU softmax at the modes' temperatures (the
//! probabilities a report's COT uses), the target and every group in lockstep.
//! - K = 2: the mergeable passes of `kernel::cot_two_class` on the backend, seven
//!   ([`TWO_CLASS_PASSES`]) for both modes at once: eight reads of every file.
//! - K > 2: the dual's rounds ([`crate::methods::cot_dual`]) on the host, one mode after
//!   the other (what is held is one mode's), typically two to four passes a mode (a
//!   sample, refine passes on large sets, a collect pass).
//!
//! Each file is hashed (SHA-256) on every read; a file whose bytes change between reads
//! is an error, not a wrong number. The values are the report's COT of the same rows,
//! bit for bit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::backend::Backend;
use crate::cpu::softmax::softmax;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::error::{Error, Result};
use crate::methods::calibration::Calibration;
use crate::methods::cot::{cot_two_class_streamed_sets, SetFeed};
use crate::methods::cot_dual::{cot_rounds_sets, DualBudget};
use crate::methods::evaluate::TARGET_CHUNK_ROWS;

/// Passes at K = 2 (six histograms, one sums), both modes together.
pub const TWO_CLASS_PASSES: u64 = 7;

/// COT raw and ts of the target made of `data` and of each of its groups, as JSON:
/// `calibration` (the name given), `files` (path, sha256), `n`, `passes`, `held_rows`
/// (K > 2: the most rows held at once), `device`, `cot` (`raw`, `ts`) and `groups`
/// (per group array present, `{id, n, raw, ts}` by ascending id). `sample_rows`:
/// K > 2's sample a set (default [`DualBudget::for_classes`]). `on_pass` is called
/// after every pass.
pub fn cot_of_files<B: Backend + ?Sized>(
    backend: &B,
    cal: &Calibration,
    calibration: &str,
    data: &[PathBuf],
    sample_rows: Option<u64>,
    on_pass: &dyn Fn(),
) -> Result<serde_json::Value> {
    let k = cal.k;
    if k < 2 {
        return Err(Error::Invalid(format!(
            "{calibration}: K = {k}; COT needs two classes or more"
        )));
    }
    if k > 2 && sample_rows == Some(0) {
        return Err(Error::Invalid("COT sample rows: at least 1 row".into()));
    }
    if cal.class_counts.is_empty() {
        return Err(Error::Invalid(format!(
            "{calibration}: no source class counts (a calibration of an earlier version): \
             calibrate again"
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
        crate::methods::calibration::check_k(&path.display().to_string(), r.k(), cal)?;
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
    let counts = cal.class_counts.clone();
    let temperatures = [cal.modes.raw.t, cal.modes.ts.t];
    let sets = sizes.len();
    // One pass: every file's chunks, each row to the target and to its groups at each
    // `(temperature, first set)` of `modes` (a mode's sets are `first..first + sets`),
    // every file's hash checked against its first read's.
    let mut pass = |modes: &[(f32, usize)], feed: &mut SetFeed<'_>| -> Result<()> {
        let mut chunk = RowChunk::default();
        let mut by_set: Vec<Vec<f32>> = vec![Vec::new(); modes.len() * sets];
        for (path, hash) in data.iter().zip(hashes.iter_mut()) {
            let mut r = NpzRowReader::open(path)?;
            while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
                for (m, &(t, first)) in modes.iter().enumerate() {
                    let p = softmax(&chunk.logits, k, t);
                    feed(first, &p)?;
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
                            by_set[m * sets + set].extend_from_slice(row);
                        }
                    }
                }
                for (at, rows) in by_set.iter_mut().enumerate() {
                    if !rows.is_empty() {
                        feed(modes[at / sets].1 + at % sets, rows)?;
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
        on_pass();
        Ok(())
    };
    let mut values: [Vec<f64>; 2] = Default::default();
    // K > 2: the most rows the rounds held at once (a sample or the free rows).
    let mut held_rows = 0u64;
    let (device_name, passes) = if k == 2 {
        // Both modes in each pass (set `s + sets` is set `s` in ts): a pass holds a
        // chunk's copies, so one read serves both modes at no cost in memory to speak of.
        let both_sizes: Vec<u64> = sizes.iter().chain(&sizes).copied().collect();
        let modes = [(temperatures[0], 0), (temperatures[1], sets)];
        let both =
            cot_two_class_streamed_sets(backend, &both_sizes, &counts, |feed| pass(&modes, feed))?;
        values = [both[..sets].to_vec(), both[sets..].to_vec()];
        (backend.device_name(), TWO_CLASS_PASSES)
    } else {
        // The rounds' passes are host work on every device (no device kernel yet). One
        // mode at a time: what the rounds hold (samples, free rows) is one mode's, at
        // the price of reading the files for each (README, "the rounds").
        let budget = DualBudget {
            sample_rows: sample_rows.unwrap_or(DualBudget::for_classes(k).sample_rows),
            ..DualBudget::for_classes(k)
        };
        let mut passes = 0;
        for (v, &t) in values.iter_mut().zip(&temperatures) {
            let (got, s) =
                cot_rounds_sets(&sizes, k, &counts, budget, |feed| pass(&[(t, 0)], feed))?;
            *v = got;
            passes += s.passes;
            held_rows = held_rows.max(s.held_rows);
        }
        ("host CPU (K > 2 rounds)".to_string(), passes)
    };
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
    Ok(serde_json::json!({
        "calibration": calibration.to_string(),
        "files": files,
        "n": n,
        "passes": passes,
        "held_rows": held_rows,
        "device": device_name,
        "cot": mode_values(0),
        "groups": groups,
    }))
}
