//! CPU mirror of shaders/temperature_nll.wgsl, and the f64 sums the CPU path fits with.

use rayon::prelude::*;

use super::common::row_max;
use crate::kernel::WG;

/// One row's `[nll, grad, hess]` at inverse temperature `b`, in f32 exactly as the shader.
fn row_terms_f32(row: &[f32], y: usize, b: f32) -> [f32; 3] {
    let (m, _) = row_max(row);
    let mut s = 0.0f32;
    let mut sd = 0.0f32;
    for &z in row {
        let d = z - m;
        let e = (b * d).exp();
        s += e;
        sd += e * d;
    }
    let mu = sd / s;
    let mut sv = 0.0f32;
    for &z in row {
        let c = (z - m) - mu;
        sv += (b * (z - m)).exp() * c * c;
    }
    let dy = row[y] - m;
    [s.ln() - b * dy, mu - dy, sv / s]
}

/// Tree-sums 256 lanes in the shader's order (stride 128, 64, ..., 1).
pub fn tree_sum<const L: usize>(lanes: &mut [[f32; L]; WG]) -> [f32; L] {
    let mut stride = WG / 2;
    while stride > 0 {
        for i in 0..stride {
            let hi = lanes[i + stride];
            for (lo, h) in lanes[i].iter_mut().zip(hi) {
                *lo += h;
            }
        }
        stride /= 2;
    }
    lanes[0]
}

/// Per-workgroup `[nll, grad, hess, labelled]` partials, as the shader writes them.
pub fn temperature_nll(logits: &[f32], labels: &[i32], k: usize, b: f32) -> Vec<[f32; 4]> {
    let n = labels.len();
    (0..n.div_ceil(WG))
        .into_par_iter()
        .map(|g| {
            let mut lanes = [[0.0f32; 4]; WG];
            for (lane, acc) in lanes.iter_mut().enumerate() {
                let row = g * WG + lane;
                if row < n && labels[row] >= 0 {
                    let r = row_terms_f32(&logits[row * k..(row + 1) * k], labels[row] as usize, b);
                    *acc = [r[0], r[1], r[2], 1.0];
                }
            }
            tree_sum(&mut lanes)
        })
        .collect()
}

/// Sums `[nll, grad, hess, rows]` over labelled rows, with every row computed in f64
/// (the CPU path's temperature must match an f64 minimiser to 1e-7 relative).
pub fn nll_sums_f64(logits: &[f32], labels: &[i32], k: usize, b: f64) -> [f64; 4] {
    logits
        .par_chunks(k * 4096)
        .zip(labels.par_chunks(4096))
        .map(|(l, y)| {
            let mut acc = [0.0f64; 4];
            let mut e = vec![0.0f64; k];
            for (row, &yi) in l.chunks_exact(k).zip(y) {
                if yi < 0 {
                    continue;
                }
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &z| a.max(z as f64));
                let (mut s, mut sd) = (0.0f64, 0.0f64);
                for (ek, &z) in e.iter_mut().zip(row) {
                    let d = z as f64 - m;
                    // Each term once for both passes (a call gives the same bits each
                    // time), and exp(+-0) = 1 exactly: the max's term needs no call.
                    *ek = if d == 0.0 { 1.0 } else { (b * d).exp() };
                    s += *ek;
                    sd += *ek * d;
                }
                let mu = sd / s;
                let sv: f64 = row
                    .iter()
                    .zip(&e)
                    .map(|(&z, &ek)| {
                        let d = z as f64 - m;
                        ek * (d - mu) * (d - mu)
                    })
                    .sum();
                let dy = row[yi as usize] as f64 - m;
                acc[0] += s.ln() - b * dy;
                acc[1] += mu - dy;
                acc[2] += sv / s;
                acc[3] += 1.0;
            }
            acc
        })
        .reduce(
            || [0.0; 4],
            |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]],
        )
}

/// `[nll, grad, hess, rows]` over rows weighted by `weights` (one per row; every label
/// known), serially, in f64: the temperature refit of one bootstrap replicate (callers
/// run replicates in parallel). One pass per row: the largest logit's term is exactly 1
/// and needs no `exp`, and the variance is `E[d^2] - E[d]^2` (d = z - m is bounded by the
/// logits' range, so the cancellation costs nothing at f64).
pub fn nll_sums_f64_weighted(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    b: f64,
    weights: &[u8],
) -> [f64; 4] {
    let mut acc = [0.0f64; 4];
    for ((row, &y), &w) in logits.chunks_exact(k).zip(labels).zip(weights) {
        if w == 0 || y < 0 {
            continue;
        }
        let (m, arg) = row_max(row);
        let m = m as f64;
        let (mut s, mut sd, mut sdd) = (1.0f64, 0.0f64, 0.0f64);
        for (j, &z) in row.iter().enumerate() {
            if j == arg {
                continue;
            }
            let d = z as f64 - m;
            let e = (b * d).exp();
            s += e;
            sd += e * d;
            sdd += e * d * d;
        }
        let mu = sd / s;
        let var = (sdd / s - mu * mu).max(0.0);
        let dy = row[y as usize] as f64 - m;
        let w = w as f64;
        acc[0] += w * (s.ln() - b * dy);
        acc[1] += w * (mu - dy);
        acc[2] += w * var;
        acc[3] += w;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The form `nll_sums_f64` had: exp called for every term of both passes.
    fn plain(logits: &[f32], labels: &[i32], k: usize, b: f64) -> [f64; 4] {
        logits
            .par_chunks(k * 4096)
            .zip(labels.par_chunks(4096))
            .map(|(l, y)| {
                let mut acc = [0.0f64; 4];
                for (row, &yi) in l.chunks_exact(k).zip(y) {
                    if yi < 0 {
                        continue;
                    }
                    let m = row.iter().fold(f64::NEG_INFINITY, |a, &z| a.max(z as f64));
                    let (mut s, mut sd) = (0.0f64, 0.0f64);
                    for &z in row {
                        let d = z as f64 - m;
                        let e = (b * d).exp();
                        s += e;
                        sd += e * d;
                    }
                    let mu = sd / s;
                    let sv: f64 = row
                        .iter()
                        .map(|&z| {
                            let d = z as f64 - m;
                            (b * d).exp() * (d - mu) * (d - mu)
                        })
                        .sum();
                    let dy = row[yi as usize] as f64 - m;
                    acc[0] += s.ln() - b * dy;
                    acc[1] += mu - dy;
                    acc[2] += sv / s;
                    acc[3] += 1.0;
                }
                acc
            })
            .reduce(
                || [0.0; 4],
                |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]],
            )
    }

    /// `nll_sums_f64` (each exp once, none for the max) gives the plain form's bits:
    /// K = 2, 3 and 10, ties (every class equal; -0.0 against 0.0), unlabelled rows, a
    /// huge spread (exp underflows to 0), over several 4096-row blocks (each summed
    /// alike; the blocks' reduction is the same code) and inverse temperatures.
    #[test]
    fn nll_sums_f64_equal_the_plain_form() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        for k in [2usize, 3, 10] {
            let n = 2 * 4096 + 77;
            let mut logits = Vec::with_capacity(n * k);
            let mut labels = Vec::with_capacity(n);
            for i in 0..n {
                for j in 0..k {
                    logits.push(match (i % 7, j) {
                        (0, _) => 1.5,
                        (1, 0) => 0.0,
                        (1, _) => -0.0,
                        (2, 0) => 400.0,
                        _ => rng.random_range(-8f32..8.0),
                    });
                }
                labels.push(if i % 11 == 0 { -1 } else { (i % k) as i32 });
            }
            for b in [1.0f64, 0.37, 2.5] {
                // One block at a time: each block's sum is deterministic, unlike the
                // reduction tree over blocks.
                for (l, y) in logits.chunks(k * 4096).zip(labels.chunks(4096)) {
                    let got = nll_sums_f64(l, y, k, b);
                    let want = plain(l, y, k, b);
                    assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "k {k} b {b}");
                }
            }
        }
    }
}
