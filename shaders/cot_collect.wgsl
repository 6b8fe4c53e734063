// cot_collect.wgsl: COT's collect pass at K > 2 (DESIGN.md 2.11; methods::cot_dual's
// round 2) over a set's probabilities at a dual point g with per-class bands.
// Each row's values V_b = c_b - g_b + 2^51 (costs 1 - p on the 2^-40 grid from the f32
// bits, grid_sums.wgsl; |g| <= 2^50, so 0 <= V < 2^53) pick its best class a (least V,
// lowest index on ties). The row is fixed at a when every other class b has
// V_b - V_a >= E_max(a, b) (E = the band + 1, clamped: the host's `> band`), else free.
// Mode COLLECT adds sum V_a (96 bits), per class the fixed rows and their costs c_a
// (96 bits), the per-pair high words of the least slack S = c_b - c_a + 2^40 of the
// fixed rows at a (stored inverted, 0xffffffff - hi, so zeroed words mean "none" and
// the least is an atomicMax), and appends every free row's index to `free_rows`. Mode
// SLACK_LOW, dispatched after COLLECT over the same rows, takes the low words of the
// rows whose high word is the least (inverted too): a 64-bit minimum in two 32-bit
// steps. Integers only, so workgroups and chunks add in any order to the same bits
// (but the order of `free_rows`, which the host sorts). Contract: src/kernel/cot_collect.rs.
// CPU mirror: src/cpu/cot_collect.rs.

// Keep in sync with `CollectParams` in src/kernel/cot_collect.rs.
struct Params {
    rows: u32,
    k: u32,
    ipt: u32,
    mode: u32,
}

// Keep in sync with src/kernel/cot_collect.rs.
const MODE_COLLECT: u32 = 0u;
const MAXK: u32 = 256u;
const W_DUAL: u32 = 0u;
const W_FREE: u32 = 3u;
const W_ROWS: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
// rows x k probabilities (f32 bits), finite in [0, 1] (checked on the host).
@group(0) @binding(1) var<storage, read> probs: array<u32>;
// Per class: G = 2^51 - g (lo, hi), then E = clamp(band + 1, 0, 2^54) (lo, hi).
@group(0) @binding(2) var<storage, read> classes: array<u32>;
// Accumulators (start at zero): src/kernel/cot_collect.rs's `word` layout.
@group(0) @binding(3) var<storage, read_write> out: array<atomic<u32>>;
// The free rows' indices (the first `out[W_FREE]` words are written).
@group(0) @binding(4) var<storage, read_write> free_rows: array<u32>;

// wsum[0..3): sum V_a; wsum[3 + 3a ..]: class a's fixed cost (grid_sums.wgsl's adders).
var<workgroup> wsum: array<atomic<u32>, 771>;
var<workgroup> wrows: array<atomic<u32>, 256>;

fn less64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// a - b for a >= b.
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, b.x > a.x));
}

fn class_g(b: u32) -> vec2<u32> {
    return vec2<u32>(classes[4u * b], classes[4u * b + 1u]);
}

fn class_e(b: u32) -> vec2<u32> {
    return vec2<u32>(classes[4u * b + 2u], classes[4u * b + 3u]);
}

// Row i's best class, or MAXK + best when the row is free.
fn classify(i: u32) -> u32 {
    let k = params.k;
    var best = 0u;
    var vbest = add64(cost(probs[i * k]), class_g(0u));
    for (var b = 1u; b < k; b++) {
        let v = add64(cost(probs[i * k + b]), class_g(b));
        if (less64(v, vbest)) {
            vbest = v;
            best = b;
        }
    }
    let ea = class_e(best);
    for (var b = 0u; b < k; b++) {
        if (b == best) {
            continue;
        }
        let diff = sub64(add64(cost(probs[i * k + b]), class_g(b)), vbest);
        let eb = class_e(b);
        var need = ea;
        if (less64(ea, eb)) {
            need = eb;
        }
        if (less64(diff, need)) {
            return MAXK + best;
        }
    }
    return best;
}

// The biased slack c_b - c_a + 2^40 of row i (in [0, 2^41]).
fn slack(i: u32, a: u32, b: u32) -> vec2<u32> {
    let k = params.k;
    return sub64(add64(cost(probs[i * k + b]), vec2<u32>(0u, 0x100u)), cost(probs[i * k + a]));
}

fn slack_hi_word(a: u32, b: u32) -> u32 {
    let k = params.k;
    return W_ROWS + 4u * k + a * k + b;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    let tile = params.ipt * WG;
    if (g >= groups_of(params.rows, tile)) {
        return;
    }
    let k = params.k;
    let collect = params.mode == MODE_COLLECT;
    if (collect) {
        for (var w = lid; w < 3u + 3u * k; w += WG) {
            atomicStore(&wsum[w], 0u);
        }
        for (var a = lid; a < k; a += WG) {
            atomicStore(&wrows[a], 0u);
        }
    }
    workgroupBarrier();
    // This thread's sum of V_a: at most ipt rows of < 2^53 each fit 64 bits.
    var dual = vec2<u32>(0u, 0u);
    let first = g * tile;
    for (var j = 0u; j < params.ipt; j++) {
        let i = first + j * WG + lid;
        if (i >= params.rows) {
            continue;
        }
        let c = classify(i);
        let a = c % MAXK;
        if (collect) {
            dual = add64(dual, add64(cost(probs[i * k + a]), class_g(a)));
        }
        if (c >= MAXK) {
            if (collect) {
                let slot = atomicAdd(&out[W_FREE], 1u);
                free_rows[slot] = i;
            }
            continue;
        }
        if (collect) {
            atomicAdd(&wrows[a], 1u);
            wsum_add(3u + 3u * a, cost(probs[i * k + a]));
        }
        for (var b = 0u; b < k; b++) {
            if (b == a) {
                continue;
            }
            let s = slack(i, a, b);
            let w = slack_hi_word(a, b);
            if (collect) {
                let hi = 0xffffffffu - s.y;
                // Most rows do not lower the least: a load spares the atomic.
                if (hi > atomicLoad(&out[w])) {
                    atomicMax(&out[w], hi);
                }
            } else if (0xffffffffu - s.y == atomicLoad(&out[w])) {
                let lo = 0xffffffffu - s.x;
                if (lo > atomicLoad(&out[w + k * k])) {
                    atomicMax(&out[w + k * k], lo);
                }
            }
        }
    }
    if (!collect) {
        return;
    }
    wsum_add(W_DUAL, dual);
    workgroupBarrier();
    if (lid == 0u) {
        out_add96(0u, W_DUAL);
    }
    for (var a = lid; a < k; a += WG) {
        let n = atomicLoad(&wrows[a]);
        if (n != 0u) {
            atomicAdd(&out[W_ROWS + a], n);
            out_add96(3u + 3u * a, W_ROWS + k + 3u * a);
        }
    }
}
