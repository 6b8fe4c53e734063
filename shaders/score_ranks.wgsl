// score_ranks.wgsl: the rank of each class among its row's K probabilities, what the APS,
// RAPS, SAPS and TopK scores are made from (DESIGN.md 2.13). One thread per row: it sorts
// the row's class indices by probability, descending, with a heap (O(K log K), in place in
// `order`, no recursion, bounded loops), then walks the tie groups and writes, for each
// class k, the mass strictly above p_k, the mass of k's tie group (both exact sums on the
// 2^-40 grid, (low, high) pairs with carry) and the rank #{j : p_j >= p_k}. Integers only,
// so the words do not depend on the order within a tie or of the additions.
// Contract: src/kernel/score_ranks.rs. CPU mirror: src/cpu/score_ranks.rs.

// Keep in sync with `ScoreRankParams` in src/kernel/score_ranks.rs.
struct Params {
    rows: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
}

// Words per (row, class): above (lo, hi), group (lo, hi), rank. Keep in sync with
// `RANK_WORDS` and `word` in src/kernel/score_ranks.rs.
const RANK_WORDS: u32 = 5u;

@group(0) @binding(0) var<uniform> params: Params;
// rows x k probabilities, finite in [0, 1] (checked on the host).
@group(0) @binding(1) var<storage, read> probs: array<f32>;
// rows x k: each row's class indices, sorted here (scratch; its contents on entry do not
// matter).
@group(0) @binding(2) var<storage, read_write> order: array<u32>;
// rows x k x RANK_WORDS.
@group(0) @binding(3) var<storage, read_write> ranks: array<u32>;

// p times 2^40 rounded to the nearest integer, ties to even, from the bits (p finite,
// 0 <= p < 2^15). Keep in sync with `prob_grid` in src/kernel/score_ranks.rs.
fn prob_grid(p: f32) -> vec2<u32> {
    let bits = bitcast<u32>(p);
    let e = (bits >> 23u) & 0xffu;
    if (e == 0u) {
        return vec2<u32>(0u, 0u);
    }
    let m = (bits & 0x7fffffu) | 0x800000u;
    // p 2^40 = m 2^(e - 110).
    if (e >= 110u) {
        let s = e - 110u;
        if (s == 0u) {
            return vec2<u32>(m, 0u);
        }
        return vec2<u32>(m << s, m >> (32u - s));
    }
    let r = 110u - e;
    if (r >= 25u) {
        return vec2<u32>(0u, 0u);
    }
    let q = m >> r;
    let rem = m & ((1u << r) - 1u);
    let half = 1u << (r - 1u);
    let up = rem > half || (rem == half && (q & 1u) == 1u);
    return vec2<u32>(q + select(0u, 1u, up), 0u);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// The probability at sorted position i of the row starting at `base`, as the bits of its
// magnitude: for p in [0, 1] their unsigned order is the order of the values and -0.0 is
// 0.0. Integer compares, so an adapter that flushes subnormals to zero in float compares
// (WGSL allows it) still ranks distinct subnormals apart, as the CPU does.
fn at(base: u32, i: u32) -> u32 {
    return bitcast<u32>(probs[base + order[base + i]]) & 0x7fffffffu;
}

// Min-heap sift of position `root` within positions [0, end).
fn sift(base: u32, start: u32, end: u32) {
    var root = start;
    loop {
        var child = 2u * root + 1u;
        if (child >= end) {
            break;
        }
        if (child + 1u < end && at(base, child + 1u) < at(base, child)) {
            child += 1u;
        }
        if (!(at(base, child) < at(base, root))) {
            break;
        }
        let tmp = order[base + root];
        order[base + root] = order[base + child];
        order[base + child] = tmp;
        root = child;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid (also keeps g * WG + lid from wrapping).
    if (g >= groups_of(params.rows, WG)) {
        return;
    }
    let row = g * WG + lid;
    if (row >= params.rows) {
        return;
    }
    let k = params.k;
    let base = row * k;
    for (var j = 0u; j < k; j++) {
        order[base + j] = j;
    }
    // Heap sort with a min-heap: the smallest goes to the end each time, so the row ends
    // up descending.
    for (var i = k / 2u; i > 0u; i--) {
        sift(base, i - 1u, k);
    }
    for (var end = k; end > 1u; end--) {
        let tmp = order[base];
        order[base] = order[base + end - 1u];
        order[base + end - 1u] = tmp;
        sift(base, 0u, end - 1u);
    }
    // The tie groups, in order: mass above, the group's mass, its last rank.
    var above = vec2<u32>(0u, 0u);
    var start = 0u;
    loop {
        if (start >= k) {
            break;
        }
        let p = at(base, start);
        var end = start;
        var group = vec2<u32>(0u, 0u);
        loop {
            if (end >= k) {
                break;
            }
            let q = at(base, end);
            if (q != p) {
                break;
            }
            group = add64(group, prob_grid(bitcast<f32>(q)));
            end += 1u;
        }
        for (var i = start; i < end; i++) {
            let w = (base + order[base + i]) * RANK_WORDS;
            ranks[w] = above.x;
            ranks[w + 1u] = above.y;
            ranks[w + 2u] = group.x;
            ranks[w + 3u] = group.y;
            ranks[w + 4u] = end;
        }
        above = add64(above, group);
        start = end;
    }
}
