// lac_scores.wgsl: LAC conformity scores s_i = 1 - p_{y_i} (DESIGN.md 2.4), one thread per
// row, with p computed exactly as softmax.wgsl does: m = max_j z_j, e_j = exp((z_j - m)/T),
// s = sum_j e_j (order-invariant for K >= 3: class_sum.wgsl), p_y = e_y / s. Labels must be
// known (checked on the host).
// CPU mirror: src/cpu/lac_scores.rs.

// Keep in sync with `LacParams` in src/kernel/lac_scores.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

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
    var ey = 0.0;
    let y = labels[row];
    for (var j = 0u; j < k; j++) {
        let e = exp((logits[base + j] - m) / params.t);
        sum = class_sum_add(sum, e, k);
        if (i32(j) == y) {
            ey = e;
        }
    }
    if (y < 0 || u32(y) >= k) {
        // Unknown label: NaN (bits 0x7fc00000) that the host reports as an error.
        scores[row] = bitcast<f32>(0x7fc00000u);
        return;
    }
    scores[row] = 1.0 - ey / class_sum_value(sum, k);
}
