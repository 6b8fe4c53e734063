// radix_scatter.wgsl: LSD radix sort, step 3 of 3. One workgroup per tile of one source
// chunk moves each key (and payload) to its global position
//   base[d] + hist[d * tiles + t] + (rank of the key among equal digits before it in the tile),
// base = exclusive scan of the digit totals in carry. The rank is stable: each WG-wide
// sub-block sets one bit per thread in a per-digit 256-bit mask, and a thread's rank is
// the popcount of the bits below its own plus the digit's count in earlier sub-blocks.
// Only positions in [dst_lo, dst_lo + dst_len) are written (the bound destination chunk):
// inputs larger than one binding are scattered once per destination chunk.
// CPU mirror: src/cpu/radix_scatter.rs.

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

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src_keys: array<u32>;
@group(0) @binding(2) var<storage, read> src_vals: array<u32>;
@group(0) @binding(3) var<storage, read> hist: array<u32>;
@group(0) @binding(4) var<storage, read> carry: array<u32>;
@group(0) @binding(5) var<storage, read_write> dst_keys: array<u32>;
@group(0) @binding(6) var<storage, read_write> dst_vals: array<u32>;

// masks[d * 8 + w]: bit b set when thread 32 w + b of this sub-block has digit d.
var<workgroup> masks: array<atomic<u32>, 2048>;
var<workgroup> run: array<u32, 256>;
var<workgroup> sh: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = group_id(wid, nwg);
    if (t >= params.tiles) {
        return;
    }
    // Exclusive scan of the digit totals: where each digit's run starts globally.
    let tot = carry[lid];
    sh[lid] = tot;
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
    run[lid] = sh[lid] - tot + hist[lid * params.tiles + t];
    for (var w = 0u; w < 8u; w++) {
        atomicStore(&masks[lid * 8u + w], 0u);
    }
    workgroupBarrier();

    let base = t * params.ipt * WG;
    let word = lid / 32u;
    let below = (1u << (lid % 32u)) - 1u;
    for (var j = 0u; j < params.ipt; j++) {
        if (base + j * WG >= params.len) {
            break;
        }
        let i = base + j * WG + lid;
        let valid = i < params.len;
        var key = 0u;
        var d = 0u;
        if (valid) {
            key = src_keys[i];
            if (params.map_in != 0u) {
                key = f32_to_sortable(key);
            }
            d = (key >> params.shift) & 255u;
            atomicOr(&masks[d * 8u + word], 1u << (lid % 32u));
        }
        workgroupBarrier();
        if (valid) {
            var rank = 0u;
            for (var q = 0u; q < word; q++) {
                rank += countOneBits(atomicLoad(&masks[d * 8u + q]));
            }
            rank += countOneBits(atomicLoad(&masks[d * 8u + word]) & below);
            let dst = run[d] + rank;
            if (dst >= params.dst_lo && dst - params.dst_lo < params.dst_len) {
                var out = key;
                if (params.map_out != 0u) {
                    out = sortable_to_f32(key);
                }
                dst_keys[dst - params.dst_lo] = out;
                if (params.has_payload != 0u) {
                    dst_vals[dst - params.dst_lo] = src_vals[i];
                }
            }
        }
        workgroupBarrier();
        // Thread d owns digit d's mask row: add its count to the run and clear it.
        var c = 0u;
        for (var w = 0u; w < 8u; w++) {
            c += countOneBits(atomicExchange(&masks[lid * 8u + w], 0u));
        }
        run[lid] += c;
        workgroupBarrier();
    }
}
