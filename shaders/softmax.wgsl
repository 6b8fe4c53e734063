// softmax.wgsl: row-wise softmax at temperature T, one thread per row.
// p_k = exp((z_k - m) / T) / sum_j exp((z_j - m) / T), m = max_j z_j (DESIGN.md 2.1):
// shift first, then scale, so rows equal up to a shift give bit-identical probabilities;
// the sum over classes is order-invariant for K >= 3 (class_sum.wgsl), so rows equal up to
// a shift and a permutation of the classes do too.
// CPU mirror: src/cpu/softmax.rs.

// Keep in sync with `SoftmaxParams` in src/kernel/softmax.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid (also keeps g * WG + lid from wrapping).
    if (g >= groups_of(params.rows, WG)) {
        return;
    }
    let row = g * WG + lid;
    if (row >= params.rows) {
        return;
    }
    let k = params.k;
    let base = row * k;
    var m = logits[base];
    for (var j = 1u; j < k; j++) {
        m = max(m, logits[base + j]);
    }
    var sum = class_sum_zero();
    for (var j = 0u; j < k; j++) {
        let e = exp((logits[base + j] - m) / params.t);
        probs[base + j] = e;
        sum = class_sum_add(sum, e, k);
    }
    let s = class_sum_value(sum, k);
    for (var j = 0u; j < k; j++) {
        probs[base + j] = probs[base + j] / s;
    }
}
