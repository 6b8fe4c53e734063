//! GDE (generalisation disagreement equality; Jiang et al. 2022, DESIGN.md 2.17 and 3):
//! for two runs a != b of one model on the same target rows (same N, labels and group ids,
//! checked), the agreement `mean 1{yhat_a = yhat_b}` (yhat the logits' argmax, lowest
//! index on ties, so the same in both modes); a run's GDE estimate of a target is the
//! mean agreement with the model's other runs. Each pair's counts are written atomically
//! to `DIR/pairs/DATASET/MODEL/TARGET/RUN_A__RUN_B.json` with both sides' file SHA-256s,
//! and reused while those match (an unreadable or inconsistent file is recomputed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::npz::load_npz_hashed;
use crate::data::write_atomic;
use crate::{Error, Result};

use crate::cli::dataset::set_name;
use crate::cli::sweep_scores::SweepEstimates;

/// One pair's agreement counts, as written in `DIR/pairs/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairCounts {
    a: String,
    b: String,
    a_sha256: Vec<String>,
    b_sha256: Vec<String>,
    n: u64,
    agree: u64,
}

/// A run's target: its files (one, or its parts in order) in the cell's directory.
fn target_files(dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let mut whole = Vec::new();
    let mut parts = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = e.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_none_or(|x| x != "npz") {
            continue;
        }
        let stem = set_name(&path);
        if stem == name {
            whole.push(path);
        } else if stem
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(".part-"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        {
            parts.push(path);
        }
    }
    parts.sort();
    Ok(if whole.is_empty() { parts } else { whole })
}

/// What a pair is checked on and counted from: the predictions, labels and group ids of
/// a run's target rows, and its files' SHA-256s.
struct Rows {
    yhat: Vec<u32>,
    check: (Vec<i64>, Vec<i64>, Vec<i64>),
    sha256: Vec<String>,
}

fn rows_of(files: &[PathBuf]) -> Result<Rows> {
    let mut out = Rows {
        yhat: Vec::new(),
        check: Default::default(),
        sha256: Vec::new(),
    };
    for f in files {
        let (set, sha) = load_npz_hashed(f)?;
        let set = set.standard();
        let n = set.n();
        for row in set.logits.rows() {
            let mut best = 0usize;
            for (k, &z) in row.iter().enumerate() {
                if z > row[best] {
                    best = k;
                }
            }
            out.yhat.push(best as u32);
        }
        let fill = |a: &Option<ndarray::Array1<i64>>| -> Vec<i64> {
            a.as_ref()
                .map(|a| a.to_vec())
                .unwrap_or_else(|| vec![i64::MIN; n])
        };
        out.check.0.extend(fill(&set.labels));
        out.check.1.extend(fill(&set.hospital));
        out.check.2.extend(fill(&set.slide));
        out.sha256.push(sha);
    }
    Ok(out)
}

/// One sweep member: its dataset, model and run, the directory it was evaluated from, and
/// its report.
pub struct Member<'a> {
    pub dataset: &'a str,
    pub model: &'a str,
    pub run: &'a str,
    pub dir: &'a Path,
    pub report: &'a Value,
}

/// Every target's GDE estimate (both modes, method `GDE`) into `estimates`, keyed by the
/// member's index; pairs cached under `out/pairs/`. A pair whose rows differ (N, labels
/// or group ids) gives no agreement, with a warning.
pub fn gde_estimates(
    out: &Path,
    members: &[Member<'_>],
    estimates: &mut SweepEstimates,
) -> Result<()> {
    // (dataset, model, target) -> member indices holding that target.
    let mut groups: BTreeMap<(&str, &str, &str), Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        for t in m.report["targets"].as_array().into_iter().flatten() {
            if let Some(name) = t["name"].as_str() {
                groups
                    .entry((m.dataset, m.model, name))
                    .or_default()
                    .push(i);
            }
        }
    }
    for ((dataset, model, target), idx) in groups {
        if idx.len() < 2 {
            continue;
        }
        let mut rows: BTreeMap<usize, Rows> = BTreeMap::new();
        let mut sums: BTreeMap<usize, (f64, usize)> = BTreeMap::new();
        for (x, &a) in idx.iter().enumerate() {
            for &b in &idx[x + 1..] {
                let (ma, mb) = (&members[a], &members[b]);
                let path = out
                    .join("pairs")
                    .join(dataset)
                    .join(model)
                    .join(target)
                    .join(format!("{}__{}.json", ma.run, mb.run));
                let files = (target_files(ma.dir, target)?, target_files(mb.dir, target)?);
                let sha = |fs: &[PathBuf]| -> Result<Vec<String>> {
                    fs.iter()
                        .map(|f| crate::report::InputFile::hash(f).map(|i| i.sha256))
                        .collect()
                };
                let (sa, sb) = (sha(&files.0)?, sha(&files.1)?);
                let cached = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<PairCounts>(&t).ok())
                    .filter(|p| {
                        p.a == ma.run
                            && p.b == mb.run
                            && p.a_sha256 == sa
                            && p.b_sha256 == sb
                            && p.n > 0
                            && p.agree <= p.n
                    });
                let counts = match cached {
                    Some(p) => Some(p),
                    None => {
                        for (i, fs) in [(a, &files.0), (b, &files.1)] {
                            if let std::collections::btree_map::Entry::Vacant(e) = rows.entry(i) {
                                e.insert(rows_of(fs)?);
                            }
                        }
                        let (ra, rb) = (&rows[&a], &rows[&b]);
                        if ra.yhat.len() != rb.yhat.len()
                            || ra.check != rb.check
                            || ra.yhat.is_empty()
                        {
                            eprintln!(
                                "warning: GDE: {dataset}/{model} runs {} and {} differ on target {target}'s rows (N, labels or group ids): no agreement",
                                ma.run, mb.run
                            );
                            None
                        } else {
                            let agree =
                                ra.yhat.iter().zip(&rb.yhat).filter(|(x, y)| x == y).count();
                            let p = PairCounts {
                                a: ma.run.to_string(),
                                b: mb.run.to_string(),
                                a_sha256: ra.sha256.clone(),
                                b_sha256: rb.sha256.clone(),
                                n: ra.yhat.len() as u64,
                                agree: agree as u64,
                            };
                            if let Some(parent) = path.parent() {
                                std::fs::create_dir_all(parent)
                                    .map_err(|e| Error::io(parent, e))?;
                            }
                            let text = serde_json::to_string_pretty(&p)
                                .map_err(|e| Error::Invalid(format!("JSON encoding: {e}")))?;
                            write_atomic(&path, |w| {
                                w.write_all(text.as_bytes())
                                    .map_err(|e| Error::io(&path, e))
                            })?;
                            Some(p)
                        }
                    }
                };
                if let Some(p) = counts {
                    let rate = p.agree as f64 / p.n as f64;
                    for i in [a, b] {
                        let e = sums.entry(i).or_insert((0.0, 0));
                        e.0 += rate;
                        e.1 += 1;
                    }
                }
            }
        }
        for (i, (total, count)) in sums {
            for mode in ["raw", "ts"] {
                estimates.insert(
                    (i, mode.to_string(), target.to_string(), "GDE"),
                    total / count as f64,
                );
            }
        }
    }
    Ok(())
}
