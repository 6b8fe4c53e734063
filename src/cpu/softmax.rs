//! CPU mirror of shaders/softmax.wgsl.

use rayon::prelude::*;

use super::common::row_max;

/// Softmax of one row at temperature `t` into `out` (shift, then scale; f32 as the shader).
#[inline]
pub fn softmax_row(row: &[f32], t: f32, out: &mut [f32]) {
    let (m, _) = row_max(row);
    let mut s = 0.0f32;
    for (o, &z) in out.iter_mut().zip(row) {
        let e = ((z - m) / t).exp();
        *o = e;
        s += e;
    }
    for o in out.iter_mut() {
        *o /= s;
    }
}

/// Row-wise softmax of `logits` (`n * k`, row-major) at temperature `t`.
pub fn softmax(logits: &[f32], k: usize, t: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; logits.len()];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(k * 4096)
        .zip(logits.par_chunks(k * 4096))
        .for_each(|(o, l)| {
            for (orow, lrow) in o.chunks_exact_mut(k).zip(l.chunks_exact(k)) {
                softmax_row(lrow, t, orow);
            }
        });
    out
}
