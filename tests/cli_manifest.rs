//! `sweep --manifest FILE.toml` (DESIGN.md 3, "The sweep", manifest form): each cell's
//! report equals `evaluate` of a directory holding exactly the cell's files under their
//! set names (targets by path, by glob, and in parts); `[options]` apply and the command
//! line overrides them; `exclude` keeps targets out of the MAE; a bad manifest is exit
//! code 2 with a message naming the manifest, the cell's line and the field.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conformal-gpu"))
        .env("XDG_RUNTIME_DIR", "/tmp")
        .args(args)
        .output()
        .expect("run binary")
}

#[track_caller]
fn run_ok(args: &[&str]) -> Output {
    let o = run(args);
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

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn without_run_fields(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["meta", "timings_ms", "device"] {
            o.remove(k);
        }
    }
    v
}

/// Two generated sets (`g1`, `g2`: Camelyon-shaped, seeded) as loose files.
fn files(root: &Path) {
    for (name, seed) in [("g1", "1"), ("g2", "2")] {
        run_ok(&[
            "generate",
            "--out",
            s(&root.join(name)),
            "--scale",
            "0.002",
            "--seed",
            seed,
        ]);
    }
}

const MANIFEST: &str = r#"
[options]
alpha = [0.1, 0.05]
bootstrap = 6
score = ["lac", "aps"]
exclude = ["train"]

[[cell]]
dataset = "cam"
model = "m"
run = 2
source = "g1/id_val.npz"
targets = ["g1/t*.npz", { name = "shifted", files = ["g1/ood_val.npz", "g2/ood_val.npz"] }]

[[cell]]
dataset = "cam"
model = "m"
run = "x"
source = "g2/id_val.npz"
targets = ["g2/test.npz"]
"#;

#[test]
fn manifest_cells_equal_evaluate_of_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    files(root);
    let manifest = root.join("sweep.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let out = root.join("out");
    // The command line wins over [options]: no bootstrap.
    let o = run(&[
        "sweep",
        "--manifest",
        s(&manifest),
        "--out",
        s(&out),
        "--device",
        "cpu",
        "--bootstrap",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Cell 1 as evaluate sees it: the source, the glob's targets (test, train), and the
    // parts of `shifted` in order.
    let d1 = root.join("d1");
    std::fs::create_dir(&d1).unwrap();
    for (from, to) in [
        ("g1/id_val.npz", "id_val.npz"),
        ("g1/test.npz", "test.npz"),
        ("g1/train.npz", "train.npz"),
        ("g1/ood_val.npz", "shifted.part-000.npz"),
        ("g2/ood_val.npz", "shifted.part-001.npz"),
    ] {
        std::fs::copy(root.join(from), d1.join(to)).unwrap();
    }
    let e1 = root.join("e1.json");
    run_ok(&[
        "evaluate",
        "--data",
        s(&d1),
        "--device",
        "cpu",
        "--alpha",
        "0.1,0.05",
        "--score",
        "lac,aps",
        "--exclude",
        "train",
        "--json",
        s(&e1),
    ]);
    let want = read_json(&e1);
    let got = read_json(&out.join("cells/cam/m/2.json"));
    assert_eq!(without_run_fields(got.clone()), without_run_fields(want));
    let names: Vec<&str> = got["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shifted", "test", "train"]);
    assert!(
        got.get("mae_ci").is_none(),
        "--bootstrap 0 overrides the manifest"
    );
    assert!(got["targets"][0]["estimates"]["raw"]["CPC-APS"].is_number());
    // exclude: the MAE is over test and shifted only (train is reported, not averaged).
    assert_eq!(got["mae_exclude"], serde_json::json!(["train"]));
    let mean = ["shifted", "test"]
        .iter()
        .map(|n| {
            let t = got["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == *n)
                .unwrap();
            (t["estimates"]["ts"]["CPC"].as_f64().unwrap() - t["true_accuracy"].as_f64().unwrap())
                .abs()
        })
        .sum::<f64>()
        / 2.0;
    assert!((got["mae"]["ts"]["CPC"].as_f64().unwrap() - mean).abs() < 1e-15);

    // Cell 2 (run named "x"), its one target.
    let d2 = root.join("d2");
    std::fs::create_dir(&d2).unwrap();
    for f in ["id_val.npz", "test.npz"] {
        std::fs::copy(root.join("g2").join(f), d2.join(f)).unwrap();
    }
    let e2 = root.join("e2.json");
    run_ok(&[
        "evaluate",
        "--data",
        s(&d2),
        "--device",
        "cpu",
        "--alpha",
        "0.1,0.05",
        "--score",
        "lac,aps",
        "--exclude",
        "train",
        "--json",
        s(&e2),
    ]);
    assert_eq!(
        without_run_fields(read_json(&out.join("cells/cam/m/x.json"))),
        without_run_fields(read_json(&e2))
    );
    // The summary leaves train out of the bias as the MAE does.
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(results.lines().any(|l| l.contains(",train,")));
    // A rerun keeps both cells and writes the same files.
    let before = std::fs::read(out.join("results.csv")).unwrap();
    run_ok(&[
        "sweep",
        "--manifest",
        s(&manifest),
        "--out",
        s(&out),
        "--device",
        "cpu",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(std::fs::read(out.join("results.csv")).unwrap(), before);
}

/// Each bad manifest: exit code 2, a message naming the manifest and what is wrong.
#[test]
fn bad_manifests_name_the_file_the_line_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    files(root);
    std::fs::write(root.join("g1/notes.npz"), b"not a zip").unwrap();
    let cell = |extra: &str| {
        format!(
            "[[cell]]\ndataset = \"d\"\nmodel = \"m\"\nrun = 1\nsource = \"g1/id_val.npz\"\n{extra}\n"
        )
    };
    let cases: Vec<(String, &[&str])> = vec![
        (
            cell("targets = [\"g1/test.npz\"]\ncolour = 3"),
            &["unknown field", "colour"],
        ),
        (
            "[[cell]]\ndataset = \"d\"\nmodel = \"m\"\nrun = 1\ntargets = [\"g1/test.npz\"]\n"
                .to_string(),
            &["missing field", "source"],
        ),
        (
            format!(
                "{}{}",
                cell("targets = [\"g1/test.npz\"]"),
                cell("targets = [\"g1/train.npz\"]")
            ),
            &["line 7", "field run", "listed twice"],
        ),
        (
            cell("targets = [\"g1/test.npz\", \"g2/test.npz\"]"),
            &["line 1", "field targets", "two sets named \"test\""],
        ),
        (
            cell("targets = [\"g1/nothing*.npz\"]"),
            &["field targets", "matches no file"],
        ),
        (
            cell("targets = [\"g1/notes.npz\"]"),
            &["field targets", "notes.npz", "not a prediction set"],
        ),
        (
            format!(
                "[options]\nalpah = 0.1\n{}",
                cell("targets = [\"g1/test.npz\"]")
            ),
            &["[options]", "field alpah", "not an option"],
        ),
        (
            format!(
                "[options]\nbootstrap = -1\n{}",
                cell("targets = [\"g1/test.npz\"]")
            ),
            &["field bootstrap", "integer >= 0"],
        ),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let manifest = root.join(format!("bad{i}.toml"));
        std::fs::write(&manifest, text).unwrap();
        let out = root.join(format!("out{i}"));
        let o = run(&[
            "sweep",
            "--manifest",
            s(&manifest),
            "--out",
            s(&out),
            "--device",
            "cpu",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(&format!("bad{i}.toml")), "case {i}: {err}");
        for n in *needles {
            assert!(err.contains(n), "case {i}: {n:?} not in {err}");
        }
        assert!(
            !out.exists(),
            "case {i}: nothing is written for a bad manifest"
        );
    }
}
