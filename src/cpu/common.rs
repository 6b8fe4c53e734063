//! CPU mirror of shaders/common.wgsl (the sortable key mapping it shares with the host
//! is `kernel::common`).

/// Row max and argmax (lowest index on ties), as every shader computes them.
#[inline]
pub fn row_max(row: &[f32]) -> (f32, usize) {
    let mut m = row[0];
    let mut arg = 0;
    for (j, &z) in row.iter().enumerate().skip(1) {
        if z > m {
            m = z;
            arg = j;
        }
    }
    (m, arg)
}
