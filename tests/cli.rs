//! The command line on bad input (DESIGN.md section 6): one test per bad-input class,
//! each asserting the exit code of its class, a one-line `error:` message on stderr that
//! names the file/array/row, no panic or backtrace text, and that no output file
//! (report.json, plots, `--json FILE`, `<target>_rows.npz`, temporary files) is left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use conformal_gpu::data::{save_npz, save_npz_arrays, NpzArray, PredictionSet};
use ndarray::{Array1, Array2};

mod common;
use common::{f32s, npy};

// ----------------------------------------------------------------------------- helpers

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_conformal-gpu"));
    // A panic would print its backtrace: make sure the test would see it.
    c.env("RUST_BACKTRACE", "1").env("XDG_RUNTIME_DIR", "/tmp");
    c
}

/// A temp workspace: `data/` holds the sets, outputs go to `out/` and `out.json`.
struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Self {
        let ws = Ws {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir(ws.data()).expect("mkdir data");
        ws
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn data(&self) -> PathBuf {
        self.root().join("data")
    }
    fn out(&self) -> PathBuf {
        self.root().join("out")
    }
    fn json(&self) -> PathBuf {
        self.root().join("out.json")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.data().join(format!("{name}.npz"))
    }
    /// A valid labelled set `name` with `n` rows and K = 3.
    fn good(&self, name: &str, n: usize) -> &Self {
        save_npz(&self.file(name), &set(name, n, 3), false).expect("save");
        self
    }
    /// A raw npz (no validation) with the given arrays.
    fn raw(&self, name: &str, arrays: &[(&str, NpzArray<'_>)]) -> &Self {
        save_npz_arrays(&self.file(name), arrays, false).expect("save raw");
        self
    }
    /// A hand-built zip of `.npy` members (any header).
    fn members(&self, name: &str, members: &[(&str, Vec<u8>)]) -> &Self {
        let f = std::fs::File::create(self.file(name)).expect("create");
        let mut zw = zip::ZipWriter::new(f);
        for (m, bytes) in members {
            zw.start_file(*m, zip::write::SimpleFileOptions::default())
                .expect("member");
            zw.write_all(bytes).expect("write");
        }
        zw.finish().expect("finish");
        self
    }
    fn bytes(&self, name: &str, bytes: &[u8]) -> &Self {
        std::fs::write(self.file(name), bytes).expect("write");
        self
    }

    /// `evaluate` on `data/` with every output asked for, plus `extra` arguments.
    fn evaluate(&self, extra: &[&str]) -> Output {
        let mut c = bin();
        c.arg("evaluate")
            .arg("--data")
            .arg(self.data())
            .arg("--device")
            .arg("cpu")
            .arg("--out")
            .arg(self.out())
            .arg("--rows")
            .arg("--json")
            .arg(self.json())
            .args(extra);
        c.output().expect("run binary")
    }

    /// No output of any kind under the workspace (only `data/` and what was there).
    #[track_caller]
    fn assert_no_outputs(&self) {
        assert!(!self.json().exists(), "--json FILE was written");
        if self.out().exists() {
            let left: Vec<_> = std::fs::read_dir(self.out())
                .expect("read out")
                .map(|e| e.expect("entry").path())
                .collect();
            assert!(left.is_empty(), "outputs left behind: {left:?}");
        }
        for dir in [self.root().to_path_buf(), self.data()] {
            for e in std::fs::read_dir(&dir).expect("read dir") {
                let name = e.expect("entry").file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(".tmp.") && !name.contains("probe"),
                    "temporary file left: {name}"
                );
                assert!(!name.ends_with("_rows.npz"), "rows file left: {name}");
            }
        }
    }
}

fn set(name: &str, n: usize, k: usize) -> PredictionSet {
    let logits = Array2::from_shape_fn((n, k), |(i, j)| ((i * 7 + j * 3) % 5) as f32 - 2.0);
    let labels = Array1::from_shape_fn(n, |i| ((i * 5) % k) as i64);
    let mut s = PredictionSet::new(name, logits).with_labels(labels);
    s.hospital = Some(Array1::from_shape_fn(n, |i| (i % 2) as i64));
    s
}

fn logits_rows(n: usize, k: usize) -> Vec<f32> {
    (0..n * k).map(|i| ((i * 7) % 5) as f32 - 2.0).collect()
}

fn labels(n: usize, k: usize) -> Vec<i64> {
    (0..n).map(|i| (i % k) as i64).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code `code`; exactly one `error:` line, the last one, containing every needle;
/// no panic or backtrace text.
#[track_caller]
fn assert_error(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "thread '"] {
        assert!(!err.contains(bad), "panic text in stderr:\n{err}");
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    assert_eq!(
        lines.last(),
        errors.first().copied(),
        "error is the last line"
    );
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error line lacks {n:?}: {}",
            errors[0]
        );
    }
}

// ----------------------------------------------------------------------------- baseline

#[test]
fn valid_run_writes_every_output() {
    let ws = Ws::new();
    ws.good("id_val", 40).good("test", 30);
    let o = ws.evaluate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ws.json().is_file());
    assert!(ws.out().join("report.json").is_file());
    assert!(ws.out().join("test_rows.npz").is_file());
}

// ----------------------------------------------------------------------------- data (5)

#[test]
fn nan_logits_name_file_array_and_row() {
    let ws = Ws::new();
    let mut l = logits_rows(6, 3);
    l[3 * 3 + 1] = f32::NAN;
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&l, 6, 3)),
            ("labels", NpzArray::I64(&labels(6, 3))),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["test.npz", "logits", "row 3", "NaN"]);
    ws.assert_no_outputs();
}

#[test]
fn infinite_logits_in_the_source() {
    let ws = Ws::new();
    let mut l = logits_rows(8, 3);
    l[5 * 3] = f32::NEG_INFINITY;
    ws.good("test", 10).raw(
        "id_val",
        &[
            ("logits", NpzArray::F32x2(&l, 8, 3)),
            ("labels", NpzArray::I64(&labels(8, 3))),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["id_val.npz", "logits", "row 5", "inf"]);
    ws.assert_no_outputs();
}

#[test]
fn label_out_of_range_names_the_row() {
    let ws = Ws::new();
    let mut y = labels(6, 3);
    y[4] = 3;
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(6, 3), 6, 3)),
            ("labels", NpzArray::I64(&y)),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["test.npz", "labels", "row 4", "label 3"]);
    ws.assert_no_outputs();
}

#[test]
fn negative_label_other_than_minus_one() {
    let ws = Ws::new();
    let mut y = labels(6, 3);
    y[2] = -2;
    ws.good("test", 20).raw(
        "id_val",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(6, 3), 6, 3)),
            ("labels", NpzArray::I64(&y)),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["id_val.npz", "labels", "row 2"]);
    ws.assert_no_outputs();
}

#[test]
fn unlabelled_source_row() {
    let ws = Ws::new();
    let mut y = labels(6, 3);
    y[1] = -1;
    ws.good("test", 20).raw(
        "id_val",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(6, 3), 6, 3)),
            ("labels", NpzArray::I64(&y)),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["id_val", "row 1", "-1"]);
    ws.assert_no_outputs();
}

#[test]
fn length_mismatch_between_arrays() {
    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(6, 3), 6, 3)),
            ("labels", NpzArray::I64(&labels(6, 3))),
            ("slide", NpzArray::I64(&[0, 1, 2, 3, 4])),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(
        &o,
        5,
        &["test.npz", "slide", "length mismatch", "5 entries"],
    );
    ws.assert_no_outputs();
}

#[test]
fn empty_target_set() {
    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&[], 0, 3)),
            ("labels", NpzArray::I64(&[])),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["test", "empty"]);
    ws.assert_no_outputs();
}

#[test]
fn empty_source_set() {
    let ws = Ws::new();
    ws.good("test", 20).raw(
        "id_val",
        &[
            ("logits", NpzArray::F32x2(&[], 0, 3)),
            ("labels", NpzArray::I64(&[])),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["id_val", "empty"]);
    ws.assert_no_outputs();
}

#[test]
fn fewer_than_two_classes() {
    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&[], 4, 0)),
            ("labels", NpzArray::I64(&labels(4, 1))),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["test.npz", "logits", "K = 0"]);
    ws.assert_no_outputs();
}

#[test]
fn target_with_another_k_aborts_the_whole_run() {
    let ws = Ws::new();
    // "a_first" sorts before the bad target: it must not be reported either.
    ws.good("id_val", 20).good("a_first", 10);
    save_npz(&ws.file("test"), &set("test", 10, 4), false).expect("save");
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["test", "K = 4"]);
    ws.assert_no_outputs();
    assert!(o.stdout.is_empty(), "no table for an aborted run");
}

#[test]
fn calibration_too_small_for_the_level_gives_inf_and_a_warning() {
    let ws = Ws::new();
    ws.good("id_val", 3).good("test", 10);
    let o = ws.evaluate(&["--alpha", "0.1"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning") && err.contains("+inf"), "{err}");
    assert!(ws.json().is_file() && ws.out().join("report.json").is_file());
}

// ----------------------------------------------------------------------------- usage (2)

#[test]
fn alpha_outside_the_open_interval_or_nan() {
    for bad in ["0", "1", "1.5", "-0.1", "NaN", "inf", "abc"] {
        let ws = Ws::new();
        ws.good("id_val", 20).good("test", 10);
        let o = ws.evaluate(&["--alpha", &format!("0.1,{bad}")]);
        assert_error(&o, 2, &["alpha"]);
        ws.assert_no_outputs();
    }
}

#[test]
fn non_positive_or_non_finite_temperature() {
    for bad in ["0", "-1", "NaN", "inf", "1e-300", "1e300"] {
        let ws = Ws::new();
        ws.good("id_val", 20).good("test", 10);
        let o = ws.evaluate(&["--temperature", bad]);
        assert_error(&o, 2, &["temperature"]);
        ws.assert_no_outputs();
    }
}

#[test]
fn missing_source_set_and_missing_temperature_set() {
    let ws = Ws::new();
    ws.good("test", 10);
    let o = ws.evaluate(&[]);
    // A missing file is an I/O error (exit 3) that lists the sets found.
    assert_error(&o, 3, &["id_val.npz", "not found", "sets found: test"]);
    ws.assert_no_outputs();
    ws.good("id_val", 10);
    let o = ws.evaluate(&["--temperature-source", "nope"]);
    assert_error(&o, 3, &["nope", "not found"]);
    ws.assert_no_outputs();
}

#[test]
fn bad_device_name() {
    let ws = Ws::new();
    ws.good("id_val", 20).good("test", 10);
    let mut c = bin();
    c.args(["evaluate", "--device", "tpu", "--data"])
        .arg(ws.data())
        .arg("--out")
        .arg(ws.out());
    let o = c.output().expect("run");
    assert_error(&o, 2, &["--device", "tpu"]);
    ws.assert_no_outputs();
}

// ----------------------------------------------------------------------------- format (4)

#[test]
fn wrong_dtype() {
    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::I64x2(&[1, 2, 3, 4], 2, 2)),
            ("labels", NpzArray::I64(&[0, 1])),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "logits", "dtype", "<i8"]);
    ws.assert_no_outputs();

    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(2, 3), 2, 3)),
            ("labels", NpzArray::F32(&[0.0, 1.0])),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "labels", "dtype"]);
    ws.assert_no_outputs();
}

#[test]
fn wrong_rank_and_shape() {
    let ws = Ws::new();
    ws.good("id_val", 20).members(
        "test",
        &[(
            "logits.npy",
            npy("<f4", false, "(2, 2, 2)", &f32s(&[0.0; 8])),
        )],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "logits", "shape"]);
    ws.assert_no_outputs();

    let ws = Ws::new();
    ws.good("id_val", 20).raw(
        "test",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(2, 3), 2, 3)),
            ("labels", NpzArray::I64x2(&[0, 1], 2, 1)),
        ],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "labels", "shape"]);
    ws.assert_no_outputs();
}

#[test]
fn absurd_header_size() {
    let ws = Ws::new();
    ws.good("id_val", 20).members(
        "test",
        &[(
            "logits.npy",
            npy("<f4", false, "(4000000000000, 3)", &f32s(&[0.0; 6])),
        )],
    );
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "logits", "header claims"]);
    ws.assert_no_outputs();
}

#[test]
fn missing_logits_array() {
    let ws = Ws::new();
    ws.good("id_val", 20)
        .raw("test", &[("labels", NpzArray::I64(&[0, 1]))]);
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "no array named 'logits'"]);
    ws.assert_no_outputs();
}

#[test]
fn truncated_file() {
    let ws = Ws::new();
    ws.good("id_val", 20).good("test", 50);
    let bytes = std::fs::read(ws.file("test")).expect("read");
    ws.bytes("test", &bytes[..bytes.len() / 2]);
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz"]);
    ws.assert_no_outputs();
}

#[test]
fn corrupt_member_data() {
    let ws = Ws::new();
    ws.good("id_val", 20).good("test", 50);
    let mut bytes = std::fs::read(ws.file("test")).expect("read");
    // Flip bytes inside the logits data (stored member: CRC mismatch).
    for b in &mut bytes[200..240] {
        *b ^= 0x5a;
    }
    ws.bytes("test", &bytes);
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz"]);
    ws.assert_no_outputs();
}

#[test]
fn not_a_zip() {
    let ws = Ws::new();
    ws.good("id_val", 20)
        .bytes("test", b"logits,labels\n0.1,0.9,1\n");
    let o = ws.evaluate(&[]);
    assert_error(&o, 4, &["test.npz", "zip"]);
    ws.assert_no_outputs();
}

// ----------------------------------------------------------------------------- I/O (3)

#[test]
fn missing_data_directory() {
    let ws = Ws::new();
    let mut c = bin();
    c.args(["evaluate", "--device", "cpu", "--data"])
        .arg(ws.root().join("nope"))
        .arg("--out")
        .arg(ws.out());
    let o = c.output().expect("run");
    assert_error(&o, 3, &["nope"]);
    ws.assert_no_outputs();
}

#[test]
fn data_path_is_a_file() {
    let ws = Ws::new();
    ws.good("id_val", 10);
    let mut c = bin();
    c.args(["evaluate", "--device", "cpu", "--data"])
        .arg(ws.file("id_val"))
        .arg("--out")
        .arg(ws.out());
    let o = c.output().expect("run");
    assert_error(&o, 3, &["id_val.npz"]);
    ws.assert_no_outputs();
}

#[test]
fn output_directory_that_cannot_be_written() {
    let ws = Ws::new();
    ws.good("id_val", 20).good("test", 10);
    // A regular file where a directory is needed: fails even for root.
    let blocker = ws.root().join("blocker");
    std::fs::write(&blocker, b"x").expect("write");
    let mut c = bin();
    c.args(["evaluate", "--device", "cpu", "--rows", "--data"])
        .arg(ws.data())
        .arg("--out")
        .arg(blocker.join("out"))
        .arg("--json")
        .arg(ws.json());
    let o = c.output().expect("run");
    assert_error(&o, 3, &["blocker"]);
    assert!(o.stdout.is_empty(), "failed before any work");
    ws.assert_no_outputs();
}

#[test]
fn json_file_that_cannot_be_written() {
    let ws = Ws::new();
    ws.good("id_val", 20).good("test", 10);
    let mut c = bin();
    c.args(["evaluate", "--device", "cpu", "--rows", "--data"])
        .arg(ws.data())
        .arg("--out")
        .arg(ws.out())
        .arg("--json")
        .arg(ws.root().join("missing-dir").join("r.json"));
    let o = c.output().expect("run");
    assert_error(&o, 3, &["missing-dir"]);
    ws.assert_no_outputs();
}

#[test]
fn directory_named_like_a_set_is_skipped() {
    let ws = Ws::new();
    ws.good("id_val", 20);
    // A directory named like a set is skipped; a dangling symlink is not a file either.
    std::fs::create_dir(ws.file("test")).expect("mkdir");
    // With nothing else, there is no target: an error that says so, not an empty table.
    let o = ws.evaluate(&[]);
    assert_error(&o, 5, &["no target set"]);
    ws.assert_no_outputs();
    ws.good("ood", 10);
    let o = ws.evaluate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.json()).expect("json")).expect("parse");
    assert_eq!(report["targets"].as_array().map(|t| t.len()), Some(1));
}

/// A corrupt file beside readable targets is skipped with a warning (and listed in the
/// report's meta), not fatal; alone, it is the error.
#[test]
fn unreadable_file_beside_targets_is_skipped() {
    let ws = Ws::new();
    ws.good("id_val", 20)
        .good("test", 10)
        .bytes("broken", b"not a zip at all");
    let o = ws.evaluate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: skipping"), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.json()).expect("json")).expect("parse");
    let skipped = report["meta"]["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("broken.npz"));
    assert_eq!(report["targets"].as_array().map(|t| t.len()), Some(1));
}

// ----------------------------------------------------------------------------- temperature / generate

#[test]
fn temperature_subcommand_on_bad_files() {
    let ws = Ws::new();
    let mut y = labels(6, 3);
    y[5] = 9;
    ws.raw(
        "bad",
        &[
            ("logits", NpzArray::F32x2(&logits_rows(6, 3), 6, 3)),
            ("labels", NpzArray::I64(&y)),
        ],
    );
    let o = bin()
        .args(["temperature", "--device", "cpu", "--data"])
        .arg(ws.file("bad"))
        .arg("--json")
        .arg(ws.json())
        .output()
        .expect("run");
    assert_error(&o, 5, &["bad.npz", "labels", "row 5"]);
    ws.assert_no_outputs();

    let o = bin()
        .args(["temperature", "--device", "cpu", "--data"])
        .arg(ws.file("absent"))
        .arg("--json")
        .arg(ws.json())
        .output()
        .expect("run");
    assert_error(&o, 3, &["absent.npz"]);
    ws.assert_no_outputs();

    ws.bytes("junk", b"\x93NUMPY not a zip");
    let o = bin()
        .args(["temperature", "--device", "cpu", "--data"])
        .arg(ws.file("junk"))
        .output()
        .expect("run");
    assert_error(&o, 4, &["junk.npz"]);
}

#[test]
fn generate_with_bad_scale_or_unwritable_directory() {
    let ws = Ws::new();
    for scale in ["0", "-1", "NaN", "inf", "1e9"] {
        let o = bin()
            .args(["generate", "--scale", scale, "--out"])
            .arg(ws.out())
            .output()
            .expect("run");
        assert_error(&o, 2, &["scale"]);
        ws.assert_no_outputs();
    }
    let blocker = ws.root().join("blocker");
    std::fs::write(&blocker, b"x").expect("write");
    let o = bin()
        .args(["generate", "--scale", "0.001", "--out"])
        .arg(blocker.join("d"))
        .output()
        .expect("run");
    assert_error(&o, 3, &["blocker"]);
}
