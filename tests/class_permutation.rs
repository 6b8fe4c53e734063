//! DESIGN.md 2.1: rows equal up to a shift and a permutation of the classes (quantised
//! multi-class logits) get bit-identical probabilities, largest probability and negative
//! entropy, so every per-row statistic, count and estimate built on them is the same, on
//! the CPU path and on the GPU path alike. The sums over classes are order-invariant for
//! K >= 3 (src/kernel/class_sum.rs; K = 2 keeps its f32 sum, which commutes).

mod common;

use std::collections::BTreeMap;

use common::*;
use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::kernel::row_stats::{col, RowStats};
use conformal_gpu::kernel::tally::{PairCounts, TallyPlan};
use conformal_gpu::methods::calibration::{Calibration, CalibrationOptions};
use conformal_gpu::methods::evaluate::tally_set;
use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::Rng;

/// A row of `k` logits, multiples of 1/4 in [-range, range]: few distinct values, so a row
/// has many tied classes (and often a tied maximum).
fn quantised_row(r: &mut impl Rng, k: usize, range: i32) -> Vec<f32> {
    (0..k)
        .map(|_| r.random_range(-4 * range..=4 * range) as f32 * 0.25)
        .collect()
}

/// `copy[j] = row[perm[j]] + shift` for a random permutation and a shift by a multiple of
/// 1/4 (exact in f32 at these magnitudes, so `z - max` is unchanged), and `perm`.
fn permute_and_shift(r: &mut impl Rng, row: &[f32]) -> (Vec<f32>, Vec<usize>) {
    let mut perm: Vec<usize> = (0..row.len()).collect();
    perm.shuffle(r);
    let shift = r.random_range(-64..=64) as f32 * 0.25;
    (perm.iter().map(|&j| row[j] + shift).collect(), perm)
}

/// The class of the copy that is class `y` of the original (`perm[y'] = y`).
fn moved(perm: &[usize], y: i32) -> i32 {
    if y < 0 {
        y
    } else {
        perm.iter().position(|&j| j == y as usize).unwrap() as i32
    }
}

/// `n` originals (`a`) and their permuted, shifted copies (`b`), row for row, with labels
/// that follow the classes. `labels` avoid a label on a tied maximum (-1 there, and on a
/// tenth of the rows): which of the tied classes is the argmax (lowest index) depends on
/// the order, so "correct" would not be invariant; `full` labels every row (LAC scores).
struct Pairs {
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    perms: Vec<Vec<usize>>,
    labels_a: Vec<i32>,
    labels_b: Vec<i32>,
    full_a: Vec<i32>,
    full_b: Vec<i32>,
}

fn pairs(seed: u64, n: usize, k: usize) -> Pairs {
    let mut r = rng(seed);
    let mut p = Pairs {
        k,
        a: Vec::new(),
        b: Vec::new(),
        perms: Vec::new(),
        labels_a: Vec::new(),
        labels_b: Vec::new(),
        full_a: Vec::new(),
        full_b: Vec::new(),
    };
    for _ in 0..n {
        let row = quantised_row(&mut r, k, 3);
        let (copy, perm) = permute_and_shift(&mut r, &row);
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let tied_max = row.iter().filter(|&&z| z == m).count() > 1;
        let full = r.random_range(0..k as i32);
        let y = if (tied_max && row[full as usize] == m) || r.random_bool(0.1) {
            -1
        } else {
            full
        };
        p.labels_a.push(y);
        p.labels_b.push(moved(&perm, y));
        p.full_a.push(full);
        p.full_b.push(moved(&perm, full));
        p.a.extend(&row);
        p.b.extend(&copy);
        p.perms.push(perm);
    }
    p
}

/// Every per-row output of `be` on the originals equals the copies' bit for bit (classes
/// matched through the permutation); returns the originals' row statistics and softmax.
fn check_backend<B: Backend>(be: &B, p: &Pairs, t: f32, what: &str) -> (RowStats, Vec<f32>) {
    let k = p.k;
    let n = p.labels_a.len();
    let bits = |v: f32| v.to_bits();
    let ra = be.prepare(&p.a, &p.labels_a, k).unwrap();
    let rb = be.prepare(&p.b, &p.labels_b, k).unwrap();

    // Row statistics, with thresholds on values the rows take (exact ties at a threshold),
    // +inf, and a plain level.
    let pre = be.row_stats(&ra, t, &[]).unwrap();
    let mut qhats: Vec<Option<f32>> = (0..n.min(6))
        .map(|i| Some(pre.stats[i * n / 6][col::R1]))
        .collect();
    qhats.extend([Some(pre.stats[n / 2][col::R2]), Some(0.5), None]);
    let sa = be.row_stats(&ra, t, &qhats).unwrap();
    let sb = be.row_stats(&rb, t, &qhats).unwrap();
    for i in 0..n {
        for c in [col::P1, col::NE, col::LAC, col::R1, col::R2] {
            assert_eq!(
                bits(sa.stats[i][c]),
                bits(sb.stats[i][c]),
                "{what}: row {i} column {c}: {:?} vs {:?}",
                sa.stats[i],
                sb.stats[i]
            );
        }
        for a in 0..qhats.len() {
            assert_eq!(
                sa.set_size(i, a),
                sb.set_size(i, a),
                "{what}: row {i} level {a}"
            );
        }
    }

    // Softmax: class perm[j] of the original is class j of the copy.
    let pa = be.softmax(&p.a, k, t).unwrap();
    let pb = be.softmax(&p.b, k, t).unwrap();
    for (i, perm) in p.perms.iter().enumerate() {
        for (j, &src) in perm.iter().enumerate() {
            assert_eq!(
                bits(pa[i * k + src]),
                bits(pb[i * k + j]),
                "{what}: softmax row {i} class {src}"
            );
        }
    }

    // LAC scores (every label known), then p-values against them.
    let fa = be.prepare(&p.a, &p.full_a, k).unwrap();
    let fb = be.prepare(&p.b, &p.full_b, k).unwrap();
    let la = be.lac_scores(&fa, t).unwrap();
    let lb = be.lac_scores(&fb, t).unwrap();
    for i in 0..n {
        assert_eq!(bits(la[i]), bits(lb[i]), "{what}: lac score row {i}");
    }
    let mut sorted = la.clone();
    sorted.sort_by(f32::total_cmp);
    let q32: Vec<f32> = qhats.iter().map(|q| q.unwrap_or(f32::INFINITY)).collect();
    let va = be.pvalues(&ra, t, &sorted, &q32, true).unwrap();
    let vb = be.pvalues(&rb, t, &sorted, &q32, true).unwrap();
    assert_eq!(va.top, vb.top, "{what}: p-value top numerators");
    assert_eq!(va.second, vb.second, "{what}: p-value second numerators");
    assert_eq!(va.set_sizes, vb.set_sizes, "{what}: p-value set sizes");
    let (na, nb) = (va.numerators.unwrap(), vb.numerators.unwrap());
    for (i, perm) in p.perms.iter().enumerate() {
        for (j, &src) in perm.iter().enumerate() {
            assert_eq!(na[i * k + src], nb[i * k + j], "{what}: numerator row {i}");
        }
    }

    // Calibration bins (counts, correct counts, confidence sums: labels avoid tied maxima).
    assert_eq!(
        be.calibration(&ra, t).unwrap(),
        be.calibration(&rb, t).unwrap(),
        "{what}: calibration bins"
    );

    // Tally counts with thresholds on the rows' own values (ties at every threshold).
    let tally = |rows: &B::Rows<'_>, labels: &[i32]| -> PairCounts {
        let plan = TallyPlan {
            t,
            atc_mc: Some(sa.stats[n / 3][col::P1]),
            atc_ne: Some(sa.stats[n / 4][col::NE]),
            cpc_q: Some(sa.stats[n / 5][col::R1]),
            qhats: &qhats,
            labels,
            groups: [None, None],
        };
        let mut acc = be.tally_start(qhats.len()).unwrap();
        be.tally_add(&mut acc, rows, &plan).unwrap();
        be.tally_finish(acc).unwrap()
    };
    assert_eq!(
        tally(&ra, &p.labels_a),
        tally(&rb, &p.labels_b),
        "{what}: tally counts"
    );
    (sa, pa)
}

/// K = 3: the narrowest rows that sum on the grid (the CPU's unrolled 3-wide path);
/// K = 7: the general path, odd; K = 100: wide rows, where most terms at small T fall
/// under 2^-17 and are truncated on the grid. 300 rows: more than one 256-row workgroup
/// (the calibration partials and tally words of two workgroups). Temperatures from 1e-3
/// (most terms underflow to 0; the sum counts the tied maxima) to 1e3 (every term near
/// 1, the sum near K).
const SIZES: [usize; 3] = [3, 7, 100];
const TEMPERATURES: [f32; 5] = [1e-3, 0.3, 1.0, 7.3, 1e3];

#[test]
fn cpu_permuted_shifted_rows_are_bit_identical() {
    for (s, k) in SIZES.into_iter().enumerate() {
        let p = pairs(100 + s as u64, 300, k);
        for t in TEMPERATURES {
            check_backend(&CpuBackend, &p, t, &format!("cpu k={k} t={t}"));
        }
    }
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_permuted_shifted_rows_are_bit_identical_and_near_cpu() {
    use conformal_gpu::backend::GpuBackend;
    let Some(ctx) = shared_gpu() else { return };
    let gb = GpuBackend::new(ctx);
    for (s, k) in SIZES.into_iter().enumerate() {
        let p = pairs(100 + s as u64, 300, k);
        for t in TEMPERATURES {
            let what = format!("gpu k={k} t={t}");
            let (g, gp) = check_backend(&gb, &p, t, &what);
            let c = CpuBackend
                .row_stats(&CpuBackend.prepare(&p.a, &p.labels_a, k).unwrap(), t, &[])
                .unwrap();
            // CPU vs GPU: tests/row_stats.rs's tolerances (WGSL exp is a few ulp off).
            for i in 0..g.len() {
                let (gs, cs) = (g.stats[i], c.stats[i]);
                for j in [col::P1, col::LAC, col::R1, col::R2] {
                    assert!(
                        (gs[j] - cs[j]).abs() <= 1e-6,
                        "{what} row {i} col {j}: gpu {} cpu {}",
                        gs[j],
                        cs[j]
                    );
                }
                assert!(
                    (gs[col::NE] - cs[col::NE]).abs() <= 1e-5 * (1.0 + cs[col::NE].abs()),
                    "{what} row {i} ne: gpu {} cpu {}",
                    gs[col::NE],
                    cs[col::NE]
                );
            }
            let cp = CpuBackend.softmax(&p.a, k, t).unwrap();
            assert_close_by(&format!("{what} softmax"), &gp, &cp, |_, a, b| {
                16.0 * ulp(a.abs().max(b.abs())) + 2e-7
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// The issue's case: ATC's tie group on a K = 100 quantised source.

/// A K = 100 set of `n` rows, each a permuted, shifted copy of one of `bases` (picked with
/// the weights `w`): rows of the same base are tied in exact arithmetic, at every T.
fn pooled_set(r: &mut impl Rng, bases: &[Vec<f32>], w: &[f64], n: usize) -> (Vec<f32>, Vec<usize>) {
    let total: f64 = w.iter().sum();
    let mut logits = Vec::with_capacity(n * bases[0].len());
    let mut which = Vec::with_capacity(n);
    for _ in 0..n {
        let mut u = r.random_range(0.0..total);
        let mut j = 0;
        while u >= w[j] && j + 1 < w.len() {
            u -= w[j];
            j += 1;
        }
        logits.extend(permute_and_shift(r, &bases[j]).0);
        which.push(j);
    }
    (logits, which)
}

/// Exact equivalence class of each row: its sorted `z - max` values (exact for quantised
/// logits), numbered in order of first appearance.
fn exact_classes(logits: &[f32], k: usize) -> (Vec<usize>, Vec<Vec<f32>>) {
    let mut keys: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
    let mut reps = Vec::new();
    let ids = logits
        .chunks_exact(k)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut d: Vec<f32> = row.iter().map(|&z| z - m).collect();
            d.sort_by(f32::total_cmp);
            let key: Vec<u32> = d.iter().map(|v| v.to_bits()).collect();
            let next = keys.len();
            *keys.entry(key).or_insert_with(|| {
                reps.push(d.clone());
                next
            })
        })
        .collect();
    (ids, reps)
}

/// `(max probability, negative entropy)` of a row of `z - max` values at `t`, in f64,
/// summed in ascending order.
fn exact_scores(d: &[f32], t: f64) -> (f64, f64) {
    let mut e: Vec<f64> = d.iter().map(|&x| (x as f64 / t).exp()).collect();
    e.sort_by(f64::total_cmp);
    let s: f64 = e.iter().sum();
    let ne = e
        .iter()
        .map(|&v| {
            let p = v / s;
            if p > 0.0 {
                p * p.ln()
            } else {
                0.0
            }
        })
        .fold(0.0, |a, b| a + b);
    (1.0 / s, ne)
}

/// ATC in exact arithmetic (DESIGN.md 2.7) on equivalence classes: `g[c]` the score of
/// class c, `src`/`tgt` each row's class, `correct` the correct source rows. Returns the
/// tie group size at the threshold, the rows above it, and ATC(target).
fn exact_atc(g: &[f64], src: &[usize], tgt: &[usize], correct: usize) -> (usize, usize, f64) {
    // Distinct classes must be far apart compared with f32 rounding, or "exact" would
    // not be what the f32 pipeline can reproduce.
    for a in 0..g.len() {
        for b in 0..a {
            assert!(
                (g[a] - g[b]).abs() > 1e-5 * g[a].abs().max(1e-3),
                "classes {a} and {b} too close: {} vs {}",
                g[a],
                g[b]
            );
        }
    }
    let mut scores: Vec<f64> = src.iter().map(|&c| g[c]).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    let t = scores[correct - 1];
    let above = scores.iter().filter(|&&s| s > t).count();
    let ties = scores.iter().filter(|&&s| s == t).count();
    let lambda = (correct - above) as f64 / ties as f64;
    let t_above = tgt.iter().filter(|&&c| g[c] > t).count();
    let t_equal = tgt.iter().filter(|&&c| g[c] == t).count();
    (
        ties,
        above,
        (t_above as f64 + lambda * t_equal as f64) / tgt.len() as f64,
    )
}

/// A K = 100 quantised source of 12 distinct rows up to shift and permutation (about 30
/// copies each), `correct` chosen so that the raw ATC-MC threshold falls inside a tie
/// group; a target drawn from the same rows with other weights. On the crate's CPU and GPU
/// paths, in both modes, the ATC-MC and ATC-NE tie groups hold exactly the rows exact
/// arithmetic ties, with the same share lambda, and the estimates equal the exact
/// tie-split values. (With S summed in f32 in class order, permuted copies got S a few ulp
/// apart: the raw ATC-MC group at the threshold held 8 rows on the CPU path and 11 on
/// lavapipe where exact arithmetic ties 28, and ATC-MC was 0.48 / 0.4804 instead of 0.484.)
fn check_atc_tie_groups<B: Backend>(be: &B, what: &str) {
    let k = 100;
    let mut r = rng(2024);
    let bases: Vec<Vec<f32>> = (0..12).map(|_| quantised_row(&mut r, k, 2)).collect();
    let (src_logits, _) = pooled_set(&mut r, &bases, &[1.0; 12], 360);
    let w: Vec<f64> = (0..12).map(|j| 1.0 + j as f64).collect();
    let (tgt_logits, _) = pooled_set(&mut r, &bases, &w, 250);
    let (src_class, reps) = exact_classes(&src_logits, k);
    let (tgt_class, tgt_reps) = exact_classes(&tgt_logits, k);
    assert_eq!(reps.len(), 12);
    // Target classes renumbered to the source's.
    let tgt_class: Vec<usize> = tgt_class
        .iter()
        .map(|&c| reps.iter().position(|d| d == &tgt_reps[c]).unwrap())
        .collect();

    // Correct rows: enough that the c-th largest raw max probability falls in the middle
    // of the 6th largest class's group.
    let g_raw: Vec<f64> = reps.iter().map(|d| exact_scores(d, 1.0).0).collect();
    let mut order: Vec<usize> = (0..12).collect();
    order.sort_by(|&a, &b| g_raw[b].total_cmp(&g_raw[a]));
    let size = |c: usize| src_class.iter().filter(|&&x| x == c).count();
    let above: usize = order[..5].iter().map(|&c| size(c)).sum();
    let correct = above + size(order[5]) / 2;
    let mut is_correct = vec![false; src_class.len()];
    is_correct[..correct].iter_mut().for_each(|c| *c = true);
    is_correct.shuffle(&mut r);
    let labels: Array1<i64> = src_logits
        .chunks_exact(k)
        .zip(&is_correct)
        .map(|(row, &ok)| {
            let (mut arg, mut m) = (0, row[0]);
            for (j, &z) in row.iter().enumerate() {
                if z > m {
                    (arg, m) = (j, z);
                }
            }
            (if ok {
                arg
            } else {
                (arg + 1 + r.random_range(0..k - 1)) % k
            }) as i64
        })
        .collect();
    let source = PredictionSet::new(
        "source",
        Array2::from_shape_vec((360, k), src_logits.clone()).unwrap(),
    )
    .with_labels(labels.clone());
    let target = PredictionSet::new(
        "target",
        Array2::from_shape_vec((250, k), tgt_logits).unwrap(),
    );

    let cal = Calibration::fit(be, &source, &CalibrationOptions::default()).unwrap();
    assert_eq!(
        cal.modes.raw.correct, correct,
        "{what}: correct source rows"
    );
    let tally = tally_set(be, &cal, &target, 64).unwrap();
    let report = cal.report("target", &tally).unwrap();
    let y32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    let rows = be.prepare(&src_logits, &y32, k).unwrap();
    for (mode, m, est) in [
        ("raw", &cal.modes.raw, &report.estimates.raw),
        ("ts", &cal.modes.ts, &report.estimates.ts),
    ] {
        let scores: Vec<(f64, f64)> = reps.iter().map(|d| exact_scores(d, m.t as f64)).collect();
        let stats = be.row_stats(&rows, m.t, &[]).unwrap();
        for (name, c, thr, got) in [
            ("ATC-MC", col::P1, &m.atc_mc, est.atc_mc),
            ("ATC-NE", col::NE, &m.atc_ne, est.atc_ne),
        ] {
            let g: Vec<f64> = scores
                .iter()
                .map(|s| if c == col::P1 { s.0 } else { s.1 })
                .collect();
            let (ties, above, want) = exact_atc(&g, &src_class, &tgt_class, correct);
            let t = thr.t.unwrap();
            let crate_ties = stats.stats.iter().filter(|s| s[c] == t).count();
            let crate_above = stats.stats.iter().filter(|s| s[c] > t).count();
            let ctx = format!("{what} {mode} {name} (T = {})", m.t);
            eprintln!(
                "{ctx}: tie group {crate_ties} rows (exact {ties}), above {crate_above} \
                 (exact {above}), estimate {got} (exact {want})"
            );
            assert_eq!(crate_ties, ties, "{ctx}: tie group at the threshold");
            assert_eq!(crate_above, above, "{ctx}: rows above the threshold");
            assert_eq!(
                thr.lambda,
                (correct - above) as f64 / ties as f64,
                "{ctx}: tie share"
            );
            assert!((got - want).abs() <= 1e-12, "{ctx}: {got} vs exact {want}");
        }
    }
    // The construction puts the raw ATC-MC threshold inside a group of about 30 rows.
    let raw_ties = size(order[5]);
    assert!(raw_ties >= 15, "{what}: raw group of {raw_ties} rows");
}

#[test]
fn cpu_atc_tie_groups_are_exact_on_k100() {
    check_atc_tie_groups(&CpuBackend, "cpu");
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_atc_tie_groups_are_exact_on_k100() {
    use conformal_gpu::backend::GpuBackend;
    let Some(ctx) = shared_gpu() else { return };
    check_atc_tie_groups(&GpuBackend::new(ctx), "gpu");
}

// ---------------------------------------------------------------------------------------
// The WGSL helpers themselves, on the device, against the Rust contract.

/// class_sum.wgsl's `grid_to_f32` (integer-only rounding of a (low, high) pair), `p1_grid`
/// and a K = 100 `class_sum_add`/`class_sum_value` run on the GPU equal
/// `kernel::class_sum` bit for bit: powers of two and their neighbours, exact ties
/// (rounded to even both ways) and random pairs at every magnitude; terms at every
/// exponent of [0, 1] (subnormals, 2^-41, 2^-40, around 2^-17, 1).
#[cfg(feature = "gpu")]
#[test]
fn gpu_grid_helpers_equal_the_contract() {
    use conformal_gpu::kernel::class_sum::{class_sum, grid_to_f32, to_grid};
    use wgpu::util::DeviceExt;
    let Some(ctx) = shared_gpu() else { return };
    const K: usize = 100;
    let mut r = rng(9);
    let mut pairs: Vec<u64> = vec![0, u64::MAX, 1 << 40, (1 << 40) + (1 << 16)];
    for b in 0..64 {
        let p = 1u64 << b;
        pairs.extend([p, p - 1, p + 1, p.wrapping_mul(3), p | (p >> 1) | 1]);
        if b >= 24 {
            let base = 0x80_0001u64 << (b - 23);
            let half = 1u64 << (b - 24);
            pairs.extend([base + half, base - (1 << (b - 23)) + half, base + half + 1]);
        }
    }
    while !pairs.len().is_multiple_of(K) || pairs.len() < 4 * K {
        pairs.push(r.random::<u64>() >> r.random_range(0..64));
    }
    let mut terms: Vec<f32> = vec![
        0.0,
        1.0,
        f32::from_bits(1),
        f32::MIN_POSITIVE,
        2f32.powi(-41),
        2f32.powi(-40),
        1.5 * 2f32.powi(-40),
        2f32.powi(-17),
        2f32.powi(-17) * (1.0 - f32::EPSILON),
        1.0 - f32::EPSILON / 2.0,
    ];
    while terms.len() < pairs.len() {
        terms.push(r.random_range(0.0f32..1.0) * 2f32.powi(-r.random_range(0..60)));
    }
    let src = format!(
        "{}\n{}",
        conformal_gpu::shaders::CLASS_SUM,
        r#"
@group(0) @binding(0) var<storage, read> pairs: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read> terms: array<f32>;
// Per item: grid_to_f32(pairs[i]) bits, p1_grid(terms[i]) low and high, and for the first
// n / 100 items the class sum of terms[100 i .. 100 i + 100].
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    let n = arrayLength(&pairs);
    if (i >= n) {
        return;
    }
    out[4u * i] = bitcast<u32>(grid_to_f32(pairs[i]));
    let g = p1_grid(terms[i]);
    out[4u * i + 1u] = g.x;
    out[4u * i + 2u] = g.y;
    var s = class_sum_zero();
    if (i < n / 100u) {
        for (var j = 0u; j < 100u; j++) {
            s = class_sum_add(s, terms[100u * i + j], 100u);
        }
    }
    out[4u * i + 3u] = bitcast<u32>(class_sum_value(s, 100u));
}
"#
    );
    let dev = &ctx.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("class_sum test"),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let words: Vec<u32> = pairs
        .iter()
        .flat_map(|&p| [p as u32, (p >> 32) as u32])
        .collect();
    let input = |bytes: &[u8]| {
        dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (pb, tb) = (
        input(bytemuck::cast_slice(&words)),
        input(bytemuck::cast_slice(&terms)),
    );
    let size = (pairs.len() * 16) as u64;
    let ob = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: pb.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: tb.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: ob.as_entire_binding(),
            },
        ],
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(pairs.len().div_ceil(64) as u32, 1, 1);
    }
    enc.copy_buffer_to_buffer(&ob, 0, &staging, 0, size);
    let idx = ctx.queue.submit(Some(enc.finish()));
    let slice = staging.slice(..);
    slice.map_async(wgpu::MapMode::Read, |r| r.unwrap());
    dev.poll(wgpu::PollType::Wait {
        submission_index: Some(idx),
        timeout: None,
    })
    .unwrap();
    let out: Vec<u32> = bytemuck::pod_collect_to_vec(&slice.get_mapped_range().unwrap());
    for (i, &p) in pairs.iter().enumerate() {
        assert_eq!(
            out[4 * i],
            grid_to_f32(p).to_bits(),
            "grid_to_f32({p:#x}): gpu {} cpu {}",
            f32::from_bits(out[4 * i]),
            grid_to_f32(p)
        );
        let g = to_grid(terms[i]);
        assert_eq!(
            (out[4 * i + 1], out[4 * i + 2]),
            (g as u32, (g >> 32) as u32),
            "p1_grid({:e})",
            terms[i]
        );
        if i < pairs.len() / K {
            let want = class_sum(&terms[K * i..K * (i + 1)]);
            assert_eq!(out[4 * i + 3], want.to_bits(), "class sum of row {i}");
        }
    }
}
