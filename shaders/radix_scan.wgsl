// radix_scan.wgsl: LSD radix sort, step 2 of 3. Digit d's row of one chunk's tile
// histograms (hist[d * tiles + t]) becomes exclusive prefixes, starting from carry[d]
// (the count of digit d in earlier chunks; 0 for the first chunk), and carry[d] ends as
// the running total. After the last chunk, carry holds the digit totals.
// Two shapes, same integers (kernel::radix_sort::scan_workgroups picks the grid):
// - up to SERIAL_SCAN_TILES tiles: one workgroup, thread d walks row d serially. A
//   256-workgroup log-step scan costs ~6 ms a dispatch on a software rasteriser (its
//   barriers), whatever the size; a few hundred loads a thread cost nothing anywhere.
// - more tiles: workgroup d scans row d in WG-wide blocks (log-step, in parallel).
// No workgroup waits on another (no forward-progress assumption).
// CPU mirror: src/cpu/radix_scan.rs.

// Keep in sync with `RadixParams` in src/kernel/radix_sort.rs.
struct Params {
    len: u32,
    tiles: u32,
    ipt: u32,
    shift: u32,
    map_in: u32,
    map_out: u32,
    has_payload: u32,
    first: u32,
    dst_lo: u32,
    dst_len: u32,
    _pad0: u32,
    _pad1: u32,
}

// Keep in sync with `SERIAL_SCAN_TILES` in src/kernel/radix_sort.rs (tests/pod_layout.rs).
const SERIAL_SCAN_TILES: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> hist: array<u32>;
@group(0) @binding(2) var<storage, read_write> carry: array<u32>;

var<workgroup> sh: array<u32, 256>;
var<workgroup> start: u32;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let tiles = params.tiles;
    if (tiles <= SERIAL_SCAN_TILES) {
        // One workgroup (the grid has one): thread d owns digit d's row. Uniform branch.
        if (group_id(wid, nwg) != 0u) {
            return;
        }
        let d = lid;
        var run = 0u;
        if (params.first == 0u) {
            run = carry[d];
        }
        for (var t = 0u; t < tiles; t++) {
            let v = hist[d * tiles + t];
            hist[d * tiles + t] = run;
            run += v;
        }
        carry[d] = run;
        return;
    }
    let d = group_id(wid, nwg);
    if (d >= 256u) {
        return;
    }
    if (lid == 0u) {
        var c = 0u;
        if (params.first == 0u) {
            c = carry[d];
        }
        start = c;
    }
    let run0 = workgroupUniformLoad(&start);
    var run = run0;
    let nb = (tiles + WG - 1u) / WG;
    for (var b = 0u; b < nb; b++) {
        let t = b * WG + lid;
        var v = 0u;
        if (t < tiles) {
            v = hist[d * tiles + t];
        }
        sh[lid] = v;
        workgroupBarrier();
        for (var off = 1u; off < WG; off <<= 1u) {
            var add = 0u;
            if (lid >= off) {
                add = sh[lid - off];
            }
            workgroupBarrier();
            sh[lid] += add;
            workgroupBarrier();
        }
        if (t < tiles) {
            hist[d * tiles + t] = run + sh[lid] - v;
        }
        run += sh[WG - 1u];
        workgroupBarrier();
    }
    if (lid == 0u) {
        carry[d] = run;
    }
}
