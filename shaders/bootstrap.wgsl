// bootstrap.wgsl: every Poisson-bootstrap replicate's weighted counts of one chunk in both
// modes (DESIGN.md 2.12). The grid is (row workgroups) x (draw groups of four replicates),
// flattened: a thread takes one row and one draw group, draws the row's four weights with
// one Philox4x32-10 call keyed by (seed, set name, the row's index in its set, group), so
// weights are made here and never stored, and adds weight x indicator for each of the
// four replicates in each mode (the row summary at the replicate's temperature,
// recomputed only when it changes: once for `raw`). Sums go through workgroup atomics when the workgroup's rows
// are one slot, else straight to the slot's words. The host zeroes the words per dispatch
// and reads them back (at most 2^18 rows a dispatch: every word stays exact in u32).
// Contract, weights and decoding: src/kernel/bootstrap.rs. CPU mirror:
// src/cpu/bootstrap.rs. POISSON_CDF and REP_WORDS are generated from the contract.

// Keep in sync with `BootstrapParams` in src/kernel/bootstrap.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    n_alpha: u32,
    reps: u32,
    row_wgs: u32,
    num_wgs: u32,
    one_slot: u32,
    row_offset_lo: u32,
    row_offset_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    name_key: u32,
    slots: u32,
    first: u32,
    _pad: u32,
}

// Keep in sync with `TALLY_HAS_*` (src/kernel/tally.rs) and `PLAN_WORDS`.
const HAS_MC: u32 = 1u;
const HAS_NE: u32 = 2u;
const HAS_CPC: u32 = 4u;
const PLAN_WORDS: u32 = 5u;
const PER_DRAW: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// Unused (n_alpha = 0), but the shared row summary names it.
@group(0) @binding(3) var<storage, read> qhats: array<f32>;
@group(0) @binding(4) var<storage, read> slot_of_row: array<u32>;
// Per mode, then replicate: t, t_mc, t_ne, q_cpc (f32 bits) and flags.
@group(0) @binding(5) var<storage, read> plans: array<u32>;
// (mode, slot, replicate, REP_WORDS) words.
@group(0) @binding(6) var<storage, read_write> words: array<atomic<u32>>;

// (mode, replicate of the draw group, REP_WORDS).
var<workgroup> wg_words: array<atomic<u32>, 80>;
var<workgroup> wg_mixed: atomic<u32>;
var<workgroup> wg_mixed_all: u32;

// (high, low) words of the 64-bit product a * b, from 16-bit halves (WGSL has no u64).
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let ll = a0 * b0;
    let lh = a0 * b1;
    let hl = a1 * b0;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = a1 * b1 + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

// Philox4x32-10. Keep in sync with `philox4x32_10`.
fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let p0 = mul_hi_lo(0xD2511F53u, c.x);
        let p1 = mul_hi_lo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

// Poisson(1) by inversion. Keep in sync with `poisson_weight`.
fn poisson(u: u32) -> u32 {
    var cdf = POISSON_CDF;
    var w = 0u;
    for (var j = 0u; j < 12u; j++) {
        w += select(0u, 1u, u >= cdf[j]);
    }
    return w;
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
    let row_wg = g % params.row_wgs;
    let draw = g / params.row_wgs;
    for (var i = lid; i < MODES * PER_DRAW * REP_WORDS; i += WG) {
        atomicStore(&wg_words[i], 0u);
    }
    if (lid == 0u) {
        atomicStore(&wg_mixed, 0u);
    }
    let local = row_wg * WG + lid;
    let live = local < params.rows;
    let row = params.first + local;
    var slot = 0u;
    var first_slot = 0u;
    if (params.one_slot == 0u) {
        // The workgroup's first row always exists (row_wg < row_wgs).
        first_slot = slot_of_row[params.first + row_wg * WG];
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

    if (live) {
        // The row's index in its set, 64-bit.
        let idx_lo = params.row_offset_lo + local;
        let idx_hi = params.row_offset_hi + select(0u, 1u, idx_lo < local);
        let u = philox(vec4<u32>(idx_lo, idx_hi, draw, params.name_key),
                       vec2<u32>(params.seed_lo, params.seed_hi));
        let y = labels[row];
        var sizes: array<u32, MAX_LEVELS>;
        var t_cur = -1.0;
        var sum = RowSummary(0.0, 0.0, 0.0, 0.0, 0.0, 0u, -1);
        for (var mj = 0u; mj < MODES * PER_DRAW; mj++) {
            let m = mj / PER_DRAW;
            let j = mj % PER_DRAW;
            let b = draw * PER_DRAW + j;
            if (b >= params.reps) {
                continue;
            }
            let w = poisson(u[j]);
            if (w == 0u) {
                continue;
            }
            let pb = (m * params.reps + b) * PLAN_WORDS;
            let t = bitcast<f32>(plans[pb]);
            if (t != t_cur) {
                sum = row_summary(row, t, &sizes);
                t_cur = t;
            }
            let t_mc = bitcast<f32>(plans[pb + 1u]);
            let t_ne = bitcast<f32>(plans[pb + 2u]);
            let q = bitcast<f32>(plans[pb + 3u]);
            let f = plans[pb + 4u];
            var c = array<u32, 8>(w, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
            c[1] = select(0u, w, y >= 0);
            c[2] = select(0u, w, i32(sum.arg) == y);
            if ((f & HAS_MC) != 0u) {
                c[3] = select(0u, w, sum.p1 > t_mc);
                c[4] = select(0u, w, sum.p1 == t_mc);
            }
            if ((f & HAS_NE) != 0u) {
                c[5] = select(0u, w, sum.ne > t_ne);
                c[6] = select(0u, w, sum.ne == t_ne);
            }
            if ((f & HAS_CPC) != 0u) {
                c[7] = select(0u, w, sum.r1 <= q && q < sum.r2);
            }
            // w x (grid low, grid high): the grid value is below 2^40, w below 16.
            let grid = p1_grid(sum.p1);
            let lo = mul_hi_lo(grid.x, w);
            let wlo = lo.y;
            let whi = grid.y * w + lo.x;
            if (!mixed) {
                let base = mj * REP_WORDS;
                for (var i = 0u; i < 8u; i++) {
                    if (c[i] != 0u) {
                        atomicAdd(&wg_words[base + i], c[i]);
                    }
                }
                add_pair_wg(base + 8u, wlo, whi);
            } else {
                let base = ((m * params.slots + slot) * params.reps + b) * REP_WORDS;
                for (var i = 0u; i < 8u; i++) {
                    add_word(base + i, c[i]);
                }
                add_pair(base + 8u, wlo, whi);
            }
        }
    }
    workgroupBarrier();
    if (mixed) {
        return;
    }
    // One workgroup, one slot: its totals go to the slot's words, pairs by one thread each.
    for (var i = lid; i < MODES * PER_DRAW * REP_WORDS; i += WG) {
        let mj = i / REP_WORDS;
        let m = mj / PER_DRAW;
        let word = i % REP_WORDS;
        let b = draw * PER_DRAW + mj % PER_DRAW;
        if (b < params.reps) {
            let base = ((m * params.slots + first_slot) * params.reps + b) * REP_WORDS;
            if (word == 8u) {
                add_pair(base + 8u, atomicLoad(&wg_words[i]), atomicLoad(&wg_words[i + 1u]));
            } else if (word < 8u) {
                add_word(base + word, atomicLoad(&wg_words[i]));
            }
        }
    }
}
