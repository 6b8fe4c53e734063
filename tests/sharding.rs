//! Calibrate once, tally anywhere, merge exactly (DESIGN.md 3 and 4, "Sharding"): a
//! target split into shards of random sizes, tallied separately (contiguous row ranges
//! with their offsets, or the rows shuffled first) and merged in several orders, gives a
//! report bit-identical to the unsharded one, on the CPU and the GPU (lavapipe in CI).
//! Calibrations and tallies survive a JSON round trip bit for bit; damaged or mismatched
//! files are typed errors.

mod common;

use conformal_gpu::backend::{Backend, CpuBackend};
use conformal_gpu::data::PredictionSet;
use conformal_gpu::methods::bootstrap::BootstrapOptions;
use conformal_gpu::methods::calibration::{Calibration, CalibrationOptions, Temperature};
use conformal_gpu::methods::evaluate::{tally_set, with_set_rows, TargetReport};
use conformal_gpu::methods::sets::SetOptions;
use conformal_gpu::methods::tally::Tally;
use conformal_gpu::Error;
use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::Rng;

/// K = 3 rows quantised to quarters (many exact ties, so thresholds sit on tie groups),
/// labels with unknowns, hospital and slide ids in runs (as real data comes) with a few
/// strays.
fn set(name: &str, seed: u64, n: usize, labelled: bool) -> PredictionSet {
    let mut r = common::rng(seed);
    let k = 3;
    let mut logits = Vec::with_capacity(n * k);
    let mut labels = Vec::with_capacity(n);
    let mut hospital = Vec::with_capacity(n);
    let mut slide = Vec::with_capacity(n);
    for i in 0..n {
        let y: i64 = r.random_range(0..k as i64);
        for c in 0..k {
            let bump = if c as i64 == y {
                r.random_range(0..8)
            } else {
                0
            };
            logits.push((r.random_range(0..12) + bump) as f32 / 4.0);
        }
        let known = labelled || r.random_range(0..4) != 0;
        labels.push(if known { y } else { -1 });
        let s = (i / 97) as i64 + if r.random_range(0..50) == 0 { 7 } else { 0 };
        slide.push(s);
        hospital.push(s % 3);
    }
    PredictionSet {
        name: name.into(),
        logits: Array2::from_shape_vec((n, k), logits).unwrap(),
        labels: Some(Array1::from(labels)),
        hospital: Some(Array1::from(hospital)),
        slide: Some(Array1::from(slide)),
    }
}

/// With 10 bootstrap replicates (DESIGN.md 2.12): their counts must shard, merge and
/// survive JSON exactly like the point counts (10 is not a multiple of the four replicates
/// one Philox draw makes, so a partial draw group is covered).
fn fit<B: Backend>(b: &B, source: &PredictionSet) -> Calibration {
    let opts = CalibrationOptions {
        alphas: vec![0.1, 0.05, 0.3],
        temperature: Temperature::FitSource,
        bootstrap: BootstrapOptions {
            replicates: 10,
            seed: 42,
            confidence: 0.9,
        },
        // Every score, randomised (draws keyed by the row's index in the target) and
        // Mondrian: their set counts must shard exactly too.
        sets: SetOptions {
            scores: ["lac", "aps", "raps", "saps", "topk"]
                .map(String::from)
                .to_vec(),
            randomize: true,
            class_conditional: true,
            ..Default::default()
        },
        // COT's reference mode: its values must come out of merged shards unchanged.
        cot_reference: Some(Default::default()),
    };
    Calibration::fit(b, source, &opts).unwrap()
}

/// Random cut points: shards of 0 rows included (a shard may be empty).
fn cuts(seed: u64, n: usize, shards: usize) -> Vec<(usize, usize)> {
    let mut r = common::rng(seed);
    let mut c: Vec<usize> = (0..shards - 1).map(|_| r.random_range(0..=n)).collect();
    c.push(0);
    c.push(n);
    c.sort_unstable();
    c.windows(2).map(|w| (w[0], w[1])).collect()
}

fn report_bits(r: &TargetReport) -> String {
    // Debug prints every f64 with the digits that give its bits back.
    format!("{r:?}")
}

fn sharded_equals_whole<B: Backend>(b: &B) {
    let source = set("source", 1, 700, true);
    let target = set("target", 2, 5003, false);
    let cal = fit(b, &source);
    let whole = tally_set(b, &cal, &target, target.n()).unwrap();
    let want = cal.report("target", &whole).unwrap();
    // The reference mode's values are in the report compared below.
    let (cot_ref, cott_ref) = (want.estimates.ts.cot_ref, want.estimates.ts.cott_ref);
    assert!(cot_ref.flatten().is_some() && cott_ref.flatten().is_some());
    assert_eq!(whole.n(), 5003);
    assert_eq!(whole.rows, vec![[0, 5003]]);
    for seed in 0..6 {
        let parts: Vec<Tally> = cuts(seed, target.n(), 2 + seed as usize * 3)
            .into_iter()
            .map(|(s, e)| with_set_rows(&target, s, e, |rows| cal.tally(b, rows)).unwrap())
            .collect();
        // Three merge orders: as cut, reversed, shuffled.
        let mut orders = vec![parts.clone(), parts.iter().rev().cloned().collect()];
        let mut shuffled = parts.clone();
        shuffled.shuffle(&mut common::rng(seed + 100));
        orders.push(shuffled);
        for (o, order) in orders.into_iter().enumerate() {
            let mut acc = order[0].clone();
            for t in &order[1..] {
                acc.merge(t).unwrap();
            }
            assert_eq!(acc, whole, "seed {seed}, order {o}: merged tally differs");
            let got = cal.report("target", &acc).unwrap();
            assert_eq!(
                report_bits(&got),
                report_bits(&want),
                "seed {seed}, order {o}"
            );
        }
        // A tree of merges (pairwise) gives the same.
        let mut level = parts.clone();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|p| {
                    let mut a = p[0].clone();
                    if let Some(b) = p.get(1) {
                        a.merge(b).unwrap();
                    }
                    a
                })
                .collect();
        }
        assert_eq!(level[0], whole, "seed {seed}: tree merge differs");
    }
    // Any chunk size of the library's own loop, 1 row included.
    for chunk in [1, 2, 255, 256, 4096] {
        assert_eq!(
            tally_set(b, &cal, &target, chunk).unwrap(),
            whole,
            "chunk {chunk}"
        );
    }
    // Rows shuffled first, then sharded: counts are order-free, so the report is the
    // unshuffled one's (but for the bootstrap: a row's weights follow its index).
    let mut perm: Vec<usize> = (0..target.n()).collect();
    perm.shuffle(&mut common::rng(7));
    let shuffled = PredictionSet {
        name: target.name.clone(),
        logits: target.logits.select(ndarray::Axis(0), &perm),
        labels: target
            .labels
            .as_ref()
            .map(|a| a.select(ndarray::Axis(0), &perm)),
        hospital: target
            .hospital
            .as_ref()
            .map(|a| a.select(ndarray::Axis(0), &perm)),
        slide: target
            .slide
            .as_ref()
            .map(|a| a.select(ndarray::Axis(0), &perm)),
    };
    let mut acc: Option<Tally> = None;
    for (s, e) in cuts(9, shuffled.n(), 5) {
        let part = with_set_rows(&shuffled, s, e, |rows| cal.tally(b, rows)).unwrap();
        match acc.as_mut() {
            Some(a) => a.merge(&part).unwrap(),
            None => acc = Some(part),
        }
    }
    let mut got = cal.report("target", &acc.unwrap()).unwrap();
    let mut want = want;
    assert!(got.intervals.is_some() && want.intervals.is_some());
    // So do the randomised scores' draws: only LAC's entries (and no CPC-score) compare.
    let lac_only = |list: &mut Vec<conformal_gpu::report::model::ConformalStats>| {
        list.retain(|e| e.score == "lac");
    };
    let no_draws = |e: &mut conformal_gpu::report::model::Estimates| {
        (e.cpc_aps, e.cpc_raps, e.cpc_saps) = (None, None, None);
    };
    for r in [&mut got, &mut want] {
        r.intervals = None;
        lac_only(&mut r.conformal.raw);
        lac_only(&mut r.conformal.ts);
        no_draws(&mut r.estimates.raw);
        no_draws(&mut r.estimates.ts);
        for g in r.groups.values_mut().flatten() {
            g.intervals = None;
            lac_only(&mut g.conformal.raw);
            lac_only(&mut g.conformal.ts);
            no_draws(&mut g.estimates.raw);
            no_draws(&mut g.estimates.ts);
        }
    }
    assert_eq!(report_bits(&got), report_bits(&want), "shuffled rows");
}

#[test]
fn cpu_shards_merge_to_the_whole_bit_for_bit() {
    sharded_equals_whole(&CpuBackend);
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_shards_merge_to_the_whole_bit_for_bit() {
    let Some(ctx) = common::shared_gpu() else {
        return;
    };
    sharded_equals_whole(&conformal_gpu::backend::GpuBackend::new(ctx));
}

/// The thread count does not enter the counts: 1 and 2 rayon threads, same tally.
#[test]
fn thread_count_does_not_change_the_tally() {
    let source = set("source", 3, 500, true);
    let target = set("target", 4, 40_000, false);
    let cal = fit(&CpuBackend, &source);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| tally_set(&CpuBackend, &cal, &target, 7_777).unwrap())
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn calibration_and_tally_round_trip_through_json() {
    let source = set("source", 5, 600, true);
    let target = set("target", 6, 2000, false);
    let cal = fit(&CpuBackend, &source);
    let back = Calibration::from_json(&cal.to_json().unwrap(), "cal.json").unwrap();
    assert_eq!(back, cal);
    let t = tally_set(&CpuBackend, &cal, &target, 300).unwrap();
    let t_back = Tally::from_json(&t.to_json().unwrap(), "t.json").unwrap();
    assert_eq!(t_back, t);
    assert_eq!(
        report_bits(&back.report("target", &t_back).unwrap()),
        report_bits(&cal.report("target", &t).unwrap())
    );
}

#[test]
fn mismatched_or_damaged_pieces_are_typed_errors() {
    let source = set("source", 7, 600, true);
    let target = set("target", 8, 1000, false);
    let cal = fit(&CpuBackend, &source);
    let t = tally_set(&CpuBackend, &cal, &target, 1000).unwrap();

    // Rows tallied twice.
    let part = with_set_rows(&target, 10, 20, |r| cal.tally(&CpuBackend, r)).unwrap();
    let mut twice = t.clone();
    let e = twice.merge(&part).unwrap_err();
    assert!(matches!(e, Error::Incompatible { .. }), "{e}");
    assert!(e.to_string().contains("rows 10..20"), "{e}");
    assert_eq!(twice, t, "a failed merge changes nothing");

    // Another calibration (a fixed temperature instead of the fitted one).
    let other = Calibration::fit(
        &CpuBackend,
        &source,
        &CalibrationOptions {
            alphas: vec![0.1, 0.05, 0.3],
            temperature: Temperature::Fixed(2.0),
            bootstrap: BootstrapOptions::default(),
            sets: SetOptions::default(),
            cot_reference: None,
        },
    )
    .unwrap();
    assert_ne!(other.id, cal.id);
    let e = other.report("target", &t).unwrap_err();
    assert!(matches!(e, Error::Incompatible { .. }), "{e}");
    assert_eq!(e.exit_code(), 5);
    let t_other = tally_set(&CpuBackend, &other, &target, 1000).unwrap();
    let mut m = t.clone();
    assert!(matches!(m.merge(&t_other), Err(Error::Incompatible { .. })));

    // Damaged files: a count raised, a threshold changed, truncated text.
    let json = t.to_json().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut bad = v.clone();
    bad["modes"]["raw"][0]["counts"][1] = serde_json::json!(u64::MAX);
    let e = Tally::from_json(&bad.to_string(), "bad.json").unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert_eq!(e.exit_code(), 4);
    let e = Tally::from_json(&json[..json.len() / 2], "cut.json").unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e}");
    let cal_json: serde_json::Value = serde_json::from_str(&cal.to_json().unwrap()).unwrap();
    let mut bad = cal_json.clone();
    bad["modes"]["ts"]["cpc_alpha"] = serde_json::json!(0.5);
    let e = Calibration::from_json(&bad.to_string(), "cal.json").unwrap_err();
    assert!(e.to_string().contains("does not match its id"), "{e}");
    let mut bad = cal_json;
    bad["modes"]["ts"]["t"] = serde_json::json!(0.1);
    assert!(Calibration::from_json(&bad.to_string(), "cal.json").is_err());
    // A threshold that is not an f32 value.
    let mut bad: serde_json::Value = serde_json::from_str(&cal.to_json().unwrap()).unwrap();
    bad["modes"]["raw"]["t"] = serde_json::json!(0.1f64);
    let e = Calibration::from_json(&bad.to_string(), "cal.json").unwrap_err();
    assert!(e.to_string().contains("not an f32"), "{e}");
}

/// Bad chunks: rows in errors are rows of the whole target (offset included).
#[test]
fn chunk_errors_name_whole_target_rows() {
    let source = set("source", 9, 300, true);
    let mut target = set("target", 10, 400, false);
    let cal = fit(&CpuBackend, &source);
    target.logits[[250, 1]] = f32::NAN;
    let e = with_set_rows(&target, 200, 300, |r| cal.tally(&CpuBackend, r)).unwrap_err();
    match e {
        Error::NonFinite { row, col, .. } => assert_eq!((row, col), (250, 1)),
        other => panic!("{other}"),
    }
    let mut target = set("target", 10, 400, false);
    target.labels.as_mut().unwrap()[333] = 3;
    let e = with_set_rows(&target, 300, 400, |r| cal.tally(&CpuBackend, r)).unwrap_err();
    assert!(e.to_string().contains("row 333"), "{e}");
    assert!(e.to_string().contains("labelled 0 to 2"), "{e}");
}
