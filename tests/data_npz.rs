//! The npz/npy reader and writer: round trips, the formats numpy writes (built by hand
//! here: float16, Fortran order, int32, `[N]` logits, deflate), every bad-input class,
//! atomic writes, and the shared tiny4 fixtures.

use std::io::Write;
use std::path::{Path, PathBuf};

use conformal_gpu::data::{
    load_npy_scores, load_npz, save_npz, save_npz_arrays, write_atomic, NpzArray, PredictionSet,
};
use conformal_gpu::Error;
use ndarray::{array, Array1, Array2};

mod common;
use common::{f32s, f64s, i32s, i64s, npy, npz};

// ----------------------------------------------------------------------------- helpers

fn logits_4x2() -> Vec<f32> {
    vec![0.0, 1.0, 2.0, -1.0, 0.5, 0.25, -3.0, 4.0]
}

/// A valid 4-row, 2-class member list to mutate in bad-input tests.
fn good_members() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "logits.npy",
            npy("<f4", false, "(4, 2)", &f32s(&logits_4x2())),
        ),
        (
            "labels.npy",
            npy("<i8", false, "(4,)", &i64s(&[1, 0, 0, 1])),
        ),
    ]
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn sample_set() -> PredictionSet {
    let logits =
        Array2::from_shape_vec((4, 3), (0..12).map(|v| v as f32 * 0.5 - 2.0).collect()).unwrap();
    let mut s = PredictionSet::new("x", logits).with_labels(array![0, 2, -1, 1]);
    s.hospital = Some(array![0, 0, 3, 4]);
    s.slide = Some(array![1, 2, 33, 45]);
    s
}

/// Asserts a `Format` error whose message names the file and contains every `needle`.
fn assert_format(r: Result<PredictionSet, Error>, path: &Path, needles: &[&str]) {
    match r {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "message does not name the file: {msg}"
            );
            for n in needles {
                assert!(msg.contains(n), "message lacks '{n}': {msg}");
            }
        }
        other => panic!("expected a Format error, got {other:?}"),
    }
}

fn no_temp_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp."))
}

// ----------------------------------------------------------------------------- round trips

#[test]
fn round_trip_stored_and_compressed() {
    let dir = tmp();
    let set = sample_set();
    for compressed in [false, true] {
        let path = dir.path().join(format!("set_{compressed}.npz"));
        save_npz(&path, &set, compressed).unwrap();
        let back = load_npz(&path).unwrap();
        assert_eq!(back.name, format!("set_{compressed}"));
        assert_eq!(back.logits, set.logits);
        assert_eq!(back.labels, set.labels);
        assert_eq!(back.hospital, set.hospital);
        assert_eq!(back.slide, set.slide);
        assert!(back.logits.is_standard_layout());
    }
    assert!(no_temp_files(dir.path()));
}

#[test]
fn optional_arrays_absent() {
    let dir = tmp();
    let path = dir.path().join("only_logits.npz");
    save_npz(&path, &PredictionSet::new("a", sample_set().logits), false).unwrap();
    let back = load_npz(&path).unwrap();
    assert_eq!(back.labels, None);
    assert_eq!(back.hospital, None);
    assert_eq!(back.slide, None);
    assert_eq!(back.n_labelled(), 0);
}

#[test]
fn writer_output_reads_in_ndarray_npy() {
    // An independent reader accepts what we write (so numpy does too).
    let dir = tmp();
    let path = dir.path().join("out.npz");
    let l = [1.5f32, -2.0, 3.0, 4.0, 5.0, 6.0];
    save_npz_arrays(
        &path,
        &[
            ("probs", NpzArray::F32x2(&l, 3, 2)),
            ("score", NpzArray::F32(&l[..3])),
            ("pred", NpzArray::I64(&[1, 0, 1])),
            ("idx", NpzArray::U32(&[7, 8, 9])),
            ("acc", NpzArray::F64(&[0.25])),
        ],
        true,
    )
    .unwrap();
    let mut r = ndarray_npy::NpzReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let probs: Array2<f32> = r.by_name("probs.npy").unwrap();
    assert_eq!(probs, Array2::from_shape_vec((3, 2), l.to_vec()).unwrap());
    let score: Array1<f32> = r.by_name("score.npy").unwrap();
    assert_eq!(score.to_vec(), &l[..3]);
    let pred: Array1<i64> = r.by_name("pred.npy").unwrap();
    assert_eq!(pred.to_vec(), vec![1, 0, 1]);
    let idx: Array1<u32> = r.by_name("idx.npy").unwrap();
    assert_eq!(idx.to_vec(), vec![7, 8, 9]);
    let acc: Array1<f64> = r.by_name("acc.npy").unwrap();
    assert_eq!(acc.to_vec(), vec![0.25]);
}

#[test]
fn reads_ndarray_npy_output() {
    let dir = tmp();
    let path = dir.path().join("theirs.npz");
    let logits = array![[0.1f32, 0.9], [2.0, -1.0], [0.0, 0.0]];
    let mut w = ndarray_npy::NpzWriter::new_compressed(std::fs::File::create(&path).unwrap());
    w.add_array("logits", &logits).unwrap();
    w.add_array("labels", &array![1i64, 0, -1]).unwrap();
    w.add_array("extra", &array![[1u8, 2], [3, 4]]).unwrap();
    w.finish().unwrap();
    let set = load_npz(&path).unwrap();
    assert_eq!(set.logits, logits);
    assert_eq!(set.labels, Some(array![1, 0, -1]));
}

#[test]
fn save_npz_arrays_shape_mismatch() {
    let dir = tmp();
    let path = dir.path().join("bad.npz");
    let r = save_npz_arrays(&path, &[("probs", NpzArray::F32x2(&[1.0; 5], 3, 2))], false);
    assert!(matches!(r, Err(Error::LengthMismatch { .. })), "{r:?}");
    assert!(!path.exists());
}

// ----------------------------------------------------------------------------- formats numpy writes

#[test]
fn float16_logits() {
    let dir = tmp();
    let path = dir.path().join("h.npz");
    let vals = [0.5f32, -1.25, 2.0, 65504.0, -0.0, 1e-3];
    let bytes: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    npz(
        &path,
        &[("logits.npy", npy("<f2", false, "(3, 2)", &bytes))],
        false,
    );
    let set = load_npz(&path).unwrap();
    let expect: Vec<f32> = vals
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(set.logits.as_slice().unwrap(), expect.as_slice());
}

#[test]
fn fortran_order_logits() {
    let dir = tmp();
    let path = dir.path().join("f.npz");
    // Logical [[1, 2, 3], [4, 5, 6]] stored column by column.
    let data = f32s(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    npz(
        &path,
        &[("logits.npy", npy("<f4", true, "(2, 3)", &data))],
        false,
    );
    let set = load_npz(&path).unwrap();
    assert_eq!(set.logits, array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    assert!(set.logits.is_standard_layout());
}

#[test]
fn float64_and_big_endian_logits() {
    let dir = tmp();
    let path = dir.path().join("d.npz");
    npz(
        &path,
        &[(
            "logits.npy",
            npy("<f8", false, "(1, 2)", &f64s(&[0.25, -7.5])),
        )],
        false,
    );
    assert_eq!(load_npz(&path).unwrap().logits, array![[0.25f32, -7.5]]);
    let be: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    npz(
        &path,
        &[("logits.npy", npy(">f4", false, "(1, 2)", &be))],
        false,
    );
    assert_eq!(load_npz(&path).unwrap().logits, array![[1.5f32, -2.0]]);
}

#[test]
fn int32_labels_and_groups() {
    let dir = tmp();
    let path = dir.path().join("i.npz");
    let mut m = good_members();
    m[1] = (
        "labels.npy",
        npy("<i4", false, "(4,)", &i32s(&[1, -1, 0, 1])),
    );
    m.push((
        "hospital.npy",
        npy("<i4", false, "(4,)", &i32s(&[2, 2, 2, 2])),
    ));
    m.push((
        "slide.npy",
        npy("<i8", false, "(4,)", &i64s(&[20, 21, 22, 23])),
    ));
    npz(&path, &m, false);
    let set = load_npz(&path).unwrap();
    assert_eq!(set.labels, Some(array![1, -1, 0, 1]));
    assert_eq!(set.hospital, Some(array![2, 2, 2, 2]));
    assert_eq!(set.slide, Some(array![20, 21, 22, 23]));
}

#[test]
fn single_binary_logit_column() {
    let dir = tmp();
    let path = dir.path().join("b.npz");
    npz(
        &path,
        &[(
            "logits.npy",
            npy("<f4", false, "(3,)", &f32s(&[1.0, -2.0, 0.0])),
        )],
        false,
    );
    let expect = array![[0.0f32, 1.0], [0.0, -2.0], [0.0, 0.0]];
    assert_eq!(load_npz(&path).unwrap().logits, expect);
    npz(
        &path,
        &[(
            "logits.npy",
            npy("<f8", false, "(3, 1)", &f64s(&[1.0, -2.0, 0.0])),
        )],
        false,
    );
    assert_eq!(load_npz(&path).unwrap().logits, expect);
}

#[test]
fn deflate_members_extra_arrays_and_bare_names() {
    let dir = tmp();
    let path = dir.path().join("c.npz");
    let mut m = good_members();
    m.push((
        "features.npy",
        npy("<f4", false, "(4, 3)", &f32s(&[0.0; 12])),
    ));
    m.push(("notes.npy", npy("|u1", false, "(2,)", &[1, 2])));
    npz(&path, &m, true);
    let set = load_npz(&path).unwrap();
    assert_eq!(set.logits.dim(), (4, 2));
    assert_eq!(set.labels, Some(array![1, 0, 0, 1]));
    // Members without the `.npy` suffix are found too.
    npz(&path, &[("logits", m[0].1.clone())], true);
    assert_eq!(load_npz(&path).unwrap().n(), 4);
}

// ----------------------------------------------------------------------------- bad input

#[test]
fn missing_file_is_io() {
    let dir = tmp();
    let path = dir.path().join("absent.npz");
    let r = load_npz(&path);
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    assert!(r.unwrap_err().to_string().contains("absent.npz"));
}

#[test]
fn not_a_zip() {
    let dir = tmp();
    let path = dir.path().join("text.npz");
    std::fs::write(&path, "this is not a zip file at all, just text\n").unwrap();
    assert_format(load_npz(&path), &path, &["zip"]);
    std::fs::write(&path, "").unwrap();
    assert_format(load_npz(&path), &path, &[]);
}

#[test]
fn truncated_zip() {
    let dir = tmp();
    let good = dir.path().join("good.npz");
    npz(&good, &good_members(), false);
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.path().join("cut.npz");
    for cut in [bytes.len() / 2, bytes.len() - 10, 30] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_format(load_npz(&path), &path, &[]);
    }
}

#[test]
fn corrupt_member_data() {
    let dir = tmp();
    let path = dir.path().join("corrupt.npz");
    for compressed in [false, true] {
        npz(&path, &good_members(), compressed);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip bytes inside the first member's data (after its local header + npy header).
        for b in &mut bytes[100..110] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = load_npz(&path);
        assert!(
            matches!(r, Err(Error::Format { .. })),
            "compressed={compressed}: {r:?}"
        );
        assert!(r.unwrap_err().to_string().contains("corrupt.npz"));
    }
}

#[test]
fn missing_logits() {
    let dir = tmp();
    let path = dir.path().join("nologits.npz");
    npz(&path, &[good_members()[1].clone()], false);
    assert_format(load_npz(&path), &path, &["logits"]);
}

#[test]
fn wrong_dtypes() {
    let dir = tmp();
    let path = dir.path().join("dtype.npz");
    let mut m = good_members();
    m[0] = ("logits.npy", npy("<i8", false, "(4, 2)", &i64s(&[0; 8])));
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'logits'", "<i8"]);

    let mut m = good_members();
    m[1] = ("labels.npy", npy("<f4", false, "(4,)", &f32s(&[0.0; 4])));
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'labels'", "<f4"]);

    let mut m = good_members();
    m.push(("slide.npy", npy("<f8", false, "(4,)", &f64s(&[0.0; 4]))));
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'slide'"]);

    // Structured dtype (numpy writes a list of fields as the descr).
    let mut bytes = npy("<f4", false, "(4,)", &f32s(&logits_4x2()));
    let dict = b"{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (4,), }";
    bytes.splice(10..10 + dict.len(), dict.iter().copied());
    npz(&path, &[("logits.npy", bytes)], false);
    assert_format(load_npz(&path), &path, &["'logits'", "structured"]);
}

#[test]
fn wrong_shapes() {
    let dir = tmp();
    let path = dir.path().join("shape.npz");
    let mut m = good_members();
    m[0] = (
        "logits.npy",
        npy("<f4", false, "(2, 2, 2)", &f32s(&logits_4x2())),
    );
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'logits'", "shape"]);

    let mut m = good_members();
    m[1] = ("labels.npy", npy("<i8", false, "(2, 2)", &i64s(&[0; 4])));
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'labels'", "shape"]);

    // K = 0 columns.
    npz(
        &path,
        &[("logits.npy", npy("<f4", false, "(4, 0)", &[]))],
        false,
    );
    let r = load_npz(&path);
    assert!(matches!(r, Err(Error::TooFewClasses { k: 0, .. })), "{r:?}");
}

#[test]
fn absurd_header_size_is_rejected_without_allocating() {
    let dir = tmp();
    let path = dir.path().join("huge.npz");
    for shape in [
        "(1000000000000, 2)",
        "(4611686018427387904, 4611686018427387904)",
    ] {
        let mut m = good_members();
        m[0] = ("logits.npy", npy("<f4", false, shape, &f32s(&logits_4x2())));
        npz(&path, &m, false);
        assert_format(load_npz(&path), &path, &["'logits'"]);
    }
    // Absurd header length field.
    let mut bytes = npy("<f4", false, "(4, 2)", &f32s(&logits_4x2()));
    bytes[6] = 2; // version 2: 4-byte header length
    bytes.splice(8..10, 0xFFFF_FFF0u32.to_le_bytes());
    npz(&path, &[("logits.npy", bytes)], false);
    assert_format(load_npz(&path), &path, &["'logits'"]);
}

#[test]
fn truncated_and_oversized_npy_data() {
    let dir = tmp();
    let path = dir.path().join("short.npz");
    // Header says 4x2, data holds 3x2.
    let mut m = good_members();
    m[0] = (
        "logits.npy",
        npy("<f4", false, "(4, 2)", &f32s(&logits_4x2()[..6])),
    );
    npz(&path, &m, false);
    assert_format(load_npz(&path), &path, &["'logits'"]);
    // Data longer than the header's shape.
    let mut m = good_members();
    m[0] = (
        "logits.npy",
        npy("<f4", false, "(3, 2)", &f32s(&logits_4x2())),
    );
    npz(&path, &m, true);
    assert_format(load_npz(&path), &path, &["'logits'"]);
    // A member too short to hold an npy header, and one with a bad magic.
    npz(&path, &[("logits.npy", b"\x93NUM".to_vec())], false);
    assert_format(load_npz(&path), &path, &["'logits'", "truncated"]);
    npz(
        &path,
        &[("logits.npy", b"PK not numpy at all".to_vec())],
        false,
    );
    assert_format(load_npz(&path), &path, &["'logits'", "magic"]);
}

#[test]
fn length_mismatch_names_file_and_array() {
    let dir = tmp();
    let path = dir.path().join("len.npz");
    let mut m = good_members();
    m[1] = ("labels.npy", npy("<i8", false, "(3,)", &i64s(&[0, 1, 0])));
    npz(&path, &m, false);
    match load_npz(&path) {
        Err(e @ Error::LengthMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("labels"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_logits_name_the_row() {
    let dir = tmp();
    let path = dir.path().join("nan.npz");
    let mut l = logits_4x2();
    l[5] = f32::NAN; // row 2, column 1
    l[7] = f32::INFINITY;
    let mut m = good_members();
    m[0] = ("logits.npy", npy("<f4", false, "(4, 2)", &f32s(&l)));
    npz(&path, &m, false);
    match load_npz(&path) {
        Err(e @ Error::NonFinite { row: 2, col: 1, .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains("logits"),
                "{msg}"
            );
            assert!(msg.contains("row 2"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn label_out_of_range() {
    let dir = tmp();
    let path = dir.path().join("lab.npz");
    let mut m = good_members();
    m[1] = (
        "labels.npy",
        npy("<i8", false, "(4,)", &i64s(&[0, 1, 2, 0])),
    );
    npz(&path, &m, false);
    match load_npz(&path) {
        Err(
            e @ Error::LabelOutOfRange {
                row: 2,
                label: 2,
                k: 2,
                ..
            },
        ) => {
            assert!(e.to_string().contains("lab.npz"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

// ----------------------------------------------------------------------------- npy scores

#[test]
fn npy_scores() {
    let dir = tmp();
    let path = dir.path().join("scores.npy");
    std::fs::write(&path, npy("<f4", false, "(3,)", &f32s(&[0.1, 0.2, 0.3]))).unwrap();
    assert_eq!(load_npy_scores(&path).unwrap(), vec![0.1, 0.2, 0.3]);
    std::fs::write(&path, npy("<f8", false, "(2,)", &f64s(&[0.5, 1.0]))).unwrap();
    assert_eq!(load_npy_scores(&path).unwrap(), vec![0.5, 1.0]);

    std::fs::write(
        &path,
        npy("<f4", false, "(3,)", &f32s(&[0.1, f32::NAN, 0.3])),
    )
    .unwrap();
    match load_npy_scores(&path) {
        Err(e @ Error::NonFinite { row: 1, .. }) => assert!(e.to_string().contains("scores.npy")),
        other => panic!("{other:?}"),
    }
    let bad = |bytes: Vec<u8>| {
        std::fs::write(&path, bytes).unwrap();
        match load_npy_scores(&path) {
            Err(e @ Error::Format { .. }) => assert!(e.to_string().contains("scores.npy"), "{e}"),
            other => panic!("{other:?}"),
        }
    };
    bad(npy("<f4", false, "(2, 2)", &f32s(&[0.0; 4])));
    bad(npy("<i8", false, "(2,)", &i64s(&[0; 2])));
    bad(npy("<f4", false, "(5,)", &f32s(&[0.0; 4])));
    bad(npy("<f4", false, "(100000000000,)", &f32s(&[0.0; 4])));
    bad(b"garbage".to_vec());
}

// ----------------------------------------------------------------------------- atomic writes

#[test]
fn atomic_write_leaves_nothing_on_error() {
    let dir = tmp();
    let path = dir.path().join("report.json");
    std::fs::write(&path, "old").unwrap();
    let r = write_atomic(&path, |w: &mut dyn Write| {
        w.write_all(b"partial").map_err(|e| Error::io("x", e))?;
        Err(Error::Invalid("boom".into()))
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
    assert!(no_temp_files(dir.path()));

    write_atomic(&path, |w: &mut dyn Write| {
        w.write_all(b"new").map_err(|e| Error::io("x", e))
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    assert!(no_temp_files(dir.path()));
}

#[test]
fn save_npz_refuses_invalid_sets_and_bad_dirs() {
    let dir = tmp();
    let path = dir.path().join("s.npz");
    let mut set = sample_set();
    set.logits[[1, 2]] = f32::NAN;
    assert!(matches!(
        save_npz(&path, &set, false),
        Err(Error::NonFinite { row: 1, col: 2, .. })
    ));
    assert!(!path.exists());
    let missing: PathBuf = dir.path().join("no_such_dir").join("s.npz");
    assert!(matches!(
        save_npz(&missing, &sample_set(), false),
        Err(Error::Io { .. })
    ));
    assert!(no_temp_files(dir.path()));
}

// ----------------------------------------------------------------------------- shared fixtures

const TINY4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny4");

#[test]
fn tiny4_fixtures() {
    let dir = Path::new(TINY4);
    let id_val = load_npz(&dir.join("id_val.npz")).unwrap();
    assert_eq!(id_val.name, "id_val");
    assert_eq!(id_val.logits.dim(), (2000, 4));
    assert_eq!(id_val.n_labelled(), 2000);
    let shifted = load_npz(&dir.join("shifted.npz")).unwrap();
    assert_eq!(shifted.logits.dim(), (3000, 4));
    assert_eq!(shifted.n_labelled(), 3000);
    let unl = load_npz(&dir.join("unlabeled.npz")).unwrap();
    assert_eq!(unl.logits.dim().1, 4);
    assert!(unl
        .labels
        .as_ref()
        .is_none_or(|l| l.iter().all(|&y| y == -1)));
    assert_eq!(unl.n_labelled(), 0);
    for set in [&id_val, &shifted, &unl] {
        if let Some(s) = &set.slide {
            assert!(s.iter().all(|&v| (0..5).contains(&v)), "{}", set.name);
        }
        // Quantised to multiples of 0.125 (README).
        assert!(set.logits.iter().all(|&v| (v * 8.0).fract() == 0.0));
    }
}
