// grid_sums.wgsl: appended to the COT shaders (src/shaders.rs): costs 1 - p on the 2^-40
// grid from an f32's bits alone (integers, as the host rounds them in f64), 64-bit pairs,
// and exact 96-bit sums by 32-bit atomics. A shader that includes it declares `wsum`
// (workgroup atomics) and `out` (storage atomics). Contract: src/kernel/cot_two_class.rs
// (`units_53`, `probability_cost`).

// 2^53 |p| rounded to the nearest integer, ties to even, as (lo, hi): fl64(1 - p) is
// 1 - j 2^-53. Keep in sync with `units_53` in src/kernel/cot_two_class.rs.
fn units_53(b: u32) -> vec2<u32> {
    let bits = b & 0x7fffffffu;
    let field = bits >> 23u;
    var m = bits & 0x7fffffu;
    if (field != 0u) {
        m = m | 0x800000u;
    }
    // |p| = m 2^(max(field, 1) - 150): 2^53 |p| = m 2^(e - 97).
    let e = max(field, 1u);
    if (e >= 97u) {
        // p <= 1: e <= 127, a shift of at most 30.
        let s = e - 97u;
        if (s == 0u) {
            return vec2<u32>(m, 0u);
        }
        return vec2<u32>(m << s, m >> (32u - s));
    }
    let r = 97u - e;
    if (r >= 25u) {
        // m < 2^24 <= half of 2^r.
        return vec2<u32>(0u, 0u);
    }
    let q = m >> r;
    let rem = m & ((1u << r) - 1u);
    let half = 1u << (r - 1u);
    var up = 0u;
    if (rem > half || (rem == half && (q & 1u) == 1u)) {
        up = 1u;
    }
    return vec2<u32>(q + up, 0u);
}

// The cost 1 - p on the 2^-40 grid: (2^53 + 2^12 - j) >> 13. Keep in sync with
// `probability_cost` in src/kernel/cot_two_class.rs.
fn cost(b: u32) -> vec2<u32> {
    let j = units_53(b);
    let lo = 0x1000u - j.x;
    let borrow = select(0u, 1u, j.x > 0x1000u);
    let hi = 0x200000u - j.y - borrow;
    return vec2<u32>((lo >> 13u) | (hi << 19u), hi >> 13u);
}

// a + b for 64-bit (lo, hi) pairs whose sum fits.
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// Adds a 64-bit value into the workgroup's 96-bit sum at `at` (exact carries: every wrap
// of a word is seen by exactly one atomicAdd).
fn wsum_add(at: u32, v: vec2<u32>) {
    let old0 = atomicAdd(&wsum[at], v.x);
    let add1 = v.y + select(0u, 1u, old0 + v.x < old0);
    let old1 = atomicAdd(&wsum[at + 1u], add1);
    if (old1 + add1 < old1) {
        atomicAdd(&wsum[at + 2u], 1u);
    }
}

// Adds the workgroup's 96-bit sum at `w_at` into the output's at `at`.
fn out_add96(w_at: u32, at: u32) {
    let w0 = atomicLoad(&wsum[w_at]);
    let w1 = atomicLoad(&wsum[w_at + 1u]);
    let w2 = atomicLoad(&wsum[w_at + 2u]);
    let old0 = atomicAdd(&out[at], w0);
    var carry = 0u;
    let old1 = atomicAdd(&out[at + 1u], w1);
    if (old1 + w1 < old1) {
        carry += 1u;
    }
    if (old0 + w0 < old0) {
        let again = atomicAdd(&out[at + 1u], 1u);
        if (again == 0xffffffffu) {
            carry += 1u;
        }
    }
    atomicAdd(&out[at + 2u], w2 + carry);
}
