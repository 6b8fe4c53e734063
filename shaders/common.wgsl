// common.wgsl: prepended to every shader (WGSL has no #include; see src/shaders.rs).

// Threads per workgroup of every 1-D kernel. Keep in sync with `WG` in src/kernel/mod.rs.
const WG: u32 = 256u;

// Linear workgroup id of a 2-D grid: dispatches past 65535 workgroups spill into y.
// The grid is x * y >= the workgroups asked for (src/gpu/buffers.rs::grid), so the last
// row of a 2-D grid holds padding workgroups: every kernel returns at once when
// `group_id(...) >= groups_of(items, per_group)` (the whole workgroup together, so later
// barriers stay in uniform control flow) and never writes for a padding workgroup.
fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ceil(n / per) without the overflow of (n + per - 1) / per near 2^32: the number of real
// workgroups of `per` items each. Keep in sync with `groups_for` in src/gpu/buffers.rs.
fn groups_of(n: u32, per: u32) -> u32 {
    return n / per + select(0u, 1u, n % per != 0u);
}

// f32 bits -> u32 whose unsigned order equals f32::total_cmp: positives get the sign bit
// set, negatives are inverted. Keep in sync with `f32_to_sortable` in src/kernel/common.rs.
fn f32_to_sortable(bits: u32) -> u32 {
    let mask = select(0x80000000u, 0xffffffffu, (bits & 0x80000000u) != 0u);
    return bits ^ mask;
}

// Inverse of f32_to_sortable. Keep in sync with `sortable_to_f32` in src/kernel/common.rs.
fn sortable_to_f32(key: u32) -> u32 {
    let mask = select(0xffffffffu, 0x80000000u, (key & 0x80000000u) != 0u);
    return key ^ mask;
}
