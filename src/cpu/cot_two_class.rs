//! CPU mirror of shaders/cot_two_class.wgsl: the passes of COT at K = 2 over a set's
//! probabilities (`kernel::cot_two_class`), each row's key made as the shader makes it.
//! Every output is an integer sum, so blocks (and the shader's workgroups) add in any
//! order to the same bits.

use rayon::prelude::*;

use crate::kernel::cot_two_class::{
    above_digit, gain_key, probability_cost, CotPass, CotPassOutput, PassSums, DIGITS,
};

/// Rows per parallel block (results do not depend on it).
const BLOCK_ROWS: usize = 1 << 14;

/// One histogram pass: the digits at `shift` of the keys under each of `prefixes`
/// (`prefixes.len() x DIGITS`), over the rows of `probs` (`rows x 2`, finite in `[0,
/// 1]`: checked by `kernel::score_ranks::check_probabilities`, as the backends do first).
pub fn histogram(probs: &[f32], shift: u32, prefixes: &[u64]) -> Vec<u64> {
    let bins = prefixes.len() * DIGITS;
    probs
        .par_chunks(BLOCK_ROWS * 2)
        .map(|block| {
            let mut hist = vec![0u64; bins];
            for p in block.chunks_exact(2) {
                let key = gain_key(p[0], p[1]);
                let hi = above_digit(key, shift);
                if let Some(r) = prefixes.iter().position(|&x| x == hi) {
                    hist[r * DIGITS + ((key >> shift) & 255) as usize] += 1;
                }
            }
            hist
        })
        .reduce(
            || vec![0u64; bins],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The sums pass: the base `sum c_i0` and the count and sum of the keys strictly above
/// `boundary`, over the rows of `probs` (`rows x 2`).
pub fn sums(probs: &[f32], boundary: u64) -> PassSums {
    probs
        .par_chunks(BLOCK_ROWS * 2)
        .map(|block| {
            let mut s = PassSums::default();
            for p in block.chunks_exact(2) {
                let key = gain_key(p[0], p[1]);
                s.base += probability_cost(p[0]) as u128;
                if key > boundary {
                    s.above_count += 1;
                    s.above_sum += key as u128;
                }
            }
            s
        })
        .reduce(PassSums::default, |mut a, b| {
            a.merge(&b);
            a
        })
}

/// One [`CotPass`] over `probs` (`rows x 2`, checked as for [`histogram`]).
pub fn pass(probs: &[f32], pass: CotPass<'_>) -> CotPassOutput {
    match pass {
        CotPass::Histogram { shift, prefixes } => {
            CotPassOutput::Histogram(histogram(probs, shift, prefixes))
        }
        CotPass::Sums { boundary } => CotPassOutput::Sums(sums(probs, boundary)),
    }
}
