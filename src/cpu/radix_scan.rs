//! CPU mirror of shaders/radix_scan.wgsl: exclusive scan of each digit's row of one
//! chunk's tile histograms, carried across chunks.

/// Scans `hist` (`[d * tiles + t]`) in place into exclusive prefixes starting at
/// `carry[d]` (or 0 when `first`), and leaves the running totals in `carry`.
pub fn radix_scan(hist: &mut [u32], tiles: usize, carry: &mut [u32; 256], first: bool) {
    for (d, c) in carry.iter_mut().enumerate() {
        let mut run = if first { 0 } else { *c };
        for h in &mut hist[d * tiles..(d + 1) * tiles] {
            let v = *h;
            *h = run;
            run = run.wrapping_add(v);
        }
        *c = run;
    }
}
