//! Order-invariant sums over the classes of a row (DESIGN.md 2.1): the rule every kernel
//! that sums over classes follows, on the GPU (shaders/class_sum.wgsl, composed by
//! `shaders.rs` into each such shader) and in every CPU mirror.
//!
//! Rows equal up to a shift and a permutation of the classes (quantised or float16
//! multi-class logits) must get bit-identical probabilities, largest probability and
//! negative entropy. A float sum in class order breaks that (f32 addition is not
//! associative), so for `K >= GRID_MIN_K` each term is put on the fixed 2^-[`GRID_BITS`]
//! grid (the rule of `tally::p1_to_grid`: exact for a term >= 2^-17, truncated toward zero
//! below) and added as an exact integer (a u64 here, a (low, high) u32 pair with carry in
//! WGSL); the total is rounded once to f32. Integer addition is order-free, and the error
//! (at most `K 2^-40` absolute before the one rounding) is far below f32 precision.
//!
//! * Softmax denominator `S = sum_k e_k`, `e_k = exp((z_k - m)/T)` in [0, 1] (the max term
//!   is exactly 1, so `S >= 1`): [`class_sum_of`], [`class_sum`].
//! * Negative entropy `ne = sum_k q_k`, `q_k = p_k (x_k - ln S)` in [-1/e, 0] (terms with
//!   `p_k = 0` are skipped: 0 ln 0 = 0): the `-q_k` go on the grid, `ne = -(sum 2^-40)`,
//!   and an all-zero sum gives +0.0: [`neg_class_sum_of`].
//!
//! For `K < GRID_MIN_K` (K = 2: two-term f32 addition already commutes) the terms are
//! added in f32 in class order, starting from +0.0, exactly as before this rule existed:
//! the K = 2 bits do not change.
//!
//! Terms must be finite (logits are validated finite and T > 0, so they are); a term below
//! zero (only an inaccurate `exp` could make one) counts as 0 on every backend.
//!
//! Not covered: the temperature fit's per-row sums (shaders/temperature_nll.wgsl and its
//! mirror, and the CPU path's f64 sums). They feed a minimiser and yield one continuous
//! number per set (T, within the tolerances of DESIGN.md 4), never a comparison between
//! rows, their rows are added in a fixed tree order anyway, and their terms (`e_k d_k`,
//! `e_k (d_k - mu)^2`) are not bounded in [0, 1] as the grid needs.

/// Bits below the binary point of the grid. Keep in sync with shaders/class_sum.wgsl.
pub const GRID_BITS: i32 = 40;

/// Rows of at least this many classes sum on the grid; narrower rows add in f32 in class
/// order. Keep in sync with `GRID_MIN_K` in shaders/class_sum.wgsl.
pub const GRID_MIN_K: usize = 3;

/// 2^-40 as an f32 (exact).
const GRID_ULP: f32 = f32::from_bits(((127 - GRID_BITS) as u32) << 23);

/// Whether rows of `k` classes sum on the grid.
#[inline(always)]
pub fn on_grid(k: usize) -> bool {
    k >= GRID_MIN_K
}

/// `v` in [0, 1] (any `v < 2^10`) times 2^40, truncated toward zero: exact for
/// `v >= 2^-17` (the multiplication only moves the exponent); 0 for `v <= 0` (and NaN).
/// Keep in sync with `p1_grid` in shaders/class_sum.wgsl.
#[inline(always)]
pub fn to_grid(v: f32) -> u64 {
    // Branch-free f64 arithmetic a compiler vectorises (x86 before AVX-512 has no vector
    // float-to-64-bit-integer conversion): x + 2^52 rounds x (in [0, 2^50]) to the nearest
    // integer, whose value is the low bits of the sum; one less where that rounded up.
    // `max` turns NaN into 0 (`clamp` would keep it).
    const SHIFT: f64 = (1u64 << 52) as f64;
    let x = (v as f64 * (1u64 << GRID_BITS) as f64)
        .max(0.0)
        .min((1u64 << 50) as f64);
    let big = x + SHIFT;
    (big.to_bits() - SHIFT.to_bits()) - ((big - SHIFT) > x) as u64
}

/// `n 2^-40` rounded once to the nearest f32 (ties to even): Rust's integer-to-float
/// conversion rounds correctly, and scaling by a power of two is exact. Keep in sync with
/// `grid_to_f32` in shaders/class_sum.wgsl (transliterated in [`grid_pair_to_f32`]).
#[inline(always)]
pub fn grid_to_f32(n: u64) -> f32 {
    n as f32 * GRID_ULP
}

/// [`grid_to_f32`] computed as the shader computes it, from the (low, high) u32 words of
/// `n` with integer operations only (WGSL has no 64-bit integers or f64): a line-by-line
/// transliteration of `grid_to_f32` in shaders/class_sum.wgsl, tested against the plain
/// conversion.
pub fn grid_pair_to_f32(lo: u32, hi: u32) -> f32 {
    let (mut hi, mut lo) = (hi, lo);
    // b: index of the top set bit of n.
    let b: u32;
    if hi != 0 {
        b = 63 - hi.leading_zeros();
    } else if lo != 0 {
        b = 31 - lo.leading_zeros();
        hi = lo;
        lo = 0;
    } else {
        return 0.0;
    }
    // Normalise: the top bit of n moves to bit 31 of hi.
    let s = hi.leading_zeros();
    if s != 0 {
        hi = (hi << s) | (lo >> (32 - s));
        lo <<= s;
    }
    // 24 significant bits, then the bits below them decide the rounding.
    let mant = hi >> 8;
    let rest = hi & 0xff;
    let up = rest > 0x80 || (rest == 0x80 && (lo != 0 || mant & 1 != 0));
    // n 2^-40 = 1.f 2^(b - 40): biased exponent b + 87; the implicit bit of mant adds one
    // to the exponent field (hence b + 86), and a rounding carry out of the mantissa one more.
    f32::from_bits(((b + 86) << 23) + mant + up as u32)
}

/// The sum of `terms`, the `k` terms in [0, 1] of a row in class order (the softmax
/// denominator): in f32 in class order from +0.0 for `k < GRID_MIN_K`, on the grid
/// otherwise. The rule is chosen once per row, so neither loop branches on it (`terms`
/// may record what it yields, e.g. through `map`). Mirrors `class_sum_add` and
/// `class_sum_value` in shaders/class_sum.wgsl.
#[inline(always)]
pub fn class_sum_of(k: usize, terms: impl IntoIterator<Item = f32>) -> f32 {
    if on_grid(k) {
        grid_to_f32(terms.into_iter().map(to_grid).sum())
    } else {
        terms.into_iter().fold(0.0f32, |s, v| s + v)
    }
}

/// [`class_sum_of`] a whole row of terms, `terms.len()` being K.
#[inline(always)]
pub fn class_sum(terms: &[f32]) -> f32 {
    class_sum_of(terms.len(), terms.iter().copied())
}

/// The sum of `terms`, the `k` terms in [-1, 0] of a row in class order (the negative
/// entropy): in f32 in class order from +0.0 for `k < GRID_MIN_K`, else `-(sum of the
/// negated terms on the grid)`, +0.0 when that is 0. Mirrors `class_neg_sum_add` and
/// `class_neg_sum_value` in shaders/class_sum.wgsl.
#[inline(always)]
pub fn neg_class_sum_of(k: usize, terms: impl IntoIterator<Item = f32>) -> f32 {
    if on_grid(k) {
        neg_grid_to_f32(terms.into_iter().map(|q| to_grid(-q)).sum())
    } else {
        terms.into_iter().fold(0.0f32, |s, q| s + q)
    }
}

/// `-(n 2^-40)` rounded once, and +0.0 (not -0.0) for `n = 0`.
#[inline(always)]
pub fn neg_grid_to_f32(n: u64) -> f32 {
    if n == 0 {
        0.0
    } else {
        -grid_to_f32(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The shader's integer conversion equals Rust's correctly rounded one: every power of
    /// two and its neighbours, every halfway case around 2^24..2^63 (ties to even both
    /// ways, and one above/below a tie), and random values at every magnitude.
    #[test]
    fn pair_conversion_equals_plain_conversion() {
        let check = |n: u64| {
            let want = grid_to_f32(n);
            let got = grid_pair_to_f32(n as u32, (n >> 32) as u32);
            assert_eq!(got.to_bits(), want.to_bits(), "n = {n:#x}");
            // The conversion is the exact value rounded to nearest.
            let exact = n as f64 / (1u64 << GRID_BITS) as f64;
            if n < 1 << 53 {
                assert!(
                    ((want as f64) - exact).abs() <= exact * f32::EPSILON as f64 / 2.0,
                    "n = {n:#x}"
                );
            }
        };
        check(0);
        check(u64::MAX);
        for b in 0..64 {
            let p = 1u64 << b;
            for n in [p, p - 1, p + 1, p.wrapping_mul(3), p | (p >> 1) | 1] {
                check(n);
            }
            if b >= 24 {
                // Significand of 24 bits at the top, the next bit set: a tie.
                for mant in [0x80_0000u64, 0x80_0001, 0xff_ffff, 0xab_cdef] {
                    let base = mant << (b - 23);
                    let half = 1u64 << (b - 24);
                    for n in [base, base + half, base + half - 1, base + half + 1] {
                        if n >> b == 1 {
                            check(n);
                        }
                    }
                }
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200_000 {
            let n: u64 = rng.random::<u64>() >> rng.random_range(0..64);
            check(n);
        }
    }

    /// The grid rule is exact above 2^-17, truncates below, and a negative term is 0.
    #[test]
    fn to_grid_values() {
        assert_eq!(to_grid(1.0), 1 << 40);
        assert_eq!(to_grid(0.5), 1 << 39);
        assert_eq!(to_grid(0.0), 0);
        assert_eq!(to_grid(-0.0), 0);
        assert_eq!(to_grid(-0.25), 0);
        assert_eq!(to_grid(f32::from_bits(1)), 0);
        assert_eq!(to_grid(2f32.powi(-40)), 1);
        assert_eq!(to_grid(2f32.powi(-41)), 0);
        assert_eq!(to_grid(1.5 * 2f32.powi(-40)), 1);
        assert_eq!(to_grid(2.5 * 2f32.powi(-40)), 2);
        assert_eq!(to_grid(f32::NAN), 0);
        // Against the plain truncating conversion, at every exponent of [0, 1].
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..100_000 {
            let v = rng.random_range(0.0f32..=1.0) * 2f32.powi(-rng.random_range(0..70));
            assert_eq!(to_grid(v), (v as f64 * 2f64.powi(40)) as u64, "{v:e}");
        }
        let v = 1.0f32 - f32::EPSILON / 2.0;
        assert_eq!(to_grid(v) as f64, v as f64 * 2f64.powi(40));
    }

    /// K = 2 keeps the f32 sum in class order; K >= 3 sums on the grid, whatever the order.
    #[test]
    fn switch_at_three_classes() {
        let e = [1.0f32, 2f32.powi(-24) * (1.0 + f32::EPSILON)];
        // 1 + e rounds up in f32; on the grid e truncates to 2^-24, a tie that rounds to 1.
        assert_eq!(class_sum(&e), 1.0 + e[1]);
        assert_ne!(class_sum(&e), 1.0);
        assert_eq!(grid_to_f32(to_grid(e[0]) + to_grid(e[1])), 1.0);
        let mut three = [1.0f32, 0.1, 0.3];
        let s = class_sum(&three);
        three.reverse();
        assert_eq!(s.to_bits(), class_sum(&three).to_bits());
        assert_eq!(s.to_bits(), class_sum_of(3, three).to_bits());
        let zeros = [0.0f32, -0.0, 0.0];
        assert_eq!(neg_class_sum_of(3, zeros).to_bits(), 0.0f32.to_bits());
        let q = [-0.25f32, -0.125, 0.0];
        assert_eq!(neg_class_sum_of(3, q), -0.375);
        // K = 2: the f32 sum in class order, from +0.0.
        assert_eq!(neg_class_sum_of(2, q), -0.375);
        assert_eq!(neg_class_sum_of(2, zeros).to_bits(), 0.0f32.to_bits());
    }
}
