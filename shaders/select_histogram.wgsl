// select_histogram.wgsl: one pass of MSD radix select. For every key (raw f32 bits,
// mapped with f32_to_sortable) whose bits above the digit at `shift` equal one of the
// `nprefix` distinct prefixes (at most 16 per dispatch), counts the digit at `shift` in
// that prefix's 256-bin histogram. Workgroups count in workgroup memory and add their
// partials into hist[r * 256 + d]: integer sums, so chunks (and shards) merge by addition.
// CPU mirror: src/cpu/select_histogram.rs.

// Keep in sync with `SelectParams` in src/kernel/select_histogram.rs.
struct Params {
    len: u32,     // keys in this chunk
    shift: u32,   // 24, 16, 8, 0
    nprefix: u32, // prefixes in this dispatch (<= MAXP)
    ipt: u32,     // WG-wide sub-blocks per workgroup
}

// Keep in sync with `MAXP` in src/kernel/select_histogram.rs (checked by tests/pod_layout.rs).
const MAXP: u32 = 16u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> keys: array<u32>;
@group(0) @binding(2) var<storage, read> prefixes: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>>;

var<workgroup> counts: array<atomic<u32>, 4096>;
var<workgroup> pre: array<u32, 16>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    let tile = params.ipt * WG;
    if (g >= groups_of(params.len, tile)) {
        return;
    }
    let np = min(params.nprefix, MAXP);
    for (var r = 0u; r < np; r++) {
        atomicStore(&counts[r * 256u + lid], 0u);
    }
    if (lid < np) {
        pre[lid] = prefixes[lid];
    }
    workgroupBarrier();
    // Bits above the digit; none on the first pass (shift 24).
    var mask = 0u;
    if (params.shift < 24u) {
        mask = 0xffffffffu << (params.shift + 8u);
    }
    let base = g * tile;
    for (var j = 0u; j < params.ipt; j++) {
        let i = base + j * WG + lid;
        if (i < params.len) {
            let key = f32_to_sortable(keys[i]);
            let hi = key & mask;
            let d = (key >> params.shift) & 255u;
            for (var r = 0u; r < np; r++) {
                if (pre[r] == hi) {
                    atomicAdd(&counts[r * 256u + d], 1u);
                    break;
                }
            }
        }
    }
    workgroupBarrier();
    for (var r = 0u; r < np; r++) {
        let c = atomicLoad(&counts[r * 256u + lid]);
        if (c != 0u) {
            atomicAdd(&hist[r * 256u + lid], c);
        }
    }
}
