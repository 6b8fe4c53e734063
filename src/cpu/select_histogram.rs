//! CPU mirror of shaders/select_histogram.wgsl, the MSD radix select driver written over
//! it, and the plain oracle (`select_nth_unstable_by(total_cmp)`).

use rayon::prelude::*;

use crate::kernel::common::{f32_to_sortable, sortable_to_f32};
pub use crate::kernel::select_histogram::{distinct_prefixes, narrow, Narrow};

/// Histograms (`[r * 256 + d]`) of the digit at `shift` of the keys whose bits above that
/// digit equal `prefixes[r]`. Sums over keys, so chunks merge by adding histograms.
pub fn select_histogram(keys: &[f32], shift: u32, prefixes: &[u32]) -> Vec<u32> {
    let mask = if shift < 24 {
        u32::MAX << (shift + 8)
    } else {
        0
    };
    let np = prefixes.len();
    keys.par_chunks(1 << 16)
        .map(|c| {
            let mut h = vec![0u32; np * 256];
            for &k in c {
                let key = f32_to_sortable(k);
                if let Some(r) = prefixes.iter().position(|&p| p == key & mask) {
                    h[r * 256 + ((key >> shift) & 255) as usize] += 1;
                }
            }
            h
        })
        .reduce(
            || vec![0u32; np * 256],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Mirror-driven radix select: the `ks`-th smallest keys (1-based, each in `1..=n`).
pub fn radix_select(keys: &[f32], ks: &[usize]) -> Vec<f32> {
    let mut state: Vec<Narrow> = ks
        .iter()
        .map(|&k| Narrow {
            prefix: 0,
            rank: k as u64,
        })
        .collect();
    for shift in [24u32, 16, 8, 0] {
        let prefixes = distinct_prefixes(&state);
        let hist: Vec<u64> = select_histogram(keys, shift, &prefixes)
            .into_iter()
            .map(u64::from)
            .collect();
        narrow(&mut state, &prefixes, &hist, shift);
    }
    state.iter().map(|s| sortable_to_f32(s.prefix)).collect()
}

/// Oracle: the `ks`-th smallest keys (1-based, each in `1..=n`) by `total_cmp`, with
/// `select_nth_unstable_by` on one copy, ranks taken in ascending order.
pub fn select_oracle(keys: &[f32], ks: &[usize]) -> Vec<f32> {
    let mut v = keys.to_vec();
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&i| ks[i]);
    let mut out = vec![0.0f32; ks.len()];
    let mut lo = 0usize;
    let mut last: Option<(usize, f32)> = None;
    for i in order {
        let k = ks[i];
        if let Some((lk, lv)) = last {
            if lk == k {
                out[i] = lv;
                continue;
            }
        }
        let idx = k - 1;
        let (_, x, _) = v[lo..].select_nth_unstable_by(idx - lo, |a, b| a.total_cmp(b));
        let x = *x;
        out[i] = x;
        lo = idx + 1;
        last = Some((k, x));
    }
    out
}
