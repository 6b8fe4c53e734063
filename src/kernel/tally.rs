//! The tally contract: what one target row adds to the counts of its (hospital, slide)
//! pair in one mode, given the source's thresholds. Every backend produces the same
//! [`PairCounts`] for the same row statistics: integers only (the one sum, of the largest
//! probability, is taken on a fixed 2^-40 grid), so partials merge by addition in any
//! order, chunking or sharding, with the same bits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kernel::row_stats::{col, RowBlock};

/// Bits below the binary point of the fixed grid of [`Counts::sum_p1`] (the grid of
/// [`crate::kernel::class_sum`]). A largest probability is at least 1/K, so for K <= 2^17
/// every f32 `p_(1)` (24-bit mantissa) lies on the grid exactly: the sum is the exact sum
/// of the f32 values.
pub const P1_GRID_BITS: i32 = crate::kernel::class_sum::GRID_BITS;

/// `p` in [0, 1] on the fixed grid: exact for `p >= 2^-17` (the multiplication only
/// moves the exponent), rounded toward zero below (K > 2^17 classes), on every backend
/// (the rule [`crate::kernel::class_sum::to_grid`] also sums classes with).
#[inline(always)]
pub fn p1_to_grid(p: f32) -> u64 {
    crate::kernel::class_sum::to_grid(p)
}

/// Indices into [`Counts::counts`].
pub mod count {
    /// Rows.
    pub const N: usize = 0;
    /// Rows with a known label.
    pub const LABELLED: usize = 1;
    /// Labelled rows predicted correctly.
    pub const CORRECT: usize = 2;
    /// Rows whose max probability is above the ATC-MC threshold.
    pub const MC_ABOVE: usize = 3;
    /// Rows whose max probability equals it.
    pub const MC_EQUAL: usize = 4;
    /// Rows whose negative entropy is above the ATC-NE threshold.
    pub const NE_ABOVE: usize = 5;
    /// Rows whose negative entropy equals it.
    pub const NE_EQUAL: usize = 6;
    /// Singleton rows at CPC's q*.
    pub const CPC: usize = 7;
    /// Number of counters.
    pub const LEN: usize = 8;
}

/// Indices into each [`Counts::levels`] entry.
pub mod level {
    /// Sum of set sizes.
    pub const SIZE_SUM: usize = 0;
    /// Singleton sets.
    pub const SINGLETON: usize = 1;
    /// Empty sets.
    pub const EMPTY: usize = 2;
    /// Labelled rows whose label is in the set.
    pub const COVERED: usize = 3;
    /// Number of counters per level.
    pub const LEN: usize = 4;
}

/// Mergeable counts over target rows in one mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Integer counters, indexed by [`count`].
    pub counts: [u64; count::LEN],
    /// Sum of the largest probability on the 2^-[`P1_GRID_BITS`] grid.
    #[serde(with = "crate::serde_exact::u128_str")]
    pub sum_p1: u128,
    /// Per level, counters indexed by [`level`].
    pub levels: Vec<[u64; level::LEN]>,
}

impl Counts {
    /// Zero counts for `n_alpha` levels.
    pub fn with_levels(n_alpha: usize) -> Self {
        Counts {
            levels: vec![[0; level::LEN]; n_alpha],
            ..Default::default()
        }
    }

    /// Adds `o` (same levels); `None` on overflow (only reachable from a forged file).
    pub fn checked_merge(&mut self, o: &Counts) -> Option<()> {
        if self.levels.len() != o.levels.len() {
            return None;
        }
        let mut out = self.clone();
        for (d, s) in out.counts.iter_mut().zip(&o.counts) {
            *d = d.checked_add(*s)?;
        }
        out.sum_p1 = out.sum_p1.checked_add(o.sum_p1)?;
        for (d, s) in out.levels.iter_mut().zip(&o.levels) {
            for (a, b) in d.iter_mut().zip(s) {
                *a = a.checked_add(*b)?;
            }
        }
        *self = out;
        Some(())
    }

    /// Adds `o` (same levels), for partials this process computed itself: a sum of real
    /// row counts cannot overflow u64.
    pub fn merge(&mut self, o: &Counts) {
        for (d, s) in self.counts.iter_mut().zip(&o.counts) {
            *d += s;
        }
        self.sum_p1 += o.sum_p1;
        for (d, s) in self.levels.iter_mut().zip(&o.levels) {
            for (a, b) in d.iter_mut().zip(s) {
                *a += b;
            }
        }
    }

    /// Rows counted.
    pub fn n(&self) -> u64 {
        self.counts[count::N]
    }

    /// Labelled rows counted.
    pub fn labelled(&self) -> u64 {
        self.counts[count::LABELLED]
    }

    /// Mean of the largest probability (NaN without rows).
    pub fn mean_p1(&self) -> f64 {
        self.sum_p1 as f64 / (1u64 << P1_GRID_BITS) as f64 / self.n() as f64
    }

    /// Why these counts cannot come from real rows of K classes, if they cannot (a
    /// damaged or forged tally file).
    pub fn inconsistency(&self, k: usize) -> Option<String> {
        let c = &self.counts;
        let n = c[count::N];
        let checks = [
            (c[count::LABELLED] <= n, "labelled rows exceed rows"),
            (
                c[count::CORRECT] <= c[count::LABELLED],
                "correct rows exceed labelled rows",
            ),
            (
                c[count::MC_ABOVE]
                    .checked_add(c[count::MC_EQUAL])
                    .is_some_and(|s| s <= n),
                "ATC-MC counts exceed rows",
            ),
            (
                c[count::NE_ABOVE]
                    .checked_add(c[count::NE_EQUAL])
                    .is_some_and(|s| s <= n),
                "ATC-NE counts exceed rows",
            ),
            (c[count::CPC] <= n, "CPC singletons exceed rows"),
            (
                self.sum_p1 <= (n as u128) << P1_GRID_BITS,
                "sum of probabilities exceeds rows",
            ),
        ];
        if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
            return Some(why.to_string());
        }
        for (a, l) in self.levels.iter().enumerate() {
            let size_ok = (l[level::SIZE_SUM] as u128) <= n as u128 * k as u128;
            let ok = size_ok
                && l[level::SINGLETON]
                    .checked_add(l[level::EMPTY])
                    .is_some_and(|s| s <= n)
                && l[level::COVERED] <= c[count::LABELLED];
            if !ok {
                return Some(format!("level {a}: set counts exceed rows"));
            }
        }
        None
    }
}

/// A row's group: (hospital id, slide id), `None` where the target has no such array.
pub type GroupKey = [Option<i64>; 2];

/// Names of the group arrays, in [`GroupKey`] order.
pub const GROUP_ARRAYS: [&str; 2] = ["hospital", "slide"];

/// Counts per (hospital, slide) pair: each row goes to exactly one pair, so whole-target,
/// per-hospital and per-slide counts are sums of pairs and no row is counted twice.
pub type PairCounts = BTreeMap<GroupKey, Counts>;

/// What the tally of one mode needs from the calibration: the temperature, the source's
/// thresholds (`None` = absent: no ATC threshold when no source row is correct, +inf for
/// CPC's q* or a qhat), and the target rows' labels and group ids.
#[derive(Clone, Copy, Debug)]
pub struct TallyPlan<'a> {
    /// Temperature of the mode.
    pub t: f32,
    /// ATC-MC threshold.
    pub atc_mc: Option<f32>,
    /// ATC-NE threshold.
    pub atc_ne: Option<f32>,
    /// CPC's q*.
    pub cpc_q: Option<f32>,
    /// qhat per level.
    pub qhats: &'a [Option<f32>],
    /// One per row, -1 = unknown.
    pub labels: &'a [i32],
    /// Group ids per [`GROUP_ARRAYS`] entry, one per row, where present.
    pub groups: [Option<&'a [i64]>; 2],
}

/// Counts rows `first..first + blk.len()` of a chunk (row statistics `blk`) into `out`,
/// run by run of equal group key: rows of a slide usually come together.
pub fn count_block(blk: RowBlock<'_>, first: usize, plan: &TallyPlan<'_>, out: &mut PairCounts) {
    let n = blk.len();
    let ids = plan.groups.map(|g| g.map(|a| &a[first..first + n]));
    let key = |i: usize| ids.map(|a| a.map(|a| a[i]));
    // The end of the run of equal ids that starts at `j`.
    let run_end = |j: usize| -> usize {
        let same = |a: Option<&[i64]>, i: usize| a.is_none_or(|a| a[i] == a[j]);
        let mut end = j + 1;
        while end < n && same(ids[0], end) && same(ids[1], end) {
            end += 1;
        }
        end
    };
    let mut j = 0;
    while j < n {
        let end = run_end(j);
        let slot = out
            .entry(key(j))
            .or_insert_with(|| Counts::with_levels(plan.qhats.len()));
        // Sub-runs of at most 2^23 rows keep the grid sum of p_(1) (< 2^40 a row) in u64.
        let mut s = j;
        while s < end {
            let e = end.min(s + (1 << 23));
            count_run(blk, s..e, &plan.labels[first + s..first + e], plan, slot);
            s = e;
        }
        j = end;
    }
}

/// Counts rows `rows` of `blk` into `out`. Absent thresholds become NaN (no row above or
/// equal, no CPC singleton) and an absent qhat +inf (every labelled row covered), so the
/// loops have no data-dependent branches.
fn count_run(
    blk: RowBlock<'_>,
    rows: std::ops::Range<usize>,
    labels: &[i32],
    plan: &TallyPlan<'_>,
    out: &mut Counts,
) {
    let t_mc = plan.atc_mc.unwrap_or(f32::NAN);
    let t_ne = plan.atc_ne.unwrap_or(f32::NAN);
    let q_cpc = plan.cpc_q.unwrap_or(f32::NAN);
    let mut c = [0u64; count::LEN];
    let mut sum_p1 = 0u64;
    let stats = &blk.stats[rows.clone()];
    let stride = 1 + blk.n_alpha;
    let info = &blk.info[rows.start * stride..rows.end * stride];
    for ((s, &y), inf) in stats.iter().zip(labels).zip(info.chunks_exact(stride)) {
        let [p1, ne, _, r1, r2] = *s;
        let known = y >= 0;
        c[count::LABELLED] += known as u64;
        c[count::CORRECT] += (inf[0] as i32 == y) as u64; // y = -1 never equals a class
        c[count::MC_ABOVE] += (p1 > t_mc) as u64;
        c[count::MC_EQUAL] += (p1 == t_mc) as u64;
        c[count::NE_ABOVE] += (ne > t_ne) as u64;
        c[count::NE_EQUAL] += (ne == t_ne) as u64;
        c[count::CPC] += (r1 <= q_cpc && q_cpc < r2) as u64;
        sum_p1 += p1_to_grid(p1);
    }
    c[count::N] = rows.len() as u64;
    for (d, s) in out.counts.iter_mut().zip(c) {
        *d += s;
    }
    out.sum_p1 += sum_p1 as u128;
    for (a, lv) in out.levels.iter_mut().enumerate() {
        let q = plan.qhats[a].unwrap_or(f32::INFINITY);
        let mut l = [0u64; level::LEN];
        for ((s, &y), inf) in stats.iter().zip(labels).zip(info.chunks_exact(stride)) {
            let size = inf[1 + a];
            l[level::SIZE_SUM] += size as u64;
            l[level::SINGLETON] += (size == 1) as u64;
            l[level::EMPTY] += (size == 0) as u64;
            l[level::COVERED] += (y >= 0 && s[col::LAC] <= q) as u64;
        }
        for (d, s) in lv.iter_mut().zip(l) {
            *d += s;
        }
    }
}

/// Adds `part` into `into`, pair by pair.
pub fn merge_pairs(into: &mut PairCounts, part: PairCounts) {
    for (key, counts) in part {
        match into.get_mut(&key) {
            Some(c) => c.merge(&counts),
            None => {
                into.insert(key, counts);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The device tally (shaders/tally.wgsl): the same counts, accumulated on the device as u32
// words per slot, a slot per (hospital, slide) pair of the target (numbered by the host in
// order of first appearance), read back once per target and mode.
// ---------------------------------------------------------------------------------------

/// Uniform parameters of shaders/tally.wgsl. Keep in sync with `Params` there (layout
/// checked against naga's by tests/pod_layout.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TallyParams {
    /// Rows in this dispatch.
    pub rows: u32,
    /// Classes per row.
    pub k: u32,
    /// Temperature.
    pub t: f32,
    /// Levels.
    pub n_alpha: u32,
    /// ATC-MC threshold (ignored unless [`TALLY_HAS_MC`]).
    pub t_mc: f32,
    /// ATC-NE threshold (ignored unless [`TALLY_HAS_NE`]).
    pub t_ne: f32,
    /// CPC's q* (ignored unless [`TALLY_HAS_CPC`]).
    pub q_cpc: f32,
    /// Which thresholds exist (`TALLY_HAS_*` bits).
    pub flags: u32,
    /// Real workgroups: the padding ones of a 2-D grid return at once.
    pub num_wgs: u32,
    /// Slots the accumulator holds.
    pub slots: u32,
    /// 1 when every row goes to slot 0 (no slot buffer is read).
    pub one_slot: u32,
    /// Rows each team counts (a workgroup's tile is [`tile_rows`] rows).
    pub rows_per_thread: u32,
}

/// Threads per row of the device tally for large K: a team of this many lanes shares a
/// row's classes (shaders/row_summary_lanes.wgsl), instead of one thread a row reading K
/// strided logits. Keep in sync with `LANE_TEAMS = WG / TALLY_LANES` there.
pub const TALLY_LANES: u32 = 32;

/// Smallest K the device tally runs with [`TALLY_LANES`] threads a row: every lane then
/// has at least two classes, and the team's exact reductions (integer grid sums, which
/// need K >= GRID_MIN_K) replace a serial loop long enough to be worth their barriers.
pub const TALLY_LANES_MIN_K: usize = 64;

/// Threads per row of the device tally on a hardware adapter for rows of `k` classes: 1
/// or [`TALLY_LANES`] (software adapters run one thread a row: `gpu::tally::tally_constants`).
pub fn tally_lanes(k: usize) -> u32 {
    if k >= TALLY_LANES_MIN_K {
        TALLY_LANES
    } else {
        1
    }
}

/// Rows of one tally workgroup's tile: `rows_per_thread` rows for each of its
/// `WG / lanes` teams.
pub fn tile_rows(rows_per_thread: u32, lanes: u32) -> u64 {
    rows_per_thread as u64 * (crate::kernel::WG as u64 / lanes as u64)
}

/// Rows per thread of the device tally: sums in registers over this many rows cut the
/// workgroup atomics by as much (counts per thread stay far below 2^32).
pub const TALLY_ROWS_PER_THREAD: u32 = 16;

/// `flags` bit: the ATC-MC threshold exists.
pub const TALLY_HAS_MC: u32 = 1;
/// `flags` bit: the ATC-NE threshold exists.
pub const TALLY_HAS_NE: u32 = 2;
/// `flags` bit: CPC's q* is finite.
pub const TALLY_HAS_CPC: u32 = 4;

/// Device words per slot before the levels: the [`count`] counters, then the grid sum of
/// `p_(1)` as a (low, high) pair of u32 words.
pub const DEVICE_HEAD: usize = count::LEN + 2;
/// Device words per level: set-size sum (low, high), singletons, empty sets, covered.
pub const DEVICE_PER_LEVEL: usize = 5;

/// Device words per slot for `n_alpha` levels. Keep in sync with tally.wgsl.
pub fn device_words(n_alpha: usize) -> usize {
    DEVICE_HEAD + DEVICE_PER_LEVEL * n_alpha
}

/// Counts from one slot's device words (`device_words(n_alpha)` u32s). The device keeps
/// every counter in 32 bits, so a slot must hold fewer than 2^32 rows, and the two sums
/// carry into their high words: exact below 2^64.
pub fn counts_from_device(words: &[u32], n_alpha: usize) -> Counts {
    let pair = |lo: usize| words[lo] as u64 | (words[lo + 1] as u64) << 32;
    let mut c = Counts::with_levels(n_alpha);
    for (i, d) in c.counts.iter_mut().enumerate() {
        *d = words[i] as u64;
    }
    c.sum_p1 = pair(count::LEN) as u128;
    for (a, lv) in c.levels.iter_mut().enumerate() {
        let w = DEVICE_HEAD + DEVICE_PER_LEVEL * a;
        lv[level::SIZE_SUM] = pair(w);
        lv[level::SINGLETON] = words[w + 2] as u64;
        lv[level::EMPTY] = words[w + 3] as u64;
        lv[level::COVERED] = words[w + 4] as u64;
    }
    c
}

/// The slots of a target: (hospital, slide) keys numbered in order of first appearance,
/// across the target's chunks.
#[derive(Clone, Debug, Default)]
pub struct SlotMap {
    /// Key of each slot.
    pub keys: Vec<GroupKey>,
    index: std::collections::HashMap<GroupKey, u32>,
}

impl SlotMap {
    /// The slot of every row of a chunk, numbering new keys. `None` when the target has no
    /// group arrays (every row in slot 0).
    pub fn assign(&mut self, groups: [Option<&[i64]>; 2], rows: usize) -> Option<Vec<u32>> {
        if groups.iter().all(|g| g.is_none()) {
            self.slot([None, None]);
            return None;
        }
        let mut out = Vec::with_capacity(rows);
        let mut last: Option<(GroupKey, u32)> = None;
        for i in 0..rows {
            let key = groups.map(|g| g.map(|a| a[i]));
            let slot = match last {
                Some((k, s)) if k == key => s,
                _ => {
                    let s = self.slot(key);
                    last = Some((key, s));
                    s
                }
            };
            out.push(slot);
        }
        Some(out)
    }

    /// The slot of `key`, numbering it if new.
    pub fn slot(&mut self, key: GroupKey) -> u32 {
        if let Some(&s) = self.index.get(&key) {
            return s;
        }
        let s = self.keys.len() as u32;
        self.keys.push(key);
        self.index.insert(key, s);
        s
    }
}
