//! Every kernel on a 2-D dispatch grid, with padding workgroups, into poisoned output
//! buffers (DESIGN.md section 4): a padding workgroup (`group_id >= groups`, the last row of
//! an `x * y` grid) must write nothing, and every output element a kernel hands back must
//! have been written by it.
//!
//! How, first: a context whose per-dimension limit is capped at [`CAP`] = 17 workgroups
//! (`GpuOptions::max_workgroups_per_dim`), so a few thousand rows give a 2-D grid, and
//! whose fresh output buffers are filled with NaN and noise bit patterns
//! (`GpuOptions::poison_outputs`; wgpu would zero them). Each kernel is compared with its
//! CPU mirror: bit for bit where the stage only counts or moves (sort, select, histograms,
//! copy, p-values on given probabilities, labelled counts), within DESIGN 4 tolerances where
//! WGSL's `exp`/`log` enter.
//!
//! Then, for real: every reduction kernel (temperature_nll, calibration, tally,
//! select_histogram, radix_histogram with the radix_scan over its output) in one dispatch
//! of more than 65535 workgroups, the real per-dimension limit, on the smallest input that
//! needs it ([`BIG`]), with poisoned output buffers (accumulators that must start at zero,
//! the tally's and select's, excepted). The whole radix sort at that size (radix_scatter
//! too, which is no reduction) is an ignored test: ~35 s on lavapipe.
#![cfg(feature = "gpu")]

mod common;

use common::*;
use conformal_gpu::cpu;
use conformal_gpu::gpu::{self, GpuContext, GpuOptions};
use conformal_gpu::kernel::calibration::{CalibrationPartial, NCOUNT, NSUM};
use conformal_gpu::kernel::radix_sort::SortPlan;
use conformal_gpu::kernel::temperature_nll::NPARTIAL;
use conformal_gpu::kernel::WG;
use rand::Rng;

/// Workgroups per grid dimension in the capped context: small, so 2-D grids come from a
/// few thousand rows, and 17 x 17 >= 256 (radix_scan always dispatches 256 workgroups;
/// a grid holds at most CAP x CAP).
const CAP: u32 = 17;
/// Workgroups of the 1-D kernels below: 20 on a 17-wide grid is 17 x 2 = 34 slots, so the
/// last row holds 3 real and 14 padding workgroups.
const GROUPS: usize = 20;
/// Rows giving [`GROUPS`] workgroups of 256: the last real workgroup has a single row.
const ROWS: usize = (GROUPS - 1) * WG + 1;

/// The capped, poisoning context, shared by the tests (contexts are slow on lavapipe).
fn capped() -> Option<&'static GpuContext> {
    static CTX: std::sync::OnceLock<Option<GpuContext>> = std::sync::OnceLock::new();
    CTX.get_or_init(|| {
        gpu_with(GpuOptions {
            max_workgroups_per_dim: Some(CAP),
            poison_outputs: true,
            ..Default::default()
        })
    })
    .as_ref()
}

/// The `(x, y)` grid a dispatch of `groups` workgroups gets, asserting it has padding.
fn assert_padded(ctx: &GpuContext, groups: usize, what: &str) {
    let max = ctx.limits().max_workgroups_per_dim;
    let (x, y) = gpu::buffers::grid(groups as u64, max).unwrap();
    assert!(
        y > 1 && (x * y) as usize > groups,
        "{what}: {groups} workgroups on a {x}x{y} grid have no padding workgroups"
    );
}

/// Workgroup slots of the grid for `groups` workgroups: `x * y`, padding included.
fn slots(ctx: &GpuContext, groups: usize) -> usize {
    let (x, y) = gpu::buffers::grid(groups as u64, ctx.limits().max_workgroups_per_dim).unwrap();
    (x * y) as usize
}

/// Asserts `words[from..]` still hold the poison of a fresh buffer (nothing wrote there).
#[track_caller]
fn assert_poison_from(words: &[u32], from: usize, what: &str) {
    let bad: Vec<usize> = (from..words.len())
        .filter(|&i| words[i] != gpu::buffers::poison_word(i as u64))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} words past the real workgroups' outputs were written (first at {:?}); \
         a padding workgroup wrote",
        bad.len(),
        bad.first()
    );
}

/// Rows (and keys) of the tests past the real limit: one more than 65535 full workgroups
/// of 256, the smallest input that needs more than 65535 workgroups: 65536 of them, a
/// 65535 x 2 grid whose second row holds one real workgroup (of a single row) and 65534
/// padding workgroups. Its K = 2 logits are 134,215,688 bytes, within a 128 MiB binding
/// (WebGPU's default limit and lavapipe's), so on any adapter they are one chunk and one
/// dispatch. (2^24 rows would be 65536 workgroups too, but leave the last one full.)
const BIG: usize = 65535 * WG + 1;

/// The context of the tests past the real limit: 65535 workgroups per dimension (pinned:
/// some adapters allow more in x, and the point is a 2-D grid), poisoned outputs, and
/// sort/select tiles of one 256-key sub-block (`max_tile_blocks`), so that those kernels'
/// BIG keys are 65536 workgroups in one 64 MiB binding too (with the default 4096-key
/// tiles that takes 2^28 keys, 1 GiB, past lavapipe's binding limit). Shared: contexts
/// are slow to build on lavapipe.
fn real_grid() -> Option<&'static GpuContext> {
    static CTX: std::sync::OnceLock<Option<GpuContext>> = std::sync::OnceLock::new();
    CTX.get_or_init(|| {
        gpu_with(GpuOptions {
            max_workgroups_per_dim: Some(65535),
            poison_outputs: true,
            max_tile_blocks: Some(1),
            ..Default::default()
        })
    })
    .as_ref()
}

/// `n` rows as one chunk, one buffer each (`upload_rows` would cut them: it budgets 128
/// bytes a row for later outputs), asserting they fit one binding.
fn one_chunk(ctx: &GpuContext, l: &[f32], y: &[i32], k: usize) -> gpu::DeviceRows {
    let n = y.len();
    assert!(
        (4 * l.len()) as u64 <= ctx.limits().max_binding_bytes,
        "{n} rows of K = {k} exceed one binding of {} bytes",
        ctx.limits().max_binding_bytes
    );
    gpu::DeviceRows::from_chunks(
        k,
        n,
        vec![(
            0,
            n,
            ctx.upload("logits", l).unwrap(),
            ctx.upload("labels", y).unwrap(),
        )],
    )
}

/// Logits uniform in [-6, 6] and labels in -1..k (some rows unlabelled; the last row
/// labelled, so the last real workgroup's partial is not all zeros).
fn rows_data(seed: u64, n: usize, k: usize) -> (Vec<f32>, Vec<i32>) {
    let logits = random_logits(seed, n, k, 6.0);
    let mut r = rng(seed + 1);
    let mut labels: Vec<i32> = (0..n).map(|_| r.random_range(-1..k as i32)).collect();
    if let Some(l) = labels.last_mut() {
        *l = 0;
    }
    (logits, labels)
}

/// Logits in {0, -1000} (K = 2): every exp is exactly 1 or 0, so confidences are exactly
/// 1 or 1/2 and the calibration partials (counts and f32 sums) are exact on both paths.
fn exact_rows(seed: u64, n: usize) -> (Vec<f32>, Vec<i32>) {
    let mut r = rng(seed);
    let mut logits = Vec::with_capacity(2 * n);
    for _ in 0..n {
        match r.random_range(0..3) {
            0 => logits.extend([0.0f32, -1000.0]),
            1 => logits.extend([-1000.0f32, 0.0]),
            _ => logits.extend([0.0f32, 0.0]),
        }
    }
    let mut labels: Vec<i32> = (0..n).map(|_| r.random_range(-1..2)).collect();
    if let Some(l) = labels.last_mut() {
        *l = 1;
    }
    (logits, labels)
}

/// Calibration partials equal bit for bit (counts and sums): exact data.
#[track_caller]
fn assert_calibration_exact(g: &[CalibrationPartial], c: &[CalibrationPartial], what: &str) {
    assert_eq!(g.len(), c.len(), "{what}: workgroups");
    let flat = |v: &[CalibrationPartial]| -> (Vec<u32>, Vec<u32>) {
        (
            v.iter().flat_map(|p| p.counts).collect(),
            v.iter().flat_map(|p| p.sums.map(f32::to_bits)).collect(),
        )
    };
    let ((gc, gs), (cc, cs)) = (flat(g), flat(c));
    assert_bits_eq(&format!("{what}: counts"), &gc, &cc, |a, b| a == b);
    assert_bits_eq(&format!("{what}: sums"), &gs, &cs, |a, b| a == b);
}

/// Calibration partials on random data: labelled and correct counts exact per
/// workgroup; a confidence within an ulp of a bin edge may change bins; the confidence
/// sum within 1e-5 relative.
#[track_caller]
fn assert_calibration_close(g: &[CalibrationPartial], c: &[CalibrationPartial], what: &str) {
    assert_eq!(g.len(), c.len(), "{what}: workgroups");
    for (i, (gp, cp)) in g.iter().zip(c).enumerate() {
        assert_eq!(gp.counts[30..], cp.counts[30..], "{what}: workgroup {i}");
        let moved: u32 = (0..15).map(|b| gp.counts[b].abs_diff(cp.counts[b])).sum();
        assert!(
            moved <= 2,
            "{what}: workgroup {i}: {moved} rows changed bins"
        );
        let (gs, cs) = (gp.sums[15], cp.sums[15]);
        assert!(
            ((gs - cs) as f64).abs() <= 1e-5 * (cs.abs() as f64).max(1.0),
            "{what}: workgroup {i} confidence sum {gs} vs {cs}"
        );
    }
}

/// One calibration dispatch over `n` rows of one chunk into output buffers with a
/// poisoned slot for every workgroup of the grid, padding included: asserts the padding
/// slots stay poisoned and returns the real workgroups' partials.
#[allow(clippy::too_many_arguments)]
fn calibration_padded(
    ctx: &GpuContext,
    lb: &wgpu::Buffer,
    yb: &wgpu::Buffer,
    n: usize,
    k: usize,
    t: f32,
    what: &str,
) -> Vec<CalibrationPartial> {
    let groups = n.div_ceil(WG);
    let all = slots(ctx, groups);
    let counts = ctx.storage("counts", (all * NCOUNT * 4) as u64).unwrap();
    let sums = ctx.storage("sums", (all * NSUM * 4) as u64).unwrap();
    gpu::calibration::calibration_into(ctx, lb, yb, n, k, t, &counts, &sums).unwrap();
    let gc: Vec<u32> = ctx.readback(&counts, 0, all * NCOUNT).unwrap();
    let gs: Vec<u32> = ctx.readback(&sums, 0, all * NSUM).unwrap();
    assert_poison_from(&gc, groups * NCOUNT, &format!("{what}: calibration counts"));
    assert_poison_from(&gs, groups * NSUM, &format!("{what}: calibration sums"));
    gc.chunks_exact(NCOUNT)
        .zip(gs.chunks_exact(NSUM))
        .take(groups)
        .map(|(cc, ss)| {
            let mut p = CalibrationPartial::default();
            p.counts.copy_from_slice(cc);
            p.sums
                .iter_mut()
                .zip(ss)
                .for_each(|(d, s)| *d = f32::from_bits(*s));
            p
        })
        .collect()
}

#[test]
fn calibration_partials_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "calibration");
    // Exact data: every partial equal bit for bit (counts and sums).
    let (l, y) = exact_rows(11, ROWS);
    let rows = ctx.upload_rows(&l, &y, 2).unwrap();
    assert_eq!(rows.chunks.len(), 1, "one chunk, one dispatch");
    let g = gpu::calibration::calibration(ctx, &rows, 1.0).unwrap();
    let c = cpu::calibration::calibration(&l, &y, 2, 1.0);
    assert_eq!(g.len(), GROUPS);
    assert_calibration_exact(&g, &c, "exact data");
    // The same dispatch into output buffers with a poisoned slot for every workgroup of
    // the grid, padding included: the real slots match, the padding slots stay poisoned.
    let (_, n, lb, yb) = &rows.chunks[0];
    let g = calibration_padded(ctx, lb, yb, *n, 2, 1.0, "exact data");
    assert_calibration_exact(&g, &c, "exact data, padded buffers");
    // Random data, K = 3.
    let (l, y) = rows_data(12, ROWS, 3);
    let rows = ctx.upload_rows(&l, &y, 3).unwrap();
    for t in [0.5f32, 1.0, 7.3] {
        let g = gpu::calibration::calibration(ctx, &rows, t).unwrap();
        let c = cpu::calibration::calibration(&l, &y, 3, t);
        assert_calibration_close(&g, &c, &format!("t={t}"));
    }
}

#[test]
fn calibration_past_65535_workgroups() {
    // BIG rows of K = 2 (see BIG): 65536 workgroups, one dispatch on a 65535 x 2 grid.
    // One dispatch only: on lavapipe this kernel costs ~20 s at this size (16 tree sums
    // a workgroup, each 8 barrier steps); random logits on a 2-D grid are checked on the
    // capped one above. Exact data (every exp 1 or 0), so every partial compares bit for
    // bit, into buffers with a poisoned slot for each of the grid's 131070 workgroups: the
    // 65534 padding slots must stay poisoned.
    let Some(ctx) = real_grid() else { return };
    let groups = BIG.div_ceil(WG);
    assert_eq!(groups, 65536);
    assert_padded(ctx, groups, "calibration, BIG rows");
    let (l, y) = exact_rows(111, BIG);
    let rows = one_chunk(ctx, &l, &y, 2);
    let (_, n, lb, yb) = &rows.chunks[0];
    let g = calibration_padded(ctx, lb, yb, *n, 2, 1.0, "BIG rows");
    let c = cpu::calibration::calibration(&l, &y, 2, 1.0);
    assert_calibration_exact(&g, &c, "BIG rows");
}

/// Temperature partials: the labelled count exactly, the sums within 1e-4 relative (the
/// bound tests/temperature.rs uses: 256 rows of f32 terms, each a few ulp off).
fn assert_nll_partials(g: &[[f32; 4]], c: &[[f32; 4]], what: &str) {
    assert_eq!(g.len(), c.len(), "{what}");
    for (i, (gp, cp)) in g.iter().zip(c).enumerate() {
        assert_eq!(
            gp[3].to_bits(),
            cp[3].to_bits(),
            "{what} workgroup {i} count"
        );
        for j in 0..3 {
            let tol = 1e-4 * (cp[j].abs() as f64).max(1.0);
            assert!(
                ((gp[j] - cp[j]) as f64).abs() <= tol,
                "{what} workgroup {i} term {j}: {} vs {}",
                gp[j],
                cp[j]
            );
        }
    }
}

#[test]
fn temperature_nll_partials_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "temperature_nll");
    let (l, y) = rows_data(21, ROWS, 3);
    let rows = ctx.upload_rows(&l, &y, 3).unwrap();
    for b in [0.1f32, 1.0, 3.0] {
        let g = gpu::temperature_nll::temperature_nll(ctx, &rows, b).unwrap();
        assert_eq!(g.len(), GROUPS);
        let c = cpu::temperature_nll::temperature_nll(&l, &y, 3, b);
        assert_nll_partials(&g, &c, &format!("b={b}"));
    }
    let (_, n, lb, yb) = &rows.chunks[0];
    nll_padding_writes_nothing(ctx, lb, yb, *n, 3, &l, &y, "capped grid");
}

/// One temperature_nll dispatch into a poisoned buffer with a slot for every workgroup of
/// the grid, padding included: the real slots match the mirror, the rest stay poisoned.
#[allow(clippy::too_many_arguments)]
fn nll_padding_writes_nothing(
    ctx: &GpuContext,
    lb: &wgpu::Buffer,
    yb: &wgpu::Buffer,
    n: usize,
    k: usize,
    l: &[f32],
    y: &[i32],
    what: &str,
) {
    let groups = n.div_ceil(WG);
    let all = slots(ctx, groups);
    let partials = ctx
        .storage("partials", (all * NPARTIAL * 4) as u64)
        .unwrap();
    let flat = gpu::temperature_nll::temperature_nll_into(
        ctx,
        lb,
        yb,
        n,
        k,
        0.7,
        &partials,
        all * NPARTIAL,
    )
    .unwrap();
    let g: Vec<[f32; 4]> = flat[..groups * NPARTIAL]
        .chunks_exact(NPARTIAL)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let c = cpu::temperature_nll::temperature_nll(l, y, k, 0.7);
    assert_nll_partials(&g, &c, what);
    let words: Vec<u32> = flat.iter().map(|x| x.to_bits()).collect();
    assert_poison_from(&words, groups * NPARTIAL, what);
}

#[test]
fn temperature_nll_past_65535_workgroups() {
    // BIG rows of K = 2 (see BIG): 65536 workgroups, one dispatch on a 65535 x 2 grid.
    // (This test used 2^24 + 1 rows before, whose K = 2 logits exceed a 128 MiB binding,
    // so on lavapipe it fell back to K = 1, where every NLL term is 0.)
    let Some(ctx) = real_grid() else { return };
    let (n, k) = (BIG, 2);
    let groups = n.div_ceil(WG);
    assert_eq!(groups, 65536);
    assert_padded(ctx, groups, "temperature_nll, BIG rows");
    let (l, y) = rows_data(31, n, k);
    let rows = one_chunk(ctx, &l, &y, k);
    let g = gpu::temperature_nll::temperature_nll(ctx, &rows, 0.7).unwrap();
    assert_eq!(g.len(), groups);
    let c = cpu::temperature_nll::temperature_nll(&l, &y, k, 0.7);
    assert_nll_partials(&g, &c, "BIG rows");
    // And into a buffer with room (poisoned) for all 131070 slots of the grid.
    let (_, _, lb, yb) = &rows.chunks[0];
    nll_padding_writes_nothing(ctx, lb, yb, n, k, &l, &y, "BIG rows, padded buffer");
}

#[test]
fn row_stats_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "row_stats");
    let k = 3;
    let (l, y) = rows_data(41, ROWS, k);
    let rows = ctx.upload_rows(&l, &y, k).unwrap();
    let q = [0.25f32, 0.6, 2.0];
    let t = 1.3;
    let g = gpu::row_stats::row_stats(ctx, &rows, t, &q).unwrap();
    let c = cpu::row_stats::row_stats(&l, &y, k, t, &q);
    assert_eq!(g.stats.len(), ROWS);
    assert_eq!(g.info.len(), c.info.len());
    for i in 0..ROWS {
        // yhat is the logits' argmax: exact.
        assert_eq!(g.yhat(i), c.yhat(i), "row {i} yhat");
        for j in 0..5 {
            let (a, b) = (g.stats[i][j], c.stats[i][j]);
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "row {i} col {j}: {a} vs {b}"
            );
        }
        for (a, &qa) in q.iter().enumerate() {
            let (gs, cs) = (g.set_size(i, a), c.set_size(i, a));
            // A set size may differ only where some 1 - p_k sits within 1e-5 of qhat.
            let p = cpu::softmax::softmax(&l[i * k..(i + 1) * k], k, t);
            let near = p.iter().any(|&pk| ((1.0 - pk) - qa).abs() <= 1e-5);
            assert!(gs == cs || near, "row {i} set size {a}: {gs} vs {cs}");
        }
    }
}

#[test]
fn lac_scores_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "lac_scores");
    let k = 3;
    let (l, mut y) = rows_data(51, ROWS, k);
    y.iter_mut().for_each(|v| *v = v.rem_euclid(k as i32));
    let rows = ctx.upload_rows(&l, &y, k).unwrap();
    let g = gpu::lac_scores::lac_scores(ctx, &rows, 0.8).unwrap();
    let c = cpu::lac_scores::lac_scores(&l, &y, k, 0.8);
    assert_close_by("lac_scores", &g, &c, |_, a, b| {
        16.0 * ulp(a.abs().max(b.abs())) + 2e-7
    });
}

#[test]
fn softmax_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "softmax");
    let logits = random_logits(61, ROWS, 3, 6.0);
    let g = gpu::softmax::softmax(ctx, &logits, 3, 0.9).unwrap();
    let c = cpu::softmax::softmax(&logits, 3, 0.9);
    assert_close_by("softmax", &g, &c, |_, a, b| {
        16.0 * ulp(a.abs().max(b.abs())) + 2e-7
    });
}

#[test]
fn pvalues_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    assert_padded(ctx, GROUPS, "pvalues");
    // Probabilities given (probs mode): both paths see the same p, so every output is
    // a count or comparison and must be equal bit for bit.
    let k = 3;
    let probs = cpu::softmax::softmax(&random_logits(71, ROWS, k, 4.0), k, 1.0);
    let mut r = rng(72);
    let mut sorted: Vec<f32> = (0..1000)
        .map(|i| match i % 3 {
            // Exact copies of target scores: ties on the binary search.
            0 => 1.0 - probs[r.random_range(0..probs.len())],
            1 => (r.random_range(0..20) as f32) / 20.0,
            _ => r.random_range(0.0f32..1.0),
        })
        .collect();
    sorted.sort_by(f32::total_cmp);
    let q = [0.3f32, 0.9, f32::INFINITY];
    let rows = ctx.upload_rows(&probs, &[], k).unwrap();
    let g = gpu::pvalues::pvalues(ctx, &rows, 1.0, true, &sorted, &q, true).unwrap();
    let c = cpu::pvalues::pvalues(&probs, k, 1.0, true, &sorted, &q, true);
    assert_eq!(g.yhat, c.yhat, "yhat");
    assert_eq!(g.top, c.top, "top numerators");
    assert_eq!(g.second, c.second, "second numerators");
    assert_eq!(g.set_sizes, c.set_sizes, "set sizes");
    assert_eq!(g.numerators, c.numerators, "numerators");
}

#[test]
fn copy_on_a_padded_grid_leaves_the_tail_alone() {
    let Some(ctx) = capped() else { return };
    // ROWS 16-byte elements: 20 workgroups. The destination is one element longer and
    // poisoned: the copy must move exactly ROWS elements and leave the last one poisoned.
    assert_padded(ctx, GROUPS, "copy");
    let mut r = rng(81);
    let src: Vec<u32> = (0..4 * ROWS).map(|_| r.random()).collect();
    let sbuf = ctx.upload("copy-src", &src).unwrap();
    let dbuf = ctx.storage("copy-dst", 16 * (ROWS as u64 + 1)).unwrap();
    gpu::copy::copy(ctx, &sbuf, &dbuf, 16 * ROWS as u64).unwrap();
    let out: Vec<u32> = ctx.readback(&dbuf, 0, 4 * (ROWS + 1)).unwrap();
    let mut want = vec![0u32; 4 * ROWS];
    cpu::copy::copy(&src, &mut want);
    assert_bits_eq("copied", &out[..4 * ROWS], &want, |a, b| a == b);
    let tail: Vec<u32> = (4 * ROWS..4 * ROWS + 4)
        .map(|i| gpu::buffers::poison_word(i as u64))
        .collect();
    assert_eq!(&out[4 * ROWS..], &tail[..], "the element past the end");
}

/// Keys with ties, +-0, negatives and extremes, `tiles * tile - (tile - 1)` of them: the
/// last tile holds one key.
fn sort_keys(seed: u64, tiles: usize, tile: usize) -> Vec<f32> {
    let mut r = rng(seed);
    (0..(tiles - 1) * tile + 1)
        .map(|i| match i % 5 {
            0 => (r.random_range(-8..8) as f32) / 4.0,
            1 => [0.0f32, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE][r.random_range(0..5)],
            _ => r.random_range(-1e6f32..1e6),
        })
        .collect()
}

#[test]
fn radix_sort_stages_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    let plan: SortPlan = gpu::radix_sort::plan(ctx);
    // 20 tiles: radix_histogram and radix_scatter on a 17 x 2 grid (14 padding
    // workgroups); radix_scan always runs 256 workgroups, a 17 x 16 grid (16 padding).
    assert_padded(ctx, GROUPS, "radix_histogram/scatter");
    assert_padded(ctx, 256, "radix_scan");
    let k = sort_keys(91, GROUPS, plan.tile);
    assert_eq!(k.len().div_ceil(plan.tile), GROUPS);
    assert!(k.len() <= plan.chunk, "one chunk");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    // Stage by stage: the first pass's scanned tile histograms and digit totals.
    let (gh, gc) = gpu::radix_sort::first_pass_offsets(ctx, &k).unwrap();
    let mut h = cpu::radix_histogram::radix_histogram(&bits(&k), plan.tile, 0, true);
    let mut carry = [0u32; 256];
    cpu::radix_scan::radix_scan(&mut h, GROUPS, &mut carry, true);
    assert_eq!(gh.len(), 1);
    assert_bits_eq("first pass offsets", &gh[0], &h, |a, b| a == b);
    assert_bits_eq("digit totals", &gc, &carry, |a, b| a == b);
    // The whole sort, with a payload (argsort): keys and payload order bit for bit.
    let idx: Vec<u32> = (0..k.len() as u32).collect();
    let (gk, gv) = gpu::radix_sort::sort_pairs(ctx, &k, &idx).unwrap();
    let (mk, mv) = cpu::radix_sort::radix_sort(&k, Some(&idx), plan.chunk, plan.tile);
    assert_bits_eq("sorted keys", &bits(&gk), &bits(&mk), |a, b| a == b);
    assert_bits_eq("payload", &gv, &mv.unwrap(), |a, b| a == b);
}

#[test]
fn select_histogram_on_a_padded_grid() {
    let Some(ctx) = capped() else { return };
    let tile = conformal_gpu::kernel::select_histogram::IPT as usize * WG;
    assert_padded(ctx, GROUPS, "select_histogram");
    let k = sort_keys(101, GROUPS, tile);
    let dk = gpu::select_histogram::upload_keys(ctx, &k).unwrap();
    // First pass (no prefix bits) and a later pass under a few prefixes (some absent).
    let sortable: Vec<u32> = k
        .iter()
        .map(|x| conformal_gpu::kernel::common::f32_to_sortable(*x))
        .collect();
    let mut pre: Vec<u32> = sortable.iter().take(5).map(|s| s & 0xff00_0000).collect();
    pre.push(0x1200_0000);
    pre.sort_unstable();
    pre.dedup();
    for (shift, prefixes) in [(24u32, vec![0u32]), (16, pre)] {
        let g = gpu::select_histogram::select_histogram(ctx, &dk, shift, &prefixes).unwrap();
        let c = cpu::select_histogram::select_histogram(&k, shift, &prefixes);
        let c: Vec<u64> = c.into_iter().map(u64::from).collect();
        assert_bits_eq(&format!("shift {shift}"), &g, &c, |a, b| a == b);
    }
    // And the order statistics they lead to.
    let ranks = [1usize, 2, k.len() / 2, k.len()];
    let g = gpu::select_histogram::select_resident(ctx, &dk, &ranks).unwrap();
    let c = cpu::select_histogram::radix_select(&k, &ranks);
    assert_bits_eq(
        "selected",
        &g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        &c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        |a, b| a == b,
    );
}

#[test]
fn tally_past_65535_workgroups() {
    use conformal_gpu::kernel::tally::{
        count_block, counts_from_device, device_words, PairCounts, SlotMap, TallyPlan,
    };
    // BIG rows of K = 2 (see BIG): 65536 workgroups, one dispatch on a 65535 x 2 grid.
    // The tally has no output buffer to poison: its words are an accumulator (zeroed by
    // contract, `ctx.zeroed`). A real workgroup counted twice or skipped (a wrong 2-D
    // workgroup id) shows as counts that differ from the mirror's; a padding workgroup
    // has no rows, so even unguarded it would add only zeros.
    let Some(ctx) = real_grid() else { return };
    let (n, k, t) = (BIG, 2, 0.7f32);
    let groups = n.div_ceil(WG);
    assert_eq!(groups, 65536);
    assert_padded(ctx, groups, "tally, BIG rows");
    // Quantised logits (ties), a quarter of the labels unknown, slides in runs of 1 to
    // 2000 rows (workgroups of one slot and of two or more: both paths of the kernel),
    // ten slides a hospital. Grouped only: without groups (one slot) the kernel takes
    // the one-slot path of the same grid, which the capped tests and tests/tally.rs
    // cover; a second dispatch would add ~4 s on lavapipe.
    let mut r = rng(401);
    let l: Vec<f32> = (0..n * k)
        .map(|_| r.random_range(0..16) as f32 / 4.0)
        .collect();
    let y: Vec<i32> = (0..n)
        .map(|_| match r.random_range(0..4) {
            0 => -1,
            _ => r.random_range(0..k as i32),
        })
        .collect();
    let mut slide = Vec::with_capacity(n);
    while slide.len() < n {
        let (id, run) = (slide.len() as i64, r.random_range(1..=2000usize));
        slide.extend(std::iter::repeat_n(id, run.min(n - slide.len())));
    }
    let hospital: Vec<i64> = slide.iter().map(|s| s / 10 % 5).collect();
    // The mirror counts the row statistics of the row_stats kernel (row_summary.wgsl, the
    // same code the tally kernel runs), computed here in binding-sized chunks: its
    // per-row outputs of BIG rows exceed one binding.
    let qhats = [Some(0.3f32), Some(0.55), None];
    let q: Vec<f32> = qhats.iter().map(|q| q.unwrap_or(2.0)).collect();
    let st = {
        let chunked = ctx.upload_rows(&l, &y, k).unwrap();
        gpu::row_stats::row_stats(ctx, &chunked, t, &q).unwrap()
    };
    assert_eq!(st.len(), n);
    let mid = st.stats[n / 2];
    let plan = TallyPlan {
        t,
        atc_mc: Some(mid[0]),
        atc_ne: Some(mid[1]),
        cpc_q: Some(mid[3]),
        qhats: &qhats,
        labels: &y,
        groups: [Some(&hospital), Some(&slide)],
    };
    let mut want = PairCounts::new();
    count_block(st.all(), 0, &plan, &mut want);
    assert_eq!(want.values().map(|c| c.n()).sum::<u64>(), n as u64);
    // The CPU mirror of the kernel's words (cpu::tally, slots numbered as the device
    // numbers them), decoded: equal to count_block's counts.
    let mut slots = SlotMap::default();
    let ids = slots.assign(plan.groups, n);
    let per = device_words(qhats.len());
    let mut words = vec![0u32; slots.keys.len() * per];
    let identity: Vec<u32> = (0..slots.keys.len() as u32).collect();
    cpu::tally::tally_words(&st, ids.as_deref(), &identity, &plan, &mut words);
    let mut mirror = PairCounts::new();
    for (key, w) in slots.keys.iter().zip(words.chunks_exact(per)) {
        let c = counts_from_device(w, qhats.len());
        if c.n() > 0 {
            mirror.insert(*key, c);
        }
    }
    assert!(
        mirror == want,
        "BIG rows: the mirror differs from count_block"
    );
    // The device: one dispatch of 65536 workgroups.
    let rows = one_chunk(ctx, &l, &y, k);
    let mut dev = gpu::tally::DeviceTally::new(qhats.len()).unwrap();
    dev.add(ctx, &rows, &plan).unwrap();
    let got = dev.finish(ctx).unwrap();
    assert_eq!(got.len(), want.len(), "BIG rows: slots");
    for (key, c) in &want {
        assert_eq!(got.get(key), Some(c), "BIG rows: slot {key:?}");
    }
}

#[test]
fn select_histogram_past_65535_workgroups() {
    // Tiles of 256 keys (real_grid's max_tile_blocks), so BIG keys (see BIG) are 65536
    // workgroups: one dispatch per pass on a 65535 x 2 grid, the last real tile one key.
    // Its output is an accumulator (zeroed by contract, never poisoned): a tile counted
    // twice or skipped (a wrong 2-D workgroup id) shows as counts that differ from the
    // mirror's; a padding workgroup has no keys, so even unguarded it would add nothing.
    let Some(ctx) = real_grid() else { return };
    let tile = gpu::select_histogram::tile_blocks(ctx) as usize * WG;
    assert_eq!(tile, WG, "max_tile_blocks: 1");
    let groups = 65536;
    let k = sort_keys(501, groups, tile);
    assert_eq!(k.len(), BIG);
    assert!(
        4 * BIG as u64 <= ctx.limits().max_binding_bytes,
        "one chunk"
    );
    assert_padded(ctx, groups, "select_histogram, BIG keys");
    let dk = gpu::select_histogram::upload_keys(ctx, &k).unwrap();
    // First pass (no prefix bits) and a later pass under a few prefixes (some absent).
    let mut pre: Vec<u32> = k
        .iter()
        .take(7)
        .map(|x| conformal_gpu::kernel::common::f32_to_sortable(*x) & 0xff00_0000)
        .collect();
    pre.push(0x1200_0000);
    pre.sort_unstable();
    pre.dedup();
    for (shift, prefixes) in [(24u32, vec![0u32]), (16, pre)] {
        let g = gpu::select_histogram::select_histogram(ctx, &dk, shift, &prefixes).unwrap();
        let c = cpu::select_histogram::select_histogram(&k, shift, &prefixes);
        let c: Vec<u64> = c.into_iter().map(u64::from).collect();
        assert_bits_eq(&format!("BIG keys, shift {shift}"), &g, &c, |a, b| a == b);
    }
    // And order statistics (four more passes, ~1 s each on lavapipe: three ranks).
    let ranks = [1usize, BIG / 2, BIG];
    let g = gpu::select_histogram::select_resident(ctx, &dk, &ranks).unwrap();
    let c = cpu::select_histogram::radix_select(&k, &ranks);
    assert_bits_eq(
        "BIG keys, selected",
        &g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        &c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        |a, b| a == b,
    );
}

/// BIG keys (see BIG) in tiles of 256 (real_grid's max_tile_blocks): 65536 tiles, so
/// radix_histogram and radix_scatter run 65536 workgroups a pass on a 65535 x 2 grid
/// (radix_scan always runs 256, one per digit, each scanning 65536 tiles).
fn big_sort_keys(ctx: &GpuContext, seed: u64) -> (SortPlan, Vec<f32>) {
    let plan: SortPlan = gpu::radix_sort::plan(ctx);
    assert_eq!(plan.tile, WG, "max_tile_blocks: 1");
    let k = sort_keys(seed, 65536, plan.tile);
    assert_eq!(k.len(), BIG);
    assert!(k.len() <= plan.chunk, "one chunk");
    assert_padded(ctx, 65536, "radix_histogram/scatter, BIG keys");
    (plan, k)
}

#[test]
fn radix_histogram_and_scan_past_65535_workgroups() {
    // The sort's reduction, stage by stage: the first pass's tile histograms (one dispatch
    // of 65536 workgroups) after the scan, and the digit totals. The histogram buffer is
    // fresh and poisoned, so every slot must be written; a padding workgroup that wrote
    // (hist[d * tiles + t] for t >= tiles) would overwrite the next digit's counts.
    let Some(ctx) = real_grid() else { return };
    let (plan, k) = big_sort_keys(ctx, 601);
    let tiles = k.len().div_ceil(plan.tile);
    let (gh, gc) = gpu::radix_sort::first_pass_offsets(ctx, &k).unwrap();
    let bits: Vec<u32> = k.iter().map(|x| x.to_bits()).collect();
    let mut h = cpu::radix_histogram::radix_histogram(&bits, plan.tile, 0, true);
    let mut carry = [0u32; 256];
    cpu::radix_scan::radix_scan(&mut h, tiles, &mut carry, true);
    assert_eq!(gh.len(), 1);
    assert_bits_eq("BIG keys, first pass offsets", &gh[0], &h, |a, b| a == b);
    assert_bits_eq("BIG keys, digit totals", &gc, &carry, |a, b| a == b);
}

#[test]
#[ignore = "~35 s on lavapipe; radix_scatter is no reduction: run with --ignored"]
fn radix_sort_past_65535_workgroups() {
    // The whole sort, with a payload (argsort), into poisoned buffers: 4 passes of
    // histogram, scan and scatter, each histogram and scatter 65536 workgroups. Keys and
    // payload order bit for bit. Ignored by default: the scatter's 65536 workgroups a
    // pass take ~30 s on lavapipe (2 cores); its guard is checked on the capped grid by
    // radix_sort_stages_on_a_padded_grid.
    let Some(ctx) = real_grid() else { return };
    let (plan, k) = big_sort_keys(ctx, 602);
    let idx: Vec<u32> = (0..k.len() as u32).collect();
    let (gk, gv) = gpu::radix_sort::sort_pairs(ctx, &k, &idx).unwrap();
    let (mk, mv) = cpu::radix_sort::radix_sort(&k, Some(&idx), plan.chunk, plan.tile);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_bits_eq("BIG keys, sorted", &bits(&gk), &bits(&mk), |a, b| a == b);
    assert_bits_eq("BIG keys, payload", &gv, &mv.unwrap(), |a, b| a == b);
}

#[test]
fn cot_two_class_past_65535_workgroups() {
    // BIG rows of K = 2 probabilities (see BIG) in tiles of 256 rows (real_grid's
    // max_tile_blocks): each of COT's seven passes (six histograms, one sums) is one
    // dispatch of 65536 workgroups on a 65535 x 2 grid, the last real tile one row. The
    // outputs are accumulators (zeroed by contract, never poisoned): a tile counted twice
    // or skipped shows as sums that differ from the mirror's.
    use conformal_gpu::backend::{Backend, CpuBackend, GpuBackend};
    let Some(ctx) = real_grid() else { return };
    assert!(
        8 * BIG as u64 <= ctx.limits().max_binding_bytes,
        "one chunk"
    );
    assert_padded(ctx, BIG.div_ceil(WG), "cot_two_class, BIG rows");
    let logits = random_logits(701, BIG, 2, 6.0);
    let p = cpu::softmax::softmax(&logits, 2, 1.0);
    // Two ranks (a fractional row): both narrowed in the same passes.
    let whole = BIG as u64 / 3;
    let g = GpuBackend::new(ctx).cot_two_class(&p, whole).unwrap();
    assert_eq!(g, CpuBackend.cot_two_class(&p, whole).unwrap(), "BIG rows");
    // Three rows in four (0, 1), the largest key 2^41, all above a boundary among the
    // rest: their sum, about 2^64.6, carries out of the output's second word, the
    // 96-bit sum's top carry (out_add96), which smaller sets never reach.
    let mut p = p;
    let mut top = 0u64;
    for (i, row) in p.chunks_exact_mut(2).enumerate() {
        if i % 4 != 3 {
            row.copy_from_slice(&[0.0, 1.0]);
            top += 1;
        }
    }
    let g = GpuBackend::new(ctx).cot_two_class(&p, top + 5).unwrap();
    let c = CpuBackend.cot_two_class(&p, top + 5).unwrap();
    // The keys' sum is the gains' plus 2^40 a row.
    let keys = c.top + (top as i128 + 5) * (1i128 << 40);
    assert!(
        keys > 1i128 << 64,
        "the keys above the boundary sum past 2^64"
    );
    assert_eq!(g, c, "BIG rows, sums past 2^64");
}

#[test]
fn cot_collect_past_65535_workgroups() {
    // BIG rows of K = 2 probabilities (the kernel takes any K from 2; three classes a row
    // would pass lavapipe's binding limit at BIG rows) in tiles of 256 rows (real_grid's
    // max_tile_blocks):
    // both of the collect pass's dispatches (the pass, the slacks' low words) are 65536
    // workgroups on a 65535 x 2 grid, the last real tile one row; the free list goes
    // into a poisoned buffer (only its written words are read). A tile counted twice or
    // skipped shows as sums, counts or free rows that differ from the mirror's.
    use conformal_gpu::backend::{Backend, CpuBackend, GpuBackend};
    use conformal_gpu::kernel::cot_collect::CollectPoint;
    let Some(ctx) = real_grid() else { return };
    assert!(
        8 * BIG as u64 <= ctx.limits().max_binding_bytes,
        "one chunk"
    );
    assert_padded(ctx, BIG.div_ceil(WG), "cot_collect, BIG rows");
    let logits = random_logits(703, BIG, 2, 6.0);
    let p = cpu::softmax::softmax(&logits, 2, 1.0);
    // Bands that fix most rows and free those near the class boundary.
    let point = CollectPoint::new(&[0, 1 << 36], &[1 << 33, 1 << 35]).expect("point");
    let g = GpuBackend::new(ctx).cot_collect(&p, &point).unwrap();
    let c = CpuBackend.cot_collect(&p, &point).unwrap();
    assert!(!c.free.is_empty() && c.fixed_rows.iter().all(|&n| n > 0));
    assert_eq!(g, c, "BIG rows");
}
