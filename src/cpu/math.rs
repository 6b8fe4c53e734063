//! `exp` and `ln` of f32 for the CPU mirrors: computed in f64 with plain arithmetic and
//! rounded to f32 once, so they are faithfully rounded everywhere (within 1 ulp, and
//! correctly rounded except within ~1e-11 relative of a halfway point). They have no
//! branches and no table lookups, so the slice versions vectorise; the scalar and the
//! slice versions run the same operations and agree bit for bit (Rust never contracts a
//! multiply and an add into an FMA, and the AVX2 build of the loop uses no FMA either).
//! libm's `expf`/`logf` are function calls that stall a row loop; this is about 4x
//! faster over a block of rows.

/// 1.5 * 2^52: `(t + SHIFT) - SHIFT` rounds `t` (|t| < 2^51) to the nearest integer,
/// and the low bits of `t + SHIFT` hold that integer.
const SHIFT: f64 = 6_755_399_441_055_744.0;

/// e^x. Overflows to +inf past ~88.72, underflows through the subnormals to +0 below
/// ~-103.97; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 2^t = 2^k * 2^r, k = round(t), |r| <= 1/2. The clamp keeps 2^k a normal f64;
    // every |t| > 160 over/underflows f32 anyway.
    let t = (x as f64 * std::f64::consts::LOG2_E).clamp(-160.0, 160.0);
    let shifted = t + SHIFT;
    let r = t - (shifted - SHIFT);
    let k = shifted.to_bits().wrapping_sub(SHIFT.to_bits()) as i64;
    // 2^r = e^(r ln 2): Taylor to degree 10, truncation < 7e-12 relative on |r| <= 1/2.
    let u = r * std::f64::consts::LN_2;
    let mut p = 1.0 / 3_628_800.0;
    for c in [
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * u + c;
    }
    // k is garbage only for a NaN x (answered below); wrapping keeps debug builds quiet.
    let scale = f64::from_bits((k.wrapping_add(1023) as u64) << 52);
    let y = (p * scale) as f32;
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Natural log. ln(+0) = -inf, ln(x < 0) = NaN, ln(+inf) = +inf, subnormals exact.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    // Subnormals: scale by 2^23 first (a select, not a branch).
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x };
    // x = 2^e * m with m in [sqrt(1/2), sqrt(2)): subtracting the bits of sqrt(1/2)
    // makes the exponent field e (floor), and the rest rebuilds m.
    let bits = xs.to_bits() as i32;
    let off = bits.wrapping_sub(0x3f35_04f3);
    let e = (off >> 23) - if sub { 23 } else { 0 };
    let m = f32::from_bits(bits.wrapping_sub(off & !0x7f_ffff) as u32) as f64;
    // ln m = 2 atanh(f), f = (m - 1)/(m + 1), |f| <= 0.1716: odd series to f^13,
    // truncation < 2e-12 relative.
    let f = (m - 1.0) / (m + 1.0);
    let z = f * f;
    let mut p = 1.0 / 13.0;
    for c in [1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
        p = p * z + c;
    }
    let y = (e as f64 * std::f64::consts::LN_2 + 2.0 * f * p) as f32;
    if x > 0.0 && x < f32::INFINITY {
        y
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        x
    } else {
        f32::NAN
    }
}

/// `v[i] = exp(v[i])` for every element (bit-identical to [`exp`]).
pub fn exp_in_place(v: &mut [f32]) {
    map_in_place(v, exp);
}

/// `v[i] = ln(v[i])` for every element (bit-identical to [`ln`]).
pub fn ln_in_place(v: &mut [f32]) {
    map_in_place(v, ln);
}

/// `v[i] = f(v[i])`, through the AVX2 build of the loop where the CPU has it (`f` a
/// generic, so each function is inlined into its own copy of the loop).
#[inline(always)]
fn map_in_place<F: Fn(f32) -> f32>(v: &mut [f32], f: F) {
    with_avx2(
        #[inline(always)]
        || {
            for x in v {
                *x = f(*x);
            }
        },
    )
}

/// Runs `work` compiled for AVX2 where the CPU has it (wider lanes for the loops a
/// compiler vectorises), else as built. `work` and what it inlines get the AVX2 build;
/// no "fma" feature, so the arithmetic, and so every bit, is the plain build's.
#[inline(always)]
pub(crate) fn with_avx2<R, W: FnOnce() -> R>(work: W) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above).
        return unsafe { run_avx2(work) };
    }
    work()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_avx2<R, W: FnOnce() -> R>(work: W) -> R {
    work()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulps between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Every 97th f32 bit pattern over the whole range: both functions stay within one ulp
    /// of the correctly rounded f64 result, and the slice versions agree bit for bit.
    #[test]
    fn faithful_over_the_f32_range() {
        let xs: Vec<f32> = (0..u32::MAX / 97).map(|i| f32::from_bits(i * 97)).collect();
        let mut e = xs.clone();
        exp_in_place(&mut e);
        let mut l = xs.clone();
        ln_in_place(&mut l);
        let (mut exp_off, mut ln_off) = (0usize, 0usize);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(
                e[i].to_bits(),
                exp(x).to_bits(),
                "exp slice vs scalar at {x:e}"
            );
            assert_eq!(
                l[i].to_bits(),
                ln(x).to_bits(),
                "ln slice vs scalar at {x:e}"
            );
            if x.is_nan() {
                assert!(e[i].is_nan() && l[i].is_nan(), "NaN at {x:e}");
                continue;
            }
            let want = (x as f64).exp() as f32;
            let d = ulps(exp(x), want);
            assert!(d <= 1, "exp({x:e}) = {:e}, want {want:e}", exp(x));
            exp_off += (d != 0) as usize;
            if x >= 0.0 {
                let want = (x as f64).ln() as f32;
                let got = ln(x);
                assert!(
                    got == want || ulps(got, want) <= 1,
                    "ln({x:e}) = {got:e}, want {want:e}"
                );
                ln_off += (got != want) as usize;
            } else if x < 0.0 {
                assert!(ln(x).is_nan(), "ln({x:e}) = {:e}", ln(x));
            }
        }
        // Off by one ulp only next to a halfway point: a few per 10^8.
        assert!(
            exp_off * 1_000_000 < xs.len(),
            "{exp_off} exp results off by one ulp"
        );
        assert!(
            ln_off * 1_000_000 < xs.len(),
            "{ln_off} ln results off by one ulp"
        );
    }

    /// The values the kernels rely on: exp(0) = 1 exactly (the max of every row),
    /// ln(1) = 0, and the ends of the range.
    #[test]
    fn special_values() {
        assert_eq!(exp(0.0).to_bits(), 1.0f32.to_bits());
        assert_eq!(exp(-0.0).to_bits(), 1.0f32.to_bits());
        assert_eq!(ln(1.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(-104.0), 0.0);
        assert!(exp(-103.0) > 0.0, "subnormal results are kept");
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert_eq!(ln(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln(f32::INFINITY), f32::INFINITY);
        assert!(ln(f32::NAN).is_nan() && exp(f32::NAN).is_nan());
        assert_eq!(
            ln(f32::from_bits(1)),
            (f32::from_bits(1) as f64).ln() as f32
        );
    }
}
