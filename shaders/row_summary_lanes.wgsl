// row_summary_lanes.wgsl: row_summary (row_summary.wgsl) for large K, computed by a team of
// LANES threads per row instead of one: lane l takes classes l, l + LANES, ... (adjacent
// lanes read adjacent logits, so the reads coalesce), and the team combines its partials
// through workgroup memory. Every combination is exact and independent of order: the
// largest logit with the lowest index, the integer grid sums of class_sum.wgsl
// (K >= GRID_MIN_K), the largest p, the two smallest r, integer set sizes. So a row's
// summary has the bits row_summary gives it (tests/specialization.rs checks it).
// Used with K >= LANES (every lane has a class) and K >= GRID_MIN_K, which the host
// guarantees (kernel::tally::tally_lanes). Composed after row_summary.wgsl into tally.wgsl.
// CPU mirror: src/cpu/row_stats.rs (one row at a time: the same summary).

// Threads per row: 1 (row_summary, one thread a row) or 32 (this file). Set per pipeline
// (kernel::tally::tally_lanes). Keep in sync with `TALLY_LANES` in src/kernel/tally.rs.
override LANES: u32 = 1u;
// Teams per workgroup when LANES = 32.
const LANE_TEAMS: u32 = 8u;

// One lane's partial: a, b, c floats and a (low, high) pair, their meaning per step.
struct LanePartial {
    a: f32,
    b: f32,
    c: f32,
    u: vec2<u32>,
}

var<workgroup> lane_part: array<LanePartial, 256>;
// Per team: its set sizes per level, and r_y (written by the lane that holds class y).
var<workgroup> lane_sizes: array<atomic<u32>, 248>;
var<workgroup> lane_lac: array<f32, LANE_TEAMS>;

// (lo, hi) + (lo, hi) with the carry out of the low word.
fn pair_add(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    let lo = x.x + y.x;
    return vec2<u32>(lo, x.y + y.y + select(0u, 1u, lo < x.x));
}

// The summary of `row` by the team of thread `lid` (lane = lid % LANES); `valid` = the row
// exists (a team past the last row still takes every barrier, computing nothing). Every
// thread of the workgroup calls it together. The summary and `sizes` are complete in
// lane 0 of each team; other lanes get partial values.
fn row_summary_lanes(row: u32, valid: bool, lid: u32, t: f32,
                     sizes: ptr<function, array<u32, MAX_LEVELS>>) -> RowSummary {
    let k = row_classes();
    let n_alpha = row_levels();
    let lane = lid % LANES;
    let team = lid / LANES;
    let head = team * LANES;
    let base = row * k;
    var y = -1;
    if (valid) {
        y = labels[row];
    }
    // 1. The largest logit, lowest index on ties (the serial scan keeps the first).
    var m = 0.0;
    var arg = 0u;
    if (valid) {
        m = logits[base + lane];
        arg = lane;
        for (var j = lane + LANES; j < k; j += LANES) {
            let z = logits[base + j];
            if (z > m) {
                m = z;
                arg = j;
            }
        }
    }
    lane_part[lid] = LanePartial(m, 0.0, 0.0, vec2<u32>(arg, 0u));
    if (lane == 0u) {
        lane_lac[team] = -1.0;
        for (var a = 0u; a < n_alpha; a++) {
            atomicStore(&lane_sizes[team * MAX_LEVELS + a], 0u);
        }
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            let x = lane_part[lid];
            let o = lane_part[lid + s];
            if (o.a > x.a || (o.a == x.a && o.u.x < x.u.x)) {
                lane_part[lid] = o;
            }
        }
        workgroupBarrier();
    }
    m = lane_part[head].a;
    arg = lane_part[head].u.x;
    workgroupBarrier();
    // 2. S = sum_k exp((z_k - m) / T), on the grid.
    var sum = vec2<u32>(0u, 0u);
    if (valid) {
        for (var j = lane; j < k; j += LANES) {
            sum = grid_add(sum, exp((logits[base + j] - m) / t));
        }
    }
    lane_part[lid] = LanePartial(0.0, 0.0, 0.0, sum);
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            lane_part[lid].u = pair_add(lane_part[lid].u, lane_part[lid + s].u);
        }
        workgroupBarrier();
    }
    let s_total = grid_to_f32(lane_part[head].u);
    let log_s = log(s_total);
    workgroupBarrier();
    // 3. p_(1), the two smallest r, the negative entropy, r_y, set sizes.
    var p1 = -1.0;
    var r1 = 2.0;
    var r2 = 2.0;
    var ne = vec2<u32>(0u, 0u);
    var counts: array<u32, MAX_LEVELS>;
    for (var a = 0u; a < n_alpha; a++) {
        counts[a] = 0u;
    }
    if (valid) {
        for (var j = lane; j < k; j += LANES) {
            let x = (logits[base + j] - m) / t;
            let p = exp(x) / s_total;
            let r = 1.0 - p;
            p1 = max(p1, p);
            if (r < r1) {
                r2 = r1;
                r1 = r;
            } else if (r < r2) {
                r2 = r;
            }
            if (p > 0.0) {
                ne = grid_add(ne, -(p * (x - log_s)));
            }
            if (i32(j) == y) {
                lane_lac[team] = r;
            }
            for (var a = 0u; a < n_alpha; a++) {
                if (r <= qhats[a]) {
                    counts[a] += 1u;
                }
            }
        }
        for (var a = 0u; a < n_alpha; a++) {
            if (counts[a] != 0u) {
                atomicAdd(&lane_sizes[team * MAX_LEVELS + a], counts[a]);
            }
        }
    }
    lane_part[lid] = LanePartial(p1, r1, r2, ne);
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            let x = lane_part[lid];
            let o = lane_part[lid + s];
            // The two smallest of both pairs' four values (a multiset: r2 may equal r1).
            lane_part[lid] = LanePartial(
                max(x.a, o.a),
                min(x.b, o.b),
                min(max(x.b, o.b), min(x.c, o.c)),
                pair_add(x.u, o.u),
            );
        }
        workgroupBarrier();
    }
    let total = lane_part[head];
    var out = RowSummary(total.a, 0.0, lane_lac[team], total.b, total.c, arg, y);
    if (total.u.x != 0u || total.u.y != 0u) {
        out.ne = -grid_to_f32(total.u);
    }
    for (var a = 0u; a < n_alpha; a++) {
        (*sizes)[a] = atomicLoad(&lane_sizes[team * MAX_LEVELS + a]);
    }
    // The next row's writes wait for every lane's reads of this one.
    workgroupBarrier();
    return out;
}
