//! `cot`, COT of one target and its groups without holding its rows (DESIGN.md 2.11's
//! rounds): its files re-read once a pass, K = 2 through the mergeable passes of
//! `kernel::cot_two_class`, K > 2 through the dual's rounds (`methods::cot_dual`). The
//! values equal the target's and every group's COT in `evaluate`'s report bit for bit,
//! raw and ts; the target cut into shuffled shards, given in any order, gives the same
//! bits; at K = 2 the CPU and the GPU (lavapipe in CI) agree; a file of another K is an
//! error naming it, and nothing is written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;

mod common;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conformal-gpu"));
    c.env("RUST_BACKTRACE", "1").env("XDG_RUNTIME_DIR", "/tmp");
    c
}

#[track_caller]
fn run(args: &[&str]) -> Output {
    let o = bin().args(args).output().expect("run binary");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The devices a test runs on: the CPU, and the GPU where an adapter opens (lavapipe in
/// CI, where `CONFORMAL_GPU_REQUIRED=1` makes a missing one a failure).
fn devices() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut devices = vec!["cpu"];
    #[cfg(feature = "gpu")]
    if common::shared_gpu().is_some() {
        devices.push("gpu");
    }
    devices
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `calibrate` of the set `data` on the CPU into `dir/cal.json`.
fn calibrate(data: &Path, dir: &Path) -> std::path::PathBuf {
    let cal = dir.join("cal.json");
    run(&[
        "calibrate",
        "--data",
        s(data),
        "--device",
        "cpu",
        "--out",
        s(&cal),
    ]);
    cal
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

/// The report's entry of `target`.
fn report_target<'a>(report: &'a Value, target: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == target)
        .expect("target")
}

/// The f64 bits of the report's COT of `target`, raw and ts.
fn report_cot(report: &Value, target: &str) -> [u64; 2] {
    let t = report_target(report, target);
    ["raw", "ts"].map(|m| t["estimates"][m]["COT"].as_f64().expect("COT").to_bits())
}

/// Every group's COT bits, `(array, id) -> [raw, ts]`, from `groups` (an object of group
/// arrays), each group's mode value found by `cot(group, mode)`.
fn group_bits(
    groups: &Value,
    cot: impl Fn(&Value, &str) -> Option<f64>,
) -> BTreeMap<(String, i64), [u64; 2]> {
    let mut out = BTreeMap::new();
    for (array, list) in groups.as_object().expect("groups") {
        for g in list.as_array().expect("list") {
            let bits = ["raw", "ts"].map(|m| cot(g, m).expect("COT").to_bits());
            out.insert((array.clone(), g["id"].as_i64().expect("id")), bits);
        }
    }
    out
}

/// Every group's COT bits in the report's target.
fn report_groups(report: &Value, target: &str) -> BTreeMap<(String, i64), [u64; 2]> {
    group_bits(&report_target(report, target)["groups"], |g, m| {
        g["estimates"][m]["COT"].as_f64()
    })
}

/// The same from `cot`'s JSON.
fn cot_groups(json: &Path) -> BTreeMap<(String, i64), [u64; 2]> {
    group_bits(&read_json(json)["groups"], |g, m| g[m].as_f64())
}

fn cot_of(json: &Path) -> [u64; 2] {
    let v = read_json(json);
    ["raw", "ts"].map(|m| v["cot"][m].as_f64().expect("cot").to_bits())
}

/// `file`'s rows shuffled (seed `seed`) into three shards of random sizes saved as
/// `dir/PREFIX-i.npz` (the middle one compressed where asked), in reverse order.
fn reversed_shards(
    file: &Path,
    dir: &Path,
    prefix: &str,
    seed: u64,
    compress_middle: bool,
) -> Vec<std::path::PathBuf> {
    use conformal_gpu::data::npz::{load_npz, save_npz};
    let set = load_npz(file).expect("target");
    let n = set.n();
    let mut r = common::rng(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut r);
    let a = r.random_range(1..n / 2);
    let b = r.random_range(a + 1..n - 1);
    let cuts = [0, a, b, n];
    let mut files = Vec::new();
    for i in 0..3 {
        let f = dir.join(format!("{prefix}-{i}.npz"));
        let part = common::pick(&set, &order[cuts[i]..cuts[i + 1]], "part");
        save_npz(&f, &part, compress_middle && i == 1).expect("save");
        files.push(f);
    }
    files.reverse();
    files
}

fn streamed_cot_equals_the_report(device: &str) {
    use conformal_gpu::data::npz::load_npz;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.005",
        "--seed",
        "8",
    ]);
    let report = tmp.path().join("report.json");
    run(&[
        "evaluate",
        "--data",
        s(&data),
        "--device",
        "cpu",
        "--json",
        s(&report),
    ]);
    let report = read_json(&report);
    let cal = calibrate(&data, tmp.path());
    // Whole files: a labelled target and an unlabelled one.
    for target in ["test", "unlabeled_test"] {
        let out = tmp.path().join(format!("{target}.json"));
        let file = data.join(format!("{target}.npz"));
        run(&[
            "cot",
            "--calibration",
            s(&cal),
            s(&file),
            "--device",
            device,
            "--json",
            s(&out),
        ]);
        assert_eq!(
            cot_of(&out),
            report_cot(&report, target),
            "{target} on {device}"
        );
        let groups = cot_groups(&out);
        assert_eq!(
            groups,
            report_groups(&report, target),
            "{target}'s groups on {device}"
        );
        assert!(groups.len() > 2, "{target}: groups of both arrays");
        // Seven passes serve both modes (each file read eight times, the census too).
        assert_eq!(read_json(&out)["passes"], 7);
    }
    // The test target's rows shuffled into three shards of random sizes, given in
    // reverse order (one saved compressed).
    let files = reversed_shards(&data.join("test.npz"), tmp.path(), "test", 5, true);
    let n = load_npz(&data.join("test.npz")).expect("test").n();
    let out = tmp.path().join("shards.json");
    let mut args = vec!["cot", "--calibration", s(&cal), "--device", device];
    args.extend(files.iter().map(|f| s(f)));
    args.extend(["--json", s(&out)]);
    run(&args);
    assert_eq!(
        cot_of(&out),
        report_cot(&report, "test"),
        "shards on {device}"
    );
    assert_eq!(
        cot_groups(&out),
        report_groups(&report, "test"),
        "shards' groups"
    );
    assert_eq!(read_json(&out)["n"], n);
}

#[test]
fn cpu_streamed_cot_equals_the_report() {
    streamed_cot_equals_the_report("cpu");
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_streamed_cot_equals_the_report() {
    if common::shared_gpu().is_none() {
        return;
    }
    streamed_cot_equals_the_report("gpu");
}

/// `calibrate` of the grid run `data` on the CPU into `dir/NAME.json`.
fn calibrate_as(data: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let cal = dir.join(format!("{name}.json"));
    run(&[
        "calibrate",
        "--data",
        s(data),
        "--device",
        "cpu",
        "--out",
        s(&cal),
    ]);
    cal
}

// K > 2 (DESIGN.md 2.11's dual in rounds, `methods::cot_dual`): grid runs of K = 4
// (dmist, one scanner a target and group) and K = 114 (fitzpatrick17k, six skin-type
// groups a target). A sample of 40 rows makes every set take the rounds (sample, collect,
// settle; widening where the sample's dual is poor); a sample holding the set solves it
// in one pass. Whole files and shuffled shards in reverse order give the report's bits,
// on the CPU and on the GPU (the collect passes on the device: shaders/cot_collect.wgsl).
#[test]
fn k_above_two_streamed_cot_equals_the_report() {
    let devices = devices();
    let tmp = tempfile::tempdir().expect("tempdir");
    let grid = tmp.path().join("grid");
    run(&[
        "generate",
        "--grid",
        "--datasets",
        "dmist,fitzpatrick17k",
        "--scale",
        "0.2",
        "--seed",
        "4",
        "--out",
        s(&grid),
    ]);
    for (dataset, targets) in [
        ("dmist", &["scanner_0", "scanner_3"][..]),
        ("fitzpatrick17k", &["atlas_dermatologico", "test"][..]),
    ] {
        let data = grid.join(dataset).join("densenet121").join("0");
        let report_path = tmp.path().join(format!("{dataset}.json"));
        run(&[
            "evaluate",
            "--data",
            s(&data),
            "--device",
            "cpu",
            "--json",
            s(&report_path),
        ]);
        let report = read_json(&report_path);
        let cal = calibrate_as(&data, tmp.path(), &format!("cal-{dataset}"));
        for target in targets {
            let file = data.join(format!("{target}.npz"));
            for (sample, device) in ["40", "100000"]
                .into_iter()
                .flat_map(|x| devices.iter().map(move |&d| (x, d)))
            {
                let out = tmp
                    .path()
                    .join(format!("{dataset}-{target}-{sample}-{device}.json"));
                run(&[
                    "cot",
                    "--calibration",
                    s(&cal),
                    s(&file),
                    "--sample-rows",
                    sample,
                    "--device",
                    device,
                    "--json",
                    s(&out),
                ]);
                let what = format!("{dataset} {target} sample {sample} on {device}");
                assert_eq!(cot_of(&out), report_cot(&report, target), "{what}");
                let groups = cot_groups(&out);
                assert!(!groups.is_empty(), "{what}: groups");
                assert_eq!(groups, report_groups(&report, target), "{what}: groups");
                let passes = read_json(&out)["passes"].as_u64().expect("passes");
                if sample == "40" {
                    assert!(passes >= 4, "{what}: two passes a mode at least");
                } else {
                    assert_eq!(passes, 2, "{what}: one pass a mode");
                }
                // The device's collect passes fix and free the host's rows: the same
                // rounds, not only the same value (which the proof would give anyway).
                let json = read_json(&out);
                let rounds = (json["passes"].clone(), json["held_rows"].clone());
                assert!(rounds.1.as_u64().is_some(), "{what}: held_rows");
                let first = tmp
                    .path()
                    .join(format!("{dataset}-{target}-{sample}-cpu.json"));
                let cpu = read_json(&first);
                assert_eq!(
                    rounds,
                    (cpu["passes"].clone(), cpu["held_rows"].clone()),
                    "{what}"
                );
            }
        }
        // The first target's rows shuffled into three shards, given in reverse order.
        let target = targets[0];
        let file = data.join(format!("{target}.npz"));
        let files = reversed_shards(&file, tmp.path(), dataset, 7, false);
        for device in &devices {
            let out = tmp.path().join(format!("{dataset}-shards-{device}.json"));
            let mut args = vec!["cot", "--calibration", s(&cal), "--sample-rows", "40"];
            args.extend(["--device", device]);
            args.extend(files.iter().map(|f| s(f)));
            args.extend(["--json", s(&out)]);
            run(&args);
            assert_eq!(
                cot_of(&out),
                report_cot(&report, target),
                "{dataset} shards on {device}"
            );
            assert_eq!(
                cot_groups(&out),
                report_groups(&report, target),
                "{dataset} shards' groups on {device}"
            );
        }
    }
}

#[test]
fn another_k_a_missing_file_or_one_twice_is_an_error_and_writes_nothing() {
    use conformal_gpu::data::npz::save_npz;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.002",
        "--seed",
        "9",
    ]);
    let cal = calibrate(&data, tmp.path());
    let k3 = tmp.path().join("k3.npz");
    let logits = ndarray::Array2::from_shape_fn((20, 3), |(i, j)| (i * 3 + j) as f32 * 0.1);
    save_npz(
        &k3,
        &conformal_gpu::data::PredictionSet::new("k3", logits),
        false,
    )
    .expect("save");
    let out = tmp.path().join("out.json");
    for bad in [k3.clone(), tmp.path().join("missing.npz")] {
        let o = bin()
            .args(["cot", "--calibration", s(&cal), "--device", "cpu"])
            .arg(&bad)
            .args(["--json", s(&out)])
            .output()
            .expect("run");
        assert!(!o.status.success(), "{}", bad.display());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(bad.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(!out.exists(), "nothing written");
    }
    // One file twice would count its rows twice.
    let test = data.join("test.npz");
    let o = bin()
        .args(["cot", "--calibration", s(&cal), "--device", "cpu"])
        .args([&test, &test])
        .args(["--json", s(&out)])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("given twice"));
    assert!(!out.exists(), "nothing written");
}

/// COT of `files` (shard i the i-th) by the file steps (`cot-census` a shard, then
/// `cot-plan`, `cot-pass` a shard on `devices[i % len]`, `cot-merge` of the parts in
/// reverse order, until `cot-plan` prints `done`), in `dir`; returns the result's JSON
/// and the merged parts in pass order.
fn cot_by_files(
    cal: &Path,
    files: &[std::path::PathBuf],
    dir: &Path,
    sample: Option<&str>,
    devices: &[&str],
) -> (Value, Vec<std::path::PathBuf>) {
    std::fs::create_dir_all(dir).expect("dir");
    let censuses: Vec<std::path::PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let c = dir.join(format!("census-{i}.json"));
            run(&["cot-census", "--calibration", s(cal), s(f), "--out", s(&c)]);
            c
        })
        .collect();
    let plan = dir.join("plan.json");
    let result = dir.join("result.json");
    let mut merged: Vec<std::path::PathBuf> = Vec::new();
    loop {
        let out = run(&plan_args(cal, &censuses, &merged, sample, &plan, &result));
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said == "done" {
            assert!(!plan.exists(), "no plan after the last pass");
            return (read_json(&result), merged);
        }
        assert_eq!(said, format!("pass {}", merged.len() + 1));
        assert!(!result.exists(), "no result while passes remain");
        let pass = merged.len() + 1;
        let parts: Vec<std::path::PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let p = dir.join(format!("pass{pass}-shard{i}.json"));
                let shard = i.to_string();
                let device = devices[i % devices.len()];
                run(&[
                    "cot-pass",
                    "--plan",
                    s(&plan),
                    "--shard",
                    &shard,
                    s(f),
                    "--out",
                    s(&p),
                    "--device",
                    device,
                ]);
                p
            })
            .collect();
        let m = dir.join(format!("merged{pass}.json"));
        let mut args = vec!["cot-merge"];
        args.extend(parts.iter().rev().map(|p| s(p)));
        args.extend(["--out", s(&m)]);
        run(&args);
        merged.push(m);
    }
}

/// `cot-plan`'s arguments.
fn plan_args<'a>(
    cal: &'a Path,
    censuses: &'a [std::path::PathBuf],
    parts: &'a [std::path::PathBuf],
    sample: Option<&'a str>,
    plan: &'a Path,
    result: &'a Path,
) -> Vec<&'a str> {
    let mut args = vec!["cot-plan", "--calibration", s(cal), "--census"];
    args.extend(censuses.iter().map(|c| s(c)));
    if !parts.is_empty() {
        args.push("--part");
        args.extend(parts.iter().map(|p| s(p)));
    }
    if let Some(n) = sample {
        args.extend(["--sample-rows", n]);
    }
    args.extend(["--plan", s(plan), "--json", s(result)]);
    args
}

// The file steps (`cot-census`, `cot-plan`, `cot-pass`, `cot-merge`: the protocol across
// machines) on shuffled shards give `cot`'s JSON (values of the target and every group,
// passes, rows held) bit for bit: K = 2 (seven passes), K = 4 with a 40-row sample
// (sample, refine and collect passes), shards on the CPU and the GPU alike. Parts that do
// not belong are refused by name: a shard merged twice, a merge missing a shard, a pass's
// part replayed in another pass's place, a shard whose file's bytes changed since its
// census.
#[test]
fn cot_by_files_equals_cot() {
    let devices = devices();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.003",
        "--seed",
        "12",
    ]);
    let grid = tmp.path().join("grid");
    run(&[
        "generate",
        "--grid",
        "--datasets",
        "dmist",
        "--scale",
        "0.2",
        "--seed",
        "5",
        "--out",
        s(&grid),
    ]);
    let dmist = grid.join("dmist").join("densenet121").join("0");
    for (name, set, target, sample) in [
        ("k2", data.as_path(), "test", None),
        ("k4", dmist.as_path(), "scanner_1", Some("40")),
    ] {
        let cal = calibrate_as(set, tmp.path(), &format!("cal-{name}"));
        let files = reversed_shards(
            &set.join(format!("{target}.npz")),
            tmp.path(),
            name,
            3,
            true,
        );
        let whole = tmp.path().join(format!("{name}-cot.json"));
        let mut args = vec!["cot", "--calibration", s(&cal), "--device", "cpu"];
        args.extend(files.iter().map(|f| s(f)));
        if let Some(n) = sample {
            args.extend(["--sample-rows", n]);
        }
        args.extend(["--json", s(&whole)]);
        run(&args);
        let want = read_json(&whole);
        let dir = tmp.path().join(format!("{name}-steps"));
        let (got, merged) = cot_by_files(&cal, &files, &dir, sample, &devices);
        for key in ["n", "passes", "held_rows", "cot", "groups", "files"] {
            assert_eq!(got[key], want[key], "{name}: {key}");
        }
        assert!(merged.len() >= 4, "{name}: {} passes", merged.len());

        // Refusals, each naming what it refuses; nothing is written.
        let fails = |args: &[&str], says: &str| {
            let o = bin().args(args).output().expect("run");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !o.status.success() && err.contains(says),
                "{name} {args:?}: {err}"
            );
        };
        let p = |f: &str| dir.join(f);
        let out = tmp.path().join("never.json");
        // A shard twice in a merge.
        let (s0, s1) = (p("pass1-shard0.json"), p("pass1-shard1.json"));
        fails(
            &["cot-merge", s(&s0), s(&s1), s(&s0), "--out", s(&out)],
            "shard",
        );
        // A merge that misses a shard, replayed as pass 1.
        run(&["cot-merge", s(&s0), s(&s1), "--out", s(&p("two.json"))]);
        let censuses: Vec<_> = (0..3).map(|i| p(&format!("census-{i}.json"))).collect();
        let (plan, result) = (p("plan-x.json"), p("result-x.json"));
        let short = [p("two.json")];
        fails(
            &plan_args(&cal, &censuses, &short, sample, &plan, &result),
            "two.json",
        );
        // Pass 1's part in pass 2's place.
        let twice = [merged[0].clone(), merged[0].clone()];
        fails(
            &plan_args(&cal, &censuses, &twice, sample, &plan, &result),
            "merged1.json",
        );
        // One shard's census twice (its rows would count twice).
        let doubled = [
            censuses[0].clone(),
            censuses[0].clone(),
            censuses[1].clone(),
        ];
        fails(
            &plan_args(&cal, &doubled, &[], sample, &plan, &result),
            "given twice",
        );
        // A part after the last pass.
        let mut more = merged.clone();
        more.push(merged[0].clone());
        fails(
            &plan_args(&cal, &censuses, &more, sample, &plan, &result),
            "after the last pass",
        );
        assert!(
            !out.exists() && !plan.exists() && !result.exists(),
            "{name}: nothing written"
        );
        // Shard 0's file re-saved (the same rows, other bytes) after its census: its part
        // is refused by cot-plan, naming the shard's census.
        let set0 = conformal_gpu::data::npz::load_npz(&files[0]).expect("shard 0");
        let changed = tmp.path().join(format!("{name}-changed.npz"));
        conformal_gpu::data::npz::save_npz(&changed, &set0, true).expect("save");
        let plan1 = p("plan1.json");
        run(&plan_args(&cal, &censuses, &[], sample, &plan1, &result));
        let part = p("changed-part.json");
        run(&[
            "cot-pass",
            "--plan",
            s(&plan1),
            "--shard",
            "0",
            s(&changed),
            "--out",
            s(&part),
        ]);
        let m = p("changed-merged.json");
        run(&[
            "cot-merge",
            s(&part),
            s(&s1),
            s(&p("pass1-shard2.json")),
            "--out",
            s(&m),
        ]);
        fails(
            &plan_args(&cal, &censuses, &[m], sample, &plan, &result),
            "census-0.json",
        );
    }
}
