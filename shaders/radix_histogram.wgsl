// radix_histogram.wgsl: LSD radix sort, step 1 of 3 (reduce-then-scan).
// One workgroup per tile of `ipt * WG` keys of one chunk: counts the 8-bit digit at
// `shift` of every key and writes the tile's 256 counts digit-major:
// hist[d * tiles + t]. CPU mirror: src/cpu/radix_histogram.rs.

// Keep in sync with `RadixParams` in src/kernel/radix_sort.rs (shared by the 3 radix kernels).
struct Params {
    len: u32,         // keys in this chunk
    tiles: u32,       // tiles in this chunk
    ipt: u32,         // WG-wide sub-blocks per tile
    shift: u32,       // digit shift: 0, 8, 16, 24
    map_in: u32,      // 1: keys are raw f32 bits, map with f32_to_sortable on read
    map_out: u32,     // scatter: 1: write sortable_to_f32(key)
    has_payload: u32, // scatter: 1: move the u32 payload along
    first: u32,       // scan: first chunk (carry starts at 0)
    dst_lo: u32,      // scatter: first global position held by the bound destination chunk
    dst_len: u32,     // scatter: keys in the bound destination chunk
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> keys: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<u32>;

var<workgroup> counts: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = group_id(wid, nwg);
    if (t >= params.tiles) {
        return;
    }
    atomicStore(&counts[lid], 0u);
    workgroupBarrier();
    let base = t * params.ipt * WG;
    for (var j = 0u; j < params.ipt; j++) {
        let i = base + j * WG + lid;
        if (i < params.len) {
            var key = keys[i];
            if (params.map_in != 0u) {
                key = f32_to_sortable(key);
            }
            atomicAdd(&counts[(key >> params.shift) & 255u], 1u);
        }
    }
    workgroupBarrier();
    hist[lid * params.tiles + t] = atomicLoad(&counts[lid]);
}
