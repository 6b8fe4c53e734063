//! Every kernel on a 2-D dispatch grid, with padding workgroups, into poisoned output
//! buffers (DESIGN.md section 4): a padding workgroup (`group_id >= groups`, the last row of
//! an `x * y` grid) must write nothing, and every output element a kernel hands back must
//! have been written by it.
//!
//! How: a context whose per-dimension limit is capped at [`CAP`] = 17 workgroups
//! (`GpuOptions::max_workgroups_per_dim`), so a few thousand rows give a 2-D grid, and
//! whose fresh output buffers are filled with NaN and noise bit patterns
//! (`GpuOptions::poison_outputs`; wgpu would zero them). Each kernel is compared with its
//! CPU mirror: bit for bit where the stage only counts or moves (sort, select, histograms,
//! copy, p-values on given probabilities, labelled counts), within DESIGN 4 tolerances where
//! WGSL's `exp`/`log` enter. One test also crosses the real 65535 limit, on the cheapest
//! reduction kernel (temperature_nll, K = 2).
#![cfg(feature = "gpu")]

mod common;

use common::*;
use conformal_gpu::cpu;
use conformal_gpu::gpu::{self, GpuContext, GpuOptions};
use conformal_gpu::kernel::calibration::{NCOUNT, NSUM};
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
    assert_eq!(g.len(), c.len());
    for (i, (gp, cp)) in g.iter().zip(&c).enumerate() {
        assert_eq!(gp.counts, cp.counts, "exact data, workgroup {i} counts");
        let (gb, cb): (Vec<u32>, Vec<u32>) = (
            gp.sums.iter().map(|s| s.to_bits()).collect(),
            cp.sums.iter().map(|s| s.to_bits()).collect(),
        );
        assert_eq!(gb, cb, "exact data, workgroup {i} sums");
    }
    // The same dispatch into output buffers with a poisoned slot for every workgroup of
    // the grid, padding included: the real slots match, the padding slots stay poisoned.
    let all = slots(ctx, GROUPS);
    let counts = ctx.storage("counts", (all * NCOUNT * 4) as u64).unwrap();
    let sums = ctx.storage("sums", (all * NSUM * 4) as u64).unwrap();
    let (_, n, lb, yb) = &rows.chunks[0];
    gpu::calibration::calibration_into(ctx, lb, yb, *n, 2, 1.0, &counts, &sums).unwrap();
    let gc: Vec<u32> = ctx.readback(&counts, 0, all * NCOUNT).unwrap();
    let gs: Vec<u32> = ctx.readback(&sums, 0, all * NSUM).unwrap();
    let cc: Vec<u32> = c.iter().flat_map(|p| p.counts).collect();
    let cs: Vec<u32> = c.iter().flat_map(|p| p.sums.map(f32::to_bits)).collect();
    assert_bits_eq("counts", &gc[..GROUPS * NCOUNT], &cc, |a, b| a == b);
    assert_bits_eq("sums", &gs[..GROUPS * NSUM], &cs, |a, b| a == b);
    assert_poison_from(&gc, GROUPS * NCOUNT, "calibration counts");
    assert_poison_from(&gs, GROUPS * NSUM, "calibration sums");
    // Random data, K = 3: labelled and correct counts exact per workgroup; a confidence
    // within an ulp of a bin edge may change bins; sums within 1e-5 relative.
    let (l, y) = rows_data(12, ROWS, 3);
    let rows = ctx.upload_rows(&l, &y, 3).unwrap();
    for t in [0.5f32, 1.0, 7.3] {
        let g = gpu::calibration::calibration(ctx, &rows, t).unwrap();
        let c = cpu::calibration::calibration(&l, &y, 3, t);
        assert_eq!(g.len(), c.len());
        for (i, (gp, cp)) in g.iter().zip(&c).enumerate() {
            assert_eq!(gp.counts[30..], cp.counts[30..], "t={t} workgroup {i}");
            let moved: u32 = (0..15).map(|b| gp.counts[b].abs_diff(cp.counts[b])).sum();
            assert!(moved <= 2, "t={t} workgroup {i}: {moved} rows changed bins");
            let (gs, cs) = (gp.sums[15], cp.sums[15]);
            assert!(
                ((gs - cs) as f64).abs() <= 1e-5 * (cs.abs() as f64).max(1.0),
                "t={t} workgroup {i} confidence sum {gs} vs {cs}"
            );
        }
    }
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
    // The one real-size test (the others cap the grid at 17): 2^24 + 1 rows are 65537
    // workgroups of 256, a 65535 x 2 grid with 65533 padding workgroups. temperature_nll
    // is the cheapest reduction kernel per row; K = 2 keeps it to two exps a row. The rows
    // are one chunk (built here: `upload_rows` would cut them at 128 bytes a row), 128 MiB
    // + 8 bytes of logits, so on an adapter whose binding limit is smaller K drops to 1.
    let Some(ctx) = gpu_with(GpuOptions {
        // WebGPU's default, pinned: some adapters allow more in x, and the point is 2-D.
        max_workgroups_per_dim: Some(65535),
        poison_outputs: true,
        ..Default::default()
    }) else {
        return;
    };
    let n = (1usize << 24) + 1;
    let groups = n.div_ceil(WG);
    assert_eq!(groups, 65537);
    assert_padded(&ctx, groups, "2^24 + 1 rows");
    let k = if ctx.limits().max_binding_bytes >= (8 * n) as u64 {
        2
    } else {
        1
    };
    let (l, y) = rows_data(31, n, k);
    let rows = gpu::DeviceRows {
        k,
        n,
        chunks: vec![(
            0,
            n,
            ctx.upload("logits", &l).unwrap(),
            ctx.upload("labels", &y).unwrap(),
        )],
    };
    let g = gpu::temperature_nll::temperature_nll(&ctx, &rows, 0.7).unwrap();
    assert_eq!(g.len(), groups);
    let c = cpu::temperature_nll::temperature_nll(&l, &y, k, 0.7);
    assert_nll_partials(&g, &c, &format!("2^24+1 rows, k={k}"));
    // And into a buffer with room (poisoned) for all 131070 slots of the grid.
    let (_, _, lb, yb) = &rows.chunks[0];
    nll_padding_writes_nothing(&ctx, lb, yb, n, k, &l, &y, "2^24+1 rows, padded buffer");
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
