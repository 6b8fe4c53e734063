//! The command line's happy paths: `evaluate` JSON has exactly the documented shape, runs
//! are reproducible but for timings, `--rows` writes per-row files, `quantile` and
//! `temperature` print what they promise.

use std::path::Path;
use std::process::Command;

use conformal_gpu::data::{load_npz, save_npz};
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conformal-gpu"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn tiny4_dir(dst: &Path) {
    for name in ["id_val", "shifted", "unlabeled"] {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny4/{name}.npz"));
        let set = load_npz(&src).unwrap();
        save_npz(&dst.join(format!("{name}.npz")), &set, false).unwrap();
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn run_json(dir: &Path, extra: &[&str]) -> Value {
    let out = bin()
        .args([
            "evaluate",
            "--data",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--alpha",
            "0.1,0.05",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn evaluate_json_has_the_documented_shape() {
    let tmp = tempfile::tempdir().unwrap();
    tiny4_dir(tmp.path());
    let v = run_json(tmp.path(), &[]);
    assert_eq!(
        keys(&v),
        sorted(&[
            "device",
            "alphas",
            "meta",
            "source",
            "targets",
            "mae",
            "timings_ms"
        ])
    );
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["alphas"], serde_json::json!([0.1, 0.05]));
    assert_eq!(
        keys(&v["meta"]),
        sorted(&["version", "commit", "args", "seed", "inputs", "adapter", "driver"])
    );
    assert_eq!(v["meta"]["inputs"].as_array().unwrap().len(), 3);
    assert_eq!(v["meta"]["inputs"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        keys(&v["source"]),
        sorted(&[
            "name",
            "n",
            "k",
            "accuracy",
            "temperature",
            "converged",
            "iterations",
            "nll_before",
            "nll_after",
            "ece_before",
            "ece_after",
            "conformal",
            "qhat",
            "cpc"
        ])
    );
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["name"], "shifted"); // name order
    for t in targets {
        assert_eq!(
            keys(t),
            sorted(&[
                "name",
                "n",
                "n_labelled",
                "labelled",
                "true_accuracy",
                "estimates",
                "cpc",
                "conformal",
                "scores",
                "groups"
            ])
        );
        for mode in ["raw", "ts"] {
            assert_eq!(
                keys(&t["estimates"][mode]),
                sorted(&["AC", "DoC", "ATC-MC", "ATC-NE", "CPC", "COT", "COTT"])
            );
            assert_eq!(keys(&t["cpc"][mode]), sorted(&["q", "alpha"]));
            let conf = t["conformal"][mode].as_array().unwrap();
            assert_eq!(conf.len(), 2);
            assert_eq!(
                keys(&conf[0]),
                sorted(&[
                    "alpha",
                    "k",
                    "qhat",
                    "mean_set_size",
                    "singleton_rate",
                    "empty_rate",
                    "coverage",
                    "score",
                    "class_conditional",
                    "sscv",
                    "covgap",
                    "class_coverage"
                ])
            );
            assert_eq!(conf[0]["score"], "lac");
            if t["n_labelled"].as_u64() > Some(0) {
                assert_eq!(conf[0]["class_coverage"].as_array().unwrap().len(), 4);
            }
        }
        // tiny4 has slide ids: one entry per slide with estimates in both modes.
        let slides = t["groups"]["slide"].as_array().unwrap();
        assert!(!slides.is_empty());
        assert_eq!(
            keys(&slides[0]),
            sorted(&[
                "id",
                "n",
                "n_labelled",
                "true_accuracy",
                "estimates",
                "conformal"
            ])
        );
        // A group's entries have no class coverage (target level only).
        assert!(
            slides[0]["conformal"]["raw"][0]["sscv"].is_number()
                || slides[0]["n_labelled"].as_u64() == Some(0)
        );
        assert!(slides[0]["conformal"]["raw"][0].get("covgap").is_none());
    }
    let unl = &targets[1];
    assert_eq!(unl["labelled"], false);
    assert!(unl["true_accuracy"].is_null());
    assert!(unl["conformal"]["ts"][0]["coverage"].is_null());
    assert!(unl["conformal"]["ts"][0]["sscv"].is_null());
    assert!(unl["conformal"]["ts"][0]["class_coverage"].is_null());
    assert!(unl["conformal"]["ts"][0]["covgap"].is_null());
    assert_eq!(targets[0]["labelled"], true);
    for row in ["raw", "ts", "slide_raw", "slide_ts"] {
        assert_eq!(
            keys(&v["mae"][row]),
            sorted(&["AC", "DoC", "ATC-MC", "ATC-NE", "CPC", "COT", "COTT"]),
            "mae.{row}"
        );
    }
    assert_eq!(
        keys(&v["timings_ms"]),
        sorted(&["load", "temperature", "sort", "estimate", "total"])
    );

    // Same data, same device: the same report but for timings.
    let mut again = run_json(tmp.path(), &[]);
    let mut first = v.clone();
    first["timings_ms"] = Value::Null;
    again["timings_ms"] = Value::Null;
    assert_eq!(first, again);
}

#[test]
fn evaluate_writes_rows_report_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    tiny4_dir(&data);
    let out = tmp.path().join("out");
    let status = bin()
        .args([
            "evaluate",
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--rows",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--alpha", "0.1,0.05,0.2"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for f in [
        "report.json",
        "reliability.svg",
        "coverage_vs_alpha.svg",
        "set_size_vs_alpha.svg",
        "slide_accuracy_ts.svg",
    ] {
        let p = out.join(f);
        assert!(p.metadata().unwrap().len() > 100, "{f} missing or empty");
    }
    // No temporary files left behind.
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "leftover {name}");
    }
    let rows = out.join("shifted_rows.npz");
    let file = std::fs::File::open(&rows).unwrap();
    let mut npz = ndarray_npy::NpzReader::new(file).unwrap();
    let yhat: ndarray::Array1<i64> = npz.by_name("yhat").unwrap();
    assert_eq!(yhat.len(), 3000);
    // Both modes, p-values in f64 (exactly (1 + count) / (n + 1)).
    for mode in ["raw", "ts"] {
        let cred: ndarray::Array1<f64> = npz.by_name(&format!("credibility_{mode}")).unwrap();
        let conf: ndarray::Array1<f64> = npz.by_name(&format!("confidence_{mode}")).unwrap();
        let size: ndarray::Array2<i64> = npz.by_name(&format!("set_size_{mode}")).unwrap();
        let p1: ndarray::Array1<f32> = npz.by_name(&format!("max_prob_{mode}")).unwrap();
        assert_eq!(size.dim(), (3000, 3));
        assert_eq!(p1.len(), 3000);
        // p-values lie in [1/(n+1), 1]; confidence = 1 - second p-value lies in [0, 1).
        assert!(cred.iter().all(|&c| c > 0.0 && c <= 1.0));
        assert!(conf.iter().all(|&c| (0.0..1.0).contains(&c)));
        // Larger alpha, smaller sets.
        assert!(size
            .rows()
            .into_iter()
            .all(|r| r[2] <= r[0] && r[0] <= r[1]));
    }
    // The source's rows are written too.
    assert!(out.join("id_val_rows.npz").exists());
}

#[test]
fn quantile_prints_k_and_qhat() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scores.npy");
    // Scores 1..=9: n = 9, alpha = 0.7 gives k = 3 (not 4); alpha = 0.05 gives k = 10 > n.
    let scores = ndarray::Array1::from((1..=9).map(|i| i as f32).collect::<Vec<_>>());
    ndarray_npy::write_npy(&path, &scores).unwrap();
    let out = bin()
        .args([
            "quantile",
            "--scores",
            path.to_str().unwrap(),
            "--alpha",
            "0.7,0.05",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --json: a readable table ending in a newline, inf where k > n.
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with('\n'), "{text:?}");
    let lines: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![vec!["0.7", "3", "3"], vec!["0.05", "10", "inf"]]
    );
    let out = bin()
        .args([
            "quantile",
            "--scores",
            path.to_str().unwrap(),
            "--alpha",
            "0.7,0.05",
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.stdout.ends_with(b"}\n"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 9);
    assert_eq!(v["k"], serde_json::json!([3, 10]));
    assert_eq!(v["qhat"], serde_json::json!([3.0, null]));
    assert_eq!(v["device"], "cpu");
}

#[test]
fn temperature_json_fields() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny4/id_val.npz");
    let out = bin()
        .args([
            "temperature",
            "--data",
            src.to_str().unwrap(),
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "temperature",
            "iterations",
            "converged",
            "nll_before",
            "nll_after",
            "ece_before",
            "ece_after",
            "accuracy",
            "n",
            "k",
            "device"
        ])
    );
    assert!((v["temperature"].as_f64().unwrap() - 0.4972481499081722).abs() < 1e-7);
}

/// float64 scores are not rounded to float32 behind the user's back: qhat is the k-th
/// smallest float64 itself (here 1 + 2^-40, which float32 rounds to 1).
#[test]
fn quantile_of_float64_scores_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scores.npy");
    let tiny = 2f64.powi(-40);
    let scores =
        ndarray::Array1::from((1..=9).map(|i| 1.0 + i as f64 * tiny).collect::<Vec<f64>>());
    ndarray_npy::write_npy(&path, &scores).unwrap();
    let out = bin()
        .args([
            "quantile",
            "--scores",
            path.to_str().unwrap(),
            "--alpha",
            "0.7",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["k"], serde_json::json!([3]));
    assert_eq!(v["qhat"][0].as_f64(), Some(1.0 + 3.0 * tiny));
    assert_eq!(v["precision"], "float64");
}
