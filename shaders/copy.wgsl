// copy.wgsl: dst = src, 16 bytes per thread. The bandwidth ceiling the streaming kernels
// are measured against (benches). CPU mirror: src/cpu/copy.rs.

// Keep in sync with `CopyParams` in src/kernel/copy.rs.
struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    // Padding workgroup of a 2-D grid (also keeps g * WG + lid from wrapping).
    if (g >= groups_of(params.n, WG)) {
        return;
    }
    let i = g * WG + lid;
    if (i < params.n) {
        dst[i] = src[i];
    }
}
