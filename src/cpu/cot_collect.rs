//! CPU mirror of shaders/cot_collect.wgsl: COT's collect pass at K > 2 over rows of
//! probabilities (`kernel::cot_collect`), each row classified as the shader does it.
//! Blocks run in parallel and merge in row order (sums, minima, free rows ascending), so
//! the result does not depend on the threads.

use rayon::prelude::*;

use crate::kernel::cot_collect::{CollectPoint, CollectSums};

/// Rows per parallel block (results do not depend on it).
const BLOCK_ROWS: usize = 1 << 13;

/// The collect pass at `point` over `probs` (`rows x k`, finite in `[0, 1]`: checked by
/// `kernel::score_ranks::check_probabilities`, as the backends do first); free rows
/// indexed from 0.
pub fn collect(probs: &[f32], point: &CollectPoint) -> CollectSums {
    let k = point.k();
    probs
        .par_chunks(BLOCK_ROWS * k)
        .enumerate()
        .map(|(j, block)| {
            let mut s = CollectSums::empty(k);
            let mut costs = vec![0u64; k];
            for (i, row) in (((j * BLOCK_ROWS) as u64)..).zip(block.chunks_exact(k)) {
                s.add_row(point, i, row, &mut costs);
            }
            s
        })
        .reduce(
            || CollectSums::empty(k),
            |mut a, b| {
                a.merge(&b);
                a
            },
        )
}
