//! The Poisson bootstrap (DESIGN.md 2.12): the device tally against its CPU mirror at the
//! edges, reproducibility, CPU vs GPU intervals, and the coverage of the intervals.

mod common;

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::kernel::bootstrap::{
    name_key, rep, BootstrapTallyPlan, PairRepCounts, ReplicatePlan, MAX_WEIGHT,
};
use conformal_gpu::kernel::tally::P1_GRID_BITS;
use conformal_gpu::methods::bootstrap::BootstrapOptions;
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions, Evaluation, Method};
use ndarray::{Array1, Array2};
use rand::Rng;

/// Rows of `k` noisy logits (quantised to eighths every third row, so thresholds meet
/// ties), labels with unknowns, slide ids in runs of 300 with strays (runs cross
/// workgroups, strays make mixed ones), except rows 2048-4095 (and every other 2048
/// after), where seven slides alternate row by row (the CPU mirror's blocks of
/// interleaved groups take its row-by-row path, the others its runs).
fn rows(seed: u64, n: usize, k: usize) -> (Vec<f32>, Vec<i32>, Vec<i64>, Vec<i64>) {
    let mut r = common::rng(seed);
    let mut logits = Vec::with_capacity(n * k);
    let mut labels = Vec::with_capacity(n);
    let mut slide = Vec::with_capacity(n);
    for i in 0..n {
        for _ in 0..k {
            let z: f32 = r.random_range(-4.0..4.0);
            logits.push(if i % 3 == 0 {
                (z * 8.0).round() / 8.0
            } else {
                z
            });
        }
        labels.push(if r.random_range(0..5) == 0 {
            -1
        } else {
            r.random_range(0..k as i32)
        });
        let stray = r.random_range(0..40) == 0;
        slide.push(if (i / 2048) % 2 == 1 {
            5000 + (i % 7) as i64
        } else {
            (i / 300) as i64 + if stray { 1000 } else { 0 }
        });
    }
    let hospital = slide.iter().map(|s| s % 3).collect();
    (logits, labels, hospital, slide)
}

/// Replicate plans: with `own_t`, temperatures around 1.5, each replicate its own (as in
/// `ts`), else T = 1 for all (as `raw`: summaries computed once); thresholds at
/// quantised values (ties), one replicate in seven without thresholds.
fn plans(b: usize, own_t: bool) -> Vec<ReplicatePlan> {
    (0..b)
        .map(|i| ReplicatePlan {
            t: if own_t { 1.5 + i as f32 / 64.0 } else { 1.0 },
            atc_mc: (i % 7 != 3).then_some(0.5 + (i % 5) as f32 / 16.0),
            atc_ne: (i % 7 != 3).then_some(-0.5 - (i % 3) as f32 / 8.0),
            cpc_q: (i % 7 != 3).then_some(0.25 + (i % 4) as f32 / 16.0),
        })
        .collect()
}

/// Counts equal where they must be (weights, labels, argmax: exact on both paths), the
/// threshold counts within two rows of the heaviest weight (a probability a few ulps from
/// a threshold), the grid sums to 1e-5 relative (WGSL exp is not correctly rounded).
#[track_caller]
fn assert_tallies_agree(what: &str, cpu: &PairRepCounts, gpu: &PairRepCounts) {
    assert_eq!(
        cpu.keys().collect::<Vec<_>>(),
        gpu.keys().collect::<Vec<_>>(),
        "{what}: groups"
    );
    for (key, c) in cpu {
        let g = &gpu[key];
        assert_eq!(c.reps(), g.reps(), "{what}: replicates");
        for b in 0..c.reps() {
            let (x, y) = (&c.counts[b], &g.counts[b]);
            for i in [rep::N, rep::LABELLED, rep::CORRECT] {
                assert_eq!(
                    x[i], y[i],
                    "{what}: group {key:?} replicate {b} counter {i}"
                );
            }
            for i in rep::MC_ABOVE..rep::LEN {
                assert!(
                    x[i].abs_diff(y[i]) <= 2 * MAX_WEIGHT as u64,
                    "{what}: group {key:?} replicate {b} counter {i}: {} vs {}",
                    x[i],
                    y[i]
                );
            }
            let (s, t) = (c.sum_p1[b] as f64, g.sum_p1[b] as f64);
            let scale = (x[rep::N] as f64) * (1u64 << P1_GRID_BITS) as f64;
            assert!(
                (s - t).abs() <= 1e-5 * scale.max(1.0),
                "{what}: group {key:?} replicate {b} sum_p1 {s} vs {t}"
            );
        }
    }
}

#[cfg(feature = "gpu")]
fn device_vs_mirror(ctx: &conformal_gpu::gpu::GpuContext, n: usize, reps: usize, grouped: bool) {
    use conformal_gpu::backend::GpuBackend;
    let k = 3;
    let (logits, labels, hospital, slide) = rows(n as u64 + reps as u64, n, k);
    let (raw, ts) = (plans(reps, false), plans(reps, true));
    let plan = BootstrapTallyPlan {
        seed: 0x1234_5678_9abc_def0,
        name_key: name_key("target"),
        // Past 2^32: the row index's high word is used.
        row_offset: (1u64 << 32) - 100,
        modes: [&raw, &ts],
        labels: &labels,
        groups: if grouped {
            [Some(&hospital), Some(&slide)]
        } else {
            [None, None]
        },
    };
    let cpu = CpuBackend
        .bootstrap_tally(&CpuBackend.prepare(&logits, &labels, k).unwrap(), &plan)
        .unwrap();
    let gpu_b = GpuBackend::new(ctx);
    let gpu = gpu_b
        .bootstrap_tally(&gpu_b.prepare(&logits, &labels, k).unwrap(), &plan)
        .unwrap();
    for m in 0..2 {
        assert_tallies_agree(
            &format!("n = {n}, B = {reps}, grouped {grouped}, mode {m}"),
            &cpu[m],
            &gpu[m],
        );
    }
    let total: u64 = cpu[0].values().map(|c| c.counts[0][rep::N]).sum();
    if n > 1000 {
        // Replicate 0's total weight is Poisson(n): within 6 sd of n.
        assert!((total as f64 - n as f64).abs() < 6.0 * (n as f64).sqrt());
    }
}

/// Sizes: 0 and 1 rows; one workgroup -1, exactly, +1 (255, 256, 257); one dispatch's
/// 2^18 rows + 1 (a second dispatch keyed at its own rows). Replicates 1, 4 (one draw
/// group), 10 (a partial group). On a grid capped at 7 workgroups per dimension, so
/// the small sizes also run the 2-D fold with padding workgroups; output buffers poisoned.
#[cfg(feature = "gpu")]
#[test]
fn device_bootstrap_tally_equals_its_mirror_at_the_edges() {
    let Some(ctx) = common::gpu_with(conformal_gpu::gpu::GpuOptions {
        max_workgroups_per_dim: Some(7),
        poison_outputs: true,
        ..Default::default()
    }) else {
        return;
    };
    for n in [0, 1, 255, 256, 257] {
        for reps in [1, 4, 10] {
            for grouped in [false, true] {
                device_vs_mirror(&ctx, n, reps, grouped);
            }
        }
    }
    // A 7 x 7 grid cannot hold a full dispatch: this one runs on the ordinary grid.
    if let Some(ctx) = common::shared_gpu() {
        device_vs_mirror(ctx, (1 << 18) + 1, 3, true);
    }
}

/// A real dispatch of more than 65535 workgroups: 257 row workgroups x 256 draw groups
/// (1024 replicates) = 65,792 (the smallest grid past the limit with whole draw groups).
#[cfg(feature = "gpu")]
#[test]
fn device_bootstrap_tally_past_65535_workgroups() {
    let Some(ctx) = common::gpu_with(conformal_gpu::gpu::GpuOptions {
        poison_outputs: true,
        ..Default::default()
    }) else {
        return;
    };
    device_vs_mirror(&ctx, 257 * 256, 1024, true);
}

/// A labelled K = 2 population: y uniform, the true class's logit ahead by a normal
/// margin, every logit doubled (an overconfident model: T > 1 fits), slides in runs.
fn population(name: &str, seed: u64, n: usize) -> PredictionSet {
    let mut r = common::rng(seed);
    // Normal(1.2, 1.6) by Box-Muller.
    let margin = |r: &mut rand_chacha::ChaCha8Rng| {
        let (u, v): (f64, f64) = (r.random_range(f64::EPSILON..1.0), r.random());
        1.2 + 1.6 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let mut logits = Vec::with_capacity(2 * n);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let y = r.random_range(0..2i64);
        let m = (2.0 * margin(&mut r)) as f32;
        let z = if y == 1 { [0.0, m] } else { [m, 0.0] };
        logits.extend(z);
        labels.push(y);
    }
    PredictionSet {
        name: name.into(),
        logits: Array2::from_shape_vec((n, 2), logits).unwrap(),
        labels: Some(Array1::from(labels)),
        hospital: None,
        slide: Some(Array1::from_iter((0..n as i64).map(|i| i / 250))),
    }
}

fn with_bootstrap(replicates: usize, seed: u64, confidence: f64) -> EvalOptions {
    EvalOptions {
        bootstrap: boot(replicates, seed, confidence),
        ..Default::default()
    }
}

fn boot(replicates: usize, seed: u64, confidence: f64) -> BootstrapOptions {
    BootstrapOptions {
        replicates,
        seed,
        confidence,
    }
}

/// What must not change between two runs: every number of the report but timings.
fn report_bits(e: &Evaluation) -> String {
    format!("{:?} {:?} {:?} {:?}", e.source, e.targets, e.mae, e.mae_ci)
}

fn same_seed_same_bits<B: Backend>(b: &B) {
    let source = population("source", 1, 800);
    let target = population("target", 2, 1500);
    let opts = with_bootstrap(12, 5, 0.9);
    let once = evaluate(b, &source, std::slice::from_ref(&target), None, &opts).unwrap();
    let twice = evaluate(b, &source, std::slice::from_ref(&target), None, &opts).unwrap();
    assert_eq!(report_bits(&once), report_bits(&twice));
    assert!(once.targets[0].intervals.is_some());
    let other = evaluate(
        b,
        &source,
        std::slice::from_ref(&target),
        None,
        &with_bootstrap(12, 6, 0.9),
    )
    .unwrap();
    assert_ne!(
        report_bits(&once),
        report_bits(&other),
        "another seed, other intervals"
    );
    // Point estimates do not depend on the bootstrap.
    let plain = evaluate(b, &source, &[target], None, &EvalOptions::default()).unwrap();
    assert_eq!(plain.targets[0].estimates, once.targets[0].estimates);
    assert!(plain.targets[0].intervals.is_none() && plain.mae_ci.is_none());
}

#[test]
fn cpu_same_seed_same_report_bit_for_bit() {
    same_seed_same_bits(&CpuBackend);
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_same_seed_same_report_bit_for_bit() {
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    same_seed_same_bits(&conformal_gpu::backend::GpuBackend::new(ctx));
}

/// Evaluates `target` against `source` with `opts` on the CPU and on the GPU, asserts that
/// every estimate's interval endpoints agree within `tol(method)`, and returns the
/// target's intervals (CPU, GPU).
#[cfg(feature = "gpu")]
fn cpu_and_gpu_intervals_within(
    ctx: &conformal_gpu::gpu::GpuContext,
    source: &PredictionSet,
    target: PredictionSet,
    opts: &EvalOptions,
    tol: impl Fn(Method) -> f64,
) -> (
    conformal_gpu::methods::bootstrap::Intervals,
    conformal_gpu::methods::bootstrap::Intervals,
) {
    let targets = [target];
    let c = evaluate(&CpuBackend, source, &targets, None, opts).unwrap();
    let gpu = conformal_gpu::backend::GpuBackend::new(ctx);
    let g = evaluate(&gpu, source, &targets, None, opts).unwrap();
    let ci = c.targets[0].intervals.clone().unwrap();
    let gi = g.targets[0].intervals.clone().unwrap();
    for (mode, a, b) in [
        ("raw", &ci.ci.raw, &gi.ci.raw),
        ("ts", &ci.ci.ts, &gi.ci.ts),
    ] {
        for m in Method::ALL.into_iter().filter(|m| m.has_intervals()) {
            let (x, y) = (a[m.name()].unwrap(), b[m.name()].unwrap());
            for e in 0..2 {
                assert!(
                    (x[e] - y[e]).abs() <= tol(m),
                    "{mode} {}: CPU {x:?} vs GPU {y:?}",
                    m.name()
                );
            }
        }
    }
    (ci, gi)
}

/// CPU and GPU intervals agree within DESIGN.md 4's rate tolerance, widened by the
/// heaviest weight (a row a few ulps from a threshold counts `w` times), and 1e-5 for AC
/// and DoC.
#[cfg(feature = "gpu")]
#[test]
fn cpu_and_gpu_intervals_agree() {
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    let source = population("source", 3, 1000);
    let target = population("target", 4, 3000);
    let opts = with_bootstrap(16, 9, 0.95);
    let rate = 2.0 * MAX_WEIGHT as f64 / 3000.0 + 1e-6;
    let tol = |m: Method| match m {
        Method::Ac | Method::Doc => 1e-5,
        _ => rate,
    };
    let (ci, gi) = cpu_and_gpu_intervals_within(ctx, &source, target, &opts, tol);
    assert_eq!(
        ci.true_accuracy_ci, gi.true_accuracy_ci,
        "labels and weights are exact"
    );
}

/// Coverage (DESIGN.md 2.12; issue 13): 300 source/target pairs of 1000 rows each, drawn
/// from one population, 90% intervals from B = 100 replicates. Each estimator's
/// population value is the estimator applied to one draw of 400,000 source and 400,000
/// target rows (its own sampling error is ~20x smaller than a 1000-row interval's
/// half-width). Every estimate, raw and ts, must be covered in 85-95% of the pairs
/// (binomial sd at 90% over 300 pairs: 1.7 points, so the band is +-2.9 sd).
#[test]
fn intervals_cover_the_population_value() {
    let big = evaluate(
        &CpuBackend,
        &population("source", 1_000_001, 400_000),
        &[population("target", 1_000_002, 400_000)],
        None,
        &EvalOptions::default(),
    )
    .unwrap();
    let truth = &big.targets[0].estimates;
    let pairs = 300;
    let mut covered = [[0usize; Method::ALL.len()]; 2];
    for p in 0..pairs as u64 {
        let e = evaluate(
            &CpuBackend,
            &population("source", 10 + 2 * p, 1000),
            &[population("target", 11 + 2 * p, 1000)],
            None,
            &with_bootstrap(100, p, 0.9),
        )
        .unwrap();
        let iv = e.targets[0].intervals.as_ref().unwrap();
        for (mode, (cis, pop)) in [(&iv.ci.raw, &truth.raw), (&iv.ci.ts, &truth.ts)]
            .into_iter()
            .enumerate()
        {
            for (i, m) in Method::ALL.into_iter().enumerate() {
                if !m.has_intervals() {
                    continue; // a score's CPC (not asked for here): no intervals
                }
                let [lo, hi] = cis[m.name()].unwrap();
                covered[mode][i] += (lo <= pop.get(m) && pop.get(m) <= hi) as usize;
            }
        }
    }
    for (mode, row) in ["raw", "ts"].iter().zip(covered) {
        for (m, c) in Method::ALL.into_iter().zip(row) {
            if !m.has_intervals() {
                continue;
            }
            let rate = c as f64 / pairs as f64;
            eprintln!("coverage {mode} {}: {rate:.3}", m.name());
            assert!(
                (0.85..=0.95).contains(&rate),
                "{mode} {}: the 90% interval covers the population value in {:.1}% of pairs",
                m.name(),
                100.0 * rate
            );
        }
    }
}

/// Tallies and calibrations are untrusted input: damaged replicate counts are typed
/// errors naming the problem, never a panic or a wrong interval.
#[test]
fn damaged_bootstrap_parts_are_typed_errors() {
    use conformal_gpu::methods::calibration::{Calibration, CalibrationOptions};
    use conformal_gpu::methods::evaluate::tally_set;
    use conformal_gpu::methods::tally::Tally;
    use conformal_gpu::Error;
    use serde_json::Value;

    let source = population("source", 21, 300);
    let target = population("target", 22, 500);
    let opts = CalibrationOptions {
        bootstrap: boot(6, 1, 0.9),
        ..Default::default()
    };
    let cal = Calibration::fit(&CpuBackend, &source, &opts).unwrap();
    let tally = tally_set(&CpuBackend, &cal, &target, 200).unwrap();
    let text = tally.to_json().unwrap();
    let good: Value = serde_json::from_str(&text).unwrap();
    let read = |v: &Value| Tally::from_json(&v.to_string(), "t.json");
    assert_eq!(read(&good).unwrap(), tally);
    type Forge = fn(&mut Value);
    let forged: [(&str, Forge); 7] = [
        ("correct above labelled", |v| {
            v["bootstrap"]["raw"][0]["counts"][2][2] = 1_000_000_000u64.into();
        }),
        ("a replicate missing", |v| {
            v["bootstrap"]["ts"][0]["counts"]
                .as_array_mut()
                .unwrap()
                .pop();
        }),
        ("a sum that is not a number", |v| {
            v["bootstrap"]["raw"][0]["sum_p1"][0] = "x".into();
        }),
        ("a group without rows", |v| {
            v["bootstrap"]["raw"][0]["slide"] = 999_999.into();
        }),
        ("a group's replicates missing", |v| {
            v["bootstrap"]["raw"].as_array_mut().unwrap().remove(0);
            v["bootstrap"]["ts"].as_array_mut().unwrap().remove(0);
        }),
        ("replicates heavier than twelve times the rows", |v| {
            for m in ["raw", "ts"] {
                v["bootstrap"][m][0]["counts"][3][0] = (1u64 << 63).into();
            }
        }),
        ("modes weighing other rows", |v| {
            let n = v["bootstrap"]["ts"][0]["counts"][1][0].as_u64().unwrap();
            v["bootstrap"]["ts"][0]["counts"][1][0] = (n + 1).into();
        }),
    ];
    for (what, forge) in forged {
        let mut v = good.clone();
        forge(&mut v);
        let e = read(&v).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{what}: {e}");
    }
    // Without its replicates the tally no longer matches its calibration.
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("bootstrap");
    let e = read(&v).unwrap().check_against(&cal).unwrap_err();
    assert!(matches!(e, Error::Incompatible { .. }), "{e}");
    // An edited replicate threshold changes the calibration's content, not its id.
    let mut c: Value = serde_json::from_str(&cal.to_json().unwrap()).unwrap();
    c["bootstrap"]["modes"]["ts"][0]["t"] = 1.25.into();
    let e = Calibration::from_json(&c.to_string(), "cal.json").unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
}

/// A source so small that some replicates draw none of its rows: those replicates have no
/// estimate (left out of the intervals), and the calibration still round-trips through
/// JSON (no NaN is written).
#[test]
fn replicates_without_source_rows_have_no_estimate() {
    use conformal_gpu::methods::calibration::{Calibration, CalibrationOptions};
    let source = population("source", 31, 2);
    let target = population("target", 32, 300);
    let opts = CalibrationOptions {
        bootstrap: boot(40, 2, 0.9),
        ..Default::default()
    };
    let cal = Calibration::fit(&CpuBackend, &source, &opts).unwrap();
    let boot = cal.bootstrap.as_ref().unwrap();
    // P(a replicate draws neither row) = e^-2: some of 40 do (seeded).
    let empty = boot.modes.raw.iter().filter(|r| r.n == 0).count();
    assert!(empty > 0, "no empty replicate drawn");
    let back = Calibration::from_json(&cal.to_json().unwrap(), "cal.json").unwrap();
    assert_eq!(back, cal);
    let e = evaluate(
        &CpuBackend,
        &source,
        &[target],
        None,
        &EvalOptions {
            bootstrap: opts.bootstrap,
            ..Default::default()
        },
    )
    .unwrap();
    let values = &e.targets[0].intervals.as_ref().unwrap().values;
    let nan = values
        .estimates
        .raw
        .iter()
        .filter(|x| x.atc_mc.is_nan())
        .count();
    assert_eq!(nan, empty, "exactly the empty replicates have no estimate");
}

/// Quantised K = 3 logits (ties everywhere): on each backend a replicate's thresholds and
/// the target rows it counts come from the same row summaries, so tie groups stay whole
/// and CPU and GPU intervals agree within the rate tolerance.
#[cfg(feature = "gpu")]
#[test]
fn cpu_and_gpu_intervals_agree_on_tied_data() {
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    let quantised = |name: &str, seed: u64, n: usize| {
        let (l, y, _, slide) = rows(seed, n, 3);
        let l: Vec<f32> = l.iter().map(|z| (z * 4.0).round() / 4.0).collect();
        let y: Vec<i64> = y
            .iter()
            .map(|&y| if y < 0 { 0 } else { y as i64 })
            .collect();
        PredictionSet {
            name: name.into(),
            logits: Array2::from_shape_vec((n, 3), l).unwrap(),
            labels: Some(Array1::from(y)),
            hospital: None,
            slide: Some(Array1::from(slide)),
        }
    };
    let source = quantised("source", 41, 900);
    let target = quantised("target", 42, 2000);
    let opts = with_bootstrap(16, 3, 0.9);
    let tol = 2.0 * MAX_WEIGHT as f64 / 2000.0 + 1e-6;
    cpu_and_gpu_intervals_within(ctx, &source, target, &opts, |_| tol);
}
