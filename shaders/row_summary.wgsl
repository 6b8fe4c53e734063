// row_summary.wgsl: the per-row summary that row_stats.wgsl writes out and tally.wgsl and
// bootstrap.wgsl count, written once so all compute the same bits (src/shaders.rs appends
// it to those; they declare `params` with k and n_alpha, and `logits`, `labels`, `qhats`).
// Probabilities exactly as softmax.wgsl computes them: m = max z, e_k = exp((z_k - m)/T),
// S = sum_k e_k (order-invariant for K >= 3: class_sum.wgsl, also composed into these
// shaders), p_k = e_k / S. The negative entropy sums over classes the same way. r_k = 1 - p_k
// is computed once and reused by every comparison (a compiler may round `1 - e/s`
// differently in two places; ties on quantised logits must stay ties).
// CPU mirror: src/cpu/row_stats.rs.

// At most this many levels per pass. Keep in sync with `MAX_ALPHA_PER_PASS` in
// src/kernel/row_stats.rs.
const MAX_LEVELS: u32 = 31u;

// Pipeline-overridable shape (kernel::row_stats::pipeline_constants): 0 reads the value
// from `params` (any K, any level count); a value makes every loop over classes and levels
// a fixed-count loop, which the compiler unrolls, keeping the per-thread arrays in
// registers (about 2x on a software rasteriser for K = 2). Same arithmetic, same bits.
override CLASSES: u32 = 0u;
override LEVELS: u32 = 0u;

// Classes per row: the pipeline's constant, or params.k.
fn row_classes() -> u32 {
    if (CLASSES != 0u) {
        return CLASSES;
    }
    return params.k;
}

// Conformal levels: the pipeline's constant, or params.n_alpha.
fn row_levels() -> u32 {
    if (LEVELS != 0u) {
        return LEVELS;
    }
    return params.n_alpha;
}

struct RowSummary {
    // Largest probability.
    p1: f32,
    // sum_k p_k ln p_k (0 ln 0 = 0; ln p_k = (z_k - m)/T - ln S), order-invariant.
    ne: f32,
    // r_y, or -1 when the label is unknown.
    lac: f32,
    // The smallest and second-smallest r_k (= 1 - p_(1), 1 - p_(2)).
    r1: f32,
    r2: f32,
    // Argmax of the logits, lowest index on ties.
    arg: u32,
    // The label (-1 = unknown).
    y: i32,
}

// The summary of `row`; sizes[a] = #{k : r_k <= qhats[a]} for a < row_levels().
// `t` is the temperature (a bootstrap replicate's own in bootstrap.wgsl).
fn row_summary(row: u32, t: f32, sizes: ptr<function, array<u32, MAX_LEVELS>>) -> RowSummary {
    let k = row_classes();
    let n_alpha = row_levels();
    let base = row * k;
    var m = logits[base];
    var arg = 0u;
    for (var j = 1u; j < k; j++) {
        let z = logits[base + j];
        if (z > m) {
            m = z;
            arg = j;
        }
    }
    var sum = class_sum_zero();
    for (var j = 0u; j < k; j++) {
        sum = class_sum_add(sum, exp((logits[base + j] - m) / t), k);
    }
    let s = class_sum_value(sum, k);
    let log_s = log(s);
    var ne = class_sum_zero();
    var out = RowSummary(-1.0, 0.0, -1.0, 2.0, 2.0, arg, labels[row]);
    for (var a = 0u; a < n_alpha; a++) {
        (*sizes)[a] = 0u;
    }
    for (var j = 0u; j < k; j++) {
        let x = (logits[base + j] - m) / t;
        let p = exp(x) / s;
        let r = 1.0 - p;
        out.p1 = max(out.p1, p);
        if (r < out.r1) {
            out.r2 = out.r1;
            out.r1 = r;
        } else if (r < out.r2) {
            out.r2 = r;
        }
        if (p > 0.0) {
            // ln p_k = x_k - ln S: one log per row, and accurate for tiny p_k.
            ne = class_neg_sum_add(ne, p * (x - log_s), k);
        }
        if (i32(j) == out.y) {
            out.lac = r;
        }
        for (var a = 0u; a < n_alpha; a++) {
            if (r <= qhats[a]) {
                (*sizes)[a] += 1u;
            }
        }
    }
    out.ne = class_neg_sum_value(ne, k);
    return out;
}
