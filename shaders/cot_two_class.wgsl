// cot_two_class.wgsl: one pass of COT at K = 2 (DESIGN.md 2.11) over a set's probabilities.
// Each row's key is its gain c_0 - c_1 (costs 1 - p on the 2^-40 grid, integers from the
// f32 bits, as the host rounds them) biased by 2^40, a 42-bit integer held as (lo, hi).
// Mode HISTOGRAM counts, for every key whose bits above the digit at `shift` equal one of
// the `nprefix` prefixes, that digit in the prefix's 256 bins (the MSD radix select the
// host narrows between passes). Mode SUMS adds the base sum_i c_i0 and the count and sum
// of the keys strictly above the boundary key (96-bit sums by 32-bit atomics with exact
// carries). Integers only, so workgroups, chunks and shards add in any order to the same
// bits. Contract: src/kernel/cot_two_class.rs. CPU mirror: src/cpu/cot_two_class.rs.

// Keep in sync with `CotPassParams` in src/kernel/cot_two_class.rs.
struct Params {
    rows: u32,
    mode: u32,
    shift: u32,
    nprefix: u32,
    ipt: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    key0_lo: u32,
    key0_hi: u32,
    key1_lo: u32,
    key1_hi: u32,
}

// Keep in sync with src/kernel/cot_two_class.rs.
const MODE_HISTOGRAM: u32 = 0u;
const MAXP: u32 = 2u;
const SUM_WORDS: u32 = 8u;

@group(0) @binding(0) var<uniform> params: Params;
// rows x 2 probabilities (f32 bits), finite in [0, 1] (checked on the host).
@group(0) @binding(1) var<storage, read> probs: array<u32>;
// HISTOGRAM: MAXP x 256 counts; SUMS: SUM_WORDS words. Accumulators: start at zero.
@group(0) @binding(2) var<storage, read_write> out: array<atomic<u32>>;

var<workgroup> counts: array<atomic<u32>, 512>;
var<workgroup> wsum: array<atomic<u32>, 8>;

// c_0 + 2^40 - c_1. Keep in sync with `gain_key` in src/kernel/cot_two_class.rs.
fn gain_key(b0: u32, b1: u32) -> vec2<u32> {
    let c0 = cost(b0);
    let c1 = cost(b1);
    let borrow = select(0u, 1u, c1.x > c0.x);
    return vec2<u32>(c0.x - c1.x, c0.y + 0x100u - c1.y - borrow);
}

// The 8-bit digit of `key` at `shift` (0, 8, ..., 40).
fn digit(key: vec2<u32>, shift: u32) -> u32 {
    if (shift >= 32u) {
        return (key.y >> (shift - 32u)) & 255u;
    }
    if (shift == 0u) {
        return key.x & 255u;
    }
    return ((key.x >> shift) | (key.y << (32u - shift))) & 255u;
}

// The bits of `key` above the digit at `shift`. Keep in sync with `above_digit`.
fn above_digit(key: vec2<u32>, shift: u32) -> vec2<u32> {
    let sb = shift + 8u;
    if (sb >= 32u) {
        return vec2<u32>(0u, key.y & (0xffffffffu << (sb - 32u)));
    }
    return vec2<u32>(key.x & (0xffffffffu << sb), key.y);
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
    let histogram = params.mode == MODE_HISTOGRAM;
    for (var r = 0u; r < MAXP; r++) {
        atomicStore(&counts[r * 256u + lid], 0u);
    }
    if (lid < SUM_WORDS) {
        atomicStore(&wsum[lid], 0u);
    }
    workgroupBarrier();
    let np = min(params.nprefix, MAXP);
    let key0 = vec2<u32>(params.key0_lo, params.key0_hi);
    let key1 = vec2<u32>(params.key1_lo, params.key1_hi);
    // This thread's sums (at most ipt rows of < 2^42 each: 64 bits hold them).
    var base = vec2<u32>(0u, 0u);
    var above = vec2<u32>(0u, 0u);
    var above_n = 0u;
    let first = g * tile;
    for (var j = 0u; j < params.ipt; j++) {
        let i = first + j * WG + lid;
        if (i < params.rows) {
            let b0 = probs[2u * i];
            let key = gain_key(b0, probs[2u * i + 1u]);
            if (histogram) {
                let hi = above_digit(key, params.shift);
                let d = digit(key, params.shift);
                if (np > 0u && all(hi == key0)) {
                    atomicAdd(&counts[d], 1u);
                } else if (np > 1u && all(hi == key1)) {
                    atomicAdd(&counts[256u + d], 1u);
                }
            } else {
                base = add64(base, cost(b0));
                if (key.y > key0.y || (key.y == key0.y && key.x > key0.x)) {
                    above_n += 1u;
                    above = add64(above, key);
                }
            }
        }
    }
    if (!histogram) {
        wsum_add(0u, base);
        atomicAdd(&wsum[3], above_n);
        wsum_add(4u, above);
    }
    workgroupBarrier();
    if (histogram) {
        for (var r = 0u; r < np; r++) {
            let c = atomicLoad(&counts[r * 256u + lid]);
            if (c != 0u) {
                atomicAdd(&out[r * 256u + lid], c);
            }
        }
    } else if (lid == 0u) {
        out_add96(0u, 0u);
        let n = atomicLoad(&wsum[3]);
        if (n != 0u) {
            atomicAdd(&out[3], n);
        }
        out_add96(4u, 4u);
    }
}
