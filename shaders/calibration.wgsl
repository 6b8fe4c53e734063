// calibration.wgsl: per-workgroup ECE bins and accuracy counts at temperature T
// (DESIGN.md 2.2-2.3). Confidence c = max_k p_k = 1 / sum_j exp((z_j - m)/T) (the max term
// is exp(0) = 1; the sum over classes as every kernel takes it, class_sum.wgsl).
// yhat = argmax of the logits, lowest index on ties. Bin = ceil(15 c) - 1 clamped to 0..14,
// computed exactly in integers (15 * mantissa fits in 28 bits), so the GPU bins a given c
// exactly as the f64 definition does. Rows with label < 0 are skipped.
// CPU mirror: src/cpu/calibration.rs.

// Keep in sync with `CalibrationParams` in src/kernel/calibration.rs.
struct Params {
    rows: u32,
    k: u32,
    t: f32,
    _pad: u32,
}

// Keep in sync with `BINS` and `NCOUNT` in src/kernel/calibration.rs (checked by
// tests/pod_layout.rs).
const BINS: u32 = 15u;
// Per workgroup: counts[32] = 15 bin counts, 15 bin correct counts, correct, labelled.
const NCOUNT: u32 = 32u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;
// Per workgroup: 16 floats = 15 bin confidence sums, then the sum of c over labelled rows.
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;

var<workgroup> cnt: array<atomic<u32>, 32>;
// Each row's confidence and bin (BINS when unlabelled), then the trees' levels: bin b's
// nodes at tree[b * WG / 2 ..].
var<workgroup> row_conf: array<f32, 256>;
var<workgroup> row_bin: array<u32, 256>;
var<workgroup> tree: array<f32, 2048>;

// ceil(15 c) - 1 clamped to [0, 14], exact for any f32 c in [0, 1].
fn ece_bin(c: f32) -> u32 {
    let bits = bitcast<u32>(c);
    let e = (bits >> 23u) & 0xffu;
    if (e == 0u && (bits & 0x7fffffu) == 0u) {
        return 0u;
    }
    var mant = bits & 0x7fffffu;
    var shift: u32;
    if (e == 0u) {
        shift = 149u;
    } else {
        mant = mant | 0x800000u;
        // c = mant * 2^(e - 150); shift = 150 - e.
        shift = 150u - min(e, 150u);
    }
    let x = 15u * mant;
    var up: u32;
    if (shift >= 32u) {
        up = select(0u, 1u, x > 0u);
    } else if (shift == 0u) {
        up = x;
    } else {
        up = (x >> shift) + select(0u, 1u, (x & ((1u << shift) - 1u)) != 0u);
    }
    return clamp(up, 1u, BINS) - 1u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid: it owns no partial slot (counts and sums hold
    // exactly groups_of(rows, WG) of them), so it must not write one.
    if (g >= groups_of(params.rows, WG)) {
        return;
    }
    let row = g * WG + lid;
    if (lid < NCOUNT) {
        atomicStore(&cnt[lid], 0u);
    }
    workgroupBarrier();
    var conf = 0.0;
    var bin = BINS;
    if (row < params.rows) {
        let y = labels[row];
        if (y >= 0) {
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
            var sum = class_sum_zero();
            for (var j = 0u; j < k; j++) {
                sum = class_sum_add(sum, exp((logits[base + j] - m) / params.t), k);
            }
            conf = 1.0 / class_sum_value(sum, k);
            bin = ece_bin(conf);
            let correct = select(0u, 1u, arg == u32(y));
            atomicAdd(&cnt[bin], 1u);
            atomicAdd(&cnt[BINS + bin], correct);
            atomicAdd(&cnt[30u], correct);
            atomicAdd(&cnt[31u], 1u);
        }
    }
    workgroupBarrier();
    if (lid < NCOUNT) {
        counts[NCOUNT * g + lid] = atomicLoad(&cnt[lid]);
    }
    // Bin confidence sums: one fixed-order pairwise tree per bin (WGSL has no float
    // atomics), the 16 trees a level at a time, so 9 barriers instead of 16 x 9 (barriers
    // dominate on a software rasteriser). Node i of the level of `s` nodes adds nodes i and
    // i + s of the level below: the sum a per-bin tree over [0, WG) gives, bit for bit.
    // Index 15 sums every labelled row's confidence.
    row_conf[lid] = conf;
    row_bin[lid] = bin;
    workgroupBarrier();
    let half = WG / 2u;
    for (var q = lid; q < (BINS + 1u) * half; q += WG) {
        let b = q / half;
        let i = q % half;
        tree[q] = member(i, b) + member(i + half, b);
    }
    workgroupBarrier();
    for (var s = half / 2u; s > 0u; s = s / 2u) {
        for (var q = lid; q < (BINS + 1u) * s; q += WG) {
            let at = (q / s) * half + q % s;
            tree[at] = tree[at] + tree[at + s];
        }
        workgroupBarrier();
    }
    if (lid <= BINS) {
        sums[16u * g + lid] = tree[lid * half];
    }
}

// Row i's confidence in bin b's tree (0 when it is not in the bin; bin 15 takes every
// labelled row).
fn member(i: u32, b: u32) -> f32 {
    let bin = row_bin[i];
    return select(0.0, row_conf[i], bin == b || (b == BINS && bin < BINS));
}
