// row_stats.wgsl: per-row summaries every estimator is built from (DESIGN.md 2.1-2.9), at
// temperature T, one thread per row. Probabilities exactly as softmax.wgsl computes them:
// m = max z, e_k = exp((z_k - m)/T), S = sum_k e_k (in order k = 0..K-1), p_k = e_k / S.
// Per row:
//   stats = (p_(1), p_(2), ne, lac): the largest and second-largest probability,
//           ne = sum_k p_k ln p_k (0 ln 0 = 0), lac = 1 - p_y (-1 when the label is unknown);
//   info  = [yhat, |C_a| for each requested qhat_a], yhat = argmax of the logits (lowest index
//           on ties), |C_a| = #{k : 1 - p_k <= qhat_a}.
// CPU mirror: src/cpu/row_stats.rs.

// Keep in sync with `RowStatsParams` in src/gpu/row_stats.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    n_alpha: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// n_alpha thresholds (+inf is passed as 2.0: every 1 - p_k <= 1 < 2).
@group(0) @binding(3) var<storage, read> qhats: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg) * WG + lid;
    if (row >= params.rows) {
        return;
    }
    let k = params.k;
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
    var s = 0.0;
    for (var j = 0u; j < k; j++) {
        s += exp((logits[base + j] - m) / params.t);
    }
    // Top two of e_k (p_k = e_k / s is monotone in e_k), entropy term, set sizes.
    var e1 = -1.0;
    var e2 = -1.0;
    var ne = 0.0;
    let stride = 1u + params.n_alpha;
    for (var a = 0u; a < params.n_alpha; a++) {
        info[row * stride + 1u + a] = 0u;
    }
    for (var j = 0u; j < k; j++) {
        let e = exp((logits[base + j] - m) / params.t);
        if (e > e1) {
            e2 = e1;
            e1 = e;
        } else if (e > e2) {
            e2 = e;
        }
        let p = e / s;
        if (p > 0.0) {
            ne += p * log(p);
        }
        let r = 1.0 - p;
        for (var a = 0u; a < params.n_alpha; a++) {
            if (r <= qhats[a]) {
                info[row * stride + 1u + a] += 1u;
            }
        }
    }
    let y = labels[row];
    var lac = -1.0;
    if (y >= 0) {
        lac = 1.0 - exp((logits[base + u32(y)] - m) / params.t) / s;
    }
    stats[row] = vec4<f32>(e1 / s, e2 / s, ne, lac);
    info[row * stride] = arg;
}
