//! The sharding protocol on the command line (README "Spreading work over machines"):
//! `calibrate` once, `tally` each file or row range anywhere (`--rows START:END` keeps the
//! offset), `merge` in any order: the report equals `evaluate`'s on the same data bit for
//! bit (all but timings and the invocation in `meta`), on the CPU and the GPU (lavapipe
//! in CI). A tally of another calibration, rows tallied twice, or a damaged file is an
//! error (exit 5, 5, 4) and nothing is written.

use std::path::{Path, PathBuf};
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

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The report without what legitimately differs between two invocations: timings, and
/// `meta` (the command line; inputs are compared by their SHA-256 separately).
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().expect("object");
    o.remove("timings_ms");
    o.remove("meta");
    v
}

fn input_hashes(v: &Value) -> Vec<String> {
    let mut h: Vec<String> = v["meta"]["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i["sha256"].as_str().expect("sha").to_string())
        .collect();
    h.sort();
    h
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

/// Rows of each target file (from the evaluate report).
fn target_sizes(report: &Value) -> Vec<(String, usize)> {
    report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_string(),
                t["n"].as_u64().expect("n") as usize,
            )
        })
        .collect()
}

fn shards_equal_evaluate(device: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // ~17K rows over 7 sets, with hospital and slide ids (groups cross shard edges).
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.005",
        "--seed",
        "3",
    ]);
    let full = tmp.path().join("full.json");
    let alpha = "0.1,0.05";
    // Six bootstrap replicates: one full draw group of four and a partial one.
    let boot = "6";
    run(&[
        "evaluate",
        "--data",
        s(&data),
        "--device",
        device,
        "--alpha",
        alpha,
        "--bootstrap",
        boot,
        "--seed",
        "5",
        "--confidence",
        "0.9",
        "--json",
        s(&full),
    ]);
    let cal = tmp.path().join("cal.json");
    run(&[
        "calibrate",
        "--data",
        s(&data),
        "--device",
        device,
        "--alpha",
        alpha,
        "--bootstrap",
        boot,
        "--seed",
        "5",
        "--confidence",
        "0.9",
        "--out",
        s(&cal),
    ]);
    let want = read_json(&full);
    // The bootstrap's intervals shard too (weights keyed by each row's index in its file).
    assert!(want["mae_ci"].is_object() && want["targets"][0]["ci"].is_object());
    assert_eq!(want["meta"]["bootstrap"]["replicates"], 6);
    let mut r = common::rng(11);
    let mut tallies: Vec<PathBuf> = Vec::new();
    for (i, (name, n)) in target_sizes(&want).into_iter().enumerate() {
        let file = data.join(format!("{name}.npz"));
        if i % 3 == 0 {
            // A whole file in one tally, named by its stem.
            let t = tmp.path().join(format!("{name}.tally.json"));
            run(&[
                "tally",
                "--calibration",
                s(&cal),
                "--data",
                s(&file),
                "--device",
                device,
                "--out",
                s(&t),
            ]);
            tallies.push(t);
            continue;
        }
        // Random cut points (an empty shard allowed).
        let mut cuts: Vec<usize> = (0..3).map(|_| r.random_range(0..=n)).collect();
        cuts.extend([0, n]);
        cuts.sort_unstable();
        for (j, w) in cuts.windows(2).enumerate() {
            let t = tmp.path().join(format!("{name}.{j}.tally.json"));
            let rows = format!("{}:{}", w[0], w[1]);
            run(&[
                "tally",
                "--calibration",
                s(&cal),
                "--data",
                s(&file),
                "--rows",
                &rows,
                "--name",
                &name,
                "--device",
                device,
                "--out",
                s(&t),
            ]);
            tallies.push(t);
        }
    }
    for order in 0..2 {
        tallies.shuffle(&mut r);
        let merged = tmp.path().join(format!("merged{order}.json"));
        let out = tmp.path().join(format!("out{order}"));
        let mut args = vec!["merge", "--calibration", s(&cal)];
        args.extend(tallies.iter().map(|p| s(p)));
        args.extend(["--json", s(&merged), "--out", s(&out)]);
        run(&args);
        let got = read_json(&merged);
        assert_eq!(
            comparable(&got),
            comparable(&want),
            "order {order}: merged report differs"
        );
        assert_eq!(
            input_hashes(&got),
            input_hashes(&want),
            "order {order}: inputs"
        );
        for f in ["report.json", "reliability.svg", "slide_accuracy_ts.svg"] {
            assert!(out.join(f).exists(), "{f} not written by merge");
        }
    }
}

#[test]
fn cpu_shards_through_the_commands_equal_evaluate() {
    shards_equal_evaluate("cpu");
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_shards_through_the_commands_equal_evaluate() {
    if common::shared_gpu().is_none() {
        return;
    }
    shards_equal_evaluate("gpu");
}

#[test]
fn merge_refuses_foreign_overlapping_and_damaged_tallies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.002",
        "--seed",
        "4",
    ]);
    let cal = tmp.path().join("cal.json");
    let other = tmp.path().join("other.json");
    run(&[
        "calibrate",
        "--data",
        s(&data),
        "--device",
        "cpu",
        "--out",
        s(&cal),
    ]);
    run(&[
        "calibrate",
        "--data",
        s(&data),
        "--device",
        "cpu",
        "--temperature",
        "2",
        "--out",
        s(&other),
    ]);
    let test = data.join("test.npz");
    let tally = |c: &Path, rows: &str, out: &str| {
        let p = tmp.path().join(out);
        run(&[
            "tally",
            "--calibration",
            s(c),
            "--data",
            s(&test),
            "--rows",
            rows,
            "--device",
            "cpu",
            "--out",
            s(&p),
        ]);
        p
    };
    let a = tally(&cal, "0:100", "a.json");
    let b = tally(&cal, "50:150", "b.json");
    let foreign = tally(&other, "100:150", "f.json");
    let json = tmp.path().join("report.json");
    let out = tmp.path().join("out");
    let merge = |files: &[&Path]| {
        let mut c = bin();
        c.args(["merge", "--calibration", s(&cal)]);
        c.args(files.iter().map(|p| s(p)));
        c.args(["--json", s(&json), "--out", s(&out)]);
        c.output().expect("run")
    };
    let check = |o: Output, code: i32, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !json.exists() && !out.exists(),
            "outputs written on failure"
        );
    };
    check(merge(&[&a, &foreign]), 5, "calibration");
    check(merge(&[&a, &b]), 5, "tallied twice");
    // Damaged: cut in half, and a count that no set of rows can give.
    let cut = tmp.path().join("cut.json");
    let text = std::fs::read_to_string(&a).expect("read");
    std::fs::write(&cut, &text[..text.len() / 2]).expect("write");
    check(merge(&[&cut]), 4, "cut.json");
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["modes"]["ts"][0]["counts"][2] = serde_json::json!(1_000_000);
    let forged = tmp.path().join("forged.json");
    std::fs::write(&forged, v.to_string()).expect("write");
    check(merge(&[&forged]), 4, "forged.json");
    // A tally handed to a calibration it was not made with.
    let o = bin()
        .args([
            "merge",
            "--calibration",
            s(&other),
            s(&a),
            "--json",
            s(&json),
        ])
        .output()
        .expect("run");
    check(o, 5, "calibration");
    // --rows outside the file.
    let o = bin()
        .args([
            "tally",
            "--calibration",
            s(&cal),
            "--data",
            s(&test),
            "--rows",
            "0:999999999",
            "--out",
            s(&json),
        ])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!json.exists());
}

/// What a GPU evaluation reads back (the ledger in `meta.transfers`): at most 48 bytes per
/// source row (its sorted statistics columns, the fit's partials) plus 64 KiB per target,
/// whatever the targets' sizes: checked at two scales 4x apart.
#[cfg(feature = "gpu")]
#[test]
fn gpu_downloads_are_bounded_by_the_source_not_the_targets() {
    if common::shared_gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut per_target_rows = Vec::new();
    for (i, scale) in ["0.004", "0.016"].into_iter().enumerate() {
        let data = tmp.path().join(format!("data{i}"));
        run(&[
            "generate",
            "--out",
            s(&data),
            "--scale",
            scale,
            "--seed",
            "5",
        ]);
        let json = tmp.path().join(format!("r{i}.json"));
        run(&[
            "evaluate",
            "--data",
            s(&data),
            "--device",
            "gpu",
            "--json",
            s(&json),
        ]);
        let r = read_json(&json);
        let t = &r["meta"]["transfers"];
        let down = t["download_bytes"].as_u64().expect("download_bytes");
        let source_n = r["source"]["n"].as_u64().unwrap();
        let targets = r["targets"].as_array().unwrap();
        let bound = 48 * source_n + 65536 * targets.len() as u64;
        assert!(down <= bound, "scale {scale}: {down} bytes down > {bound}");
        assert!(t["upload_bytes"].as_u64().unwrap() > 0 && t["submissions"].as_u64().unwrap() > 0);
        per_target_rows.push(
            targets
                .iter()
                .map(|t| t["n"].as_u64().unwrap())
                .sum::<u64>(),
        );
    }
    assert!(
        per_target_rows[1] >= 3 * per_target_rows[0],
        "{per_target_rows:?}"
    );
}

/// DESIGN.md 3: a target that arrives as several files. (1) Its rows shuffled and cut
/// into files of random sizes, each tallied under one `--name` at its `--row-offset`,
/// merge to the unsharded report (bootstrap off: counts do not depend on row order).
/// (2) The same files named `NAME.part-000.npz`, ... are one target in `evaluate`. (3) In
/// order, with the bootstrap on, parts reproduce the whole file's intervals bit for bit
/// (weights follow the offset row index). Overlapping offsets and a missing part are
/// errors.
#[test]
fn target_parts_at_row_offsets_merge_like_row_ranges() {
    use conformal_gpu::data::npz::{load_npz, save_npz};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    run(&[
        "generate",
        "--out",
        s(&data),
        "--scale",
        "0.005",
        "--seed",
        "4",
    ]);
    // One labelled target with groups; the other targets out of the way.
    let keep = ["id_val", "test"];
    for f in std::fs::read_dir(&data).expect("dir") {
        let p = f.expect("entry").path();
        if !keep.iter().any(|k| p.file_stem().is_some_and(|s| s == *k)) {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    let test = load_npz(&data.join("test.npz")).expect("test");
    let n = test.n();
    let evaluate = |dir: &Path, out: &Path, boot: &str| {
        run(&[
            "evaluate",
            "--data",
            s(dir),
            "--device",
            "cpu",
            "--bootstrap",
            boot,
            "--seed",
            "2",
            "--json",
            s(out),
        ]);
        comparable(&read_json(out))
    };
    let whole = evaluate(&data, &tmp.path().join("whole.json"), "0");
    // Shuffled rows in 3 files of random sizes.
    let mut r = common::rng(21);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut r);
    let a = r.random_range(1..n / 2);
    let b = r.random_range(a + 1..n - 1);
    let cuts = [0, a, b, n];
    let parts_dir = tmp.path().join("parts");
    std::fs::create_dir(&parts_dir).expect("mkdir");
    std::fs::copy(data.join("id_val.npz"), parts_dir.join("id_val.npz")).expect("copy");
    let cal = tmp.path().join("cal.json");
    run(&[
        "calibrate",
        "--data",
        s(&data),
        "--device",
        "cpu",
        "--seed",
        "2",
        "--out",
        s(&cal),
    ]);
    let mut tallies = Vec::new();
    for i in 0..3 {
        let file = parts_dir.join(format!("test.part-{i:03}.npz"));
        save_npz(
            &file,
            &common::pick(&test, &order[cuts[i]..cuts[i + 1]], "p"),
            i == 1,
        )
        .expect("save");
        let t = tmp.path().join(format!("t{i}.json"));
        let offset = cuts[i].to_string();
        run(&[
            "tally",
            "--calibration",
            s(&cal),
            "--data",
            s(&file),
            "--name",
            "test",
            "--row-offset",
            &offset,
            "--device",
            "cpu",
            "--out",
            s(&t),
        ]);
        tallies.push(t);
    }
    let merged = tmp.path().join("merged.json");
    let o = run(&[
        "merge",
        "--calibration",
        s(&cal),
        s(&tallies[2]),
        s(&tallies[0]),
        s(&tallies[1]),
        "--json",
        s(&merged),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{n} rows tallied in 1 range")),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(comparable(&read_json(&merged)), whole);
    // (2) evaluate takes the parts as one target.
    assert_eq!(evaluate(&parts_dir, &tmp.path().join("p.json"), "0"), whole);
    // Overlap: part 1 tallied again at part 0's offset.
    let t_over = tmp.path().join("over.json");
    run(&[
        "tally",
        "--calibration",
        s(&cal),
        "--data",
        s(&parts_dir.join("test.part-001.npz")),
        "--name",
        "test",
        "--row-offset",
        "0",
        "--device",
        "cpu",
        "--out",
        s(&t_over),
    ]);
    let o = bin()
        .args([
            "merge",
            "--calibration",
            s(&cal),
            s(&tallies[0]),
            s(&t_over),
        ])
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // (3) In order, bootstrap on: the parts' report is the whole file's, intervals too.
    let ordered_dir = tmp.path().join("ordered");
    std::fs::create_dir(&ordered_dir).expect("mkdir");
    std::fs::copy(data.join("id_val.npz"), ordered_dir.join("id_val.npz")).expect("copy");
    let identity: Vec<usize> = (0..n).collect();
    for i in 0..3 {
        let file = ordered_dir.join(format!("test.part-{i:03}.npz"));
        save_npz(
            &file,
            &common::pick(&test, &identity[cuts[i]..cuts[i + 1]], "p"),
            false,
        )
        .expect("save");
    }
    let whole_boot = evaluate(&data, &tmp.path().join("wb.json"), "8");
    assert!(whole_boot["targets"][0]["ci"].is_object());
    assert_eq!(
        evaluate(&ordered_dir, &tmp.path().join("ob.json"), "8"),
        whole_boot
    );
    // A missing part is an error naming it.
    std::fs::remove_file(ordered_dir.join("test.part-001.npz")).expect("rm");
    let o = bin()
        .args(["evaluate", "--data", s(&ordered_dir), "--device", "cpu"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("part 001 is missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
