// row_stats.wgsl: per-row summaries every estimator is built from (DESIGN.md 2.1-2.9), at
// temperature T, one thread per row (the summary itself: row_summary.wgsl). Per row:
//   stats = (p_(1), ne, lac, r_(1), r_(2)): the largest probability, ne = sum_k p_k ln p_k
//           (0 ln 0 = 0; ln p_k = (z_k - m)/T - ln S), lac = r_y (-1 when the label is unknown), the smallest and
//           second-smallest r_k (= 1 - p_(1), 1 - p_(2));
//   info  = [yhat, |C_a| for each requested qhat_a], yhat = argmax of the logits (lowest index
//           on ties), |C_a| = #{k : r_k <= qhat_a}.
// CPU mirror: src/cpu/row_stats.rs.

// Keep in sync with `RowStatsParams` in src/kernel/row_stats.rs.
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
// 5 floats per row (see above), planar: stats[c * rows + row].
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> info: array<u32>;

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
    var sizes: array<u32, MAX_LEVELS>;
    let r = row_summary(row, params.t, &sizes);
    let stride = 1u + row_levels();
    for (var a = 0u; a < row_levels(); a++) {
        info[row * stride + 1u + a] = sizes[a];
    }
    // Planar: column c of every row together, so a column can be sorted where it lies.
    let n = params.rows;
    stats[row] = r.p1;
    stats[n + row] = r.ne;
    stats[2u * n + row] = r.lac;
    stats[3u * n + row] = r.r1;
    stats[4u * n + row] = r.r2;
    info[row * stride] = r.arg;
}
