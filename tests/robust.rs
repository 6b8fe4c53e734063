//! Library-level robustness (DESIGN.md section 6) not covered by tests/data_npz.rs and
//! tests/cli.rs: the in-memory npz reader, option validation in `evaluate`, public
//! helpers on out-of-range arguments, and all-or-nothing report writing.

mod common;

use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::{load_npz, load_npz_bytes, PredictionSet};
use conformal_gpu::methods::evaluate::{evaluate, AtcThreshold, EvalOptions, TemperatureChoice};
use conformal_gpu::methods::temperature::validate_temperature;
use conformal_gpu::report::{self, Meta};
use conformal_gpu::Error;
use ndarray::{Array1, Array2};

fn set(name: &str, n: usize, labelled: bool) -> PredictionSet {
    let logits =
        Array2::from_shape_vec((n, 2), common::random_logits(n as u64, n, 2, 3.0)).expect("shape");
    let y = Array1::from_shape_fn(n, |i| if labelled { (i % 2) as i64 } else { -1 });
    PredictionSet::new(name, logits).with_labels(y)
}

#[test]
fn load_npz_bytes_matches_load_npz() {
    for name in ["id_val.npz", "shifted.npz", "unlabeled.npz"] {
        let path = common::tiny4(name);
        let from_file = load_npz(&path).expect("file");
        let bytes = std::fs::read(&path).expect("read");
        let from_bytes = load_npz_bytes(&bytes, &from_file.name).expect("bytes");
        assert_eq!(from_file, from_bytes, "{name}");
        // Every prefix is a typed error (or, for the whole file, the set): never a panic.
        for cut in (0..bytes.len()).step_by(97) {
            match load_npz_bytes(&bytes[..cut], "cut") {
                Err(Error::Format { file, .. }) => assert_eq!(file, "cut"),
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn evaluate_rejects_bad_options_before_any_work() {
    let (s, t) = (set("s", 40, true), vec![set("t", 30, false)]);
    let run = |o: EvalOptions, other: Option<&PredictionSet>| {
        evaluate(&CpuBackend, &s, &t, other, &o).expect_err("invalid options")
    };
    let base = EvalOptions::default();
    for a in [0.0, 1.0, -0.5, f64::NAN, f64::INFINITY] {
        let e = run(
            EvalOptions {
                alphas: vec![0.1, a],
                ..base.clone()
            },
            None,
        );
        assert!(matches!(e, Error::BadAlpha(_)), "{e:?}");
    }
    let e = run(
        EvalOptions {
            alphas: vec![],
            ..base.clone()
        },
        None,
    );
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300] {
        let e = run(
            EvalOptions {
                temperature: TemperatureChoice::Fixed(t),
                ..base.clone()
            },
            None,
        );
        assert!(matches!(e, Error::BadTemperature(_)), "{t}: {e:?}");
        assert!(validate_temperature(t).is_err());
    }
    let fit_other = EvalOptions {
        temperature: TemperatureChoice::FitOther,
        ..base.clone()
    };
    let e = run(fit_other.clone(), None);
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    let e = run(fit_other, Some(&set("other", 10, false)));
    assert!(matches!(e, Error::UnlabelledSource { .. }), "{e:?}");
}

#[test]
fn atc_threshold_with_more_correct_rows_than_rows() {
    let th = AtcThreshold::new(&[0.1, 0.2, 0.3], 10);
    assert_eq!(th.t, Some(0.1));
    assert_eq!(th.lambda, 1.0);
}

#[test]
fn failed_report_writing_leaves_no_files() {
    let (s, t) = (set("s", 40, true), vec![set("t", 30, true)]);
    let eval = evaluate(
        &CpuBackend,
        &s,
        &t,
        None,
        &EvalOptions {
            rows: true,
            ..Default::default()
        },
    )
    .expect("eval");
    let meta = Meta {
        version: "test".into(),
        commit: "test".into(),
        args: vec![],
        seed: None,
        inputs: vec![],
        adapter: None,
        driver: None,
        transfers: None,
        gpu_kernel_ms: None,
        gpu_kernels: Default::default(),
        skipped: vec![],
        fingerprint: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    // A directory where the rows file must go: the last write fails.
    std::fs::create_dir_all(out.join("t_rows.npz")).expect("mkdir");
    let e = report::write_outputs(&eval, &meta, &out).expect_err("blocked");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("read")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("t_rows.npz")],
        "{left:?}"
    );
}
