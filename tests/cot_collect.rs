//! COT's collect pass at K > 2 (shaders/cot_collect.wgsl, its CPU mirror, the contract in
//! kernel::cot_collect): the mirror's sums, turned into a tally (`DualTally::add_sums`),
//! equal the host tally of `methods::cot_dual` (`DualTally::add`, the rounds' reference)
//! bit for bit, and the GPU's sums equal the mirror's bit for bit at the edges: no row, one,
//! a workgroup's and a tile's edges, chunk boundaries, a padded 2-D grid into poisoned
//! buffers, ties within and across rows (shifted and class-permuted), -0.0, the largest
//! dual values, sums past 2^64, K = 3 to the device's largest and one past it (the host).

mod common;

use common::*;
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::kernel::cot_collect::{CollectPoint, CollectSums, IPT, MAX_DEVICE_CLASSES};
use conformal_gpu::kernel::WG;
use conformal_gpu::methods::cot_dual::DualTally;
use rand::Rng;

/// The tile of one workgroup (rows).
const TILE: usize = IPT as usize * WG;

/// Sizes at K = 3: no row, one, a workgroup's edges, a tile's edges.
const EDGES: [usize; 8] = [0, 1, WG - 1, WG, WG + 1, TILE - 1, TILE, TILE + 1];

/// Rows of K probabilities with the edges a row's class and margin must get right:
/// softmax rows, rows repeated (ties across rows), class-permuted copies (the same costs
/// in other classes), rows with tied classes (the lowest index wins, margin 0), zeros of
/// both signs, ones and uniform rows.
fn edge_rows(seed: u64, n: usize, k: usize) -> Vec<f32> {
    let mut r = rng(seed);
    let logits = random_logits(seed ^ 0xc011, n, k, 5.0);
    let mut p = conformal_gpu::cpu::softmax::softmax(&logits, k, 1.0);
    for i in 0..n {
        let row: Vec<f32> = match r.random_range(0..12) {
            0 | 1 if i > 0 => {
                let j = r.random_range(0..i);
                p[j * k..(j + 1) * k].to_vec()
            }
            2 if i > 0 => {
                let j = r.random_range(0..i);
                let mut row = p[j * k..(j + 1) * k].to_vec();
                row.rotate_left(r.random_range(1..k));
                row
            }
            3 => {
                // Two classes tied at the top.
                let mut row = vec![0.0f32; k];
                let (a, b) = (r.random_range(0..k), r.random_range(0..k));
                row[a] = 0.5;
                row[b] = 0.5;
                row
            }
            4 => {
                let mut row = vec![-0.0f32; k];
                row[r.random_range(0..k)] = 1.0;
                row
            }
            5 => vec![1.0 / k as f32; k],
            _ => continue,
        };
        p[i * k..(i + 1) * k].copy_from_slice(&row);
    }
    p
}

/// A dual point and bands that fix some rows and free others: `g` a spread of the
/// costs' scale, bands from none (negative: a row is fixed even where classes tie)
/// through 0 to grid-scale widths; where `seed % 4 == 0` one class's band is `i64::MAX`
/// (no row is fixed next to that class, so every row is free).
fn point(seed: u64, k: usize) -> (Vec<i64>, Vec<i64>) {
    let mut r = rng(seed);
    let g: Vec<i64> = (0..k)
        .map(|_| r.random_range(-(1i64 << 38)..(1i64 << 38)))
        .collect();
    let mut deltas: Vec<i64> = (0..k)
        .map(|c| match (c + seed as usize) % 4 {
            0 => -3,
            1 => 0,
            _ => r.random_range(0..1i64 << 36),
        })
        .collect();
    if seed.is_multiple_of(4) {
        deltas[seed as usize / 4 % k] = i64::MAX;
    }
    (g, deltas)
}

/// The host's tally (`DualTally::add`, the rounds' reference) of rows `first..`.
fn host(probs: &[f32], k: usize, g: &[i64], d: &[i64], first: u64, cap: usize) -> DualTally {
    let mut t = DualTally::capped(k, cap);
    t.add(probs, first, g, d);
    t.sort_free_rows().unwrap();
    t
}

/// The tally from `sums` of the same rows.
fn from_sums(sums: &CollectSums, probs: &[f32], k: usize, first: u64, cap: usize) -> DualTally {
    let mut t = DualTally::capped(k, cap);
    t.add_sums(sums, first, probs).unwrap();
    t.sort_free_rows().unwrap();
    t
}

#[test]
fn the_mirror_gives_the_host_tally() {
    // Sizes: none, one row, a workgroup's edges, a tile's edges, several tiles; K from 3
    // to the device's largest and one past it; every size with a band sample (cap 7)
    // too, whose thinning must keep the same rows.
    for (k, sizes) in [
        (3, [&EDGES[..], &[3 * TILE + 17]].concat()),
        (10, vec![1, WG + 1, TILE + 1, 2 * TILE + 5]),
        (100, vec![1, 257, 1500]),
        (MAX_DEVICE_CLASSES, vec![300]),
        (MAX_DEVICE_CLASSES + 1, vec![300]),
    ] {
        for &n in &sizes {
            let seed = (k * 1000 + n) as u64;
            let p = edge_rows(seed, n, k);
            let (g, d) = point(seed, k);
            let first = seed % 1000;
            let sums = CpuBackend
                .cot_collect(&p, &CollectPoint::new(&g, &d).unwrap())
                .unwrap();
            assert_eq!(sums.rows, n as u64);
            for cap in [usize::MAX, 7] {
                let want = host(&p, k, &g, &d, first, cap);
                assert_eq!(
                    from_sums(&sums, &p, k, first, cap),
                    want,
                    "K = {k}, {n} rows, cap {cap}"
                );
                if n > 100 && cap == usize::MAX && !seed.is_multiple_of(4) {
                    let fixed: u64 = want.fixed_rows.iter().sum();
                    assert!(
                        fixed > 0 && want.free_seen > 0,
                        "K = {k}, {n}: both kinds of row"
                    );
                }
            }
        }
    }
}

#[test]
fn extreme_points_and_bad_input() {
    let k = 5;
    let p = edge_rows(3, 700, k);
    // The largest dual values both ways, every band negative: every row fixed, values
    // near 2^52.
    let g = [1i64 << 50, -(1i64 << 50), 0, 1 << 50, -(1 << 50)];
    let d = [-1i64; 5];
    let sums = CpuBackend
        .cot_collect(&p, &CollectPoint::new(&g, &d).unwrap())
        .unwrap();
    assert!(sums.free.is_empty());
    assert_eq!(
        from_sums(&sums, &p, k, 0, usize::MAX),
        host(&p, k, &g, &d, 0, usize::MAX)
    );
    // Past 2^50, a NaN, a probability past 1: typed errors.
    let over = [(1i64 << 50) + 1, 0, 0, 0, 0];
    assert!(CollectPoint::new(&over, &d).is_err());
    let point = CollectPoint::new(&g, &d).unwrap();
    for bad in [f32::NAN, 1.5, -0.25] {
        let mut q = p.clone();
        q[3 * k + 2] = bad;
        let e = CpuBackend.cot_collect(&q, &point).unwrap_err().to_string();
        assert!(e.contains("row 3, class 2"), "{bad}: {e}");
    }
    // Sums of other rows are refused by the tally.
    let mut t = DualTally::new(k);
    assert!(t.add_sums(&sums, 0, &p[..k * 10]).is_err());
}

#[cfg(feature = "gpu")]
mod gpu {
    use super::*;
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::gpu::{GpuContext, GpuOptions};

    /// A context with outputs poisoned and either a 2-D grid from 17 workgroups a
    /// dimension with one `WG` block a tile (20 workgroups from 19 x 256 + 1 rows: a
    /// 17 x 2 grid whose last row pads), or a binding of 24 KiB (chunks of `6144 / K`
    /// rows, so sets of a few tiles cross several chunk boundaries).
    fn capped(grid: bool) -> Option<GpuContext> {
        gpu_with(GpuOptions {
            max_workgroups_per_dim: grid.then_some(17),
            max_tile_blocks: grid.then_some(1),
            max_binding_bytes: (!grid).then_some(24 << 10),
            poison_outputs: true,
            ..Default::default()
        })
    }

    fn same_on(ctx: &GpuContext, p: &[f32], g: &[i64], d: &[i64], what: &str) {
        let point = CollectPoint::new(g, d).unwrap();
        let want = CpuBackend.cot_collect(p, &point).unwrap();
        let got = GpuBackend::new(ctx).cot_collect(p, &point).unwrap();
        assert_eq!(got, want, "{what}");
    }

    #[test]
    fn the_device_gives_the_mirror_sums() {
        // The default context: one chunk, K = 3 at every edge size, then wider K.
        let Some(ctx) = shared_gpu() else { return };
        for (k, sizes) in [
            (3, [&EDGES[..], &[5 * TILE + 3]].concat()),
            (10, vec![1, TILE + 1, 3 * TILE]),
            (100, vec![1, 700]),
            (MAX_DEVICE_CLASSES, vec![130]),
            // One past the kernel's workgroup sums: the host mirror, through the GPU
            // backend.
            (MAX_DEVICE_CLASSES + 1, vec![40]),
        ] {
            for &n in &sizes {
                let seed = (k * 7 + n) as u64;
                let p = edge_rows(seed, n, k);
                let (g, d) = point(seed, k);
                same_on(ctx, &p, &g, &d, &format!("K = {k}, {n} rows"));
            }
        }
        // Every row fixed at values near 2^52: the 96-bit value sum passes 2^64.
        let k = 4;
        let p = edge_rows(11, 4 * TILE, k);
        let g = [-(1i64 << 50); 4];
        let point = CollectPoint::new(&g, &[-1; 4]).unwrap();
        let sums = GpuBackend::new(ctx).cot_collect(&p, &point).unwrap();
        assert!(sums.value_sum > 1u128 << 64 && sums.free.is_empty());
        assert_eq!(sums, CpuBackend.cot_collect(&p, &point).unwrap());
    }

    #[test]
    fn chunks_a_padded_grid_and_poisoned_buffers() {
        // Binding-sized chunks of 6144 / K rows (each its own submission, the
        // accumulators cleared between), grids past 17 workgroups going 2-D with padding
        // workgroups, free lists in poisoned buffers (only the words written are read).
        let Some(ctx) = capped(true) else { return };
        for (k, n) in [(3, 19 * WG + 1), (7, 17 * WG), (7, 17 * WG + 1)] {
            let seed = (k * 31 + n) as u64;
            let p = edge_rows(seed, n, k);
            let (g, d) = point(seed, k);
            same_on(&ctx, &p, &g, &d, &format!("2-D grid: K = {k}, {n} rows"));
        }
        let Some(ctx) = capped(false) else { return };
        for (k, n) in [(3, 2 * 2048 + 1), (8, 3 * 768 - 1), (8, 3 * 768), (50, 400)] {
            let seed = (k * 37 + n) as u64;
            let p = edge_rows(seed, n, k);
            let (g, d) = point(seed, k);
            same_on(&ctx, &p, &g, &d, &format!("chunks: K = {k}, {n} rows"));
        }
    }

    #[test]
    fn a_pass_moves_the_rows_up_once_and_only_free_rows_down() {
        // Its own context, so that no other test's transfers enter its ledger.
        let Some(ctx) = gpu() else { return };
        use conformal_gpu::kernel::cot_collect::word;
        for (k, n, seed) in [(10, 3 * TILE + 5, 41u64), (4, 700, 42)] {
            let p = edge_rows(seed, n, k);
            let (g, d) = point(seed, k);
            let point = CollectPoint::new(&g, &d).unwrap();
            ctx.reset_transfers();
            let sums = conformal_gpu::gpu::cot_collect::collect(&ctx, &p, &point).unwrap();
            let t = ctx.reset_transfers();
            let free = sums.free.len() as u64;
            assert!(free > 0, "K = {k}: free rows to read back");
            // Up: the rows (4 K bytes each), the point (16 bytes a class) and a 16-byte
            // uniform for each of the two dispatches.
            assert_eq!(t.upload_bytes, (4 * n * k + 16 * k + 32) as u64, "{t:?}");
            // Down: the accumulators (4 + 4K + 2K^2 words) and 4 bytes a free row.
            assert_eq!(
                t.download_bytes,
                4 * word::count(k) as u64 + 4 * free,
                "{t:?}"
            );
            // One submission for the pass and its accumulators, one for the free list.
            assert_eq!(t.submissions, 2, "{t:?}");
        }
    }
}
