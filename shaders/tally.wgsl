// tally.wgsl: the target tally on the device (DESIGN.md 3, "The pipeline"). One thread per
// row computes the row's summary (row_summary.wgsl, shared with row_stats.wgsl), then adds its counts to the u32 words of its slot (a (hospital, slide) pair,
// numbered by the host): through workgroup atomics when the whole workgroup is one slot
// (the usual case: rows of a slide come together), else straight to the slot's words.
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
    _pad0: u32,
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
@group(0) @binding(4) var<storage, read> slot_of_row: array<u32>;
@group(0) @binding(5) var<storage, read_write> words: array<atomic<u32>>;

var<workgroup> wg_words: array<atomic<u32>, MAX_WORDS>;
var<workgroup> wg_mixed: atomic<u32>;
var<workgroup> wg_mixed_all: u32;

// Adds (lo, hi) to the word pair at `i`, carrying out of the low word.
fn add_pair_wg(i: u32, lo: u32, hi: u32) {
    let old = atomicAdd(&wg_words[i], lo);
    let carry = select(0u, 1u, old + lo < old);
    if (hi + carry != 0u) {
        atomicAdd(&wg_words[i + 1u], hi + carry);
    }
}

fn add_pair(i: u32, lo: u32, hi: u32) {
    let old = atomicAdd(&words[i], lo);
    let carry = select(0u, 1u, old + lo < old);
    if (hi + carry != 0u) {
        atomicAdd(&words[i + 1u], hi + carry);
    }
}

fn add_word(i: u32, v: u32) {
    if (v != 0u) {
        atomicAdd(&words[i], v);
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroups of a 2-D grid: the whole workgroup leaves together.
    if (g >= params.num_wgs) {
        return;
    }
    let n_alpha = params.n_alpha;
    let nwords = HEAD + PER_LEVEL * n_alpha;
    for (var i = lid; i < nwords; i += WG) {
        atomicStore(&wg_words[i], 0u);
    }
    if (lid == 0u) {
        atomicStore(&wg_mixed, 0u);
    }
    let row = g * WG + lid;
    let live = row < params.rows;
    // The workgroup's first row always exists (g < num_wgs).
    var slot = 0u;
    var first_slot = 0u;
    if (params.one_slot == 0u) {
        first_slot = slot_of_row[g * WG];
        if (live) {
            slot = slot_of_row[row];
        }
    }
    workgroupBarrier();
    if (live && slot != first_slot) {
        atomicStore(&wg_mixed, 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        wg_mixed_all = atomicLoad(&wg_mixed);
    }
    let mixed = workgroupUniformLoad(&wg_mixed_all) != 0u;

    var c_labelled = 0u;
    var c_correct = 0u;
    var c_mc_above = 0u;
    var c_mc_equal = 0u;
    var c_ne_above = 0u;
    var c_ne_equal = 0u;
    var c_cpc = 0u;
    var grid = vec2<u32>(0u, 0u);
    var lac = -1.0;
    let base = slot * nwords;
    if (live) {
        var sizes: array<u32, MAX_LEVELS>;
        let sum = row_summary(row, params.t, &sizes);
        let p1 = sum.p1;
        let ne = sum.ne;
        let r1 = sum.r1;
        let r2 = sum.r2;
        let y = sum.y;
        let arg = sum.arg;
        lac = sum.lac;
        let f = params.flags;
        c_labelled = select(0u, 1u, y >= 0);
        c_correct = select(0u, 1u, i32(arg) == y);
        if ((f & HAS_MC) != 0u) {
            c_mc_above = select(0u, 1u, p1 > params.t_mc);
            c_mc_equal = select(0u, 1u, p1 == params.t_mc);
        }
        if ((f & HAS_NE) != 0u) {
            c_ne_above = select(0u, 1u, ne > params.t_ne);
            c_ne_equal = select(0u, 1u, ne == params.t_ne);
        }
        if ((f & HAS_CPC) != 0u) {
            c_cpc = select(0u, 1u, r1 <= params.q_cpc && params.q_cpc < r2);
        }
        grid = p1_grid(p1);

        let counts = array<u32, 7>(c_labelled, c_correct, c_mc_above, c_mc_equal,
                                   c_ne_above, c_ne_equal, c_cpc);
        if (!mixed) {
            atomicAdd(&wg_words[0], 1u);
            for (var i = 0u; i < 7u; i++) {
                if (counts[i] != 0u) {
                    atomicAdd(&wg_words[1u + i], counts[i]);
                }
            }
            add_pair_wg(8u, grid.x, grid.y);
        } else {
            add_word(base, 1u);
            for (var i = 0u; i < 7u; i++) {
                add_word(base + 1u + i, counts[i]);
            }
            add_pair(base + 8u, grid.x, grid.y);
        }
        for (var a = 0u; a < n_alpha; a++) {
            let q = qhats[a];
            let size = sizes[a];
            let w = HEAD + PER_LEVEL * a;
            let single = select(0u, 1u, size == 1u);
            let empty = select(0u, 1u, size == 0u);
            let covered = select(0u, 1u, y >= 0 && lac <= q);
            if (!mixed) {
                add_pair_wg(w, size, 0u);
                if (single != 0u) { atomicAdd(&wg_words[w + 2u], 1u); }
                if (empty != 0u) { atomicAdd(&wg_words[w + 3u], 1u); }
                if (covered != 0u) { atomicAdd(&wg_words[w + 4u], 1u); }
            } else {
                add_pair(base + w, size, 0u);
                add_word(base + w + 2u, single);
                add_word(base + w + 3u, empty);
                add_word(base + w + 4u, covered);
            }
        }
    }
    workgroupBarrier();
    if (mixed) {
        return;
    }
    // One workgroup, one slot: its totals go to the slot's words, pairs by one thread each.
    let fbase = first_slot * nwords;
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
