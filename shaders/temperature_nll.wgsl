// temperature_nll.wgsl: per-workgroup partial sums for the temperature fit (DESIGN.md 2.2)
// at b = 1/T. Per row, with d_k = z_k - max(z), e_k = exp(b d_k), S = sum e_k:
//   nll  = log S - b d_y                  (logsumexp(b z) - b z_y)
//   grad = E_p[d] - d_y                   (dNLL/db per row)
//   hess = E_p[(d - E_p[d])^2]            (d2NLL/db2 per row, centred: no cancellation)
// Rows with label < 0 contribute nothing. Partials are f32 tree sums over 256 rows;
// the host adds them in f64. CPU mirror: src/cpu/temperature_nll.rs.

// Keep in sync with `NllParams` in src/kernel/temperature_nll.rs.
struct Params {
    rows: u32,
    k: u32,
    b: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
// 4 floats per workgroup: nll, grad, hess, labelled-row count.
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

var<workgroup> sh: array<vec4<f32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid: it owns no partial slot (partials hold exactly
    // groups_of(rows, WG) of them), so it must not write one.
    if (g >= groups_of(params.rows, WG)) {
        return;
    }
    let row = g * WG + lid;
    var acc = vec4<f32>(0.0);
    if (row < params.rows) {
        let y = labels[row];
        if (y >= 0) {
            let k = params.k;
            let base = row * k;
            let b = params.b;
            var m = logits[base];
            for (var j = 1u; j < k; j++) {
                m = max(m, logits[base + j]);
            }
            var s = 0.0;
            var sd = 0.0;
            for (var j = 0u; j < k; j++) {
                let d = logits[base + j] - m;
                let e = exp(b * d);
                s += e;
                sd += e * d;
            }
            let mu = sd / s;
            var sv = 0.0;
            for (var j = 0u; j < k; j++) {
                let c = (logits[base + j] - m) - mu;
                sv += exp(b * (logits[base + j] - m)) * c * c;
            }
            let dy = logits[base + u32(y)] - m;
            acc = vec4<f32>(log(s) - b * dy, mu - dy, sv / s, 1.0);
        }
    }
    sh[lid] = acc;
    workgroupBarrier();
    // Fixed tree order: the CPU mirror reproduces it to compare partials stage by stage.
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            sh[lid] = sh[lid] + sh[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let r = sh[0];
        partials[4u * g] = r.x;
        partials[4u * g + 1u] = r.y;
        partials[4u * g + 2u] = r.z;
        partials[4u * g + 3u] = r.w;
    }
}
