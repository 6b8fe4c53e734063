//! COT at K = 2 by mergeable passes (shaders/cot_two_class.wgsl, its CPU mirror and the
//! driver in kernel::cot_two_class): the mirror's sums equal a sort of the host's grid
//! gains, COT from them equals the host's exact solver bit for bit, and the GPU's sums
//! equal the mirror's bit for bit at the edges (one row, a workgroup's edges, a tile's
//! edges, chunk boundaries, a padded 2-D grid into poisoned buffers; past 65535
//! workgroups in tests/gpu_grid.rs).

mod common;

use common::*;
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::kernel::cot_two_class::{TwoClassSums, IPT};
use conformal_gpu::kernel::WG;
use conformal_gpu::methods::cot::{cot, cot_on};
use conformal_gpu::methods::transport::grid_cost;
use rand::Rng;

/// Rows of two probabilities with the edges the gains must get right: softmax rows,
/// repeated rows (tied gains, so the boundary falls inside a tie), zeros of both signs,
/// subnormals, ones, values near 2^-53 (where f64 rounds `1 - p`) and on half steps of
/// the 2^-40 grid with their neighbours.
fn edge_rows(seed: u64, n: usize) -> Vec<f32> {
    let mut r = rng(seed);
    let logits = random_logits(seed ^ 0xc07, n, 2, 8.0);
    let mut p = conformal_gpu::cpu::softmax::softmax(&logits, 2, 1.0);
    for i in 0..n {
        let row = match r.random_range(0..10) {
            0 | 1 if i > 0 => {
                let j = r.random_range(0..i);
                [p[2 * j], p[2 * j + 1]]
            }
            2 => [0.0, 1.0],
            3 => [-0.0, f32::from_bits(r.random_range(1..8))],
            4 => [1.0, 0.0],
            5 => {
                let e = r.random_range(-60..-50);
                let c = 2f32.powi(e);
                let b = (c.to_bits() as i64 + r.random_range(-2..=2)) as u32;
                [f32::from_bits(b), 1.0 - f32::from_bits(b)]
            }
            6 => {
                let j = r.random_range(0..1u64 << 20) as f64;
                let half = ((j + 0.5) * 2f64.powi(-40)) as f32;
                let b = (half.to_bits() as i64 + r.random_range(-1..=1)) as u32;
                [f32::from_bits(b), 0.5]
            }
            _ => continue,
        };
        p[2 * i..2 * i + 2].copy_from_slice(&row);
    }
    // Rows where `j = round(2^53 p)` is an exact tie (the even neighbour wins) at the
    // points where j decides the cost (`2^53 + 2^12 - j` crossing a multiple of 2^13:
    // j = 4096.5 + 8192 k), their neighbours, and ties that decide nothing, at the front,
    // rotated by the seed, so small sets have them too.
    let unit = 2f64.powi(-53);
    let ties: Vec<[f32; 2]> = [4096.5, 12288.5, 8_384_512.5, 4095.5, 0.5, 1.5, 2.5]
        .iter()
        .flat_map(|&j: &f64| {
            let c = (j * unit) as f32;
            assert_eq!(c as f64, j * unit, "{j} 2^-53 is an f32");
            [
                c,
                f32::from_bits(c.to_bits() + 1),
                f32::from_bits(c.to_bits() - 1),
            ]
        })
        .map(|x| [x, 1.0 - x])
        .collect();
    for i in 0..n.min(ties.len()) {
        let row = ties[(i + seed as usize) % ties.len()];
        let at = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        p[2 * i + at[0]] = row[0];
        p[2 * i + at[1]] = row[1];
    }
    p
}

/// The sums by a sort of the host's grid gains (`grid_cost(1 - p)`, f64): an oracle
/// independent of the kernel's integer costs and of the radix narrowing.
fn sorted_sums(p: &[f32], whole: usize) -> TwoClassSums {
    let cost = |x: f32| grid_cost(1.0 - x as f64);
    let mut gains: Vec<i64> = p.chunks_exact(2).map(|r| cost(r[0]) - cost(r[1])).collect();
    gains.sort_unstable_by(|a, b| b.cmp(a));
    TwoClassSums {
        n: gains.len() as u64,
        base: p.chunks_exact(2).map(|r| cost(r[0]) as i128).sum(),
        top: gains[..whole].iter().map(|&g| g as i128).sum(),
        next: gains.get(whole).copied(),
    }
}

/// Rows: 1, 2, 3; a workgroup's sub-block edges (WG - 1, WG, WG + 1); a workgroup's tile
/// edges (IPT WG - 1, IPT WG, IPT WG + 1).
fn sizes() -> Vec<usize> {
    let tile = IPT as usize * WG;
    vec![1, 2, 3, WG - 1, WG, WG + 1, tile - 1, tile, tile + 1]
}

/// Whole rows asked: none (one rank, the next), one, half, all but one, all (one rank,
/// the boundary).
fn wholes(n: usize) -> Vec<u64> {
    let mut w = vec![0, 1, n as u64 / 2, n as u64 - 1, n as u64];
    w.sort_unstable();
    w.dedup();
    w
}

#[test]
fn mirror_sums_equal_a_sort_of_the_host_gains() {
    for n in sizes() {
        let p = edge_rows(n as u64, n);
        for whole in wholes(n) {
            let got = CpuBackend.cot_two_class(&p, whole).unwrap();
            assert_eq!(
                got,
                sorted_sums(&p, whole as usize),
                "n = {n}, whole = {whole}"
            );
        }
    }
}

/// Source class counts: class 1 absent (no whole row), class 0 absent (every row), and
/// shares that leave a fractional row (n_1 N not a multiple of n).
const COUNTS: [[u64; 2]; 4] = [[5, 0], [0, 3], [3, 7], [123_457, 98_765]];

#[test]
fn cot_by_passes_equals_the_host_solver() {
    for n in sizes() {
        let p = edge_rows(1000 + n as u64, n);
        for counts in COUNTS {
            let want = cot(&p, 2, &counts).unwrap();
            let got = cot_on(&CpuBackend, &p, 2, &counts).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "n = {n}, counts {counts:?}");
        }
    }
}

#[test]
fn streamed_passes_in_any_chunking_and_order_equal_the_host_solver() {
    use conformal_gpu::methods::cot::cot_two_class_streamed;
    let n = 3 * IPT as usize * WG + 77;
    let p = edge_rows(41, n);
    // Random cuts, fed in a different shuffled order on every pass.
    let mut r = rng(42);
    let mut cuts: Vec<usize> = (0..9).map(|_| r.random_range(0..=n)).collect();
    cuts.extend([0, n]);
    cuts.sort_unstable();
    let pieces: Vec<&[f32]> = cuts.windows(2).map(|w| &p[2 * w[0]..2 * w[1]]).collect();
    for counts in COUNTS {
        let mut order: Vec<usize> = (0..pieces.len()).collect();
        let mut passes = 0;
        let got = cot_two_class_streamed(&CpuBackend, n as u64, &counts, |feed| {
            use rand::seq::SliceRandom;
            order.shuffle(&mut r);
            passes += 1;
            order.iter().try_for_each(|&i| feed(pieces[i]))
        })
        .unwrap();
        assert_eq!(passes, 7, "six histograms and the sums");
        let want = cot(&p, 2, &counts).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "counts {counts:?}");
    }
    // A pass that reads other than n rows (a file changed between passes) is an error.
    let mut passes = 0;
    let e = cot_two_class_streamed(&CpuBackend, n as u64, &[3, 7], |feed| {
        passes += 1;
        feed(if passes == 3 { &p[2..] } else { &p })
    })
    .unwrap_err();
    assert!(e.to_string().contains("change between passes"), "{e}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut p = edge_rows(9, 5);
    p[7] = f32::NAN;
    let e = CpuBackend.cot_two_class(&p, 1).unwrap_err();
    assert!(e.to_string().contains("row 3, class 1"), "{e}");
    p[7] = 1.5;
    assert!(cot_on(&CpuBackend, &p, 2, &[1, 1]).is_err());
    p[7] = -0.25;
    assert!(cot_on(&CpuBackend, &p, 2, &[1, 1]).is_err());
    let p = edge_rows(9, 5);
    assert!(CpuBackend.cot_two_class(&p[..9], 1).is_err(), "half a row");
    assert!(
        CpuBackend.cot_two_class(&p, 6).is_err(),
        "more whole rows than rows"
    );
    assert!(
        cot_on(&CpuBackend, &p, 2, &[0, 0]).is_err(),
        "no source label"
    );
    assert!(
        cot_on(&CpuBackend, &[], 2, &[1, 1]).is_err(),
        "no target row"
    );
    assert!(
        cot_on(&CpuBackend, &p, 2, &[1, 1, 1]).is_err(),
        "K = 3 counts"
    );
}

#[cfg(feature = "gpu")]
mod gpu_path {
    use super::*;
    use conformal_gpu::backend::GpuBackend;
    use conformal_gpu::gpu::{self, GpuOptions};

    #[test]
    fn gpu_sums_equal_the_mirror_at_the_edges() {
        let Some(ctx) = shared_gpu() else { return };
        let backend = GpuBackend::new(ctx);
        for n in sizes() {
            let p = edge_rows(n as u64, n);
            for whole in wholes(n) {
                let g = backend.cot_two_class(&p, whole).unwrap();
                let c = CpuBackend.cot_two_class(&p, whole).unwrap();
                assert_eq!(g, c, "n = {n}, whole = {whole}");
            }
            for counts in COUNTS {
                let g = cot_on(&backend, &p, 2, &counts).unwrap();
                let c = cot(&p, 2, &counts).unwrap();
                assert_eq!(g.to_bits(), c.to_bits(), "n = {n}, counts {counts:?}");
            }
        }
        // Bad probabilities are named before anything is uploaded.
        let mut p = edge_rows(3, 4);
        p[5] = f32::INFINITY;
        let e = backend.cot_two_class(&p, 1).unwrap_err();
        assert!(e.to_string().contains("row 2, class 1"), "{e}");
    }

    #[test]
    fn gpu_sums_on_a_padded_grid_and_across_chunks() {
        // 17 workgroups per grid dimension: 19 tiles and one row make 20 workgroups, a
        // 17 x 2 grid whose last row has 14 padding workgroups; the accumulators start at
        // zero by contract, every other buffer poisoned.
        let Some(ctx) = gpu_with(GpuOptions {
            max_workgroups_per_dim: Some(17),
            poison_outputs: true,
            ..Default::default()
        }) else {
            return;
        };
        let backend = GpuBackend::new(&ctx);
        let n = 19 * IPT as usize * WG + 1;
        let p = edge_rows(17, n);
        for whole in [1, n as u64 / 3, n as u64 - 1] {
            let g = backend.cot_two_class(&p, whole).unwrap();
            assert_eq!(
                g,
                CpuBackend.cot_two_class(&p, whole).unwrap(),
                "padded, whole = {whole}"
            );
        }
        // Bindings of 8 KiB: chunks of 1024 rows, the last one partial; the passes add
        // every chunk's counts and sums into one.
        let Some(ctx) = gpu_with(GpuOptions {
            max_binding_bytes: Some(8192),
            ..Default::default()
        }) else {
            return;
        };
        assert_eq!(ctx.limits().max_binding_bytes, 8192);
        let backend = GpuBackend::new(&ctx);
        let n = 5 * 1024 + 3;
        let p = edge_rows(23, n);
        for whole in [0, 1, 1024, 2047, n as u64 / 2, n as u64] {
            let g = backend.cot_two_class(&p, whole).unwrap();
            assert_eq!(
                g,
                sorted_sums(&p, whole as usize),
                "chunks, whole = {whole}"
            );
        }
    }

    #[test]
    fn gpu_passes_move_the_rows_up_once_and_nothing_per_row_down() {
        // Its own context, so that no other test's transfers enter its ledger.
        let Some(ctx) = gpu() else { return };
        let n = 3 * IPT as usize * WG + 5;
        let p = edge_rows(31, n);
        ctx.reset_transfers();
        gpu::cot_two_class::two_class_sums(&ctx, &p, n as u64 / 2).unwrap();
        let t = ctx.reset_transfers();
        // Six histogram passes and the sums pass, one submission each.
        assert_eq!(t.submissions, 7, "{t:?}");
        // Up: the rows once (8 bytes each) and a 48-byte uniform a pass (accumulators
        // are zeroed on the device).
        assert_eq!(t.upload_bytes, 8 * n as u64 + 7 * 48, "{t:?}");
        // Down: 256 counters a prefix in play (one or two a pass) and 32 bytes of sums.
        assert!(t.download_bytes <= 6 * 2048 + 32, "{t:?}");
        assert_eq!((t.download_bytes - 32) % 1024, 0, "{t:?}");
    }
}
