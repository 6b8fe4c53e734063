// pvalues.wgsl: conformal p-values (DESIGN.md 2.6) of every (row, class) of a target set
// against sorted calibration scores, one thread per row. p is computed exactly as
// softmax.wgsl does (m = max, e = exp((z - m)/T), s = sum e (class_sum.wgsl), p = e / s); the
// count #{i : s_i >= 1 - p_k} is n_chunk minus a lower-bound binary search in the sorted
// chunk. Calibration sets larger than one binding come in several sorted chunks: counts
// accumulate in `counts` across dispatches (`first`/`last` flags). On the last chunk each
// row writes [yhat, largest numerator, second largest numerator, set size per alpha]
// where numerator = 1 + count, and set size = #{k : 1 - p_k <= qhat_a}.
// With `probs = 1` the rows hold probabilities (e.g. from softmax.wgsl), so GPU and CPU
// mirror see the same p and agree bit for bit. CPU mirror: src/cpu/pvalues.rs.

// Keep in sync with `PvalueParams` in src/kernel/pvalues.rs.
struct Params {
    rows: u32,        // rows in this dispatch
    row0: u32,        // first row of this dispatch within the bound logits chunk
    k: u32,
    t: f32,
    n_chunk: u32,     // sorted scores in the bound chunk
    nalpha: u32,
    first: u32,       // first score chunk: counts start at 0
    last: u32,        // last score chunk: write the per-row outputs
    want_counts: u32, // write counts on the last chunk too (numerators = 1 + counts)
    probs: u32,       // 1: the rows hold probabilities already (p = z, yhat = argmax p)
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> scores: array<f32>;
@group(0) @binding(3) var<storage, read> qhats: array<f32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid (also keeps g * WG + lid from wrapping).
    if (g >= groups_of(params.rows, WG)) {
        return;
    }
    let r = g * WG + lid;
    if (r >= params.rows) {
        return;
    }
    let k = params.k;
    let base = (params.row0 + r) * k;
    var m = logits[base];
    var yhat = 0u;
    for (var j = 1u; j < k; j++) {
        let z = logits[base + j];
        if (z > m) {
            m = z;
            yhat = j;
        }
    }
    let from_probs = params.probs != 0u;
    var s = 0.0;
    if (!from_probs) {
        var sum = class_sum_zero();
        for (var j = 0u; j < k; j++) {
            sum = class_sum_add(sum, exp((logits[base + j] - m) / params.t), k);
        }
        s = class_sum_value(sum, k);
    }
    let stride = 3u + params.nalpha;
    let ob = r * stride;
    let last = params.last != 0u;
    if (last) {
        for (var a = 0u; a < params.nalpha; a++) {
            out[ob + 3u + a] = 0u;
        }
    }
    var best = 0u;
    var second = 0u;
    let n = params.n_chunk;
    for (var j = 0u; j < k; j++) {
        var p = logits[base + j];
        if (!from_probs) {
            p = exp((p - m) / params.t) / s;
        }
        let v = 1.0 - p;
        // lo = first index with scores[lo] >= v (scores sorted ascending).
        var lo = 0u;
        var hi = n;
        while (lo < hi) {
            let mid = lo + (hi - lo) / 2u;
            if (scores[mid] < v) {
                lo = mid + 1u;
            } else {
                hi = mid;
            }
        }
        var c = n - lo;
        let idx = r * k + j;
        if (params.first == 0u) {
            c += counts[idx];
        }
        if (!last || params.want_counts != 0u) {
            counts[idx] = c;
        }
        if (last) {
            let num = c + 1u;
            if (num > best) {
                second = best;
                best = num;
            } else if (num > second) {
                second = num;
            }
            for (var a = 0u; a < params.nalpha; a++) {
                if (v <= qhats[a]) {
                    out[ob + 3u + a] += 1u;
                }
            }
        }
    }
    if (last) {
        out[ob] = yhat;
        out[ob + 1u] = best;
        out[ob + 2u] = second;
    }
}
