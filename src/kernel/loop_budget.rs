//! Loop iterations per shader invocation, bounded from above, for adapters that cap them.
//!
//! llvmpipe (Mesa's CPU rasteriser, lavapipe's engine) ends the loops of an invocation
//! once all of them together have run 65,535 iterations (gallivm's
//! `LP_MAX_TGSI_LOOP_ITERATIONS`, "shared between every loop in a shader"), silently:
//! the invocation goes on with short counts. A tally thread that took 16 rows of K = 1000
//! with 31 levels ran about 34,000 iterations a row and miscounted every row after its
//! first. So on software adapters the host keeps each kernel's iterations per invocation
//! under the cap: the tally takes fewer rows a thread, and a kernel whose single row
//! would pass the cap is refused with a typed error (use the CPU path) instead of
//! returning wrong numbers. The bounds count every loop of the shader, the unrolled ones
//! too, so they hold for any pipeline.

/// Loop iterations an llvmpipe invocation runs before its loops are cut short.
pub const LLVMPIPE_LOOP_LIMIT: u64 = 65_535;

/// Iterations of a one-row-a-thread kernel over K classes with `levels` thresholds
/// (softmax, lac_scores, calibration, temperature_nll, row_stats: at most four passes
/// over the classes, the levels inside the last), plus a margin for the fixed loops.
pub fn row_loops(k: usize, levels: usize) -> u64 {
    k as u64 * (4 + levels as u64) + 2 * levels as u64 + 64
}

/// Iterations of a pvalues invocation: per class, a binary search over `n_scores`
/// sorted scores and the levels.
pub fn pvalue_row_loops(k: usize, levels: usize, n_scores: usize) -> u64 {
    let search = u64::from(usize::BITS - n_scores.leading_zeros()) + 1;
    k as u64 * (4 + levels as u64 + search) + 2 * levels as u64 + 64
}

/// Iterations of a bootstrap invocation: one row, up to five row summaries (one per
/// distinct temperature among its draw group's 4 replicates and the raw mode) and the
/// word loops of 8 (mode, replicate) pairs.
pub fn bootstrap_row_loops(k: usize) -> u64 {
    5 * row_loops(k, 0) + 8 * 24
}

/// Iterations one row adds to a tally thread with `lanes` threads a row: its share of
/// the classes in each pass, the team's combining trees, and the counting loops.
pub fn tally_row_loops(k: usize, levels: usize, lanes: u32) -> u64 {
    let lanes = lanes.max(1);
    let share = k.div_ceil(lanes as usize) as u64;
    let trees = 3 * u64::from(lanes.ilog2());
    share * (4 + levels as u64) + trees + 4 * levels as u64 + 64
}

/// Iterations of a tally thread outside its rows: zeroing and flushing the workgroup's
/// words, the slot check.
pub fn tally_tile_loops(levels: usize) -> u64 {
    64 + 8 * levels as u64
}

/// Rows a tally thread takes: `wanted`, or fewer so that they stay within `limit`
/// iterations (`None`: no cap). `None` when even one row passes the cap.
pub fn tally_rows_per_thread(
    wanted: u32,
    limit: Option<u64>,
    k: usize,
    levels: usize,
    lanes: u32,
) -> Option<u32> {
    let wanted = wanted.max(1);
    let Some(limit) = limit else {
        return Some(wanted);
    };
    let rows = limit.saturating_sub(tally_tile_loops(levels)) / tally_row_loops(k, levels, lanes);
    (rows >= 1).then(|| wanted.min(rows.min(u32::MAX as u64) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_case_that_miscounted_now_fits() {
        // 16 rows of K = 1000 with 31 levels, one thread a row: far past the cap.
        assert!(16 * tally_row_loops(1000, 31, 1) > LLVMPIPE_LOOP_LIMIT);
        let rpt = tally_rows_per_thread(16, Some(LLVMPIPE_LOOP_LIMIT), 1000, 31, 1).unwrap();
        assert_eq!(rpt, 1);
        // K = 2 keeps its 16 rows; no cap, no change.
        assert_eq!(
            tally_rows_per_thread(16, Some(LLVMPIPE_LOOP_LIMIT), 2, 1, 1),
            Some(16)
        );
        assert_eq!(tally_rows_per_thread(16, None, 100_000, 31, 1), Some(16));
        // A row past the cap on its own: refused.
        assert_eq!(
            tally_rows_per_thread(16, Some(LLVMPIPE_LOOP_LIMIT), 20_000, 31, 1),
            None
        );
        // Lanes share the classes: K = 20000 fits with 32 lanes.
        assert!(tally_rows_per_thread(16, Some(LLVMPIPE_LOOP_LIMIT), 20_000, 31, 32).is_some());
    }

    #[test]
    fn rows_per_thread_stay_within_the_cap() {
        for k in [1, 2, 3, 63, 64, 100, 999, 1000, 5000, 20_000] {
            for levels in [0, 1, 7, 31] {
                for lanes in [1, 32] {
                    let limit = Some(LLVMPIPE_LOOP_LIMIT);
                    if let Some(r) = tally_rows_per_thread(16, limit, k, levels, lanes) {
                        assert!((1..=16).contains(&r));
                        let used =
                            r as u64 * tally_row_loops(k, levels, lanes) + tally_tile_loops(levels);
                        assert!(used <= LLVMPIPE_LOOP_LIMIT, "K = {k}, {levels} levels");
                    }
                }
            }
        }
    }

    #[test]
    fn bounds_grow_with_the_work() {
        assert!(row_loops(1000, 1) > row_loops(100, 1));
        assert!(pvalue_row_loops(100, 1, 1 << 20) > pvalue_row_loops(100, 1, 10));
        assert!(bootstrap_row_loops(100) > row_loops(100, 0));
    }
}
