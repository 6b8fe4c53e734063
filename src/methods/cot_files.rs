//! COT of one target's files and of each of its groups (hospital, slide) without
//! holding the rows (DESIGN.md 2.11's rounds): the one driver behind `conformal-gpu cot`
//! and Python's `Calibration.cot_files`. The files (one, or the target's shards in any
//! order; a file given twice is an error) are the shards of [`crate::methods::cot_passes`]'s
//! protocol, run in one process: read once for the census (rows, group ids), then once a
//! pass, chunk by chunk, through the CPU softmax at the modes' temperatures (the
//! probabilities a report's COT uses), the target and every group in lockstep.
//! - K = 2: the mergeable passes of `kernel::cot_two_class` on the backend, seven
//!   ([`TWO_CLASS_PASSES`]) for both modes at once: eight reads of every file.
//! - K > 2: the dual's rounds ([`crate::methods::cot_dual`]), one mode after the other
//!   (what is held is one mode's), typically two to four passes a mode (a sample, refine
//!   passes on large sets, a collect pass); the collect passes on the backend
//!   (`kernel::cot_collect`; past its [`MAX_DEVICE_CLASSES`] classes the CPU mirror), the
//!   samples and the solves on the host.
//!
//! Each file is hashed (SHA-256) on every read; a file whose bytes change between reads
//! is an error, not a wrong number. The values are the report's COT of the same rows,
//! bit for bit.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::error::{Error, Result};
use crate::kernel::cot_collect::MAX_DEVICE_CLASSES;
use crate::methods::calibration::Calibration;
use crate::methods::cot_passes::{CotPasses, PassPart, PassPlan, ShardCensus};
use crate::methods::evaluate::TARGET_CHUNK_ROWS;

/// Passes at K = 2 (six histograms, one sums), both modes together.
pub const TWO_CLASS_PASSES: u64 = 7;

/// COT raw and ts of the target made of `data` and of each of its groups, as JSON:
/// `calibration` (the name given), `files` (path, sha256), `n`, `passes`, `held_rows`
/// (K > 2: the most rows held at once), `device`, `cot` (`raw`, `ts`) and `groups`
/// (per group array present, `{id, n, raw, ts}` by ascending id). `sample_rows`:
/// K > 2's sample a set (default
/// [`crate::methods::cot_dual::DualBudget::for_classes`]). `on_pass` is called after
/// every pass.
pub fn cot_of_files<B: Backend + ?Sized>(
    backend: &B,
    cal: &Calibration,
    calibration: &str,
    data: &[PathBuf],
    sample_rows: Option<u64>,
    on_pass: &dyn Fn(),
) -> Result<serde_json::Value> {
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
    // The census: every file once (K must be the calibration's), its rows and groups.
    let mut hashes: Vec<String> = Vec::with_capacity(data.len());
    let mut census: Vec<ShardCensus> = Vec::with_capacity(data.len());
    for path in data {
        let (c, hash) = census_of_file(cal, path)?;
        if let Some(first) = census.first() {
            if first.groups.each_ref().map(Option::is_some)
                != c.groups.each_ref().map(Option::is_some)
            {
                return Err(Error::Invalid(format!(
                    "{}: its group arrays (hospital {}, slide {}) differ from the target's other files",
                    path.display(),
                    c.groups[0].is_some(),
                    c.groups[1].is_some()
                )));
            }
        }
        hashes.push(hash);
        census.push(c);
    }
    let mut passes = CotPasses::new(cal, calibration, &census, sample_rows)?;
    // Each pass: every file's chunks through its shard's fold, every file's hash checked
    // against the census's read.
    while let Some(plan) = passes.plan() {
        let mut part: Option<PassPart> = None;
        for (shard, (path, hash)) in data.iter().zip(&hashes).enumerate() {
            let (p, read) = part_of_file(backend, &plan, shard, path)?;
            if read != *hash {
                return Err(Error::Invalid(format!(
                    "{}: its bytes changed between COT's reads",
                    path.display()
                )));
            }
            match &mut part {
                Some(all) => all.merge(&p)?,
                None => part = Some(p),
            }
        }
        let part = part.ok_or_else(|| Error::Invalid("COT: no file".into()))?;
        passes.advance(part)?;
        on_pass();
    }
    let mut out = passes.summary()?;
    let device_name = if cal.k > MAX_DEVICE_CLASSES {
        // Wider than the device's collect kernel: its CPU mirror on every backend.
        format!(
            "{} (K > {MAX_DEVICE_CLASSES}: the collect passes on the host)",
            backend.device_name()
        )
    } else {
        backend.device_name()
    };
    let files: Vec<serde_json::Value> = data
        .iter()
        .zip(&hashes)
        .map(|(p, h)| serde_json::json!({ "path": p.display().to_string(), "sha256": h }))
        .collect();
    out["calibration"] = calibration.into();
    out["files"] = files.into();
    out["device"] = device_name.into();
    Ok(out)
}

/// The census of one shard's file (its rows and group ids, K checked against `cal`'s)
/// and the file's SHA-256, from one read.
pub fn census_of_file(cal: &Calibration, path: &Path) -> Result<(ShardCensus, String)> {
    let mut r = NpzRowReader::open(path)?;
    crate::methods::calibration::check_k(&path.display().to_string(), r.k(), cal)?;
    let mut census = ShardCensus::new([r.has_hospital(), r.has_slide()]);
    let mut chunk = RowChunk::default();
    while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
        census
            .add(
                chunk.rows(),
                [chunk.hospital.as_deref(), chunk.slide.as_deref()],
            )
            .map_err(|e| in_file(path, e))?;
    }
    Ok((census, r.finish()?))
}

/// Shard `shard`'s part of `plan` from its file (read chunk by chunk, the collect and
/// K = 2 passes on `backend`) and the file's SHA-256, from one read.
pub fn part_of_file<B: Backend + ?Sized>(
    backend: &B,
    plan: &PassPlan,
    shard: usize,
    path: &Path,
) -> Result<(PassPart, String)> {
    let mut r = NpzRowReader::open(path)?;
    let mut fold = plan.shard(shard)?;
    let mut chunk = RowChunk::default();
    while r.next_chunk(TARGET_CHUNK_ROWS, &mut chunk)? {
        fold.add(
            backend,
            &chunk.logits,
            [chunk.hospital.as_deref(), chunk.slide.as_deref()],
        )
        .map_err(|e| in_file(path, e))?;
    }
    let hash = r.finish()?;
    Ok((fold.finish().map_err(|e| in_file(path, e))?, hash))
}

/// `e` with the file it arose in (messages of the protocol name shards, not files).
pub fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
        Error::LengthMismatch { what, detail } => Error::LengthMismatch {
            what: format!("{}: {what}", path.display()),
            detail,
        },
        e => e,
    }
}
