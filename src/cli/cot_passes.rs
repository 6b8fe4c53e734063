//! `cot-census`, `cot-plan`, `cot-pass`, `cot-merge`: COT's passes over a target's shards
//! as files ([`crate::methods::cot_passes`]' protocol, the steps `cot` takes in one
//! process), so that any engine that runs commands (Slurm arrays, a job queue) can run
//! the passes on other machines with bounded memory.
//!
//! The driver keeps no state between commands: `cot-plan` rebuilds it from the
//! censuses and replays the merged parts of the passes so far (each names its plan's id,
//! a SHA-256 of the plan's content, so a part of another pass, shard set, calibration or
//! sample size is refused), then writes the next plan or, after the last pass, the
//! result. Every census and part records the SHA-256 of the file it read, and a part
//! whose file's bytes differ from its census's is refused: a shard that changed between
//! passes is an error, not a wrong number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::commands::read_calibration;
use crate::cli::outputs::{emit_json, open_device};
use crate::data::npz::write_atomic;
use crate::methods::cot_files::{census_of_file, in_file, part_of_file};
use crate::methods::cot_passes::{CotPasses, PassPart, PassPlan, ShardCensus};
use crate::{with_backend, Error, Result};

/// The version of the census and part files.
const VERSION: u32 = 1;

/// A shard's census file (`cot-census`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CensusFile {
    /// `"cot-census"`.
    kind: String,
    version: u32,
    /// The calibration's id.
    calibration: String,
    /// The shard's file, as given.
    file: String,
    /// Its SHA-256.
    sha256: String,
    census: ShardCensus,
}

/// A pass's part file (`cot-pass`, `cot-merge`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartFile {
    /// `"cot-part"`.
    kind: String,
    version: u32,
    /// Per shard in the part, the SHA-256 of the file it read.
    sha256: BTreeMap<usize, String>,
    part: PassPart,
}

/// Writes `value` as JSON to `path`, atomically.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::Invalid(format!("{}: JSON encoding: {e}", path.display())))?;
    write_atomic(path, |w| {
        w.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
    })
}

/// Reads `path` as a `T`, naming the file in the error.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not a COT {what} file ({e})", path.display())))
}

fn check_kind(path: &Path, kind: &str, want: &str, version: u32) -> Result<()> {
    if kind != want || version != VERSION {
        return Err(Error::Invalid(format!(
            "{}: a {kind} file of version {version}, not a {want} file of version {VERSION}",
            path.display()
        )));
    }
    Ok(())
}

fn read_part(path: &Path) -> Result<PartFile> {
    let f: PartFile = read_json(path, "part")?;
    check_kind(path, &f.kind, "cot-part", f.version)?;
    if f.sha256.keys().ne(f.part.shards.iter()) {
        return Err(Error::Invalid(format!(
            "{}: its files' hashes are not those of its shards",
            path.display()
        )));
    }
    Ok(f)
}

/// `cot-census --calibration CAL FILE --out CENSUS`: one shard's rows and group ids.
pub fn run_cot_census(calibration: &Path, file: &Path, out: &Path) -> Result<()> {
    let cal = read_calibration(calibration)?;
    let (census, sha256) = census_of_file(&cal, file)?;
    eprintln!("census of {}: {} rows", file.display(), census.rows);
    write_json(
        out,
        &CensusFile {
            kind: "cot-census".into(),
            version: VERSION,
            calibration: cal.id.clone(),
            file: file.display().to_string(),
            sha256,
            census,
        },
    )
}

/// `cot-plan --calibration CAL --census C... [--part P...] --plan PLAN --json RESULT`:
/// the driver rebuilt from the censuses (shards in the order given) and the merged parts
/// of the passes so far (in pass order); writes the next pass's plan to `plan` and prints
/// `pass N`, or, after the last pass, writes the result to `json` and prints `done`.
/// Exactly one of the two files exists afterwards (the other is removed).
pub fn run_cot_plan(
    calibration: &Path,
    censuses: &[PathBuf],
    parts: &[PathBuf],
    sample_rows: Option<u64>,
    plan_path: &Path,
    json: &Path,
) -> Result<()> {
    let cal = read_calibration(calibration)?;
    let mut census = Vec::with_capacity(censuses.len());
    let mut hashes = Vec::with_capacity(censuses.len());
    let mut files = Vec::with_capacity(censuses.len());
    for path in censuses {
        let f: CensusFile = read_json(path, "census")?;
        check_kind(path, &f.kind, "cot-census", f.version)?;
        if f.calibration != cal.id {
            return Err(Error::Invalid(format!(
                "{}: a census under another calibration than {}",
                path.display(),
                calibration.display()
            )));
        }
        if let Some(i) = hashes.iter().position(|h| *h == f.sha256) {
            // The same bytes twice would count their rows twice (`cot` refuses a file
            // given twice too).
            return Err(Error::Invalid(format!(
                "{}: the same file's census as {} (a shard given twice)",
                path.display(),
                censuses[i].display()
            )));
        }
        files.push(serde_json::json!({ "path": f.file, "sha256": f.sha256 }));
        hashes.push(f.sha256);
        census.push(f.census);
    }
    let name = calibration.display().to_string();
    let mut passes = CotPasses::new(&cal, &name, &census, sample_rows)?;
    for path in parts {
        let f = read_part(path)?;
        if passes.is_done() {
            return Err(Error::Invalid(format!(
                "{}: a part after the last pass",
                path.display()
            )));
        }
        for (&shard, h) in &f.sha256 {
            if hashes.get(shard) != Some(h) {
                return Err(Error::Invalid(format!(
                    "{}: shard {shard} was read with other bytes than its census{}",
                    path.display(),
                    censuses
                        .get(shard)
                        .map_or(String::new(), |c| format!(" ({})", c.display()))
                )));
            }
        }
        passes.advance(f.part).map_err(|e| in_file(path, e))?;
    }
    match passes.plan() {
        Some(plan) => {
            write_json(plan_path, &plan)?;
            remove_stale(json)?;
            eprintln!(
                "pass {}: run cot-pass on each of the {} shards, cot-merge their parts, then \
                 cot-plan again with the merged part after the others",
                plan.pass,
                census.len()
            );
            println!("pass {}", plan.pass);
        }
        None => {
            let mut out = passes.summary()?;
            out["calibration"] = name.into();
            out["files"] = files.into();
            emit_json(&out, &Some(json.display().to_string()))?;
            remove_stale(plan_path)?;
            eprintln!(
                "COT of {} rows: raw {:.6}, ts {:.6} ({} passes)",
                out["n"],
                out["cot"]["raw"].as_f64().unwrap_or(f64::NAN),
                out["cot"]["ts"].as_f64().unwrap_or(f64::NAN),
                out["passes"]
            );
            println!("done");
        }
    }
    Ok(())
}

/// Removes the output the other branch of `cot-plan` wrote earlier, if any.
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// `cot-pass --plan PLAN --shard I FILE --out PART [--device D]`: shard `I`'s part of the
/// plan's pass, its file read chunk by chunk (the passes on the device).
pub fn run_cot_pass(
    plan: &Path,
    shard: usize,
    file: &Path,
    out: &Path,
    device: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(plan).map_err(|e| Error::io(plan, e))?;
    let plan = PassPlan::from_json(&text).map_err(|e| in_file(plan, e))?;
    let (engine, choice) = open_device(device)?;
    let (part, sha256) = with_backend!(&engine, choice, |b| part_of_file(b, &plan, shard, file))?;
    write_json(
        out,
        &PartFile {
            kind: "cot-part".into(),
            version: VERSION,
            sha256: BTreeMap::from([(shard, sha256)]),
            part,
        },
    )
}

/// `cot-merge PART... --out MERGED`: parts of one pass merged (any order; a shard twice,
/// or parts of other plans, is an error).
pub fn run_cot_merge(parts: &[PathBuf], out: &Path) -> Result<()> {
    let mut merged: Option<PartFile> = None;
    for path in parts {
        let f = read_part(path)?;
        match &mut merged {
            None => merged = Some(f),
            Some(m) => {
                m.part.merge(&f.part).map_err(|e| in_file(path, e))?;
                m.sha256.extend(f.sha256);
            }
        }
    }
    let merged = merged.ok_or_else(|| Error::Invalid("cot-merge: no part".into()))?;
    write_json(out, &merged)
}
