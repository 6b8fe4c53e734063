//! Sort and select as the CPU path runs them: radix algorithms shaped for a CPU (not the
//! GPU's tiles, see `radix_sort` for that mirror). Sorted keys, a stable order and an
//! order statistic are unique, so these give the bits of the plain oracles
//! (`radix_sort::sort_keys`, `select_histogram::select_oracle`), which the tests check,
//! at a fraction of their time: comparison sorts and introselect on f32 lose to
//! counting on the keys' bits.

use rayon::prelude::*;

use crate::kernel::common::{f32_to_sortable, sortable_to_f32};

/// An element being sorted: a sortable key alone, or a key with a u32 payload in its low
/// half (`key << 32 | payload`).
trait Item: Copy + Default + Send + Sync {
    fn key(self) -> u32;
}

impl Item for u32 {
    #[inline(always)]
    fn key(self) -> u32 {
        self
    }
}

impl Item for u64 {
    #[inline(always)]
    fn key(self) -> u32 {
        (self >> 32) as u32
    }
}

/// Below this many elements a bucket is sorted by the standard library's stable sort.
const SMALL: usize = 256;

/// Stable sort by `key()`: one most-significant pass on the top 11 bits scatters into
/// 2048 contiguous buckets, then every bucket is sorted on its low 21 bits by two
/// least-significant passes, buckets in parallel (disjoint slices; the input buffer is
/// the scratch). Every pass is a stable counting scatter, so equal keys keep their order.
fn sort_items<T: Item>(mut v: Vec<T>) -> Vec<T> {
    if v.len() <= SMALL {
        v.sort_by_key(|x| x.key());
        return v;
    }
    let mut count = vec![0usize; 1 << 11];
    for x in &v {
        count[(x.key() >> 21) as usize] += 1;
    }
    let mut pos = Vec::with_capacity(count.len());
    let mut at = 0;
    for &c in &count {
        pos.push(at);
        at += c;
    }
    let mut out = vec![T::default(); v.len()];
    for &x in &v {
        let d = (x.key() >> 21) as usize;
        out[pos[d]] = x;
        pos[d] += 1;
    }
    let mut jobs = Vec::new();
    let (mut rest, mut scratch) = (&mut out[..], &mut v[..]);
    for &c in &count {
        let (a, r) = std::mem::take(&mut rest).split_at_mut(c);
        let (s, q) = std::mem::take(&mut scratch).split_at_mut(c);
        (rest, scratch) = (r, q);
        if c > 1 {
            jobs.push((a, s));
        }
    }
    jobs.into_par_iter().for_each(|(a, s)| sort_low(a, s));
    out
}

/// Stable sort of one bucket (equal top 11 bits) on bits 0..21: LSD passes of 11 and 10
/// bits, `a` -> `scratch` -> `a`.
fn sort_low<T: Item>(a: &mut [T], scratch: &mut [T]) {
    if a.len() <= SMALL {
        a.sort_by_key(|x| x.key());
        return;
    }
    for (shift, bits, from_a) in [(0u32, 11u32, true), (11, 10, false)] {
        let (src, dst): (&[T], &mut [T]) = if from_a {
            (&*a, &mut *scratch)
        } else {
            (&*scratch, &mut *a)
        };
        let mask = (1u32 << bits) - 1;
        let mut pos = [0usize; 1 << 11];
        for x in src {
            pos[((x.key() >> shift) & mask) as usize] += 1;
        }
        let mut at = 0;
        for p in pos.iter_mut() {
            (at, *p) = (at + *p, at);
        }
        for &x in src {
            let d = ((x.key() >> shift) & mask) as usize;
            dst[pos[d]] = x;
            pos[d] += 1;
        }
    }
}

/// Keys sorted by `f32::total_cmp` (-0.0 before +0.0). NaN must be rejected first.
pub fn sort_keys(keys: &[f32]) -> Vec<f32> {
    let u: Vec<u32> = keys.par_iter().map(|&k| f32_to_sortable(k)).collect();
    // Back to f32 bits in place: no third n-element allocation (page faults cost more
    // than the conversion).
    let mut out = sort_items(u);
    out.par_iter_mut()
        .for_each(|x| *x = sortable_to_f32(*x).to_bits());
    bytemuck::allocation::cast_vec(out)
}

/// Stable sort of `keys` by `total_cmp` carrying `payload` along (same length).
pub fn sort_pairs(keys: &[f32], payload: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let u: Vec<u64> = keys
        .par_iter()
        .zip(payload)
        .map(|(&k, &p)| ((f32_to_sortable(k) as u64) << 32) | p as u64)
        .collect();
    sort_items(u)
        .into_par_iter()
        .map(|x| (sortable_to_f32((x >> 32) as u32), x as u32))
        .unzip()
}

/// The `ks[j]`-th smallest keys (1-based, each in `1..=n`) by `total_cmp`: a histogram of
/// the top 16 bits of the sortable keys (in parallel) finds each rank's bucket and its
/// rank inside it, one pass gathers the few buckets asked for, and each is finished by
/// `select_nth_unstable` on its own elements. NaN must be rejected first.
pub fn select(keys: &[f32], ks: &[usize]) -> Vec<f32> {
    const BUCKETS: usize = 1 << 16;
    let hist = keys
        .par_chunks(1 << 16)
        .fold(
            || vec![0usize; BUCKETS],
            |mut h, c| {
                for &k in c {
                    h[(f32_to_sortable(k) >> 16) as usize] += 1;
                }
                h
            },
        )
        .reduce(
            || vec![0usize; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // Bucket of each rank and the rank inside it, by one walk over the cumulative counts.
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&j| ks[j]);
    let mut want = vec![(0usize, 0usize); ks.len()];
    let (mut b, mut below) = (0usize, 0usize);
    for &j in &order {
        while below + hist[b] < ks[j] {
            below += hist[b];
            b += 1;
        }
        want[j] = (b, ks[j] - below);
    }
    // Gather the elements of the buckets asked for (slot per bucket), in one pass.
    let mut slot = vec![u32::MAX; BUCKETS];
    let mut members: Vec<Vec<u32>> = Vec::new();
    for &(b, _) in &want {
        if slot[b] == u32::MAX {
            slot[b] = members.len() as u32;
            members.push(Vec::with_capacity(hist[b]));
        }
    }
    for &k in keys {
        let u = f32_to_sortable(k);
        let s = slot[(u >> 16) as usize];
        if s != u32::MAX {
            members[s as usize].push(u);
        }
    }
    want.iter()
        .map(|&(b, r)| {
            let m = &mut members[slot[b] as usize];
            sortable_to_f32(*m.select_nth_unstable(r - 1).1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::radix_sort as oracle;
    use crate::cpu::select_histogram::select_oracle;
    use rand::{Rng, SeedableRng};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Keys of several shapes: wide random, a few distinct values (long tie runs, one
    /// bucket), signed zeros and infinities, LAC-like scores piled up near 0.
    fn cases(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let specials = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0];
        vec![
            (0..n).map(|_| r.random_range(-1e6f32..1e6)).collect(),
            (0..n).map(|_| r.random_range(0..4) as f32 * 0.25).collect(),
            (0..n)
                .map(|_| specials[r.random_range(0..specials.len())])
                .collect(),
            (0..n)
                .map(|_| r.random_range(0.0f32..1.0).powi(12))
                .collect(),
            vec![0.5; n],
        ]
    }

    /// Sizes around the small-bucket cut-off and a few hundred thousand (many buckets,
    /// parallel); every case against the comparison-sort oracles, bit for bit, and the
    /// payload order against a stable sort.
    #[test]
    fn equals_oracles_bit_for_bit() {
        for n in [0usize, 1, 2, SMALL - 1, SMALL, SMALL + 1, 5000, 300_000] {
            for (c, keys) in cases(n, n as u64).into_iter().enumerate() {
                assert_eq!(
                    bits(&sort_keys(&keys)),
                    bits(&oracle::sort_keys(&keys)),
                    "n={n} case {c}"
                );
                let payload: Vec<u32> = (0..n as u32).collect();
                let (k, p) = sort_pairs(&keys, &payload);
                let (ok, op) = oracle::sort_pairs(&keys, &payload);
                assert_eq!(bits(&k), bits(&ok), "n={n} case {c} pairs");
                assert_eq!(p, op, "n={n} case {c} payload order (stability)");
                if n > 0 {
                    let ks: Vec<usize> = [1, n, n.div_ceil(2), (n * 9).div_ceil(10), 1, n]
                        .into_iter()
                        .collect();
                    assert_eq!(
                        bits(&select(&keys, &ks)),
                        bits(&select_oracle(&keys, &ks)),
                        "n={n} case {c} select"
                    );
                }
            }
        }
    }
}
