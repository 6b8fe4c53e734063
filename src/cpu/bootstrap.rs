//! CPU mirror of shaders/bootstrap.wgsl: every replicate's weighted counts of one chunk in
//! both modes (DESIGN.md 2.12). Replicates in groups of four (one Philox draw per row and
//! group, shared by the two modes) run in parallel. Row summaries come from the
//! vectorised row_stats loop, a block of rows at a time: once per chunk for a mode whose
//! replicates share one temperature (`raw`, a fixed T), else per block and replicate.

use rayon::prelude::*;

use super::common::row_max;
use super::math::with_avx2;
use super::row_stats::{row_stats, row_stats_into, RowStats};
use crate::kernel::bootstrap::{
    rep, weights4, weights4_lanes, BootstrapTallyPlan, PairRepCounts, RepCounts, ReplicatePlan,
    DRAW_LANES, MODES, REPS_PER_DRAW,
};
use crate::kernel::tally::p1_to_grid;
use crate::kernel::tally::SlotMap;

/// Rows per block: a block's logits and summaries stay in L1/L2.
const BLOCK: usize = 1024;

/// The replicate counts of `plan.labels.len()` rows of `k` logits each, per mode.
pub fn bootstrap_tally(
    logits: &[f32],
    k: usize,
    plan: &BootstrapTallyPlan<'_>,
) -> [PairRepCounts; MODES] {
    let n = plan.labels.len();
    let reps = plan.reps();
    if n == 0 || reps == 0 {
        return Default::default();
    }
    let mut slot_map = SlotMap::default();
    let slot_of = slot_map.assign(plan.groups, n);
    let slots = slot_map.keys.len();
    let slot = |i: usize| slot_of.as_ref().map_or(0, |s| s[i] as usize);
    // The prediction (argmax of the logits) does not depend on T.
    let yhat: Vec<u32> = logits
        .par_chunks(k)
        .map(|row| row_max(row).1 as u32)
        .collect();
    // Summaries at the one temperature of a mode whose replicates share it.
    let shared: Vec<Option<RowStats>> = plan
        .modes
        .iter()
        .map(|m| {
            let one_t = m.windows(2).all(|w| w[0].t.to_bits() == w[1].t.to_bits());
            one_t.then(|| row_stats(logits, plan.labels, k, m[0].t, &[]))
        })
        .collect();
    let draws = reps.div_ceil(REPS_PER_DRAW);
    let cells = MODES * slots;
    // Per draw group: the four replicates' counters and grid sums per (mode, slot) cell,
    // lane j = replicate 4 g + j.
    let parts: Vec<(Vec<Lanes>, Vec<[u128; REPS_PER_DRAW]>)> = (0..draws)
        .into_par_iter()
        .map(|g| {
            let mut counts = vec![[[0u64; REPS_PER_DRAW]; rep::LEN]; cells];
            let mut sums = vec![[0u128; REPS_PER_DRAW]; cells];
            // Within a block the grid sums fit u64: 1024 rows x weight 12 x 2^40 < 2^54.
            let mut block_sums = vec![[0u64; REPS_PER_DRAW]; cells];
            let live = (reps - g * REPS_PER_DRAW).min(REPS_PER_DRAW);
            let mut block_stats: Vec<RowStats> = vec![RowStats::default(); REPS_PER_DRAW];
            let mut w = vec![[0u32; REPS_PER_DRAW]; BLOCK];
            for start in (0..n).step_by(BLOCK) {
                let end = (start + BLOCK).min(n);
                let mut any = [false; REPS_PER_DRAW];
                draw_weights(
                    plan.seed,
                    plan.name_key,
                    g as u32,
                    |o| plan.row_offset + (start + o) as u64,
                    &mut w[..end - start],
                    |x| x,
                );
                for wi in &mut w[..end - start] {
                    // Lanes past the last replicate weigh nothing.
                    wi[live..].fill(0);
                    for (a, &x) in any.iter_mut().zip(wi.iter()) {
                        *a |= x != 0;
                    }
                }
                // Rows of many groups interleaved: the cells change often (the same in
                // every mode).
                let scattered = slot_of.as_ref().is_some_and(|s| {
                    let s = &s[start..end];
                    s.windows(2).filter(|p| p[0] != p[1]).count() * 8 > s.len()
                });
                for (m, reps_m) in plan.modes.iter().enumerate() {
                    let lanes: [Option<&ReplicatePlan>; REPS_PER_DRAW] = std::array::from_fn(|j| {
                        reps_m.get(g * REPS_PER_DRAW + j).filter(|_| j < live)
                    });
                    let th = Thresholds::new(lanes);
                    let block = BlockRows {
                        rows: start..end,
                        w: &w[..end - start],
                        labels: plan.labels,
                        yhat: &yhat,
                        cell_of: |i: usize| m * slots + slot(i),
                        scattered,
                    };
                    match &shared[m] {
                        Some(sh) => {
                            let st = &sh.stats[start..end];
                            block.add(&th, |o, _| &st[o], &mut counts, &mut block_sums);
                        }
                        None => {
                            for (j, rp) in lanes.iter().enumerate() {
                                if let (Some(rp), true) = (rp, any[j]) {
                                    row_stats_into(
                                        &logits[start * k..end * k],
                                        &plan.labels[start..end],
                                        k,
                                        rp.t,
                                        &[],
                                        &mut block_stats[j],
                                    );
                                } else {
                                    // A lane without rows to weigh: any finite summary.
                                    block_stats[j].stats.resize(end - start, [0.0; 5]);
                                }
                            }
                            let bs = &block_stats;
                            block.add(&th, |o, j| &bs[j].stats[o], &mut counts, &mut block_sums);
                        }
                    }
                }
                for (d, s) in sums.iter_mut().zip(block_sums.iter_mut()) {
                    for (a, b) in d.iter_mut().zip(s.iter_mut()) {
                        *a += *b as u128;
                        *b = 0;
                    }
                }
            }
            (counts, sums)
        })
        .collect();
    let mut out: [PairRepCounts; MODES] = Default::default();
    for (m, out_m) in out.iter_mut().enumerate() {
        for (sl, key) in slot_map.keys.iter().enumerate() {
            let mut rc = RepCounts::zeros(reps);
            for (g, (counts, sums)) in parts.iter().enumerate() {
                let cell = m * slots + sl;
                for j in 0..REPS_PER_DRAW {
                    let b = g * REPS_PER_DRAW + j;
                    if b < reps {
                        rc.counts[b] = std::array::from_fn(|c| counts[cell][c][j]);
                        rc.sum_p1[b] = sums[cell][j];
                    }
                }
            }
            out_m.insert(*key, rc);
        }
    }
    out
}

/// `put(weights4(seed, name_key, row_of(i), g))` into `out[i]` for every `i`: the rows
/// [`DRAW_LANES`] at a time through [`weights4_lanes`], built for AVX2 where the CPU has
/// it (the bootstrap tally's and COT's replicates' draws; the same words bit for bit).
pub fn draw_weights<T>(
    seed: u64,
    name_key: u32,
    g: u32,
    row_of: impl Fn(usize) -> u64,
    out: &mut [T],
    put: impl Fn([u32; REPS_PER_DRAW]) -> T,
) {
    with_avx2(
        #[inline(always)]
        || {
            let mut lanes = out.chunks_exact_mut(DRAW_LANES);
            let mut at = 0;
            for chunk in &mut lanes {
                let rows: [u64; DRAW_LANES] = std::array::from_fn(|l| row_of(at + l));
                for (o, x) in chunk
                    .iter_mut()
                    .zip(weights4_lanes(seed, name_key, rows, g))
                {
                    *o = put(x);
                }
                at += DRAW_LANES;
            }
            for (l, o) in lanes.into_remainder().iter_mut().enumerate() {
                *o = put(weights4(seed, name_key, row_of(at + l), g));
            }
        },
    )
}

/// One (mode, slot) cell's counters, counter-major with the draw group's four replicates
/// as lanes, so a row adds to all four at once (the compiler vectorises the lanes).
type Lanes = [[u64; REPS_PER_DRAW]; rep::LEN];

/// The four lanes' thresholds; an absent one (or a lane past the last replicate) is NaN,
/// which no comparison meets (the shader's `HAS_*` flags).
struct Thresholds {
    mc: [f32; REPS_PER_DRAW],
    ne: [f32; REPS_PER_DRAW],
    q: [f32; REPS_PER_DRAW],
}

impl Thresholds {
    fn new(lanes: [Option<&ReplicatePlan>; REPS_PER_DRAW]) -> Self {
        let of =
            |f: fn(&ReplicatePlan) -> Option<f32>| lanes.map(|l| l.and_then(f).unwrap_or(f32::NAN));
        Thresholds {
            mc: of(|p| p.atc_mc),
            ne: of(|p| p.atc_ne),
            q: of(|p| p.cpc_q),
        }
    }
}

/// A block of rows with their four lanes' weights.
struct BlockRows<'a, C: Fn(usize) -> usize> {
    rows: std::ops::Range<usize>,
    w: &'a [[u32; REPS_PER_DRAW]],
    labels: &'a [i32],
    yhat: &'a [u32],
    cell_of: C,
    /// The rows' cells change often (more than once in 8 rows).
    scattered: bool,
}

impl<C: Fn(usize) -> usize> BlockRows<'_, C> {
    /// Adds every row's weighted indicators to its cell; `stats(o, j)` is row `o`'s
    /// summary at lane j's temperature. What the shader adds, lane by lane.
    ///
    /// Indicators are all-ones masks ANDed with the weights, so a counter's four lanes
    /// are one vector compare, AND and add. Rows usually come in runs of one cell (a
    /// group's rows together, or no groups): then a run's counters stay in registers, in
    /// u32 lanes (a block's weights sum to at most BLOCK x MAX_WEIGHT), and go to the
    /// cell when the run ends. Where the block's cells change often (rows of many groups
    /// interleaved) each row goes straight to its cell instead: a run a row would cost
    /// a flush and a mispredicted branch a row.
    #[inline(always)]
    fn add<'s>(
        &self,
        th: &Thresholds,
        stats: impl Fn(usize, usize) -> &'s [f32; 5],
        counts: &mut [Lanes],
        sums: &mut [[u64; REPS_PER_DRAW]],
    ) {
        if self.scattered {
            self.add_rows::<false>(th, stats, counts, sums)
        } else {
            self.add_rows::<true>(th, stats, counts, sums)
        }
    }

    /// [`BlockRows::add`] by runs in registers (`RUNS`) or row by row into the cells.
    #[inline(always)]
    fn add_rows<'s, const RUNS: bool>(
        &self,
        th: &Thresholds,
        stats: impl Fn(usize, usize) -> &'s [f32; 5],
        counts: &mut [Lanes],
        sums: &mut [[u64; REPS_PER_DRAW]],
    ) {
        #[inline(always)]
        fn mask(c: bool) -> u32 {
            0u32.wrapping_sub(c as u32)
        }
        #[inline(always)]
        fn add32(c: &mut [u32; REPS_PER_DRAW], w: &[u32; REPS_PER_DRAW], m: [u32; REPS_PER_DRAW]) {
            for j in 0..REPS_PER_DRAW {
                c[j] += w[j] & m[j];
            }
        }
        #[inline(always)]
        fn add64(c: &mut [u64; REPS_PER_DRAW], w: &[u32; REPS_PER_DRAW], m: [u32; REPS_PER_DRAW]) {
            for j in 0..REPS_PER_DRAW {
                c[j] += (w[j] & m[j]) as u64;
            }
        }
        #[inline(always)]
        fn above(a: &[f32; REPS_PER_DRAW], b: &[f32; REPS_PER_DRAW]) -> [u32; REPS_PER_DRAW] {
            let mut m = [0u32; REPS_PER_DRAW];
            for j in 0..REPS_PER_DRAW {
                m[j] = mask(a[j] > b[j]);
            }
            m
        }
        #[inline(always)]
        fn equal(a: &[f32; REPS_PER_DRAW], b: &[f32; REPS_PER_DRAW]) -> [u32; REPS_PER_DRAW] {
            let mut m = [0u32; REPS_PER_DRAW];
            for j in 0..REPS_PER_DRAW {
                m[j] = mask(a[j] == b[j]);
            }
            m
        }
        // One row's lanes added to `$c` (counters) and `$s` (grid sums) by `$add`.
        macro_rules! add_row {
            ($c:expr, $s:expr, $add:ident, $w:expr, $o:expr, $i:expr) => {{
                let (w, o, i) = ($w, $o, $i);
                let y = self.labels[i];
                let known = mask(y >= 0);
                let correct = mask(self.yhat[i] as i32 == y);
                let (mut p1, mut ne) = ([0f32; REPS_PER_DRAW], [0f32; REPS_PER_DRAW]);
                let (mut r1, mut r2) = ([0f32; REPS_PER_DRAW], [0f32; REPS_PER_DRAW]);
                for j in 0..REPS_PER_DRAW {
                    let x = stats(o, j);
                    (p1[j], ne[j], r1[j], r2[j]) = (x[0], x[1], x[3], x[4]);
                }
                $add(&mut $c[rep::N], &w, [u32::MAX; REPS_PER_DRAW]);
                $add(&mut $c[rep::LABELLED], &w, [known; REPS_PER_DRAW]);
                $add(&mut $c[rep::CORRECT], &w, [correct; REPS_PER_DRAW]);
                $add(&mut $c[rep::MC_ABOVE], &w, above(&p1, &th.mc));
                $add(&mut $c[rep::MC_EQUAL], &w, equal(&p1, &th.mc));
                $add(&mut $c[rep::NE_ABOVE], &w, above(&ne, &th.ne));
                $add(&mut $c[rep::NE_EQUAL], &w, equal(&ne, &th.ne));
                // r1 <= q < r2 as not (r1 > q), and r2 > q: the same where q is a number
                // (summaries are never NaN), and 0 for a NaN q (no CPC threshold, or a
                // lane past the last replicate), as `r2 > NaN` is false.
                let (r1_above, r2_above) = (above(&r1, &th.q), above(&r2, &th.q));
                let mut cpc = [0u32; REPS_PER_DRAW];
                for j in 0..REPS_PER_DRAW {
                    cpc[j] = !r1_above[j] & r2_above[j];
                }
                $add(&mut $c[rep::CPC], &w, cpc);
                for j in 0..REPS_PER_DRAW {
                    $s[j] += w[j] as u64 * p1_to_grid(p1[j]);
                }
            }};
        }
        if !RUNS {
            for (o, i) in self.rows.clone().enumerate() {
                let w = self.w[o];
                if w == [0; REPS_PER_DRAW] {
                    continue;
                }
                let cell = (self.cell_of)(i);
                add_row!(counts[cell], sums[cell], add64, w, o, i);
            }
            return;
        }
        let mut run: Option<usize> = None;
        let mut c = [[0u32; REPS_PER_DRAW]; rep::LEN];
        let mut s = [0u64; REPS_PER_DRAW];
        let mut flush = |cell: usize,
                         c: &mut [[u32; REPS_PER_DRAW]; rep::LEN],
                         s: &mut [u64; REPS_PER_DRAW]| {
            for (d, x) in counts[cell].iter_mut().flatten().zip(c.iter().flatten()) {
                *d += *x as u64;
            }
            for (d, x) in sums[cell].iter_mut().zip(s.iter()) {
                *d += x;
            }
            *c = [[0; REPS_PER_DRAW]; rep::LEN];
            *s = [0; REPS_PER_DRAW];
        };
        for (o, i) in self.rows.clone().enumerate() {
            let w = self.w[o];
            if w == [0; REPS_PER_DRAW] {
                continue;
            }
            let cell = (self.cell_of)(i);
            if run != Some(cell) {
                if let Some(r) = run {
                    flush(r, &mut c, &mut s);
                }
                run = Some(cell);
            }
            add_row!(c, s, add32, w, o, i);
        }
        if let Some(r) = run {
            flush(r, &mut c, &mut s);
        }
    }
}
