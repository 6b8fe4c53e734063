//! The streaming chunk reader (`data::stream::NpzRowReader`): chunks of any size and any
//! `restrict` range concatenate to exactly what `load_npz` reads (bit for bit), for every
//! layout numpy writes (stored and deflated, float16/64, big-endian, int32, Fortran order,
//! binary `[N]` logits); `finish` is the file's SHA-256; errors name absolute rows; bad
//! and hostile files give typed errors, never a panic.

use std::ops::Range;
use std::path::{Path, PathBuf};

use conformal_gpu::data::{load_npz, save_npz, NpzRowReader, PredictionSet, RowChunk};
use conformal_gpu::Error;
use ndarray::{Array1, Array2};
use rand::Rng;
use sha2::{Digest, Sha256};

mod common;
use common::{f32s, f64s, i32s, i64s, npy, npz, random_logits, rng};

// ----------------------------------------------------------------------------- helpers

/// An npz's members, as `common::npz` takes them.
type Members = Vec<(&'static str, Vec<u8>)>;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A seeded set: logits in [-8, 8], labels in -1..K (about 1 in K unknown), group ids.
fn random_set(seed: u64, n: usize, k: usize) -> PredictionSet {
    let logits = Array2::from_shape_vec((n, k), random_logits(seed, n, k, 8.0)).unwrap();
    let mut r = rng(seed ^ 0x5eed);
    let labels: Array1<i64> = (0..n).map(|_| r.random_range(-1..k as i64)).collect();
    let mut set = PredictionSet::new("s", logits).with_labels(labels);
    set.hospital = Some((0..n).map(|_| r.random_range(0..5)).collect());
    set.slide = Some((0..n).map(|_| r.random_range(0..50)).collect());
    set
}

/// Reads rows `range` (all when `None`) in chunks of `chunk`, concatenated, and the
/// SHA-256 from `finish`. Checks each chunk's offset, size and shape on the way.
fn read_all(
    path: &Path,
    chunk: usize,
    range: Option<Range<usize>>,
) -> Result<(RowChunk, String), Error> {
    let mut r = NpzRowReader::open(path)?;
    let range = range.unwrap_or(0..r.n());
    r.restrict(range.clone())?;
    let mut all = RowChunk {
        row_offset: range.start,
        k: r.k(),
        labels: r.has_labels().then(Vec::new),
        hospital: r.has_hospital().then(Vec::new),
        slide: r.has_slide().then(Vec::new),
        ..RowChunk::default()
    };
    let mut c = RowChunk::default();
    let mut next = range.start;
    while r.next_chunk(chunk, &mut c)? {
        let rows = c.rows();
        assert_eq!(c.row_offset, next, "chunks are consecutive");
        assert!(rows >= 1 && rows <= chunk, "{rows} rows for chunk {chunk}");
        assert_eq!(c.k, r.k());
        assert_eq!(c.logits.len(), rows * c.k);
        for (dst, src) in [(&mut all.hospital, &c.hospital), (&mut all.slide, &c.slide)] {
            assert_eq!(dst.is_some(), src.is_some());
            if let (Some(d), Some(s)) = (dst, src) {
                assert_eq!(s.len(), rows);
                d.extend_from_slice(s);
            }
        }
        assert_eq!(all.labels.is_some(), c.labels.is_some());
        if let (Some(d), Some(s)) = (&mut all.labels, &c.labels) {
            assert_eq!(s.len(), rows);
            d.extend_from_slice(s);
        }
        all.logits.extend_from_slice(&c.logits);
        next += rows;
    }
    assert_eq!(next, range.end, "every row of the range was read");
    // The end stays the end.
    assert!(!r.next_chunk(chunk, &mut c)?);
    let sha = r.finish()?;
    Ok((all, sha))
}

/// What `load_npz` reads for rows `range`, in the chunk's form.
fn expected(path: &Path, range: Range<usize>) -> RowChunk {
    let set = load_npz(path).unwrap();
    let k = set.k();
    let ids = |a: &Option<Array1<i64>>| {
        a.as_ref()
            .map(|a| a.as_slice().unwrap()[range.clone()].to_vec())
    };
    RowChunk {
        row_offset: range.start,
        k,
        logits: set.logits.as_slice().unwrap()[range.start * k..range.end * k].to_vec(),
        labels: ids(&set.labels).map(|l| l.iter().map(|&y| y as i32).collect()),
        hospital: ids(&set.hospital),
        slide: ids(&set.slide),
    }
}

/// Bit-for-bit equality (`==` on f32 would let -0.0 == 0.0 pass).
#[track_caller]
fn assert_same(got: &RowChunk, want: &RowChunk, what: &str) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(got.row_offset, want.row_offset, "{what}: row_offset");
    assert_eq!(got.k, want.k, "{what}: k");
    assert!(
        bits(&got.logits) == bits(&want.logits),
        "{what}: logits differ"
    );
    assert_eq!(got.labels, want.labels, "{what}: labels");
    assert_eq!(got.hospital, want.hospital, "{what}: hospital");
    assert_eq!(got.slide, want.slide, "{what}: slide");
}

/// Chunk sizes 1, 7, n-1, n, n+1 (1: every row its own chunk; 7: ragged chunks that
/// straddle everything; n-1: a last chunk of one row; n: one chunk; n+1: asking past
/// the end) and ranges 0..0 (empty), 0..1 (first row), a middle third and the second
/// half to the end, all against `load_npz`; `finish` is the file's SHA-256 each time.
fn check_file(path: &Path) {
    let n = load_npz(path).unwrap().n();
    let sha = sha256_hex(path);
    let what = path.display().to_string();
    for chunk in [1, 7, n.saturating_sub(1).max(1), n.max(1), n + 1] {
        let (got, h) = read_all(path, chunk, None).unwrap();
        assert_same(
            &got,
            &expected(path, 0..n),
            &format!("{what} chunk {chunk}"),
        );
        assert_eq!(h, sha, "{what}: finish() is the file's SHA-256");
    }
    for range in [0..0, 0..n.min(1), n / 3..2 * n / 3, n / 2..n] {
        for chunk in [7, n.max(1)] {
            let (got, h) = read_all(path, chunk, Some(range.clone())).unwrap();
            assert_same(
                &got,
                &expected(path, range.clone()),
                &format!("{what} range {range:?} chunk {chunk}"),
            );
            assert_eq!(
                h, sha,
                "{what}: a restricted read still hashes the whole file"
            );
        }
    }
}

fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Column-major copy of a row-major `[n, k]`.
fn to_fortran<T: Copy>(v: &[T], n: usize, k: usize) -> Vec<T> {
    (0..k)
        .flat_map(|j| (0..n).map(move |i| v[i * k + j]))
        .collect()
}

// ----------------------------------------------------------------------------- equality with load_npz

#[test]
fn crate_written_sets_stored_and_deflated() {
    let dir = tmp();
    // 301 rows x 3 classes: small enough that chunk size 1 is quick, odd so chunks of 7
    // leave a ragged last chunk.
    let set = random_set(1, 301, 3);
    for compressed in [false, true] {
        let path = dir.path().join(format!("set_{compressed}.npz"));
        save_npz(&path, &set, compressed).unwrap();
        check_file(&path);
    }
}

#[test]
fn large_sets_cross_the_staging_buffer() {
    let dir = tmp();
    // 70,001 rows x 2: one chunk of all rows is 140,002 values, more than the reader's
    // 64 Ki-value read pieces, and a deflated restrict to the second half skips more than
    // its 512 KiB discard buffer; float16 goes through the converting path.
    let (n, k) = (70_001, 2);
    let set = random_set(2, n, k);
    let logits = set.logits.as_slice().unwrap();
    let labels = set.labels.as_ref().unwrap().to_vec();
    for compressed in [false, true] {
        let path = dir.path().join(format!("big_{compressed}.npz"));
        save_npz(&path, &set, compressed).unwrap();
        let (got, h) = read_all(&path, n, None).unwrap();
        assert_same(&got, &expected(&path, 0..n), "f32 whole");
        assert_eq!(h, sha256_hex(&path));
        let (got, _) = read_all(&path, 4096, Some(n / 2..n)).unwrap();
        assert_same(&got, &expected(&path, n / 2..n), "f32 second half");

        let path = dir.path().join(format!("big16_{compressed}.npz"));
        let shape = format!("({n}, {k})");
        npz(
            &path,
            &[
                ("logits.npy", npy("<f2", false, &shape, &f16s(logits))),
                (
                    "labels.npy",
                    npy("<i8", false, &format!("({n},)"), &i64s(&labels)),
                ),
            ],
            compressed,
        );
        let (got, _) = read_all(&path, n + 1, None).unwrap();
        assert_same(&got, &expected(&path, 0..n), "f16 whole");
        let (got, _) = read_all(&path, 1000, Some(n - 3..n)).unwrap();
        assert_same(&got, &expected(&path, n - 3..n), "f16 last rows");
    }
}

#[test]
fn every_numpy_layout() {
    let dir = tmp();
    // 53 rows x 4 classes: a prime row count so no chunk size divides it evenly.
    let (n, k) = (53, 4);
    let set = random_set(3, n, k);
    let logits = set.logits.as_slice().unwrap().to_vec();
    let labels = set.labels.as_ref().unwrap().to_vec();
    let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    let hosp = set.hospital.as_ref().unwrap().to_vec();
    let hosp32: Vec<i32> = hosp.iter().map(|&h| h as i32).collect();
    let slide = set.slide.as_ref().unwrap().to_vec();
    let logits64: Vec<f64> = logits.iter().map(|&v| v as f64 * 1.000_000_1).collect();
    let be: Vec<u8> = logits.iter().flat_map(|v| v.to_be_bytes()).collect();
    let shape = format!("({n}, {k})");
    let shape1 = format!("({n},)");
    let z = &logits[..n];
    let cases: Vec<(&str, Members)> = vec![
        (
            "f16_i32",
            vec![
                ("logits.npy", npy("<f2", false, &shape, &f16s(&logits))),
                ("labels.npy", npy("<i4", false, &shape1, &i32s(&labels32))),
                ("hospital.npy", npy("<i4", false, &shape1, &i32s(&hosp32))),
            ],
        ),
        (
            "f64",
            vec![
                ("logits.npy", npy("<f8", false, &shape, &f64s(&logits64))),
                ("slide.npy", npy("<i8", false, &shape1, &i64s(&slide))),
            ],
        ),
        (
            "big_endian",
            vec![
                ("logits.npy", npy(">f4", false, &shape, &be)),
                ("labels.npy", npy("<i8", false, &shape1, &i64s(&labels))),
            ],
        ),
        (
            "fortran_f32",
            vec![
                (
                    "logits.npy",
                    npy("<f4", true, &shape, &f32s(&to_fortran(&logits, n, k))),
                ),
                // 1-D Fortran order is the same bytes as C order.
                ("labels.npy", npy("<i8", true, &shape1, &i64s(&labels))),
                ("slide.npy", npy("<i8", false, &shape1, &i64s(&slide))),
            ],
        ),
        (
            "fortran_f16",
            vec![(
                "logits.npy",
                npy("<f2", true, &shape, &f16s(&to_fortran(&logits, n, k))),
            )],
        ),
        (
            "binary_n",
            vec![
                ("logits.npy", npy("<f4", false, &shape1, &f32s(z))),
                ("labels.npy", npy("<i8", false, &shape1, &i64s(&vec![1; n]))),
            ],
        ),
        (
            // [N, 1] in Fortran order: one column, so it still streams.
            "binary_n1_fortran",
            vec![(
                "logits.npy",
                npy("<f8", true, &format!("({n}, 1)"), &f64s(&logits64[..n])),
            )],
        ),
        (
            // Bare member names, an extra array before and after, members out of order.
            "bare_extra",
            vec![
                ("extra.npy", npy("<f4", false, "(2,)", &f32s(&[1.0, 2.0]))),
                ("labels", npy("<i8", false, &shape1, &i64s(&labels))),
                ("logits", npy("<f4", false, &shape, &f32s(&logits))),
                ("notes.npy", npy("<i8", false, "(3,)", &i64s(&[1, 2, 3]))),
            ],
        ),
    ];
    for (name, members) in &cases {
        for compressed in [false, true] {
            let path = dir.path().join(format!("{name}_{compressed}.npz"));
            npz(&path, members, compressed);
            check_file(&path);
        }
    }
    // Fortran logits are really transposed (not just equal to a wrong load_npz).
    let path = dir.path().join("fortran_f32_true.npz");
    let (got, _) = read_all(&path, 5, None).unwrap();
    assert_eq!(got.logits, logits);
}

#[test]
fn accessors_and_empty_sets() {
    let dir = tmp();
    let path = dir.path().join("my set.npz");
    save_npz(&path, &random_set(4, 10, 3), false).unwrap();
    let r = NpzRowReader::open(&path).unwrap();
    assert_eq!(r.name(), "my set");
    assert_eq!(r.path(), path.as_path());
    assert_eq!((r.n(), r.k()), (10, 3));
    assert!(r.has_labels() && r.has_hospital() && r.has_slide());
    // Readers move to worker threads.
    fn send<T: Send>(_: &T) {}
    send(&r);
    // Dropped before the end: the hashing thread stops, nothing hangs.
    drop(r);

    // A set with zero rows reads as no chunks and still hashes.
    let path = dir.path().join("empty.npz");
    npz(
        &path,
        &[("logits.npy", npy("<f4", false, "(0, 3)", &[]))],
        true,
    );
    let mut r = NpzRowReader::open(&path).unwrap();
    assert_eq!((r.n(), r.k()), (0, 3));
    assert!(!r.has_labels() && !r.has_hospital() && !r.has_slide());
    let mut c = RowChunk::default();
    assert!(!r.next_chunk(10, &mut c).unwrap());
    assert_eq!(r.finish().unwrap(), sha256_hex(&path));
}

#[test]
fn chunk_buffers_are_reused() {
    let dir = tmp();
    let path = dir.path().join("reuse.npz");
    // 1,000 rows in chunks of 100: ten equal chunks, so after the first every buffer
    // already has the capacity it needs.
    save_npz(&path, &random_set(5, 1000, 3), true).unwrap();
    let mut r = NpzRowReader::open(&path).unwrap();
    let mut c = RowChunk::default();
    assert!(r.next_chunk(100, &mut c).unwrap());
    let ptrs = |c: &RowChunk| {
        (
            c.logits.as_ptr(),
            c.labels.as_ref().unwrap().as_ptr(),
            c.hospital.as_ref().unwrap().as_ptr(),
            c.slide.as_ref().unwrap().as_ptr(),
        )
    };
    let first = ptrs(&c);
    while r.next_chunk(100, &mut c).unwrap() {
        assert_eq!(ptrs(&c), first, "chunk at row {} reallocated", c.row_offset);
    }
    r.finish().unwrap();
}

// ----------------------------------------------------------------------------- errors

/// Writes `set` with `logits[row, col] = value` (or `labels[row] = label`), stored and deflated.
fn poisoned(dir: &Path, n: usize, edit: impl Fn(&mut PredictionSet)) -> Vec<PathBuf> {
    // Written by hand (save_npz validates and would refuse the bad value).
    let mut set = random_set(6, n, 3);
    edit(&mut set);
    [false, true]
        .into_iter()
        .map(|compressed| {
            let path = dir.join(format!("bad_{compressed}.npz"));
            let shape1 = format!("({n},)");
            npz(
                &path,
                &[
                    (
                        "logits.npy",
                        npy(
                            "<f4",
                            false,
                            &format!("({n}, 3)"),
                            &f32s(set.logits.as_slice().unwrap()),
                        ),
                    ),
                    (
                        "labels.npy",
                        npy(
                            "<i8",
                            false,
                            &shape1,
                            &i64s(set.labels.as_ref().unwrap().as_slice().unwrap()),
                        ),
                    ),
                ],
                compressed,
            );
            path
        })
        .collect()
}

#[test]
fn non_finite_logits_name_the_absolute_row() {
    let dir = tmp();
    // 2,000 rows read in chunks of 64: row 1000 is row 40 of the 16th chunk, so a
    // chunk-relative row would be wrong.
    for (value, col) in [(f32::NAN, 2), (f32::INFINITY, 0)] {
        for path in poisoned(dir.path(), 2000, |s| s.logits[[1000, col]] = value) {
            for (chunk, range) in [(64, None), (64, Some(900..2000)), (1, Some(999..1001))] {
                match read_all(&path, chunk, range.clone()) {
                    Err(Error::NonFinite {
                        what, row, col: c, ..
                    }) => {
                        assert_eq!((row, c), (1000, col), "{range:?}");
                        assert!(
                            what.contains(&path.display().to_string()) && what.contains("logits"),
                            "{what}"
                        );
                    }
                    other => panic!("{range:?}: {other:?}"),
                }
            }
            // Rows before the bad one read fine.
            read_all(&path, 64, Some(0..1000)).unwrap();
        }
    }
    // A binary logit z is column 1 of its row (0, z).
    let path = dir.path().join("bin.npz");
    let mut z = vec![0.5f32; 300];
    z[257] = f32::NAN;
    npz(
        &path,
        &[("logits.npy", npy("<f4", false, "(300,)", &f32s(&z)))],
        true,
    );
    match read_all(&path, 64, None) {
        Err(Error::NonFinite {
            row: 257, col: 1, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn labels_out_of_range_name_the_absolute_row() {
    let dir = tmp();
    for label in [3, -2, i64::MAX] {
        for path in poisoned(dir.path(), 2000, |s| {
            s.labels.as_mut().unwrap()[1000] = label
        }) {
            match read_all(&path, 64, None) {
                Err(Error::LabelOutOfRange {
                    what,
                    row: 1000,
                    label: l,
                    k: 3,
                }) => {
                    assert_eq!(l, label);
                    assert!(what.contains("bad_") && what.contains("labels"), "{what}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn restrict_outside_the_rows_is_invalid() {
    let dir = tmp();
    let path = dir.path().join("r.npz");
    save_npz(&path, &random_set(7, 10, 2), false).unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    for range in [0..11, 11..11, 5..3, 10..usize::MAX] {
        let mut r = NpzRowReader::open(&path).unwrap();
        match r.restrict(range.clone()) {
            Err(Error::Invalid(msg)) => {
                let s = format!("{}..{}", range.start, range.end);
                assert!(msg.contains(&s) && msg.contains("0..10"), "{msg}");
            }
            other => panic!("{range:?}: {other:?}"),
        }
    }
    // 10..10 is an empty range at the end: valid.
    let (got, _) = read_all(&path, 3, Some(10..10)).unwrap();
    assert_eq!(got.rows(), 0);

    // Too late once reading started; finish before the end; zero-row chunks.
    let mut r = NpzRowReader::open(&path).unwrap();
    let mut c = RowChunk::default();
    assert!(matches!(r.next_chunk(0, &mut c), Err(Error::Invalid(_))));
    assert!(r.next_chunk(4, &mut c).unwrap());
    assert!(matches!(r.restrict(0..5), Err(Error::Invalid(_))));
    assert!(matches!(r.finish(), Err(Error::Invalid(_))));
}

#[track_caller]
fn assert_format<T: std::fmt::Debug>(r: Result<T, Error>, path: &Path, needles: &[&str]) {
    match r {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "message lacks '{n}': {msg}");
            }
        }
        other => panic!("expected a Format error, got {other:?}"),
    }
}

#[test]
fn bad_members_are_format_errors_at_open() {
    let dir = tmp();
    let path = dir.path().join("m.npz");
    let logits = npy("<f4", false, "(4, 2)", &f32s(&[0.0; 8]));
    let cases: Vec<(Members, &[&str])> = vec![
        (
            vec![("labels.npy", npy("<i8", false, "(4,)", &i64s(&[0; 4])))],
            &["no array named 'logits'"],
        ),
        (
            vec![("logits.npy", npy("<i8", false, "(4, 2)", &i64s(&[0; 8])))],
            &["'logits'", "<i8"],
        ),
        (
            vec![
                ("logits.npy", logits.clone()),
                ("labels.npy", npy("<f4", false, "(4,)", &f32s(&[0.0; 4]))),
            ],
            &["'labels'", "<f4"],
        ),
        (
            vec![
                ("logits.npy", logits.clone()),
                ("slide.npy", npy("<i8", false, "(2, 2)", &i64s(&[0; 4]))),
            ],
            &["'slide'", "1-D"],
        ),
        (
            vec![(
                "logits.npy",
                npy("<f4", false, "(2, 2, 2)", &f32s(&[0.0; 8])),
            )],
            &["'logits'", "shape"],
        ),
        // Header claims fewer values than stored, and more.
        (
            vec![("logits.npy", npy("<f4", false, "(3, 2)", &f32s(&[0.0; 8])))],
            &["more data stored"],
        ),
        (
            vec![("logits.npy", npy("<f4", false, "(5, 2)", &f32s(&[0.0; 8])))],
            &["header claims"],
        ),
        // A header claiming a terabyte in a tiny file: refused before any allocation.
        (
            vec![(
                "logits.npy",
                npy("<f4", false, "(1099511627776, 2)", &f32s(&[0.0; 8])),
            )],
            &["header claims"],
        ),
        (vec![("logits.npy", b"not an npy".to_vec())], &["'logits'"]),
    ];
    for (members, needles) in &cases {
        for compressed in [false, true] {
            npz(&path, members, compressed);
            assert_format(NpzRowReader::open(&path), &path, needles);
        }
    }
    npz(
        &path,
        &[
            ("logits.npy", logits),
            ("hospital.npy", npy("<i8", false, "(3,)", &i64s(&[0; 3]))),
        ],
        false,
    );
    match NpzRowReader::open(&path) {
        Err(Error::LengthMismatch { what, .. }) => assert!(what.contains("hospital"), "{what}"),
        other => panic!("{other:?}"),
    }
    npz(
        &path,
        &[("logits.npy", npy("<f4", false, "(4, 0)", &[]))],
        false,
    );
    assert!(matches!(
        NpzRowReader::open(&path),
        Err(Error::TooFewClasses { k: 0, .. })
    ));
}

#[test]
fn corrupt_data_fails_its_crc() {
    let dir = tmp();
    let path = dir.path().join("crc.npz");
    let set = random_set(8, 500, 2);
    save_npz(&path, &set, false).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // The low mantissa byte of logits[200, 1]: the value stays finite, so only the
    // CRC-32 can tell.
    let v = set.logits[[200, 1]].to_le_bytes();
    let at = bytes.windows(4).position(|w| w == v).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_format(read_all(&path, 64, None), &path, &["'logits'", "CRC"]);
    // A range that ends before the last row does not reach the check.
    read_all(&path, 64, Some(0..499)).unwrap();

    // A deflated member that inflates cleanly but whose CRC-32 in the zip directory is
    // wrong (the first central-directory entry is logits.npy; its CRC is at offset 16).
    save_npz(&path, &set, true).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 16] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_format(read_all(&path, 64, None), &path, &["'logits'", "CRC"]);
}

#[test]
fn truncated_and_corrupt_files_never_panic() {
    let dir = tmp();
    // 40 rows x 2: a file of about 1.5 KB, so every truncation and every byte flip is
    // tried (a few thousand opens).
    let set = random_set(9, 40, 2);
    for compressed in [false, true] {
        let good = dir.path().join(format!("good_{compressed}.npz"));
        save_npz(&good, &set, compressed).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let path = dir.path().join("bad.npz");
        // Truncated anywhere: the zip directory at the end is gone or wrong.
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(
                matches!(read_all(&path, 7, None), Err(Error::Format { .. })),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
        // One byte flipped anywhere: a typed error or, where the byte does not matter
        // (timestamps, ignored fields), the same rows as load_npz when it reads the file.
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0xa5;
            std::fs::write(&path, &b).unwrap();
            match (read_all(&path, 7, None), load_npz(&path)) {
                (Ok((got, h)), Ok(set)) => {
                    assert_same(&got, &expected(&path, 0..set.n()), &format!("flip at {at}"));
                    assert_eq!(h, sha256_hex(&path));
                }
                (Ok(_), Err(_)) | (Err(_), _) => {}
            }
        }
    }
}
