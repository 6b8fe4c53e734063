//! The target tally on the device (shaders/tally.wgsl; contract and decoding:
//! kernel::tally). A [`DeviceTally`] is one target's running tally in one mode: its words
//! stay on the device across the target's chunks and come back once, in
//! [`DeviceTally::finish`], so what crosses the bus per target is `slots x words` u32s,
//! whatever the target's size.

use super::buffers::DeviceRows;
use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernel::loop_budget;
use crate::kernel::row_stats::{pipeline_constants, INF_QHAT, MAX_ALPHA_PER_PASS};
use crate::kernel::tally::{
    counts_from_device, device_words, tally_lanes, tile_rows, PairCounts, SlotMap, TallyParams,
    TallyPlan, TALLY_HAS_CPC, TALLY_HAS_MC, TALLY_HAS_NE, TALLY_ROWS_PER_THREAD,
};

/// The tally pipeline's override constants for rows of `k` classes and `levels` levels:
/// the row summary's shape, and the threads a row: [`GpuOptions::tally_lanes`] when set,
/// else a team of lanes for large K on hardware adapters (coalesced reads; on a CPU
/// rasteriser its barriers cost more than they save, so one thread a row there), and one
/// thread a row when the context runs generic pipelines.
///
/// [`GpuOptions::tally_lanes`]: super::GpuOptions::tally_lanes
pub fn tally_constants(ctx: &GpuContext, k: usize, levels: usize) -> [(&'static str, u32); 3] {
    // The team kernel needs K >= TALLY_LANES_MIN_K (every lane has classes; integer
    // class sums), forced or not.
    let lanes = match (ctx.specialises_pipelines(), ctx.forced_tally_lanes()) {
        (false, _) => 1,
        (true, Some(lanes)) => lanes.min(tally_lanes(k)),
        (true, None) if !ctx.quirks().team_lanes => 1,
        (true, None) => tally_lanes(k),
    };
    let [classes, levels] = pipeline_constants(k, levels);
    [classes, levels, ("LANES", lanes)]
}

/// Rows a tally thread takes: [`TALLY_ROWS_PER_THREAD`] (fewer when a test caps the tile),
/// and few enough to stay within the adapter's loop cap; an error when one row passes it.
fn rows_per_thread(ctx: &GpuContext, k: usize, levels: usize, lanes: u32) -> Result<u32> {
    let wanted = TALLY_ROWS_PER_THREAD
        .min(ctx.limits().max_tile_blocks)
        .max(1);
    let rpt = loop_budget::tally_rows_per_thread(wanted, ctx.loop_limit(), k, levels, lanes);
    rpt.ok_or_else(|| {
        let one_row =
            loop_budget::tally_tile_loops(levels) + loop_budget::tally_row_loops(k, levels, lanes);
        ctx.loop_cap_error("tally", k, one_row)
    })
}

/// Slots the word buffer holds at first; it doubles (on the device) when a target has more.
const FIRST_CAPACITY: usize = 64;

/// One target's running tally in one mode, resident on the device.
pub struct DeviceTally {
    n_alpha: usize,
    slots: SlotMap,
    capacity: usize,
    words: Option<wgpu::Buffer>,
}

impl DeviceTally {
    /// An empty tally for `n_alpha` levels (at most [`MAX_ALPHA_PER_PASS`]).
    pub fn new(n_alpha: usize) -> Result<Self> {
        if n_alpha > MAX_ALPHA_PER_PASS {
            return Err(Error::Invalid(format!(
                "the device tally takes at most {MAX_ALPHA_PER_PASS} levels, got {n_alpha}"
            )));
        }
        Ok(DeviceTally {
            n_alpha,
            slots: SlotMap::default(),
            capacity: 0,
            words: None,
        })
    }

    /// Makes room for `slots` slots, keeping the words counted so far.
    fn reserve(&mut self, ctx: &GpuContext, slots: usize) -> Result<()> {
        if slots <= self.capacity && self.words.is_some() {
            return Ok(());
        }
        let mut capacity = self.capacity.max(FIRST_CAPACITY);
        while capacity < slots {
            capacity *= 2;
        }
        let per = device_words(self.n_alpha) as u64 * 4;
        // Fresh slots start at 0 (an accumulator: never a poisoned test buffer).
        let bigger = ctx.zeroed("tally-words", capacity as u64 * per)?;
        if let Some(old) = &self.words {
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("tally-grow"),
                });
            enc.copy_buffer_to_buffer(old, 0, &bigger, 0, self.capacity as u64 * per);
            let idx = ctx.queue.submit(Some(enc.finish()));
            ctx.count_submission();
            ctx.wait(idx)?;
        }
        self.words = Some(bigger);
        self.capacity = capacity;
        Ok(())
    }

    /// Counts every row of `rows` (a prepared chunk) into the device words.
    pub fn add(&mut self, ctx: &GpuContext, rows: &DeviceRows, plan: &TallyPlan<'_>) -> Result<()> {
        if plan.qhats.len() != self.n_alpha {
            return Err(Error::Invalid(format!(
                "tally plan has {} levels, the tally {}",
                plan.qhats.len(),
                self.n_alpha
            )));
        }
        if rows.n == 0 {
            return Ok(());
        }
        // Rows carry chunk slots (first appearance in the chunk, as the bootstrap numbers
        // them: one upload serves both modes and the bootstrap); a small map takes each
        // chunk slot to the target's slot, numbered across chunks.
        let mut chunk_slots = SlotMap::default();
        let slot_ids = chunk_slots.assign(plan.groups, rows.n);
        let slot_map: Vec<u32> = chunk_slots
            .keys
            .iter()
            .map(|&key| self.slots.slot(key))
            .collect();
        self.reserve(ctx, self.slots.keys.len())?;
        let words = self
            .words
            .as_ref()
            .ok_or_else(|| Error::Gpu("no tally words".into()))?;
        let constants = tally_constants(ctx, rows.k, plan.qhats.len());
        let lanes = constants[2].1;
        // Before any upload: a row past the adapter's loop cap is refused, not miscounted.
        // Tiles of `rpt` blocks of WG / lanes rows (fewer when a test caps the tile, or
        // the adapter caps loop iterations per invocation).
        let rpt = rows_per_thread(ctx, rows.k, self.n_alpha, lanes)?;
        let pipeline = ctx.specialized_pipeline("tally", &constants)?;
        let q: Vec<f32> = plan.qhats.iter().map(|q| q.unwrap_or(INF_QHAT)).collect();
        let qhats = ctx.upload("tally-qhats", &q)?;
        let mut flags = 0;
        for (on, bit) in [
            (plan.atc_mc.is_some(), TALLY_HAS_MC),
            (plan.atc_ne.is_some(), TALLY_HAS_NE),
            (plan.cpc_q.is_some(), TALLY_HAS_CPC),
        ] {
            if on {
                flags |= bit;
            }
        }
        let slot_buffers = match &slot_ids {
            Some(ids) => Some(rows.slot_buffers(ctx, "slot-ids", ids)?),
            None => None,
        };
        let slot_map = ctx.upload("tally-slot-map", &slot_map)?;
        for (c, (_, n, logits, labels)) in rows.chunks.iter().enumerate() {
            let slots = match &slot_buffers {
                Some(b) => b[c].clone(),
                None => ctx.storage("tally-slots", 4)?,
            };
            let groups = (*n as u64).div_ceil(tile_rows(rpt, lanes));
            let params = ctx.uniform(
                "tally-params",
                &TallyParams {
                    rows: *n as u32,
                    k: rows.k as u32,
                    t: plan.t,
                    n_alpha: self.n_alpha as u32,
                    t_mc: plan.atc_mc.unwrap_or(0.0),
                    t_ne: plan.atc_ne.unwrap_or(0.0),
                    q_cpc: plan.cpc_q.unwrap_or(0.0),
                    flags,
                    num_wgs: groups as u32,
                    slots: self.capacity as u32,
                    one_slot: slot_ids.is_none() as u32,
                    rows_per_thread: rpt,
                },
            );
            let mut batch = ctx.batch("tally");
            batch.dispatch(
                &pipeline,
                &[
                    params.as_entire_binding(),
                    logits.as_entire_binding(),
                    labels.as_entire_binding(),
                    qhats.as_entire_binding(),
                    slots.as_entire_binding(),
                    words.as_entire_binding(),
                    slot_map.as_entire_binding(),
                ],
                groups,
            )?;
            batch.submit()?;
        }
        Ok(())
    }

    /// Reads the words back (once) and decodes them per (hospital, slide) pair.
    pub fn finish(self, ctx: &GpuContext) -> Result<PairCounts> {
        let mut out = PairCounts::new();
        let Some(words) = &self.words else {
            return Ok(out);
        };
        let per = device_words(self.n_alpha);
        let used = self.slots.keys.len();
        let all: Vec<u32> = ctx.readback(words, 0, used * per)?;
        for (key, w) in self.slots.keys.iter().zip(all.chunks_exact(per)) {
            let c = counts_from_device(w, self.n_alpha);
            if c.n() > 0 {
                out.insert(*key, c);
            }
        }
        Ok(out)
    }
}
