//! CPU mirror of shaders/tally.wgsl: the device words of a chunk (slot-major, the layout
//! of kernel::tally) from its row statistics and slot ids, so a test can compare the
//! device's words with the host's word for word. The CPU path itself counts with
//! kernel::tally::count_block (the same rule, in pairs rather than words).

use crate::kernel::row_stats::RowStats;
use crate::kernel::tally::{device_words, TallyPlan, DEVICE_HEAD, DEVICE_PER_LEVEL};

/// Adds the chunk's rows into `words` (`slots x device_words(A)` u32s), as the shader
/// does: 32-bit counters, the two sums as (low, high) pairs with carry. `slots` are the
/// rows' chunk slots (`None`: every row in chunk slot 0) and `slot_map` each chunk
/// slot's slot in `words`, the shader's two bindings.
pub fn tally_words(
    stats: &RowStats,
    slots: Option<&[u32]>,
    slot_map: &[u32],
    plan: &TallyPlan<'_>,
    words: &mut [u32],
) {
    let a_n = plan.qhats.len();
    let per = device_words(a_n);
    let add_pair = |w: &mut [u32], i: usize, v: u64| {
        let total = (w[i] as u64 | (w[i + 1] as u64) << 32) + v;
        w[i] = total as u32;
        w[i + 1] = (total >> 32) as u32;
    };
    for i in 0..stats.len() {
        let slot = slot_map[slots.map_or(0, |s| s[i]) as usize] as usize;
        let w = &mut words[slot * per..(slot + 1) * per];
        let [p1, ne, lac, r1, r2] = stats.stats[i];
        let y = plan.labels[i];
        let flags = [
            1,
            (y >= 0) as u32,
            (stats.yhat(i) as i32 == y) as u32,
            plan.atc_mc.is_some_and(|t| p1 > t) as u32,
            plan.atc_mc.is_some_and(|t| p1 == t) as u32,
            plan.atc_ne.is_some_and(|t| ne > t) as u32,
            plan.atc_ne.is_some_and(|t| ne == t) as u32,
            plan.cpc_q.is_some_and(|q| r1 <= q && q < r2) as u32,
        ];
        for (d, f) in w.iter_mut().zip(flags) {
            *d = d.wrapping_add(f);
        }
        add_pair(w, 8, crate::kernel::tally::p1_to_grid(p1));
        for a in 0..a_n {
            let q = plan.qhats[a].unwrap_or(f32::INFINITY);
            let size = stats.set_size(i, a);
            let b = DEVICE_HEAD + DEVICE_PER_LEVEL * a;
            add_pair(w, b, size as u64);
            w[b + 2] += (size == 1) as u32;
            w[b + 3] += (size == 0) as u32;
            w[b + 4] += (y >= 0 && lac <= q) as u32;
        }
    }
}
