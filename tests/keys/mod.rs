//! Key distributions and boundary sizes shared by the sort, select and p-value tests.
#![allow(dead_code)]

use super::common::rng;
use rand::Rng;

/// Boundary sizes: 0, 1, WG +- 1, tile (4096) +- 1, a few tiles.
pub const SIZES: &[usize] = &[0, 1, 255, 256, 257, 4095, 4096, 4097, 8192, 12289];

/// The key distributions every size is checked on.
pub fn keys(dist: &str, n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n)
        .map(|i| match dist {
            "uniform" => r.random_range(0.0f32..1.0),
            "all-equal" => 0.25,
            "few-distinct" => [0.5f32, -1.0, 3.0, 0.0][r.random_range(0..4)],
            "negative" => -r.random_range(0.0f32..1e6),
            "zeros" => [0.0f32, -0.0][r.random_range(0..2)],
            "subnormal" => {
                let b = r.random_range(1u32..0x0080_0000);
                let x = f32::from_bits(b);
                if r.random_bool(0.5) {
                    -x
                } else {
                    x
                }
            }
            "sorted" => i as f32 * 0.5 - 100.0,
            "reverse" => (n - i) as f32 * 0.25,
            "mixed" => match r.random_range(0..6) {
                0 => r.random_range(-1.0f32..1.0),
                1 => [0.0f32, -0.0][r.random_range(0..2)],
                2 => f32::from_bits(r.random_range(1u32..0x0080_0000)),
                3 => [f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN][r.random_range(0..4)],
                4 => (r.random_range(0..16) as f32) * 0.125,
                _ => f32::from_bits(r.random::<u32>() & 0xff7f_ffff),
            },
            _ => unreachable!(),
        })
        .collect()
}

/// Every distribution name.
pub const DISTS: &[&str] = &[
    "uniform",
    "all-equal",
    "few-distinct",
    "negative",
    "zeros",
    "subnormal",
    "sorted",
    "reverse",
    "mixed",
];
