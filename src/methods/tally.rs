//! Tally anywhere, merge exactly (DESIGN.md 3): a [`Tally`] holds one target's integer
//! counts per (hospital, slide) pair and mode, made by `Calibration::tally` from one
//! chunk of rows. Tallies of the same target and calibration merge by addition, so a
//! target split into shards of any sizes, tallied anywhere and merged in any order,
//! reports the same bits as the whole target in one piece.

use serde::{Deserialize, Serialize};

use crate::data::rows::{Labels, RowArrays};
use crate::error::{Error, Result};
use crate::kernel::bootstrap::{merge_pair_reps, rep, PairRepCounts, RepCounts, MAX_WEIGHT};
use crate::kernel::tally::{Counts, GroupKey, PairCounts, GROUP_ARRAYS};
use crate::methods::cot::CotRows;
use crate::methods::sets::{SetCalibration, SetTally};
use crate::report::model::InputFile;
use crate::report::model::Modes;

/// `format` of a tally file.
pub const TALLY_FORMAT: &str = "conformal-gpu tally";
/// `version` of the tally files this build writes and reads.
pub const TALLY_VERSION: u32 = 1;

/// One chunk of a target's rows, borrowed: row-major logits, optional labels (-1 =
/// unknown) and group ids, and the index of its first row in the whole target (the
/// offset keeps shards apart when they merge).
#[derive(Clone, Copy, Debug)]
pub struct TargetRows<'a> {
    /// The target's name (tallies merge by name).
    pub name: &'a str,
    /// Index in the whole target of this chunk's first row.
    pub row_offset: usize,
    /// Classes.
    pub k: usize,
    /// `rows * k` logits, row-major.
    pub logits: &'a [f32],
    /// One per row, -1 = unknown; `None` = all unknown.
    pub labels: Option<&'a [i32]>,
    /// Hospital ids, one per row.
    pub hospital: Option<&'a [i64]>,
    /// Slide ids, one per row.
    pub slide: Option<&'a [i64]>,
}

impl TargetRows<'_> {
    /// Rows in the chunk.
    pub fn rows(&self) -> usize {
        self.logits.len().checked_div(self.k).unwrap_or(0)
    }

    /// Which group arrays the chunk carries, in [`GROUP_ARRAYS`] order.
    pub fn group_arrays(&self) -> [bool; 2] {
        [self.hospital.is_some(), self.slide.is_some()]
    }

    /// Checks the chunk against a calibration of `k` classes: shapes, finite logits,
    /// labels in range. Rows in errors are rows of the whole target.
    pub fn validate(&self, k: usize) -> Result<()> {
        if self.k != k {
            return Err(Error::LengthMismatch {
                what: format!("{}: logits", self.name),
                detail: format!(
                    "rows have K = {} classes but the calibration has K = {k}",
                    self.k
                ),
            });
        }
        RowArrays {
            name: self.name,
            row_offset: self.row_offset,
            k,
            logits: self.logits,
            labels: self.labels.map(Labels::I32),
            hospital: self.hospital,
            slide: self.slide,
        }
        .check()
    }
}

/// Counts of one (hospital, slide) pair, as written in a tally file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PairEntry {
    hospital: Option<i64>,
    slide: Option<i64>,
    #[serde(flatten)]
    counts: Counts,
}

mod pairs_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &PairCounts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.iter().map(|(k, c)| PairEntry {
            hospital: k[0],
            slide: k[1],
            counts: c.clone(),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PairCounts, D::Error> {
        let list = Vec::<PairEntry>::deserialize(d)?;
        let mut out = PairCounts::new();
        for e in list {
            if out.insert([e.hospital, e.slide], e.counts).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "group (hospital {:?}, slide {:?}) listed twice",
                    e.hospital, e.slide
                )));
            }
        }
        Ok(out)
    }
}

/// Replicate counts of one (hospital, slide) pair, as written in a tally file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RepEntry {
    hospital: Option<i64>,
    slide: Option<i64>,
    /// Per replicate, the counters in [`crate::kernel::bootstrap::rep`] order.
    counts: Vec<[u64; rep::LEN]>,
    /// Per replicate, the weighted grid sum of `p_(1)` (decimal strings: u128).
    sum_p1: Vec<String>,
}

mod reps_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &PairRepCounts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.iter().map(|(k, c)| RepEntry {
            hospital: k[0],
            slide: k[1],
            counts: c.counts.clone(),
            sum_p1: c.sum_p1.iter().map(|x| x.to_string()).collect(),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PairRepCounts, D::Error> {
        let list = Vec::<RepEntry>::deserialize(d)?;
        let mut out = PairRepCounts::new();
        for e in list {
            let sum_p1 = e
                .sum_p1
                .iter()
                .map(|x| x.parse::<u128>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| serde::de::Error::custom(format!("sum_p1: {err}")))?;
            let rc = RepCounts {
                counts: e.counts,
                sum_p1,
            };
            if out.insert([e.hospital, e.slide], rc).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "group (hospital {:?}, slide {:?}) listed twice",
                    e.hospital, e.slide
                )));
            }
        }
        Ok(out)
    }
}

/// The bootstrap part of a tally: every replicate's weighted counts per pair and mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TallyBootstrap {
    /// Replicates B (the calibration's).
    pub replicates: usize,
    /// Seed of the weights (the calibration's).
    pub seed: u64,
    /// At T = 1.
    #[serde(with = "reps_serde")]
    pub raw: PairRepCounts,
    /// At each replicate's `ts` temperature.
    #[serde(with = "reps_serde")]
    pub ts: PairRepCounts,
}

impl TallyBootstrap {
    /// Adds one chunk's replicate counts.
    pub(crate) fn add(&mut self, raw: PairRepCounts, ts: PairRepCounts) {
        merge_pair_reps(&mut self.raw, raw);
        merge_pair_reps(&mut self.ts, ts);
    }

    /// Whole-target replicate counts of each mode (sum over pairs).
    pub fn total(&self) -> Modes<RepCounts> {
        let sum = |p: &PairRepCounts| {
            let mut all = RepCounts::zeros(self.replicates);
            for c in p.values() {
                all.merge(c);
            }
            all
        };
        Modes {
            raw: sum(&self.raw),
            ts: sum(&self.ts),
        }
    }

    /// Replicate counts per id of group array `g`, both modes.
    pub fn by_group(&self, g: usize) -> std::collections::BTreeMap<i64, Modes<RepCounts>> {
        let mut out = std::collections::BTreeMap::new();
        for (mode, pairs) in [(false, &self.raw), (true, &self.ts)] {
            for (key, c) in pairs {
                if let Some(id) = key[g] {
                    let e = out.entry(id).or_insert_with(|| Modes {
                        raw: RepCounts::zeros(self.replicates),
                        ts: RepCounts::zeros(self.replicates),
                    });
                    if mode {
                        e.ts.merge(c);
                    } else {
                        e.raw.merge(c);
                    }
                }
            }
        }
        out
    }

    /// Adds `other`'s counts (checked: forged files may overflow).
    fn checked_merge(&mut self, other: &TallyBootstrap) -> Option<()> {
        if (self.replicates, self.seed) != (other.replicates, other.seed) {
            return None;
        }
        let mut out = self.clone();
        for (mine, theirs) in [(&mut out.raw, &other.raw), (&mut out.ts, &other.ts)] {
            for (key, c) in theirs {
                mine.entry(*key)
                    .or_insert_with(|| RepCounts::zeros(self.replicates))
                    .checked_merge(c)?;
            }
        }
        *self = out;
        Some(())
    }

    /// Why the counts cannot come from the tally's rows, if they cannot: every pair of
    /// the point counts has its replicates (and no other pair), and a replicate weighs
    /// a pair's rows at most [`MAX_WEIGHT`] times each (which also keeps every sum over
    /// pairs within u64).
    fn inconsistency(&self, modes: &ModePairs) -> Option<String> {
        for (mode, reps, pairs) in [("raw", &self.raw, &modes.raw), ("ts", &self.ts, &modes.ts)] {
            if reps.len() != pairs.len() {
                return Some(format!(
                    "bootstrap mode {mode}: {} groups with replicates, {} with rows",
                    reps.len(),
                    pairs.len()
                ));
            }
            for (key, rc) in reps {
                if rc.reps() != self.replicates {
                    return Some(format!(
                        "bootstrap mode {mode}, group {key:?}: {} replicates, need {}",
                        rc.reps(),
                        self.replicates
                    ));
                }
                if !pairs.contains_key(key) {
                    return Some(format!("bootstrap mode {mode}: group {key:?} has no rows"));
                }
                if let Some(why) = rc.inconsistency() {
                    return Some(format!("bootstrap mode {mode}, group {key:?}: {why}"));
                }
                let point = &pairs[key];
                let most = |x: u64| x.checked_mul(MAX_WEIGHT as u64);
                let heavy = rc.counts.iter().any(|c| {
                    most(point.n()).is_none_or(|m| c[rep::N] > m)
                        || most(point.labelled()).is_none_or(|m| c[rep::LABELLED] > m)
                });
                if heavy {
                    return Some(format!(
                        "bootstrap mode {mode}, group {key:?}: replicates weigh more rows than \
                         {MAX_WEIGHT} times the group's"
                    ));
                }
            }
        }
        let shape = |p: &PairRepCounts| {
            p.iter()
                .map(|(k, c)| {
                    (
                        *k,
                        c.counts
                            .iter()
                            .map(|x| (x[rep::N], x[rep::LABELLED]))
                            .collect(),
                    )
                })
                .collect::<Vec<(GroupKey, Vec<(u64, u64)>)>>()
        };
        if shape(&self.raw) != shape(&self.ts) {
            return Some("bootstrap: the two modes weigh different rows".into());
        }
        None
    }
}

/// Counts per mode for both modes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModePairs {
    /// At T = 1.
    #[serde(with = "pairs_serde")]
    pub raw: PairCounts,
    /// At the `ts` temperature.
    #[serde(with = "pairs_serde")]
    pub ts: PairCounts,
}

/// What a tally must agree on with the calibration that makes it (a calibration gives
/// one: `Tally::empty(&cal, ..)`), so this floor needs no calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TallyShape<'a> {
    /// The calibration's id.
    pub calibration: &'a str,
    /// Classes.
    pub k: usize,
    /// Levels.
    pub n_alpha: usize,
    /// Bootstrap replicates and seed, when the calibration has a bootstrap.
    pub bootstrap: Option<(usize, u64)>,
    /// The conformal scores' thresholds, when the calibration has them.
    pub sets: Option<&'a SetCalibration>,
}

/// One target's counts (of a chunk, a shard, or the whole target). See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Always [`TALLY_FORMAT`].
    pub format: String,
    /// [`TALLY_VERSION`].
    pub version: u32,
    /// The id of the calibration that made it.
    pub calibration: String,
    /// Target name.
    pub name: String,
    /// Classes.
    pub k: usize,
    /// Levels (as many as the calibration's).
    pub n_alpha: usize,
    /// Which group arrays the target has, by name.
    pub group_arrays: Vec<String>,
    /// Row ranges `[start, end)` counted, sorted and coalesced: merging refuses overlaps,
    /// so no row is counted twice.
    pub rows: Vec<[u64; 2]>,
    /// Files the rows came from (provenance; merged as a set).
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// Counts per (hospital, slide) pair and mode.
    pub modes: ModePairs,
    /// Every bootstrap replicate's counts (when the calibration has a bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<TallyBootstrap>,
    /// COT's rows (see [`CotRows`]); `None` when some rows came from a tally without
    /// them, and then the report has no COT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cot: Option<CotRows>,
    /// The prediction-set counts of every score (see [`SetTally`]); `None` when the
    /// calibration has no set thresholds (a file written before scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets: Option<SetTally>,
}

impl Tally {
    /// An empty tally of target `name` under `cal`.
    pub fn empty<'a>(cal: impl Into<TallyShape<'a>>, name: &str, group_arrays: [bool; 2]) -> Self {
        let cal = cal.into();
        Tally {
            format: TALLY_FORMAT.into(),
            version: TALLY_VERSION,
            calibration: cal.calibration.to_string(),
            name: name.to_string(),
            k: cal.k,
            n_alpha: cal.n_alpha,
            group_arrays: GROUP_ARRAYS
                .iter()
                .zip(group_arrays)
                .filter(|(_, on)| *on)
                .map(|(g, _)| g.to_string())
                .collect(),
            rows: Vec::new(),
            inputs: Vec::new(),
            modes: ModePairs::default(),
            bootstrap: cal.bootstrap.map(|(replicates, seed)| TallyBootstrap {
                replicates,
                seed,
                ..Default::default()
            }),
            cot: Some(CotRows::default()),
            sets: cal.sets.map(|s| SetTally::empty(s, cal.k)),
        }
    }

    /// Rows counted.
    pub fn n(&self) -> u64 {
        self.rows.iter().map(|r| r[1] - r[0]).sum()
    }

    /// Records `range` as counted; an overlap with rows already counted is an error.
    pub(crate) fn add_rows(&mut self, range: std::ops::Range<u64>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let mut all = self.rows.clone();
        all.push([range.start, range.end]);
        self.rows = coalesce(&self.name, all)?;
        Ok(())
    }

    /// Adds `other` (same calibration, target, K, levels and group arrays; disjoint rows).
    /// Associative and commutative: integer sums.
    pub fn merge(&mut self, other: &Tally) -> Result<()> {
        let what =
            |field: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| Error::Incompatible {
                what: format!("tallies of {} and {}", self.name, other.name),
                detail: format!("{field} differ ({a:?} vs {b:?})"),
            };
        if self.calibration != other.calibration {
            return Err(Error::Incompatible {
                what: format!("tallies of {}", self.name),
                detail: format!(
                    "made with different calibrations ({} vs {})",
                    short(&self.calibration),
                    short(&other.calibration)
                ),
            });
        }
        if self.name != other.name {
            return Err(what("target names", &self.name, &other.name));
        }
        if (self.k, self.n_alpha) != (other.k, other.n_alpha) {
            return Err(what(
                "K or levels",
                &(self.k, self.n_alpha),
                &(other.k, other.n_alpha),
            ));
        }
        if self.group_arrays != other.group_arrays {
            return Err(what(
                "group arrays",
                &self.group_arrays,
                &other.group_arrays,
            ));
        }
        let mut out = self.clone();
        let mut rows = out.rows.clone();
        rows.extend_from_slice(&other.rows);
        out.rows = coalesce(&self.name, rows)?;
        for (mine, theirs) in [
            (&mut out.modes.raw, &other.modes.raw),
            (&mut out.modes.ts, &other.modes.ts),
        ] {
            for (key, c) in theirs {
                let slot = mine
                    .entry(*key)
                    .or_insert_with(|| Counts::with_levels(self.n_alpha));
                slot.checked_merge(c).ok_or_else(|| Error::Incompatible {
                    what: format!("tallies of {}", self.name),
                    detail: "counts overflow when merged".into(),
                })?;
            }
        }
        match (&mut out.bootstrap, &other.bootstrap) {
            (None, None) => {}
            (Some(mine), Some(theirs)) => {
                mine.checked_merge(theirs)
                    .ok_or_else(|| Error::Incompatible {
                        what: format!("tallies of {}", self.name),
                        detail: "bootstrap replicates differ, or their counts overflow".into(),
                    })?;
            }
            _ => {
                return Err(Error::Incompatible {
                    what: format!("tallies of {}", self.name),
                    detail: "one has bootstrap replicates and the other not".into(),
                })
            }
        }
        out.sets = match (out.sets.take(), &other.sets) {
            (Some(mut mine), Some(theirs)) => {
                mine.checked_merge(theirs)
                    .ok_or_else(|| Error::Incompatible {
                        what: format!("tallies of {}", self.name),
                        detail: "their set counts differ in shape or overflow".into(),
                    })?;
                Some(mine)
            }
            (None, None) => None,
            _ => {
                return Err(Error::Incompatible {
                    what: format!("tallies of {}", self.name),
                    detail: "one has set counts and the other not".into(),
                })
            }
        };
        out.cot = match (out.cot.take(), &other.cot) {
            (Some(mut mine), Some(theirs)) => {
                mine.merge(theirs);
                Some(mine)
            }
            // One side's rows are unknown (read from a file): so is the whole's COT.
            _ => None,
        };
        for f in &other.inputs {
            if !out.inputs.contains(f) {
                out.inputs.push(f.clone());
            }
        }
        out.inputs.sort();
        *self = out;
        Ok(())
    }

    /// The whole-target counts of one mode (sum over pairs).
    pub fn total(pairs: &PairCounts, n_alpha: usize) -> Counts {
        let mut all = Counts::with_levels(n_alpha);
        for c in pairs.values() {
            all.merge(c);
        }
        all
    }

    /// Counts per id of group array `g` (index into [`GROUP_ARRAYS`]), summed over pairs.
    pub fn by_group(
        pairs: &PairCounts,
        g: usize,
        n_alpha: usize,
    ) -> std::collections::BTreeMap<i64, Counts> {
        let mut out = std::collections::BTreeMap::new();
        for (key, c) in pairs {
            if let Some(id) = key[g] {
                out.entry(id)
                    .or_insert_with(|| Counts::with_levels(n_alpha))
                    .merge(c);
            }
        }
        out
    }

    /// The versioned JSON document (pretty, one trailing newline).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| Error::Invalid(format!("tally encoding: {e}")))
    }

    /// Reads a tally written by [`Tally::to_json`]: format, version and every count are
    /// checked (a damaged file is `Error::Format` naming `file`). Whether it belongs to a
    /// calibration is checked by [`Tally::check_against`].
    pub fn from_json(text: &str, file: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(file, msg);
        let v = versioned_json(text, file, "tally", TALLY_FORMAT, TALLY_VERSION)?;
        let t: Tally = serde_json::from_value(v).map_err(|e| bad(format!("damaged tally: {e}")))?;
        if let Some(why) = t.inconsistency() {
            return Err(bad(format!("damaged tally: {why}")));
        }
        Ok(t)
    }

    /// Checks that the tally was made with `cal` (`Error::Invalid`-class mismatch errors
    /// are data errors: exit 5 on the command line).
    pub fn check_against<'a>(&self, cal: impl Into<TallyShape<'a>>) -> Result<()> {
        let cal = cal.into();
        let same_boot = self.bootstrap.as_ref().map(|b| (b.replicates, b.seed)) == cal.bootstrap;
        if self.calibration != cal.calibration
            || self.k != cal.k
            || self.n_alpha != cal.n_alpha
            || !same_boot
        {
            return Err(Error::Incompatible {
                what: format!("tally of {}", self.name),
                detail: format!(
                    "made with calibration {}, not with this one ({})",
                    short(&self.calibration),
                    short(cal.calibration)
                ),
            });
        }
        if let (Some(sc), Some(st)) = (cal.sets, &self.sets) {
            let why = st.inconsistency(sc, self.k).or_else(|| {
                (st.rows() != self.n()).then(|| "set counts: rows disagree".to_string())
            });
            if let Some(why) = why {
                return Err(Error::Incompatible {
                    what: format!("tally of {}", self.name),
                    detail: format!("damaged: {why}"),
                });
            }
        }
        Ok(())
    }

    /// Why the counts cannot come from real rows, if they cannot.
    fn inconsistency(&self) -> Option<String> {
        if self.k < 2 {
            return Some(format!("K = {}", self.k));
        }
        let known: Vec<&str> = GROUP_ARRAYS.to_vec();
        if self
            .group_arrays
            .iter()
            .any(|g| !known.contains(&g.as_str()))
        {
            return Some(format!("unknown group arrays {:?}", self.group_arrays));
        }
        let sorted = self.rows.windows(2).all(|w| w[0][1] < w[1][0]);
        if !sorted || self.rows.iter().any(|r| r[0] >= r[1]) {
            return Some("row ranges are not sorted and disjoint".into());
        }
        let n = self.n();
        let present: [bool; 2] = GROUP_ARRAYS.map(|g| self.group_arrays.iter().any(|x| x == g));
        if let Some(why) = self
            .cot
            .as_ref()
            .and_then(|c| c.inconsistency(self.k, &self.rows, present))
        {
            return Some(why);
        }
        for (mode, pairs) in [("raw", &self.modes.raw), ("ts", &self.modes.ts)] {
            let mut total = 0u64;
            for (key, c) in pairs {
                if c.levels.len() != self.n_alpha {
                    return Some(format!(
                        "mode {mode}: {} levels, need {}",
                        c.levels.len(),
                        self.n_alpha
                    ));
                }
                if key_shape(key) != present {
                    return Some(format!(
                        "mode {mode}: group key {key:?} does not match the group arrays"
                    ));
                }
                if c.n() == 0 {
                    return Some(format!("mode {mode}: empty group {key:?}"));
                }
                if let Some(why) = c.inconsistency(self.k) {
                    return Some(format!("mode {mode}, group {key:?}: {why}"));
                }
                total = total.checked_add(c.n())?;
            }
            if total != n {
                return Some(format!(
                    "mode {mode}: {total} rows counted but the row ranges hold {n}"
                ));
            }
        }
        let keys = |p: &PairCounts| {
            p.iter()
                .map(|(k, c)| (*k, c.n(), c.labelled()))
                .collect::<Vec<_>>()
        };
        if keys(&self.modes.raw) != keys(&self.modes.ts) {
            return Some("the two modes count different rows".into());
        }
        if let Some(b) = &self.bootstrap {
            return b.inconsistency(&self.modes);
        }
        None
    }
}

fn key_shape(key: &GroupKey) -> [bool; 2] {
    [key[0].is_some(), key[1].is_some()]
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Sorts and joins adjacent ranges; an overlap means rows counted twice.
fn coalesce(name: &str, mut rows: Vec<[u64; 2]>) -> Result<Vec<[u64; 2]>> {
    rows.sort_unstable();
    let mut out: Vec<[u64; 2]> = Vec::with_capacity(rows.len());
    for r in rows {
        match out.last_mut() {
            Some(last) if r[0] < last[1] => {
                return Err(Error::Incompatible {
                    what: format!("tallies of {name}"),
                    detail: format!(
                        "rows {}..{} are tallied twice (they overlap rows {}..{})",
                        r[0].max(last[0]),
                        r[1].min(last[1]),
                        last[0],
                        last[1]
                    ),
                })
            }
            Some(last) if r[0] == last[1] => last[1] = r[1],
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// Parses `text` as a JSON document of `format` at `version` (`what` names it in errors;
/// anything else is `Error::Format` naming `file`).
pub(crate) fn versioned_json(
    text: &str,
    file: &str,
    what: &str,
    format: &str,
    version: u32,
) -> Result<serde_json::Value> {
    let bad = |msg: String| Error::format(file, msg);
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not a {what} file: {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(bad(format!(
            "not a {what} file (no \"format\": \"{format}\")"
        )));
    }
    match v.get("version").and_then(|f| f.as_u64()) {
        Some(x) if x == version as u64 => Ok(v),
        other => Err(bad(format!(
            "{what} format version {other:?}; this build reads version {version}"
        ))),
    }
}
