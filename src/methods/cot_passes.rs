//! COT of one target and of each of its groups in passes over shards, as a protocol
//! (DESIGN.md 2.11's rounds): what `conformal-gpu cot` runs over files in one process
//! and what Python's `conformal_gpu.ray.cot` runs over a cluster, the same code.
//!
//! 1. **Census.** Each shard counts its rows and its group ids ([`ShardCensus`]).
//! 2. **Passes.** [`CotPasses::new`] takes the census of every shard, in the target's
//!    row order. While [`CotPasses::plan`] gives a [`PassPlan`], every shard folds its
//!    rows into a [`PassPart`] ([`PassPlan::shard`], then [`ShardPass::add`] chunk by
//!    chunk), the parts merge in any order ([`PassPart::merge`]) and
//!    [`CotPasses::advance`] takes the merged part: the host's step between passes.
//! 3. **Result.** [`CotPasses::summary`]: COT raw and ts of the target and of each group.
//!
//! K = 2 takes seven passes for both modes ([`TwoClassRounds`]); K > 2 the dual's rounds
//! ([`DualRounds`]), one mode after the other. A shard knows each set's first row in it
//! from the census (prefix sums in shard order), so the sampled and band-sampled rows
//! are the same whatever the shards' cuts, and the value is the in-memory COT's bit for
//! bit. Plans and parts are plain data (serde): they cross processes as JSON, and a part
//! read back is checked like any input (its pass, its shards, its shapes and counts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::cpu::softmax::softmax;
use crate::error::{Error, Result};
use crate::kernel::cot_two_class::{TwoClassPlan, TwoClassRounds, TwoClassTotals, MAXP, SHIFTS};
use crate::methods::calibration::Calibration;
use crate::methods::cot::{check_seen, two_class_estimate, two_class_sets};
use crate::methods::cot_dual::{DualBudget, DualRounds, DualSetPart, DualSetPlan};

/// The group arrays a target may carry, in set order.
pub const GROUP_ARRAYS: [&str; 2] = ["hospital", "slide"];

/// One shard's rows and group ids: its rows, and per group array present, each id's
/// rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCensus {
    /// Rows.
    pub rows: u64,
    /// Per group array ([`GROUP_ARRAYS`]), present or not: rows per id.
    pub groups: [Option<BTreeMap<i64, u64>>; 2],
}

impl ShardCensus {
    /// An empty census of a shard with the group arrays `present`.
    pub fn new(present: [bool; 2]) -> Self {
        ShardCensus {
            rows: 0,
            groups: present.map(|p| p.then(BTreeMap::new)),
        }
    }

    /// Counts a chunk of `rows` rows with its group ids (the arrays the census was made
    /// with, each `rows` long).
    pub fn add(&mut self, rows: usize, groups: [Option<&[i64]>; 2]) -> Result<()> {
        for (g, (counts, ids)) in self.groups.iter_mut().zip(groups).enumerate() {
            match (counts, ids) {
                (Some(counts), Some(ids)) => {
                    if ids.len() != rows {
                        return Err(Error::LengthMismatch {
                            what: GROUP_ARRAYS[g].into(),
                            detail: format!("{} ids for {rows} rows", ids.len()),
                        });
                    }
                    for &id in ids {
                        *counts.entry(id).or_insert(0) += 1;
                    }
                }
                (None, None) => {}
                (had, _) => {
                    return Err(Error::Invalid(format!(
                        "COT census: a chunk {} the group array {} that the shard's first {}",
                        if had.is_some() { "without" } else { "with" },
                        GROUP_ARRAYS[g],
                        if had.is_some() { "has" } else { "lacks" },
                    )))
                }
            }
        }
        self.rows += rows as u64;
        Ok(())
    }
}

/// One mode a pass computes: its temperature and its sets' first index in the pass's
/// sets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanMode {
    /// The temperature (the probabilities are the CPU softmax's at it).
    #[serde(with = "crate::serde_exact::one")]
    pub t: f32,
    /// The mode's first set.
    pub first_set: usize,
}

/// What each set computes in a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PassWork {
    /// K = 2: histograms or sums over both modes' sets.
    TwoClass(TwoClassPlan),
    /// K > 2: each set's sample or collect.
    Dual(Vec<DualSetPlan>),
}

/// One shard's rows of one set: the set, the shard's first row's index in it, and the
/// shard's rows of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet {
    /// The set (0 the target, then the groups).
    pub set: usize,
    /// The index in the set of the shard's first row of it (the earlier shards' rows).
    pub first: u64,
    /// The shard's rows of the set.
    pub rows: u64,
}

/// The most classes a plan may name (a bound on what a plan read back allocates).
pub const MAX_CLASSES: usize = 1 << 16;

/// The most class-pair slacks a pass's collect tallies may hold together (`K^2` a
/// collecting set, 8 bytes each: 2 GiB), so that a plan read back cannot make a shard
/// allocate more; a target past it (K = 4096 with 16 collecting sets) is refused when
/// its plan is made.
pub const MAX_SLACKS: usize = 1 << 28;

// The largest magnitude of a dual point's class value a plan may carry (costs are at
// most 2^40; a class without demand sits 2^42 below the others): what the collect
// kernel takes.
use crate::kernel::cot_collect::MAX_DUAL;

/// One pass, as every shard needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassPlan {
    /// SHA-256 (hex) of the rest of the plan: a part names the plan it was folded under,
    /// and a plan read back must match its content.
    pub id: String,
    /// The calibration's id.
    pub calibration: String,
    /// The pass's number, from 1.
    pub pass: u64,
    /// Classes.
    pub k: usize,
    /// The modes in play.
    pub modes: Vec<PlanMode>,
    /// Sets a mode: the target, then each group array's ids in ascending order.
    pub sets: usize,
    /// Per group array present, each id's set.
    pub slots: [Option<BTreeMap<i64, usize>>; 2],
    /// Per shard, the sets it has rows of, ascending (the census; sparse, so a plan is
    /// the size of the census, not of shards x sets).
    pub shards: Vec<Vec<ShardSet>>,
    /// The work of each set.
    pub work: PassWork,
}

/// A pass's part over some shards: mergeable in any order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassPart {
    /// The id of the plan it was folded under.
    pub plan: String,
    /// The pass's number.
    pub pass: u64,
    /// Classes.
    pub k: usize,
    /// The shards folded in, ascending.
    pub shards: Vec<usize>,
    /// Rows seen a set (every mode's sets).
    pub seen: Vec<u64>,
    /// The sets' sums, histograms, samples or tallies.
    pub work: PartWork,
}

/// The sets' part of a pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartWork {
    /// K = 2.
    TwoClass(TwoClassTotals),
    /// K > 2.
    Dual(Vec<DualSetPart>),
}

impl PassPlan {
    /// Sets over every mode in play.
    fn all_sets(&self) -> usize {
        self.modes.len() * self.sets
    }

    /// An empty part of this pass.
    fn empty_part(&self) -> PassPart {
        let work = match &self.work {
            PassWork::TwoClass(p) => PartWork::TwoClass(TwoClassTotals::zeros(p)),
            PassWork::Dual(p) => {
                PartWork::Dual(p.iter().map(|s| DualSetPart::empty(s, self.k)).collect())
            }
        };
        PassPart {
            plan: self.id.clone(),
            pass: self.pass,
            k: self.k,
            shards: Vec::new(),
            seen: vec![0; self.all_sets()],
            work,
        }
    }

    /// The fold of shard `shard` (its index in the census) over this pass.
    pub fn shard(&self, shard: usize) -> Result<ShardPass<'_>> {
        let Some(sets) = self.shards.get(shard) else {
            return Err(Error::Invalid(format!(
                "COT pass: shard {shard} of {}",
                self.shards.len()
            )));
        };
        let mut first = vec![0u64; self.sets];
        let mut want = vec![0u64; self.sets];
        for s in sets {
            first[s.set] = s.first;
            want[s.set] = s.rows;
        }
        let mut part = self.empty_part();
        part.shards.push(shard);
        Ok(ShardPass {
            plan: self,
            shard,
            first,
            want,
            in_shard: vec![0; self.sets],
            part,
            by_set: vec![Vec::new(); self.sets],
            failed: false,
        })
    }

    /// The plan's id: SHA-256 of its JSON with an empty id.
    fn digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut bare = self.clone();
        bare.id.clear();
        let text = serde_json::to_string(&bare)
            .map_err(|e| Error::Invalid(format!("COT pass plan: {e}")))?;
        Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
    }

    /// Checks a plan read back: its id matches its content, its shapes agree and its
    /// numbers are in range (so that folding it allocates what its JSON holds, no more).
    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Invalid(format!("COT pass plan: {what}")));
        if self.digest()? != self.id {
            return bad("its id does not match its content");
        }
        let all = match self.modes.len().checked_mul(self.sets) {
            Some(all) if (1..=2).contains(&self.modes.len()) && self.sets > 0 => all,
            _ => return bad("modes or sets out of range"),
        };
        if self.modes.iter().any(|m| {
            m.first_set
                .checked_add(self.sets)
                .is_none_or(|end| end > all)
        }) {
            return bad("a mode's sets beyond the plan's");
        }
        if !(2..=MAX_CLASSES).contains(&self.k) {
            return bad("K out of range");
        }
        match &self.work {
            PassWork::TwoClass(p) => {
                let ok = self.k == 2
                    && p.sets() == all
                    && match p {
                        TwoClassPlan::Histogram { shift, prefixes } => {
                            SHIFTS.contains(shift) && prefixes.iter().all(|p| p.len() <= MAXP)
                        }
                        TwoClassPlan::Sums { .. } => true,
                    };
                if !ok {
                    return bad("K = 2 work that does not fit");
                }
            }
            PassWork::Dual(p) => {
                let fits = |v: &[i64], lo: i64| v.len() == self.k && v.iter().all(|&x| x >= lo);
                let ok = self.k > 2
                    && p.len() == all
                    && p.iter().all(|s| match s {
                        DualSetPlan::Collect { g, deltas, .. } => {
                            fits(g, -MAX_DUAL)
                                && g.iter().all(|&x| x <= MAX_DUAL)
                                && fits(deltas, 0)
                        }
                        _ => true,
                    });
                if !ok {
                    return bad("K > 2 work that does not fit");
                }
                let collecting = p
                    .iter()
                    .filter(|s| matches!(s, DualSetPlan::Collect { .. }))
                    .count();
                if collecting.saturating_mul(self.k * self.k) > MAX_SLACKS {
                    return bad(&format!(
                        "{collecting} sets of K = {} collecting: more than 2^28 class-pair slacks",
                        self.k
                    ));
                }
            }
        }
        for sets in &self.shards {
            let mut last = None;
            for s in sets {
                if s.set >= self.sets
                    || last.is_some_and(|l| s.set <= l)
                    || s.first.checked_add(s.rows).is_none()
                {
                    return bad("a shard's sets out of order or range");
                }
                last = Some(s.set);
            }
        }
        Ok(())
    }
}

/// One shard's fold of a pass: its chunks in row order through [`ShardPass::add`].
pub struct ShardPass<'p> {
    plan: &'p PassPlan,
    shard: usize,
    /// Per set, the shard's first row's index in the set.
    first: Vec<u64>,
    /// Per set, the shard's rows of it (the census).
    want: Vec<u64>,
    /// Per set, rows of the shard seen so far.
    in_shard: Vec<u64>,
    part: PassPart,
    /// Per set, a chunk's group rows (scratch).
    by_set: Vec<Vec<f32>>,
    /// A chunk failed part-way: the part is incomplete, so [`ShardPass::finish`] refuses.
    failed: bool,
}

impl ShardPass<'_> {
    /// Folds the shard's next chunk: `logits` (`rows x k`) and its group ids (the group
    /// arrays of the census, each `rows` long). K = 2 passes and K > 2's collect passes
    /// run on `backend` (K > 2's samples are kept on the host).
    pub fn add<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        logits: &[f32],
        groups: [Option<&[i64]>; 2],
    ) -> Result<()> {
        if self.failed {
            return Err(Error::Invalid(
                "COT pass: a fold whose earlier chunk failed".into(),
            ));
        }
        let out = self.add_chunk(backend, logits, groups);
        self.failed = out.is_err();
        out
    }

    fn add_chunk<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        logits: &[f32],
        groups: [Option<&[i64]>; 2],
    ) -> Result<()> {
        let plan = self.plan;
        let k = plan.k;
        if k == 0 || !logits.len().is_multiple_of(k) {
            return Err(Error::LengthMismatch {
                what: "COT pass: logits".into(),
                detail: format!("{} values are not rows of K = {k}", logits.len()),
            });
        }
        let rows = logits.len() / k;
        for (g, ids) in groups.iter().enumerate() {
            if ids.is_some() != plan.slots[g].is_some() {
                return Err(Error::Invalid(format!(
                    "COT pass: the group array {} {} here but {} in the census",
                    GROUP_ARRAYS[g],
                    if ids.is_some() { "given" } else { "missing" },
                    if ids.is_some() { "absent" } else { "present" },
                )));
            }
            if ids.is_some_and(|ids| ids.len() != rows) {
                return Err(Error::LengthMismatch {
                    what: GROUP_ARRAYS[g].into(),
                    detail: format!("{} ids for {rows} rows", ids.map_or(0, <[i64]>::len)),
                });
            }
        }
        // Each base set's rows in this chunk (the same in every mode).
        let mut chunk_rows = vec![0u64; plan.sets];
        chunk_rows[0] = rows as u64;
        for (m, mode) in plan.modes.iter().enumerate() {
            let p = softmax(logits, k, mode.t);
            self.feed(backend, mode.first_set, 0, &p)?;
            for (g, ids) in groups.iter().enumerate() {
                let (Some(ids), Some(slots)) = (ids, &plan.slots[g]) else {
                    continue;
                };
                for (&id, row) in ids.iter().zip(p.chunks_exact(k)) {
                    let set = slots
                        .get(&id)
                        .copied()
                        .filter(|&s| s > 0 && s < plan.sets)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "COT pass: shard {}: {} id {id} is not in the census",
                                self.shard, GROUP_ARRAYS[g]
                            ))
                        })?;
                    self.by_set[set].extend_from_slice(row);
                    if m == 0 {
                        chunk_rows[set] += 1;
                    }
                }
            }
            let mut by_set = std::mem::take(&mut self.by_set);
            for (base, rows) in by_set.iter_mut().enumerate() {
                if !rows.is_empty() {
                    self.feed(backend, mode.first_set + base, base, rows)?;
                    rows.clear();
                }
            }
            self.by_set = by_set;
        }
        for (s, r) in self.in_shard.iter_mut().zip(&chunk_rows) {
            *s = s.checked_add(*r).ok_or_else(|| {
                Error::Invalid("COT pass: more rows than a shard may hold".into())
            })?;
        }
        Ok(())
    }

    /// Feeds `probs` (rows of base set `base`, the chunk's, in order) to pass set `set`.
    fn feed<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        set: usize,
        base: usize,
        probs: &[f32],
    ) -> Result<()> {
        let plan = self.plan;
        let k = plan.k;
        let first = self.first[base].saturating_add(self.in_shard[base]);
        self.part.seen[set] += (probs.len() / k) as u64;
        match (&plan.work, &mut self.part.work) {
            (PassWork::TwoClass(p), PartWork::TwoClass(t)) => {
                if let Some(pass) = p.pass(set) {
                    t.add(set, backend.cot_two_class_pass(probs, pass)?)?;
                }
                Ok(())
            }
            (PassWork::Dual(p), PartWork::Dual(parts)) => {
                parts[set].add_on(backend, &p[set], k, first, probs)
            }
            _ => Err(Error::Invalid("COT pass: a part of another kind".into())),
        }
    }

    /// The shard's part, once every chunk is in: each set must have seen the shard's rows
    /// of it (the census).
    pub fn finish(self) -> Result<PassPart> {
        if self.failed {
            return Err(Error::Invalid(
                "COT pass: a fold whose chunk failed part-way".into(),
            ));
        }
        if self.in_shard != self.want {
            return Err(Error::Invalid(format!(
                "COT pass: shard {} gave other rows than its census ({} rows of the target, {} counted)",
                self.shard, self.in_shard[0], self.want[0]
            )));
        }
        Ok(self.part)
    }
}

impl PassPart {
    /// Adds another part of the same pass (other shards'): sums, minima and rows, the
    /// same part in any order. A shard in both, a part of another plan, or one whose
    /// contents do not check, is an error that leaves this part as it was.
    pub fn merge(&mut self, other: &PassPart) -> Result<()> {
        if other.plan != self.plan || other.pass != self.pass || other.k != self.k {
            return Err(Error::Invalid(format!(
                "COT pass: a part of another plan (pass {}) merged into pass {}",
                other.pass, self.pass
            )));
        }
        if !(2..=MAX_CLASSES).contains(&self.k) {
            return Err(Error::Invalid("COT pass: a part's K out of range".into()));
        }
        if other.seen.len() != self.seen.len() {
            return Err(Error::Invalid("COT pass: parts of different sets".into()));
        }
        if let Some(s) = other.shards.iter().find(|s| self.shards.contains(s)) {
            return Err(Error::Invalid(format!(
                "COT pass: shard {s} in two parts of a pass"
            )));
        }
        let seen = self
            .seen
            .iter()
            .zip(&other.seen)
            .map(|(&a, &b)| a.checked_add(b))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| Error::Invalid("COT pass: row counts overflow".into()))?;
        // Everything checked before anything changes.
        match (&mut self.work, &other.work) {
            (PartWork::TwoClass(a), PartWork::TwoClass(b)) => a.merge(b)?,
            (PartWork::Dual(a), PartWork::Dual(b)) if a.len() == b.len() => {
                for (x, y) in a.iter().zip(b) {
                    x.check_merge(y, self.k)?;
                }
                for (x, y) in a.iter_mut().zip(b) {
                    x.merge_checked(y);
                }
            }
            _ => return Err(Error::Invalid("COT pass: parts of different kinds".into())),
        }
        self.seen = seen;
        self.shards.extend_from_slice(&other.shards);
        self.shards.sort_unstable();
        Ok(())
    }

    /// The part as JSON (what crosses processes).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Invalid(format!("COT pass part: {e}")))
    }

    /// A part read back from [`PassPart::to_json`] (checked when merged and advanced).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("COT pass part: not a part ({e})")))
    }
}

impl PassPlan {
    /// The plan as JSON (what crosses processes).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Invalid(format!("COT pass plan: {e}")))
    }

    /// A plan read back from [`PassPlan::to_json`], checked: its id matches its content,
    /// its shapes agree, its numbers are in range.
    pub fn from_json(text: &str) -> Result<Self> {
        let plan: PassPlan = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("COT pass plan: not a plan ({e})")))?;
        plan.check()?;
        Ok(plan)
    }
}

/// Where the passes are.
enum Stage {
    /// K = 2, both modes' sets together (raw first).
    TwoClass {
        rounds: TwoClassRounds,
        /// Per set, its part-row units.
        parts: Vec<u64>,
    },
    /// K > 2, mode `mode` (0 raw, 1 ts); the raw values once done.
    Dual {
        mode: usize,
        rounds: Box<DualRounds>,
        raw: Vec<f64>,
    },
    /// Both modes' values a set.
    Done([Vec<f64>; 2]),
}

/// The driver of COT's passes over a target's shards (module docs).
pub struct CotPasses {
    k: usize,
    class_counts: Vec<u64>,
    temperatures: [f32; 2],
    budget: DualBudget,
    /// Rows a set: the target, then each group array's ids.
    sizes: Vec<u64>,
    /// Per group array present, each id's rows and set.
    ids: [Option<BTreeMap<i64, (u64, usize)>>; 2],
    /// Per shard, its sets: first row and rows.
    shards: Vec<Vec<ShardSet>>,
    /// The calibration's id.
    calibration: String,
    stage: Stage,
    passes: u64,
    held_rows: u64,
    /// The next pass's plan (made once a pass: its id is a digest).
    next: Option<PassPlan>,
}

impl CotPasses {
    /// The passes of the target whose shards' census is `census` (in row order) under
    /// `cal` (`name`: how errors name it); `sample_rows`: K > 2's sample a set (default
    /// [`DualBudget::for_classes`]).
    pub fn new(
        cal: &Calibration,
        name: &str,
        census: &[ShardCensus],
        sample_rows: Option<u64>,
    ) -> Result<Self> {
        let k = cal.k;
        if k < 2 {
            return Err(Error::Invalid(format!(
                "{name}: K = {k}; COT needs two classes or more"
            )));
        }
        if k > 2 && sample_rows == Some(0) {
            return Err(Error::Invalid("COT sample rows: at least 1 row".into()));
        }
        if cal.class_counts.is_empty() {
            return Err(Error::Invalid(format!(
                "{name}: no source class counts (a calibration of an earlier version): \
                 calibrate again"
            )));
        }
        let Some(first) = census.first() else {
            return Err(Error::Empty {
                what: "COT".into(),
                detail: "no shard in the census".into(),
            });
        };
        let present = first.groups.each_ref().map(Option::is_some);
        let mut n = 0u64;
        let mut totals: [BTreeMap<i64, u64>; 2] = Default::default();
        for (i, c) in census.iter().enumerate() {
            if c.groups.each_ref().map(Option::is_some) != present {
                return Err(Error::Invalid(format!(
                    "COT census: shard {i}'s group arrays differ from shard 0's"
                )));
            }
            let overflow = || Error::Invalid(format!("COT census: shard {i}: counts overflow"));
            n = n.checked_add(c.rows).ok_or_else(overflow)?;
            for (t, g) in totals.iter_mut().zip(&c.groups) {
                let Some(g) = g else { continue };
                let mut in_groups = 0u64;
                for (&id, &r) in g {
                    let e = t.entry(id).or_insert(0);
                    *e = e.checked_add(r).ok_or_else(overflow)?;
                    in_groups = in_groups.checked_add(r).ok_or_else(overflow)?;
                }
                if in_groups != c.rows {
                    return Err(Error::Invalid(format!(
                        "COT census: shard {i} has {} rows but {in_groups} in its groups",
                        c.rows
                    )));
                }
            }
        }
        if n == 0 {
            return Err(Error::Empty {
                what: "COT".into(),
                detail: "the target has no rows".into(),
            });
        }
        let mut sizes = vec![n];
        let mut ids: [Option<BTreeMap<i64, (u64, usize)>>; 2] = [None, None];
        for (g, t) in totals.iter().enumerate() {
            if !present[g] {
                continue;
            }
            let mut m = BTreeMap::new();
            for (&id, &r) in t {
                if r > 0 {
                    m.insert(id, (r, sizes.len()));
                    sizes.push(r);
                }
            }
            ids[g] = Some(m);
        }
        // Each shard's sets (sparse), the first row of each from the shards before it.
        let mut before = vec![0u64; sizes.len()];
        let shards: Vec<Vec<ShardSet>> = census
            .iter()
            .map(|c| {
                let mut sets = vec![(0usize, c.rows)];
                for (g, counts) in c.groups.iter().enumerate() {
                    let (Some(counts), Some(m)) = (counts, &ids[g]) else {
                        continue;
                    };
                    for (id, &r) in counts {
                        if let Some(&(_, set)) = m.get(id) {
                            sets.push((set, r));
                        }
                    }
                }
                sets.sort_unstable();
                sets.into_iter()
                    .filter(|&(_, r)| r > 0)
                    .map(|(set, rows)| {
                        let first = before[set];
                        before[set] += rows;
                        ShardSet { set, first, rows }
                    })
                    .collect()
            })
            .collect();
        let budget = DualBudget {
            sample_rows: sample_rows.unwrap_or(DualBudget::for_classes(k).sample_rows),
            ..DualBudget::for_classes(k)
        };
        let counts = cal.class_counts.clone();
        let stage = if k == 2 {
            // Both modes in each pass: the raw sets, then the same in ts.
            let both: Vec<u64> = sizes.iter().chain(&sizes).copied().collect();
            let (sets, parts) = two_class_sets(&both, &counts)?;
            Stage::TwoClass {
                rounds: TwoClassRounds::new(&sets)?,
                parts,
            }
        } else {
            Stage::Dual {
                mode: 0,
                rounds: Box::new(DualRounds::new(&sizes, k, &counts, budget)?),
                raw: Vec::new(),
            }
        };
        let mut passes = CotPasses {
            k,
            class_counts: counts,
            temperatures: [cal.modes.raw.t, cal.modes.ts.t],
            budget,
            sizes,
            ids,
            shards,
            calibration: cal.id.clone(),
            stage,
            passes: 0,
            held_rows: 0,
            next: None,
        };
        passes.next = passes.make_plan()?;
        Ok(passes)
    }

    /// The next pass; `None` when done.
    pub fn plan(&self) -> Option<PassPlan> {
        self.next.clone()
    }

    /// Whether every pass is done.
    pub fn is_done(&self) -> bool {
        self.next.is_none()
    }

    /// The next pass's plan, made: `None` when done.
    fn make_plan(&self) -> Result<Option<PassPlan>> {
        let sets = self.sizes.len();
        let (modes, work) = match &self.stage {
            Stage::TwoClass { rounds, .. } => {
                let modes = vec![
                    PlanMode {
                        t: self.temperatures[0],
                        first_set: 0,
                    },
                    PlanMode {
                        t: self.temperatures[1],
                        first_set: sets,
                    },
                ];
                let Some(plan) = rounds.plan() else {
                    return Ok(None);
                };
                (modes, PassWork::TwoClass(plan))
            }
            Stage::Dual { mode, rounds, .. } => {
                let Some(plan) = rounds.plan() else {
                    return Ok(None);
                };
                let modes = vec![PlanMode {
                    t: self.temperatures[*mode],
                    first_set: 0,
                }];
                (modes, PassWork::Dual(plan))
            }
            Stage::Done(_) => return Ok(None),
        };
        let slots = self.ids.each_ref().map(|m| {
            m.as_ref()
                .map(|m| m.iter().map(|(&id, &(_, s))| (id, s)).collect())
        });
        let mut plan = PassPlan {
            id: String::new(),
            calibration: self.calibration.clone(),
            pass: self.passes + 1,
            k: self.k,
            modes,
            sets,
            slots,
            shards: self.shards.clone(),
            work,
        };
        plan.id = plan.digest()?;
        // What a plan read back must pass (the slack bound may refuse a very wide target).
        plan.check()?;
        Ok(Some(plan))
    }

    /// Takes the pass's part merged over every shard, and takes the host's step.
    pub fn advance(&mut self, part: PassPart) -> Result<()> {
        let Some(plan) = &self.next else {
            return Err(Error::Invalid(
                "COT pass: a part after the last pass".into(),
            ));
        };
        if part.pass != plan.pass {
            return Err(Error::Invalid(format!(
                "COT pass: a part of pass {} where pass {} is due",
                part.pass, plan.pass
            )));
        }
        if part.plan != plan.id || part.k != self.k {
            return Err(Error::Invalid(format!(
                "COT pass {}: a part folded under another plan (another target, \
                 calibration or census)",
                plan.pass
            )));
        }
        let shards = self.shards.len();
        if part.shards != (0..shards).collect::<Vec<_>>() {
            let missing: Vec<usize> = (0..shards).filter(|s| !part.shards.contains(s)).collect();
            return Err(Error::Invalid(format!(
                "COT pass {}: shards {missing:?} of {shards} missing from the part",
                plan.pass
            )));
        }
        let want: Vec<u64> = plan
            .modes
            .iter()
            .flat_map(|_| self.sizes.iter().copied())
            .collect();
        if part.seen.len() != want.len() {
            return Err(Error::Invalid("COT pass: a part of other sets".into()));
        }
        check_seen(&part.seen, &want)?;
        let sets = self.sizes.len();
        // Each stage's advance leaves it as it was on an error.
        let done = match (&mut self.stage, part.work) {
            (Stage::TwoClass { rounds, parts }, PartWork::TwoClass(totals)) => {
                rounds.advance(totals)?;
                if rounds.plan().is_some() {
                    None
                } else {
                    let n_source: u64 = self.class_counts.iter().sum();
                    let v: Vec<f64> = rounds
                        .clone()
                        .finish()?
                        .iter()
                        .zip(parts.iter())
                        .map(|(s, &p)| two_class_estimate(s, n_source, p))
                        .collect();
                    Some([v[..sets].to_vec(), v[sets..].to_vec()])
                }
            }
            (Stage::Dual { mode, rounds, raw }, PartWork::Dual(parts)) => {
                rounds.advance(parts, &part.seen)?;
                self.held_rows = self.held_rows.max(rounds.stats().held_rows);
                match rounds.values() {
                    None => None,
                    Some(v) if *mode == 0 => {
                        **rounds =
                            DualRounds::new(&self.sizes, self.k, &self.class_counts, self.budget)?;
                        *mode = 1;
                        *raw = v;
                        None
                    }
                    Some(v) => Some([std::mem::take(raw), v]),
                }
            }
            _ => return Err(Error::Invalid("COT pass: a part of another kind".into())),
        };
        if let Some(values) = done {
            self.stage = Stage::Done(values);
        }
        self.passes += 1;
        self.next = self.make_plan()?;
        Ok(())
    }

    /// Passes taken so far.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// The target's rows.
    pub fn rows(&self) -> u64 {
        self.sizes[0]
    }

    /// COT raw and ts of the target and of each group, as JSON: `n`, `passes`,
    /// `held_rows` (K > 2: the most rows held at once), `cot` (`raw`, `ts`) and `groups`
    /// (per group array present, `{id, n, raw, ts}` by ascending id). An error before
    /// the last pass.
    pub fn summary(&self) -> Result<serde_json::Value> {
        let Stage::Done(values) = &self.stage else {
            return Err(Error::Invalid("COT: passes remain".into()));
        };
        let mode_values =
            |set: usize| serde_json::json!({ "raw": values[0][set], "ts": values[1][set] });
        let mut groups = serde_json::Map::new();
        for (g, name) in GROUP_ARRAYS.into_iter().enumerate() {
            let Some(m) = &self.ids[g] else { continue };
            let list: Vec<serde_json::Value> = m
                .iter()
                .map(|(&id, &(n, set))| {
                    let mut v = mode_values(set);
                    v["id"] = id.into();
                    v["n"] = n.into();
                    v
                })
                .collect();
            groups.insert(name.into(), list.into());
        }
        Ok(serde_json::json!({
            "n": self.sizes[0],
            "passes": self.passes,
            "held_rows": self.held_rows,
            "cot": mode_values(0),
            "groups": groups,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::data::PredictionSet;
    use crate::methods::calibration::CalibrationOptions;
    use ndarray::{Array1, Array2};
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A calibration at K classes (every class labelled) and a target of `n` rows with
    /// both group arrays; logits on a coarse grid where `ties` (ties within and across
    /// rows).
    fn case(k: usize, n: usize, seed: u64, ties: bool) -> (Calibration, Vec<f32>, [Vec<i64>; 2]) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let m = 300;
        let source: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0..3.0)).collect();
        let labels: Vec<i64> = (0..m).map(|i| (i % k) as i64).collect();
        let mut set = PredictionSet::new("source", Array2::from_shape_vec((m, k), source).unwrap());
        set.labels = Some(Array1::from(labels));
        let cal = Calibration::fit(&CpuBackend, &set, &CalibrationOptions::default()).unwrap();
        let logits: Vec<f32> = (0..n * k)
            .map(|_| {
                let x: f32 = r.random_range(-4.0..4.0);
                if ties {
                    (x * 2.0).round() / 2.0
                } else {
                    x
                }
            })
            .collect();
        let hospital: Vec<i64> = (0..n).map(|_| r.random_range(0..4) * 10).collect();
        let slide: Vec<i64> = (0..n).map(|_| r.random_range(-2..9)).collect();
        (cal, logits, [hospital, slide])
    }

    /// The in-memory COT of the target and of each group, both modes (the summary's
    /// `cot` and `groups` fields).
    fn in_memory(cal: &Calibration, logits: &[f32], groups: &[Vec<i64>; 2]) -> serde_json::Value {
        let k = cal.k;
        let counts = &cal.class_counts;
        let both = |rows: &[usize]| {
            let mut v = serde_json::Map::new();
            for (name, t) in [("raw", cal.modes.raw.t), ("ts", cal.modes.ts.t)] {
                let mut p = Vec::new();
                for &i in rows {
                    p.extend(softmax(&logits[i * k..(i + 1) * k], k, t));
                }
                v.insert(
                    name.into(),
                    crate::methods::cot::cot(&p, k, counts).unwrap().into(),
                );
            }
            serde_json::Value::Object(v)
        };
        let n = logits.len() / k;
        let mut out = serde_json::json!({ "cot": both(&(0..n).collect::<Vec<_>>()) });
        for (g, ids) in groups.iter().enumerate() {
            let mut by: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for (i, &id) in ids.iter().enumerate() {
                by.entry(id).or_default().push(i);
            }
            let list: Vec<serde_json::Value> = by
                .iter()
                .map(|(&id, rows)| {
                    let mut v = both(rows);
                    v["id"] = id.into();
                    v["n"] = rows.len().into();
                    v
                })
                .collect();
            out["groups"][GROUP_ARRAYS[g]] = list.into();
        }
        out
    }

    /// Random cut points of `n` rows into `shards` shards (some maybe empty).
    fn cuts(n: usize, shards: usize, r: &mut ChaCha8Rng) -> Vec<std::ops::Range<usize>> {
        let mut at: Vec<usize> = (1..shards).map(|_| r.random_range(0..=n)).collect();
        at.push(0);
        at.push(n);
        at.sort_unstable();
        at.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Random chunks of a range.
    fn chunks(rows: std::ops::Range<usize>, r: &mut ChaCha8Rng) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut at = rows.start;
        while at < rows.end {
            let next = (at + r.random_range(1..=700)).min(rows.end);
            out.push(at..next);
            at = next;
        }
        out
    }

    /// The protocol over `shards` random shards: each shard's census and folds in
    /// random chunks, plans and parts through JSON, parts merged in a random order.
    fn protocol(
        cal: &Calibration,
        logits: &[f32],
        groups: &[Vec<i64>; 2],
        shards: usize,
        sample_rows: Option<u64>,
        seed: u64,
    ) -> serde_json::Value {
        let k = cal.k;
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let cut = cuts(logits.len() / k, shards, &mut r);
        let ids = |rows: &std::ops::Range<usize>| {
            [
                Some(&groups[0][rows.clone()]),
                Some(&groups[1][rows.clone()]),
            ]
        };
        let census: Vec<ShardCensus> = cut
            .iter()
            .map(|rows| {
                let mut c = ShardCensus::new([true, true]);
                for ch in chunks(rows.clone(), &mut r) {
                    c.add(ch.len(), ids(&ch)).unwrap();
                }
                c
            })
            .collect();
        let mut passes = CotPasses::new(cal, "test", &census, sample_rows).unwrap();
        while let Some(plan) = passes.plan() {
            let plan = PassPlan::from_json(&plan.to_json().unwrap()).unwrap();
            let mut order: Vec<usize> = (0..cut.len()).collect();
            order.shuffle(&mut r);
            let mut parts: Vec<PassPart> = order
                .iter()
                .map(|&s| {
                    let mut fold = plan.shard(s).unwrap();
                    for ch in chunks(cut[s].clone(), &mut r) {
                        fold.add(&CpuBackend, &logits[ch.start * k..ch.end * k], ids(&ch))
                            .unwrap();
                    }
                    PassPart::from_json(&fold.finish().unwrap().to_json().unwrap()).unwrap()
                })
                .collect();
            while parts.len() > 1 {
                let a = parts.swap_remove(r.random_range(0..parts.len()));
                let at = r.random_range(0..parts.len());
                parts[at].merge(&a).unwrap();
            }
            passes.advance(parts.pop().unwrap()).unwrap();
        }
        passes.summary().unwrap()
    }

    /// K = 2 (both modes in seven passes) and K = 4 and 7 (the dual's rounds; a small
    /// sample so that collect and refine passes run, and one that holds the set): any
    /// cut into shards (1, 3, 9 of them, some empty), any chunks, any merge order, and
    /// every plan and part through JSON give the in-memory COT of the target and of
    /// every group bit for bit, and the same passes and held rows as one shard.
    #[test]
    fn shards_in_any_cut_and_merge_order_equal_the_in_memory_cot() {
        for (k, n, sample, ties) in [
            (2, 3001, None, true),
            (4, 2500, Some(64), true),
            (7, 1800, Some(100), false),
            (4, 900, Some(5000), false),
        ] {
            let (cal, logits, groups) = case(k, n, k as u64 + n as u64, ties);
            let want = in_memory(&cal, &logits, &groups);
            let one = protocol(&cal, &logits, &groups, 1, sample, 1);
            for (shards, seed) in [(3, 2), (9, 3)] {
                let got = protocol(&cal, &logits, &groups, shards, sample, seed);
                let what = format!("K = {k}, {shards} shards");
                assert_eq!(got["cot"], want["cot"], "{what}");
                assert_eq!(got["groups"], want["groups"], "{what}: groups");
                assert_eq!(got["passes"], one["passes"], "{what}: passes");
                assert_eq!(got["held_rows"], one["held_rows"], "{what}: held rows");
            }
            let passes = one["passes"].as_u64().unwrap();
            match (k, sample) {
                (2, _) => assert_eq!(passes, 7),
                (_, Some(5000)) => assert_eq!(passes, 2, "one pass a mode"),
                _ => assert!(passes >= 4, "K = {k}: {passes} passes"),
            }
        }
    }

    /// Parts that do not belong are refused with a sentence: another pass's, a shard in
    /// two parts, a shard missing, a shard with other rows than its census, a group id
    /// the census lacks, a tampered sample, and a plan whose shapes disagree.
    #[test]
    fn parts_that_do_not_belong_are_refused() {
        let (cal, logits, groups) = case(4, 600, 9, false);
        let k = cal.k;
        let ids = |a: usize, b: usize| [Some(&groups[0][a..b]), Some(&groups[1][a..b])];
        let census: Vec<ShardCensus> = [(0, 250), (250, 600)]
            .iter()
            .map(|&(a, b)| {
                let mut c = ShardCensus::new([true, true]);
                c.add(b - a, ids(a, b)).unwrap();
                c
            })
            .collect();
        let mut passes = CotPasses::new(&cal, "test", &census, Some(50)).unwrap();
        let plan = passes.plan().unwrap();
        let fold = |s: usize, a: usize, b: usize| {
            let mut f = plan.shard(s).unwrap();
            f.add(&CpuBackend, &logits[a * k..b * k], ids(a, b))
                .unwrap();
            f.finish().unwrap()
        };
        let p0 = fold(0, 0, 250);
        let p1 = fold(1, 250, 600);
        let msg = |e: Error| e.to_string();
        // A shard in two parts.
        let mut twice = p0.clone();
        assert!(msg(twice.merge(&p0).unwrap_err()).contains("shard 0 in two parts"));
        // A shard missing.
        assert!(msg(passes.advance(p0.clone()).unwrap_err()).contains("shards [1] of 2 missing"));
        // Another pass's part.
        let mut later = p1.clone();
        later.pass = 2;
        assert!(msg(p0.clone().merge(&later).unwrap_err()).contains("another plan (pass 2)"));
        // A shard with fewer rows than its census.
        let mut short = plan.shard(1).unwrap();
        short
            .add(&CpuBackend, &logits[250 * k..599 * k], ids(250, 599))
            .unwrap();
        assert!(msg(short.finish().map(|_| ()).unwrap_err()).contains("other rows than its census"));
        // A group id the census lacks.
        let mut stranger = plan.shard(0).unwrap();
        let other = [12345i64; 1];
        let e = stranger
            .add(
                &CpuBackend,
                &logits[..k],
                [Some(&other[..]), Some(&groups[1][..1])],
            )
            .unwrap_err();
        assert!(msg(e).contains("hospital id 12345 is not in the census"));
        // A sample with a row off the stride (tampered): refused at advance.
        let mut all = p0.clone();
        all.merge(&p1).unwrap();
        let mut tampered = all.clone();
        if let PartWork::Dual(parts) = &mut tampered.work {
            if let DualSetPart::Sample { index, .. } = &mut parts[0] {
                index[1] += 1;
            }
        }
        assert!(msg(passes.advance(tampered).unwrap_err()).contains("other rows than every"));
        // A plan whose sets disagree with its work.
        let mut bad = plan.clone();
        bad.sets += 1;
        let e = msg(PassPlan::from_json(&bad.to_json().unwrap()).unwrap_err());
        assert!(e.contains("id does not match"), "{e}");
        bad.id = bad.digest().unwrap();
        let e = msg(PassPlan::from_json(&bad.to_json().unwrap()).unwrap_err());
        assert!(e.contains("does not fit"), "{e}");
        // The honest part still advances after the refusals.
        passes.advance(all).unwrap();
        assert_eq!(passes.passes(), 1);
        // And no census: an error, not a panic.
        assert!(CotPasses::new(&cal, "test", &[], None).is_err());
    }

    /// K = 2: counts or sums from elsewhere (more keys than rows, sums past any honest
    /// bound) are refused, not narrowed into a wrong answer or an overflow, and the
    /// passes stay usable.
    #[test]
    fn two_class_totals_from_elsewhere_are_refused() {
        use crate::kernel::cot_two_class::TwoClassTotals;
        let (cal, logits, groups) = case(2, 500, 4, false);
        let mut c = ShardCensus::new([true, true]);
        c.add(500, [Some(&groups[0][..]), Some(&groups[1][..])])
            .unwrap();
        let mut passes = CotPasses::new(&cal, "test", &[c], None).unwrap();
        let honest = |plan: &PassPlan| {
            let mut f = plan.shard(0).unwrap();
            f.add(
                &CpuBackend,
                &logits,
                [Some(&groups[0][..]), Some(&groups[1][..])],
            )
            .unwrap();
            f.finish().unwrap()
        };
        let plan = passes.plan().unwrap();
        let mut part = honest(&plan);
        if let PartWork::TwoClass(TwoClassTotals::Histogram(h)) = &mut part.work {
            h[0][7] += u64::MAX / 2;
        }
        let e = passes.advance(part).unwrap_err().to_string();
        assert!(e.contains("keys counted in a set of 500 rows"), "{e}");
        // Six honest histogram passes, then sums from elsewhere.
        for _ in 0..6 {
            let plan = passes.plan().unwrap();
            passes.advance(honest(&plan)).unwrap();
        }
        let plan = passes.plan().unwrap();
        let mut part = honest(&plan);
        if let PartWork::TwoClass(TwoClassTotals::Sums(s)) = &mut part.work {
            s[0].base = u128::MAX / 3;
        }
        let e = passes.advance(part).unwrap_err().to_string();
        assert!(e.contains("sums out of range"), "{e}");
        passes.advance(honest(&plan)).unwrap();
        let got = passes.summary().unwrap();
        assert_eq!(got["cot"], in_memory(&cal, &logits, &groups)["cot"]);
    }

    /// What another process might send, tampered or foreign, is an error and never a
    /// panic (release or debug): unsorted sample rows with too few costs, tallies of
    /// K = 0, an accumulator whose rows and indices disagree, a plan naming a huge K or a
    /// dual point past any bound (its id recomputed), a part folded under another
    /// calibration's plan; and a refused merge leaves the part as it was.
    #[test]
    fn tampered_or_foreign_input_is_an_error_not_a_panic() {
        use crate::kernel::cot_two_class::TwoClassTotals;
        let (cal, logits, groups) = case(4, 300, 12, false);
        let k = cal.k;
        let ids = [Some(&groups[0][..]), Some(&groups[1][..])];
        let mut c = ShardCensus::new([true, true]);
        c.add(300, ids).unwrap();
        let mut passes = CotPasses::new(&cal, "test", std::slice::from_ref(&c), Some(40)).unwrap();
        let plan = passes.plan().unwrap();
        let honest = |plan: &PassPlan| {
            let mut f = plan.shard(0).unwrap();
            f.add(&CpuBackend, &logits, ids).unwrap();
            f.finish().unwrap()
        };
        let msg = |e: Error| e.to_string();
        // Sample rows out of order with a single row's costs.
        let mut part = honest(&plan);
        if let PartWork::Dual(p) = &mut part.work {
            if let DualSetPart::Sample { index, probs } = &mut p[0] {
                index.reverse();
                probs.truncate(k);
            }
        }
        let e = msg(passes.advance(part).unwrap_err());
        assert!(e.contains("differ"), "{e}");
        // Collect tallies of K = 0 and an accumulator whose kept rows disagree.
        let tally = |k: usize, index: Vec<u64>| {
            let mut t = crate::methods::cot_dual::DualTally::capped(k, 1);
            t.free_index = index;
            DualSetPart::Collect(t)
        };
        assert!(tally(0, vec![]).check_merge(&tally(0, vec![]), 0).is_err());
        let e = tally(4, (0..8).collect())
            .check_merge(&tally(4, vec![]), 4)
            .unwrap_err();
        assert!(msg(e).contains("free rows and their indices differ"));
        // Plans with their ids recomputed: a huge K, a dual point past any bound.
        let mut huge = plan.clone();
        huge.k = 1 << 61;
        huge.id = huge.digest().unwrap();
        let e = msg(PassPlan::from_json(&huge.to_json().unwrap()).unwrap_err());
        assert!(e.contains("K out of range"), "{e}");
        let mut far = plan.clone();
        far.work = PassWork::Dual(vec![
            DualSetPlan::Collect {
                g: vec![i64::MIN; k],
                deltas: vec![0; k],
                cap: 1
            };
            plan.all_sets()
        ]);
        far.id = far.digest().unwrap();
        let e = msg(PassPlan::from_json(&far.to_json().unwrap()).unwrap_err());
        assert!(e.contains("does not fit"), "{e}");
        // K = 2^14 collecting in every set: past 2^28 slacks (a shard would allocate
        // K^2 words a set), refused before any allocation.
        let mut wide = plan.clone();
        wide.k = 1 << 14;
        wide.work = PassWork::Dual(vec![
            DualSetPlan::Collect {
                g: vec![0; 1 << 14],
                deltas: vec![0; 1 << 14],
                cap: 1
            };
            plan.all_sets()
        ]);
        assert!(plan.all_sets() >= 2, "a target and its groups");
        wide.id = wide.digest().unwrap();
        let e = msg(PassPlan::from_json(&wide.to_json().unwrap()).unwrap_err());
        assert!(e.contains("more than 2^28 class-pair slacks"), "{e}");
        // A part folded under another calibration's plan (the same census and shapes).
        let (other_cal, ..) = case(4, 300, 13, false);
        let other = CotPasses::new(&other_cal, "other", &[c], Some(40)).unwrap();
        let foreign = honest(&other.plan().unwrap());
        let e = msg(passes.advance(foreign).unwrap_err());
        assert!(e.contains("another plan"), "{e}");
        // A refused merge leaves the part as it was (K = 2 counts that overflow).
        let mut a = TwoClassTotals::Histogram(vec![vec![5], vec![u64::MAX]]);
        let before = a.clone();
        assert!(a
            .merge(&TwoClassTotals::Histogram(vec![vec![1], vec![1]]))
            .is_err());
        assert_eq!(a, before);
        // And the honest part still advances.
        passes.advance(honest(&plan)).unwrap();
    }
}
