//! CPU mirror of shaders/score_ranks.wgsl: each row's rank words (`kernel::score_ranks`),
//! one row at a time as one invocation takes it. The shader sorts a row with a heap and
//! this with the standard sort; the words do not see the order within a tie group, so the
//! two agree bit for bit.

use rayon::prelude::*;

use crate::kernel::score_ranks::{prob_grid, ClassRank, RANK_WORDS};

/// Rows per parallel block (results do not depend on it).
const BLOCK_ROWS: usize = 1024;

/// The words of one row (`probs`, its K probabilities, finite and non-negative) into
/// `out` (`K x RANK_WORDS`), with `order` as reusable scratch: classes sorted by
/// probability descending, then one walk over the tie groups.
pub fn row_ranks(probs: &[f32], order: &mut Vec<u32>, out: &mut [u32]) {
    let k = probs.len();
    order.clear();
    order.extend(0..k as u32);
    // The shader's key: the bits of the magnitude (for p in [0, 1] the order of the
    // values, with -0.0 = 0.0 in one tie group).
    let key = |c: u32| probs[c as usize].to_bits() & 0x7fff_ffff;
    order.sort_unstable_by_key(|&c| std::cmp::Reverse(key(c)));
    let mut above = 0u64;
    let mut start = 0;
    while start < k {
        let p = key(order[start]);
        let mut end = start;
        let mut group = 0u64;
        while end < k && key(order[end]) == p {
            group += prob_grid(probs[order[end] as usize]);
            end += 1;
        }
        let words = ClassRank {
            above,
            group,
            rank: end as u32,
        }
        .to_words();
        for &c in &order[start..end] {
            out[c as usize * RANK_WORDS..][..RANK_WORDS].copy_from_slice(&words);
        }
        above += group;
        start = end;
    }
}

/// The words of every row of `probs` (`rows x k`, checked by
/// `kernel::score_ranks::check_probabilities`): `rows x k x RANK_WORDS`, row-major.
pub fn score_ranks(probs: &[f32], k: usize) -> Vec<u32> {
    let mut out = vec![0u32; probs.len() * RANK_WORDS];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(BLOCK_ROWS * k * RANK_WORDS)
        .zip(probs.par_chunks(BLOCK_ROWS * k))
        .for_each(|(o, p)| {
            let mut order = Vec::with_capacity(k);
            for (orow, prow) in o.chunks_exact_mut(k * RANK_WORDS).zip(p.chunks_exact(k)) {
                row_ranks(prow, &mut order, orow);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_words_describe_ties() {
        // Classes 1, 3 and 5 tie, as do 0.0 and -0.0: a group shares A, E and its last rank.
        let p = [0.1f32, 0.3, 0.0, 0.3, -0.0, 0.3];
        let out = score_ranks(&p, p.len());
        let r: Vec<ClassRank> = out.chunks(RANK_WORDS).map(ClassRank::from_words).collect();
        let g3 = 3 * prob_grid(0.3);
        let top = ClassRank {
            above: 0,
            group: g3,
            rank: 3,
        };
        assert_eq!([r[1], r[3], r[5]], [top; 3]);
        let second = ClassRank {
            above: g3,
            group: prob_grid(0.1),
            rank: 4,
        };
        assert_eq!(r[0], second);
        let zero = ClassRank {
            above: g3 + prob_grid(0.1),
            group: 0,
            rank: 6,
        };
        assert_eq!([r[2], r[4]], [zero; 2]);
        for c in &r {
            assert_eq!(ClassRank::from_words(&c.to_words()), *c);
        }
    }
}
