// class_sum.wgsl: order-invariant sums over the classes of a row (DESIGN.md 2.1), and the
// fixed 2^-40 grid they (and the tallies' sum of p_(1)) use. WGSL has no includes:
// src/shaders.rs composes this file into every shader that sums over classes.
// Keep in sync with src/kernel/class_sum.rs (the contract; every CPU mirror follows it).
//
// Rows equal up to a shift and a permutation of the classes must get bit-identical
// results, so for K >= GRID_MIN_K each term (in [0, 1]) goes on the grid (p1_grid: exact
// for a term >= 2^-17, truncated below) and is added as an exact 64-bit integer, a
// (low, high) u32 pair with carry: the sum does not depend on the order of the classes.
// The total is rounded once to f32 (grid_to_f32). For K < GRID_MIN_K (two terms commute)
// the terms are added in f32 in class order from 0.0, exactly as before.

// Keep in sync with `GRID_MIN_K` in src/kernel/class_sum.rs.
const GRID_MIN_K: u32 = 3u;

// p in [0, 1] (any p < 2^10) times 2^40 as a (low, high) pair: exact for p >= 2^-17 (the
// value is the 24-bit significand shifted left), truncated below. Keep in sync with `to_grid` in
// src/kernel/class_sum.rs (`p1_to_grid` in src/kernel/tally.rs).
fn p1_grid(p: f32) -> vec2<u32> {
    let bits = bitcast<u32>(p);
    let e = (bits >> 23u) & 0xffu;
    if (e == 0u) {
        return vec2<u32>(0u, 0u);
    }
    let m = (bits & 0x7fffffu) | 0x800000u;
    if (e >= 110u) {
        let s = e - 110u;
        if (s == 0u) {
            return vec2<u32>(m, 0u);
        }
        return vec2<u32>(m << s, m >> (32u - s));
    }
    let r = 110u - e;
    if (r >= 24u) {
        return vec2<u32>(0u, 0u);
    }
    return vec2<u32>(m >> r, 0u);
}

// acc + the grid value of v. A v below zero (only an inaccurate exp could make one)
// counts as 0, as the CPU's saturating conversion does.
fn grid_add(acc: vec2<u32>, v: f32) -> vec2<u32> {
    let g = p1_grid(max(v, 0.0));
    let lo = acc.x + g.x;
    return vec2<u32>(lo, acc.y + g.y + select(0u, 1u, lo < g.x));
}

// n 2^-40 for the integer n = lo + 2^32 hi, rounded to the nearest f32 (ties to even), with
// integer operations only. Keep in sync with `grid_pair_to_f32` in src/kernel/class_sum.rs
// (a transliteration, tested against Rust's correctly rounded conversion).
fn grid_to_f32(n: vec2<u32>) -> f32 {
    var hi = n.y;
    var lo = n.x;
    // b: index of the top set bit of n.
    var b: u32;
    if (hi != 0u) {
        b = 63u - countLeadingZeros(hi);
    } else if (lo != 0u) {
        b = 31u - countLeadingZeros(lo);
        hi = lo;
        lo = 0u;
    } else {
        return 0.0;
    }
    // Normalise: the top bit of n moves to bit 31 of hi.
    let s = countLeadingZeros(hi);
    if (s != 0u) {
        hi = (hi << s) | (lo >> (32u - s));
        lo = lo << s;
    }
    // 24 significant bits, then the bits below them decide the rounding.
    let mant = hi >> 8u;
    let rest = hi & 0xffu;
    let up = rest > 0x80u || (rest == 0x80u && (lo != 0u || (mant & 1u) != 0u));
    // n 2^-40 = 1.f 2^(b - 40): biased exponent b + 87; the implicit bit of mant adds one
    // to the exponent field (hence b + 86), and a rounding carry out of the mantissa one more.
    return bitcast<f32>(((b + 86u) << 23u) + mant + select(0u, 1u, up));
}

// A sum over the k classes of a row: f in f32 (k < GRID_MIN_K), g on the grid (otherwise).
struct ClassSum {
    f: f32,
    g: vec2<u32>,
}

fn class_sum_zero() -> ClassSum {
    return ClassSum(0.0, vec2<u32>(0u, 0u));
}

// Adds a term v in [0, 1] (a softmax numerator e_k). `k` is uniform, so is the branch.
fn class_sum_add(acc: ClassSum, v: f32, k: u32) -> ClassSum {
    if (k < GRID_MIN_K) {
        return ClassSum(acc.f + v, acc.g);
    }
    return ClassSum(acc.f, grid_add(acc.g, v));
}

fn class_sum_value(acc: ClassSum, k: u32) -> f32 {
    if (k < GRID_MIN_K) {
        return acc.f;
    }
    return grid_to_f32(acc.g);
}

// Adds a term q in [-1, 0] (a negative-entropy term p_k (x_k - ln S)): on the grid as -q.
fn class_neg_sum_add(acc: ClassSum, q: f32, k: u32) -> ClassSum {
    if (k < GRID_MIN_K) {
        return ClassSum(acc.f + q, acc.g);
    }
    return ClassSum(acc.f, grid_add(acc.g, -q));
}

// -(the grid sum), +0.0 when it is 0. Keep in sync with `neg_grid_to_f32`.
fn class_neg_sum_value(acc: ClassSum, k: u32) -> f32 {
    if (k < GRID_MIN_K) {
        return acc.f;
    }
    if (acc.g.x == 0u && acc.g.y == 0u) {
        return 0.0;
    }
    return -grid_to_f32(acc.g);
}
