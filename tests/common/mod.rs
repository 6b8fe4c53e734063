//! Shared test helpers: the GPU context (skip or fail per CONFORMAL_GPU_REQUIRED),
//! seeded data, tolerance checks that print the failing indices.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[cfg(feature = "gpu")]
use conformal_gpu::gpu::{GpuContext, GpuOptions};

/// A software-or-hardware GPU context, or `None` (with a skip notice) when no adapter
/// exists. With `CONFORMAL_GPU_REQUIRED=1` (set by CI) a missing adapter panics instead.
#[cfg(feature = "gpu")]
pub fn gpu_with(opts: GpuOptions) -> Option<GpuContext> {
    match GpuContext::new(GpuOptions {
        allow_software: true,
        ..opts
    }) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("CONFORMAL_GPU_REQUIRED").is_ok_and(|v| v == "1") {
                panic!("CONFORMAL_GPU_REQUIRED=1 but no GPU adapter: {e}");
            }
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

/// A GPU context with default options (see [`gpu_with`]).
#[cfg(feature = "gpu")]
pub fn gpu() -> Option<GpuContext> {
    gpu_with(GpuOptions::default())
}

/// A process-wide shared GPU context: building one per test is slow on lavapipe.
#[cfg(feature = "gpu")]
pub fn shared_gpu() -> Option<&'static GpuContext> {
    static CTX: std::sync::OnceLock<Option<GpuContext>> = std::sync::OnceLock::new();
    CTX.get_or_init(gpu).as_ref()
}

/// Seeded RNG.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n * k` logits uniform in `[-scale, scale]`.
pub fn random_logits(seed: u64, n: usize, k: usize, scale: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n * k).map(|_| r.random_range(-scale..=scale)).collect()
}

/// Asserts `|a_i - b_i| <= tol(i)`; on failure prints the first few offending indices.
#[track_caller]
pub fn assert_close_by(what: &str, a: &[f32], b: &[f32], tol: impl Fn(usize, f32, f32) -> f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let bad: Vec<usize> = (0..a.len())
        // NaN differences count as failures.
        .filter(|&i| {
            let d = (a[i] as f64 - b[i] as f64).abs();
            d.is_nan() || d > tol(i, a[i], b[i])
        })
        .collect();
    if !bad.is_empty() {
        let show: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "[{i}] {:e} vs {:e} (diff {:e}, tol {:e})",
                    a[i],
                    b[i],
                    (a[i] - b[i]).abs(),
                    tol(i, a[i], b[i])
                )
            })
            .collect();
        panic!(
            "{what}: {} of {} differ:\n  {}",
            bad.len(),
            a.len(),
            show.join("\n  ")
        );
    }
}

/// Asserts bit-for-bit equality, printing the first offending indices.
#[track_caller]
pub fn assert_bits_eq<T: PartialEq + std::fmt::Debug + Copy>(
    what: &str,
    a: &[T],
    b: &[T],
    eq: impl Fn(T, T) -> bool,
) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let bad: Vec<usize> = (0..a.len()).filter(|&i| !eq(a[i], b[i])).collect();
    if !bad.is_empty() {
        let show: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| format!("[{i}] {:?} vs {:?}", a[i], b[i]))
            .collect();
        panic!(
            "{what}: {} of {} differ:\n  {}",
            bad.len(),
            a.len(),
            show.join("\n  ")
        );
    }
}

/// Unit in the last place of `x` (f32).
pub fn ulp(x: f32) -> f64 {
    let x = x.abs();
    if x == 0.0 || !x.is_finite() {
        return f32::from_bits(1) as f64;
    }
    let next = f32::from_bits(x.to_bits() + 1);
    (next - x) as f64
}

/// Path of a tiny4 fixture file (`shared/` sits beside the crate root).
pub fn tiny4(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny4")
        .join(name)
}

/// An `.npy` member: format 1.0 header padded like numpy's, then `data`.
pub fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let f = if fortran { "True" } else { "False" };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
    let pad = (64 - (10 + dict.len() + 1) % 64) % 64;
    let hlen = (dict.len() + pad + 1) as u16;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// Little-endian bytes of f32 values.
pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of f64 values.
pub fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of i64 values.
pub fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of i32 values.
pub fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A zip with the given members (names as given, so tests can omit `.npy`).
pub fn npz(path: &std::path::Path, members: &[(&str, Vec<u8>)], compressed: bool) {
    use std::io::Write;
    let file = std::fs::File::create(path).unwrap();
    let mut zw = zip::ZipWriter::new(file);
    let method = if compressed {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    for (name, bytes) in members {
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        zw.start_file(*name, opts).unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.finish().unwrap();
}

/// Rows `idx` of `set` as a set of their own (named `name`): a target's shard.
pub fn pick(
    set: &conformal_gpu::data::PredictionSet,
    idx: &[usize],
    name: &str,
) -> conformal_gpu::data::PredictionSet {
    let sel = |a: &Option<ndarray::Array1<i64>>| {
        a.as_ref()
            .map(|a| ndarray::Array1::from_iter(idx.iter().map(|&i| a[i])))
    };
    let mut out =
        conformal_gpu::data::PredictionSet::new(name, set.logits.select(ndarray::Axis(0), idx));
    out.labels = sel(&set.labels);
    out.hospital = sel(&set.hospital);
    out.slide = sel(&set.slide);
    out
}
