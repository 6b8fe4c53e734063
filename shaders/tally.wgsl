// tally.wgsl: the target tally on the device (DESIGN.md 3, "The pipeline"). A team of
// LANES threads (1, or 32 for large K: row_summary_lanes.wgsl) takes `rows_per_thread`
// rows, computes each row's summary (row_summary.wgsl, shared with row_stats.wgsl), and
// its lane 0 adds the row's counts to the u32 words of its slot (a (hospital, slide)
// pair, numbered by the host): summed in registers, then through workgroup atomics, when
// the workgroup's whole tile is one slot (the usual case: rows of a slide come together),
// else row by row straight to the slot's words.
// The words stay on the device across a target's chunks; the host reads them back once.
// Two sums (of p_(1) on the 2^-40 grid, of set sizes) are (low, high) word pairs with an
// explicit carry, so every count is an exact integer and partials merge in any order.
// Contract and host decoding: src/kernel/tally.rs. CPU mirror: the host tally of the same
// row statistics (kernel::tally::count_block), which these words equal.

// Keep in sync with `TallyParams` in src/kernel/tally.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    n_alpha: u32,
    t_mc: f32,
    t_ne: f32,
    q_cpc: f32,
    flags: u32,
    num_wgs: u32,
    slots: u32,
    one_slot: u32,
    rows_per_thread: u32,
}

// Keep in sync with `TALLY_HAS_*`, `DEVICE_HEAD`, `DEVICE_PER_LEVEL` in src/kernel/tally.rs.
const HAS_MC: u32 = 1u;
const HAS_NE: u32 = 2u;
const HAS_CPC: u32 = 4u;
const HEAD: u32 = 10u;
const PER_LEVEL: u32 = 5u;
// Words of one slot at most: 31 levels (MAX_ALPHA_PER_PASS).
const MAX_WORDS: u32 = 165u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// n_alpha thresholds (+inf is passed as 2.0: every 1 - p_k <= 1 < 2).
@group(0) @binding(3) var<storage, read> qhats: array<f32>;
// Each row's slot in this chunk (numbered by first appearance in the chunk: the ids the
// bootstrap kernel reads too, uploaded once), and each chunk slot's slot in the target's
// words (the tally's numbering, kept across chunks).
@group(0) @binding(4) var<storage, read> slot_of_row: array<u32>;
@group(0) @binding(5) var<storage, read_write> words: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> slot_map: array<u32>;

var<workgroup> wg_words: array<atomic<u32>, MAX_WORDS>;
var<workgroup> wg_mixed: atomic<u32>;
var<workgroup> wg_mixed_all: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroups of a 2-D grid: the whole workgroup leaves together.
    if (g >= params.num_wgs) {
        return;
    }
    let n_alpha = row_levels();
    let nwords = HEAD + PER_LEVEL * n_alpha;
    for (var i = lid; i < nwords; i += WG) {
        atomicStore(&wg_words[i], 0u);
    }
    if (lid == 0u) {
        atomicStore(&wg_mixed, 0u);
    }
    // A workgroup takes a tile of `rpt` blocks of `teams` rows; team `lid / LANES` takes
    // row `lid / LANES` of each block (with LANES = 1, thread `lid` takes row `lid`: coalesced
    // reads; with LANES = 32 a team's lanes read one row's logits side by side).
    let rpt = params.rows_per_thread;
    let teams = WG / LANES;
    let tile_rows = rpt * teams;
    let tile = g * tile_rows;
    // The tile's first row always exists (g < num_wgs).
    var first_slot = 0u;
    if (params.one_slot == 0u) {
        first_slot = slot_of_row[tile];
    }
    workgroupBarrier();
    if (params.one_slot == 0u) {
        for (var i = lid; i < tile_rows; i += WG) {
            let row = tile + i;
            if (row < params.rows && slot_of_row[row] != first_slot) {
                atomicStore(&wg_mixed, 1u);
            }
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        wg_mixed_all = atomicLoad(&wg_mixed);
    }
    let mixed = workgroupUniformLoad(&wg_mixed_all) != 0u;

    // Counts of this thread's rows, in registers: one atomic per counter per thread, not
    // per row (atomics dominate on a software rasteriser, contend on hardware). Used when
    // the whole tile is one slot; a mixed tile adds row by row to each row's slot.
    // Every sum here is below 2^32 (rpt <= 16 rows) but the grid sum, kept as a pair.
    var c = array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
    var grid_sum = vec2<u32>(0u, 0u);
    var lv_size: array<u32, MAX_LEVELS>;
    var lv_single: array<u32, MAX_LEVELS>;
    var lv_empty: array<u32, MAX_LEVELS>;
    var lv_covered: array<u32, MAX_LEVELS>;
    for (var a = 0u; a < n_alpha; a++) {
        lv_size[a] = 0u;
        lv_single[a] = 0u;
        lv_empty[a] = 0u;
        lv_covered[a] = 0u;
    }
    let f = params.flags;
    for (var r = 0u; r < rpt; r++) {
        // The same for the whole workgroup (teams take the barriers of row_summary_lanes).
        if (tile + r * teams >= params.rows) {
            break;
        }
        let row = tile + r * teams + lid / LANES;
        let valid = row < params.rows;
        var sizes: array<u32, MAX_LEVELS>;
        var sum: RowSummary;
        // Whether this thread counts `row`: no non-uniform `continue` here, so the
        // barriers of the next row_summary_lanes stay in uniform control flow.
        var counted = valid;
        if (LANES == 1u) {
            if (valid) {
                sum = row_summary(row, params.t, &sizes);
            }
        } else {
            sum = row_summary_lanes(row, valid, lid, params.t, &sizes);
            // Lane 0 holds the team's summary and counts it.
            counted = valid && lid % LANES == 0u;
        }
        if (counted) {
            let y = sum.y;
            var rc = array<u32, 8>(1u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
            rc[1] = select(0u, 1u, y >= 0);
            rc[2] = select(0u, 1u, i32(sum.arg) == y);
            if ((f & HAS_MC) != 0u) {
                rc[3] = select(0u, 1u, sum.p1 > params.t_mc);
                rc[4] = select(0u, 1u, sum.p1 == params.t_mc);
            }
            if ((f & HAS_NE) != 0u) {
                rc[5] = select(0u, 1u, sum.ne > params.t_ne);
                rc[6] = select(0u, 1u, sum.ne == params.t_ne);
            }
            if ((f & HAS_CPC) != 0u) {
                rc[7] = select(0u, 1u, sum.r1 <= params.q_cpc && params.q_cpc < sum.r2);
            }
            let grid = p1_grid(sum.p1);
            if (mixed) {
                let base = slot_map[slot_of_row[row]] * nwords;
                for (var i = 0u; i < 8u; i++) {
                    add_word(base + i, rc[i]);
                }
                add_pair(base + 8u, grid.x, grid.y);
                for (var a = 0u; a < n_alpha; a++) {
                    let size = sizes[a];
                    let w = base + HEAD + PER_LEVEL * a;
                    add_pair(w, size, 0u);
                    add_word(w + 2u, select(0u, 1u, size == 1u));
                    add_word(w + 3u, select(0u, 1u, size == 0u));
                    add_word(w + 4u, select(0u, 1u, y >= 0 && sum.lac <= qhats[a]));
                }
            } else {
                for (var i = 0u; i < 8u; i++) {
                    c[i] += rc[i];
                }
                let lo = grid_sum.x + grid.x;
                grid_sum = vec2<u32>(lo, grid_sum.y + grid.y + select(0u, 1u, lo < grid.x));
                for (var a = 0u; a < n_alpha; a++) {
                    let size = sizes[a];
                    lv_size[a] += size;
                    lv_single[a] += select(0u, 1u, size == 1u);
                    lv_empty[a] += select(0u, 1u, size == 0u);
                    lv_covered[a] += select(0u, 1u, y >= 0 && sum.lac <= qhats[a]);
                }
            }
        }
    }
    if (!mixed) {
        for (var i = 0u; i < 8u; i++) {
            if (c[i] != 0u) {
                atomicAdd(&wg_words[i], c[i]);
            }
        }
        add_pair_wg(8u, grid_sum.x, grid_sum.y);
        for (var a = 0u; a < n_alpha; a++) {
            let w = HEAD + PER_LEVEL * a;
            add_pair_wg(w, lv_size[a], 0u);
            if (lv_single[a] != 0u) { atomicAdd(&wg_words[w + 2u], lv_single[a]); }
            if (lv_empty[a] != 0u) { atomicAdd(&wg_words[w + 3u], lv_empty[a]); }
            if (lv_covered[a] != 0u) { atomicAdd(&wg_words[w + 4u], lv_covered[a]); }
        }
    }
    workgroupBarrier();
    if (mixed) {
        return;
    }
    // One tile, one slot: its totals go to the slot's words, pairs by one thread each.
    let fbase = slot_map[first_slot] * nwords;
    for (var i = lid; i < nwords; i += WG) {
        let is_pair_lo = i == 8u || (i >= HEAD && (i - HEAD) % PER_LEVEL == 0u);
        let is_pair_hi = i == 9u || (i >= HEAD && (i - HEAD) % PER_LEVEL == 1u);
        if (is_pair_lo) {
            add_pair(fbase + i, atomicLoad(&wg_words[i]), atomicLoad(&wg_words[i + 1u]));
        } else if (!is_pair_hi) {
            add_word(fbase + i, atomicLoad(&wg_words[i]));
        }
    }
}
