//! CPU mirror of shaders/row_stats.wgsl: per-row summaries for the estimators.

use rayon::prelude::*;

use super::common::row_max;
use super::math::{exp, exp_in_place, ln, ln_in_place, with_avx2};
use crate::kernel::class_sum::{class_sum, neg_class_sum_of};
pub use crate::kernel::row_stats::{col, RowBlock, RowStats};

/// One row, exactly as the shader computes it. `info` has `1 + qhats.len()` slots.
/// The plain per-row statement of the kernel; [`row_stats`] computes the same bits a
/// block of rows at a time.
pub fn row_stats_row(row: &[f32], y: i32, t: f32, qhats: &[f32], info: &mut [u32]) -> [f32; 5] {
    let mut scratch = Vec::new();
    row_summary(row, y, t, qhats, info, &mut scratch)
}

/// [`row_stats_row`] with the per-class work in `scratch` (resized to `3 K`, reused by
/// callers that summarise many rows at many temperatures, as the bootstrap does).
pub fn row_summary(
    row: &[f32],
    y: i32,
    t: f32,
    qhats: &[f32],
    info: &mut [u32],
    scratch: &mut Vec<f32>,
) -> [f32; 5] {
    let k = row.len();
    let (m, arg) = row_max(row);
    scratch.resize(3 * k, 0.0);
    let (x, rest) = scratch.split_at_mut(k);
    let (p, r) = rest.split_at_mut(k);
    for ((xk, pk), &z) in x.iter_mut().zip(p.iter_mut()).zip(row) {
        *xk = (z - m) / t;
        *pk = exp(*xk);
    }
    let s = class_sum(p);
    for (pk, rk) in p.iter_mut().zip(r.iter_mut()) {
        *pk /= s;
        *rk = 1.0 - *pk;
    }
    finish_row(x, p, r, ln(s), arg, y, qhats, info)
}

/// The rest of a row once `x_k = (z_k - m)/T`, `p_k = exp(x_k) / S` (`S` summed over
/// classes by the rule of `kernel::class_sum`), `r_k = 1 - p_k` and `ln S` are known: the
/// transcendental and the division work is done, in bulk, by the caller. No data-dependent
/// branches: for K = 2 which class wins is a coin flip that a branch predictor would lose.
/// The negative entropy sums over classes by the same rule (in f32 in class order for
/// K = 2, order-invariant from K = 3).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finish_row(
    x: &[f32],
    p: &[f32],
    r: &[f32],
    log_s: f32,
    arg: usize,
    y: i32,
    qhats: &[f32],
    info: &mut [u32],
) -> [f32; 5] {
    let (mut p1, mut r1, mut r2) = (-1.0f32, 2.0f32, 2.0f32);
    for (&p, &r) in p.iter().zip(r) {
        p1 = p1.max(p);
        // Smallest two r (never NaN, never -0.0): r < r1 moves r1 down to r2.
        r2 = if r < r1 {
            r1
        } else if r < r2 {
            r
        } else {
            r2
        };
        r1 = if r < r1 { r } else { r1 };
    }
    // ln p_k = x_k - ln S: one log per row, and accurate for tiny p_k (0 ln 0 = 0).
    let terms = x
        .iter()
        .zip(p)
        .map(|(&x, &p)| if p > 0.0 { p * (x - log_s) } else { 0.0 });
    let ne = neg_class_sum_of(x.len(), terms);
    let lac = usize::try_from(y)
        .ok()
        .and_then(|y| r.get(y))
        .copied()
        .unwrap_or(-1.0);
    info[0] = arg as u32;
    for (slot, &q) in info[1..].iter_mut().zip(qhats) {
        *slot = r.iter().map(|&r| (r <= q) as u32).sum();
    }
    [p1, ne, lac, r1, r2]
}

/// Row summaries of `labels.len()` rows at temperature `t` and thresholds `qhats`
/// (+inf should be passed as 2.0, as the GPU path does).
pub fn row_stats(logits: &[f32], labels: &[i32], k: usize, t: f32, qhats: &[f32]) -> RowStats {
    let n = labels.len();
    let stride = 1 + qhats.len();
    let mut stats = vec![[0.0f32; 5]; n];
    let mut info = vec![0u32; n * stride];
    const BLOCK: usize = 4096;
    stats
        .par_chunks_mut(BLOCK)
        .zip(info.par_chunks_mut(BLOCK * stride))
        .enumerate()
        .for_each(|(b, (st, inf))| {
            let rows = b * BLOCK..b * BLOCK + st.len();
            fill(
                &logits[rows.start * k..rows.end * k],
                &labels[rows],
                k,
                t,
                qhats,
                st,
                inf,
            );
        });
    RowStats {
        stats,
        info,
        n_alpha: qhats.len(),
    }
}

/// [`row_stats`] of a few rows, serially, into `out` (resized; its buffers are reused).
/// `logits` holds exactly `labels.len()` rows of `k`.
pub(crate) fn row_stats_into(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    t: f32,
    qhats: &[f32],
    out: &mut RowStats,
) {
    let n = labels.len();
    debug_assert_eq!(
        logits.len(),
        n * k,
        "row_stats_into: logits are not n rows of k"
    );
    out.n_alpha = qhats.len();
    out.stats.resize(n, [0.0; 5]);
    out.info.resize(n * (1 + qhats.len()), 0);
    fill(logits, labels, k, t, qhats, &mut out.stats, &mut out.info);
}

fn fill(
    logits: &[f32],
    labels: &[i32],
    k: usize,
    t: f32,
    qhats: &[f32],
    stats: &mut [[f32; 5]],
    info: &mut [u32],
) {
    with_avx2(
        #[inline(always)]
        || match k {
            2 => fill_two(logits, labels, t, qhats, stats, info),
            3 => fill_with(Fixed::<3>, logits, labels, t, qhats, stats, info),
            4 => fill_with(Fixed::<4>, logits, labels, t, qhats, stats, info),
            _ => fill_with(k, logits, labels, t, qhats, stats, info),
        },
    )
}

/// A row width: a `usize`, or [`Fixed`] to let the row loops of the common small K
/// unroll (the same code, so the same bits).
trait Width: Copy {
    fn get(self) -> usize;
}

impl Width for usize {
    fn get(self) -> usize {
        self
    }
}

#[derive(Clone, Copy)]
struct Fixed<const K: usize>;

impl<const K: usize> Width for Fixed<K> {
    #[inline(always)]
    fn get(self) -> usize {
        K
    }
}

/// Values per sub-block: `x` and `e` of a sub-block stay in L1.
const SUB_VALUES: usize = 2048;

/// Sub-block by sub-block, in passes a compiler vectorises: row maxima, every x_k, every
/// exp at once (see `math`), the sums over classes (`kernel::class_sum`), p = e / S and
/// r = 1 - p, every log, then the per-row rest.
#[inline(always)]
fn fill_with<W: Width>(
    width: W,
    logits: &[f32],
    labels: &[i32],
    t: f32,
    qhats: &[f32],
    stats: &mut [[f32; 5]],
    info: &mut [u32],
) {
    let k = width.get();
    let rows_per = (SUB_VALUES / k).max(1);
    let stride = 1 + qhats.len();
    let mut x = vec![0.0f32; rows_per * k];
    let mut p = vec![0.0f32; rows_per * k];
    let mut r = vec![0.0f32; rows_per * k];
    let (mut m, mut s, mut log_s) = (
        vec![0.0f32; rows_per],
        vec![0.0f32; rows_per],
        vec![0.0f32; rows_per],
    );
    let mut arg = vec![0usize; rows_per];
    for (b, z) in logits.chunks(rows_per * k).enumerate() {
        let n = z.len() / k;
        let (x, p, r) = (&mut x[..n * k], &mut p[..n * k], &mut r[..n * k]);
        let (m, s, log_s, arg) = (&mut m[..n], &mut s[..n], &mut log_s[..n], &mut arg[..n]);
        for ((row, m), a) in z.chunks_exact(k).zip(m.iter_mut()).zip(arg.iter_mut()) {
            (*m, *a) = row_max(row);
        }
        for ((xr, zr), &m) in x.chunks_exact_mut(k).zip(z.chunks_exact(k)).zip(m.iter()) {
            for (x, &z) in xr.iter_mut().zip(zr) {
                *x = (z - m) / t;
            }
        }
        p.copy_from_slice(x);
        exp_in_place(p);
        for (s, e) in s.iter_mut().zip(p.chunks_exact(k)) {
            *s = class_sum(e);
        }
        for (row, &s) in p.chunks_exact_mut(k).zip(s.iter()) {
            for e in row {
                *e /= s;
            }
        }
        for (r, &p) in r.iter_mut().zip(p.iter()) {
            *r = 1.0 - p;
        }
        log_s.copy_from_slice(s);
        ln_in_place(log_s);
        let first = b * rows_per;
        let rows = x
            .chunks_exact(k)
            .zip(p.chunks_exact(k))
            .zip(r.chunks_exact(k));
        for (j, ((xr, pr), rr)) in rows.enumerate() {
            let i = first + j;
            stats[i] = finish_row(
                xr,
                pr,
                rr,
                log_s[j],
                arg[j],
                labels[i],
                qhats,
                &mut info[i * stride..(i + 1) * stride],
            );
        }
    }
}

/// [`fill_with`] for K = 2 with one exponential a row instead of two: the larger logit's
/// `x = (m - m) / T` is +0 (logits are finite, T > 0) and `exp(+0)` is exactly 1, so
/// only the other class's `exp` is computed; `S = 1 + e` is the class-order sum either
/// way (two f32 terms commute, and `+0 + a = a` for `a >= 0`). The same bits, row for
/// row, as the general loop (tested against [`row_stats_row`]).
#[inline(always)]
fn fill_two(
    logits: &[f32],
    labels: &[i32],
    t: f32,
    qhats: &[f32],
    stats: &mut [[f32; 5]],
    info: &mut [u32],
) {
    const ROWS: usize = SUB_VALUES / 2;
    let stride = 1 + qhats.len();
    let (mut x, mut e, mut log_s) = ([0.0f32; ROWS], [0.0f32; ROWS], [0.0f32; ROWS]);
    for (b, z) in logits.chunks(2 * ROWS).enumerate() {
        let n = z.len() / 2;
        let (x, e, log_s) = (&mut x[..n], &mut e[..n], &mut log_s[..n]);
        for (x, z) in x.iter_mut().zip(z.chunks_exact(2)) {
            // row_max: the first of tied maxima is the max, so class 1 only when larger.
            *x = if z[1] > z[0] {
                (z[0] - z[1]) / t
            } else {
                (z[1] - z[0]) / t
            };
        }
        e.copy_from_slice(x);
        exp_in_place(e);
        for (l, &e) in log_s.iter_mut().zip(e.iter()) {
            *l = 1.0 + e;
        }
        ln_in_place(log_s);
        let first = b * ROWS;
        for (j, zr) in z.chunks_exact(2).enumerate() {
            let i = first + j;
            let arg = (zr[1] > zr[0]) as usize;
            let s = 1.0 + e[j];
            // finish_row's values with K = 2 spelled out: e <= 1 (x <= 0), so p_max =
            // 1/S >= e/S = p_other, and r_max <= r_other are the smallest two r.
            let (p_max, p_other) = (1.0 / s, e[j] / s);
            let (r_max, r_other) = (1.0 - p_max, 1.0 - p_other);
            // ln p = x - ln S; the max class's x is +0.
            let term = |p: f32, x: f32| if p > 0.0 { p * (x - log_s[j]) } else { 0.0 };
            let (t_max, t_other) = (term(p_max, 0.0), term(p_other, x[j]));
            // The negative entropy in class order from +0.0, as neg_class_sum_of.
            let ne = if arg == 1 {
                (0.0 + t_other) + t_max
            } else {
                (0.0 + t_max) + t_other
            };
            let y = labels[i];
            let lac = if y == arg as i32 {
                r_max
            } else if y == 1 - arg as i32 {
                r_other
            } else {
                -1.0
            };
            let row_info = &mut info[i * stride..(i + 1) * stride];
            row_info[0] = arg as u32;
            for (slot, &q) in row_info[1..].iter_mut().zip(qhats) {
                *slot = (r_max <= q) as u32 + (r_other <= q) as u32;
            }
            stats[i] = [p_max, ne, lac, r_max, r_other];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The block path (`row_stats`: bulk exp, sums, divisions, logs) against the plain
    /// per-row statement (`row_stats_row`), bit for bit. Sizes straddle a sub-block
    /// (SUB_VALUES / K rows) and a rayon block; K = 2, 3, 4 take the unrolled path, 5 and
    /// 1000 the general one. Quantised logits make ties (equal r_k, several maxima).
    #[test]
    fn blocks_equal_rows_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for k in [2usize, 3, 4, 5, 1000] {
            let sub = (SUB_VALUES / k).max(1);
            for n in [0, 1, sub - 1, sub, sub + 1, 4096 + 1] {
                for t in [1e-3f32, 0.7, 1.0, 1e3] {
                    let logits: Vec<f32> = (0..n * k)
                        .map(|_| (rng.random_range(-8.0f32..8.0) * 2.0).round() / 2.0)
                        .collect();
                    let labels: Vec<i32> = (0..n).map(|_| rng.random_range(-1..k as i32)).collect();
                    let qhats = [0.05f32, 0.5, 0.999, 2.0];
                    let got = row_stats(&logits, &labels, k, t, &qhats);
                    let mut info = vec![0u32; 1 + qhats.len()];
                    for i in 0..n {
                        let want = row_stats_row(
                            &logits[i * k..(i + 1) * k],
                            labels[i],
                            t,
                            &qhats,
                            &mut info,
                        );
                        let same = want
                            .iter()
                            .zip(&got.stats[i])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "k={k} n={n} t={t} row {i}: {:?} vs {want:?}",
                            got.stats[i]
                        );
                        assert_eq!(
                            got.block(i..i + 1).info,
                            &info[..],
                            "k={k} n={n} t={t} row {i}"
                        );
                    }
                }
            }
        }
    }
}
