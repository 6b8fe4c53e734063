//! `.npz` reading and writing of whole prediction sets (DESIGN.md sections 1 and 6), on
//! top of the `.npy` layer (`npy.rs`). There is one reader: a whole set (from a file or
//! from bytes in memory) is every chunk of the streaming reader
//! [`super::stream::NpzRowReader`], so a file is checked the same way whether it is
//! loaded whole (a source) or streamed (a target).
//!
//! Writers go through [`write_atomic`]: a temporary file in the destination directory,
//! renamed into place only when everything was written, removed on error.

use std::io::{BufWriter, Write};
use std::path::Path;

use ndarray::{Array1, Array2};

pub use super::atomic::write_atomic;
use super::atomic::write_atomic_file;
pub use super::npy::{load_npy_scores, load_npy_scores_f64};
use super::npy::{npy_header, CHUNK_ELEMS};
use super::PredictionSet;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// One named array for [`save_npz_arrays`]: the per-row outputs the crate writes.
#[derive(Debug, Clone, Copy)]
pub enum NpzArray<'a> {
    /// float32, 1-D.
    F32(&'a [f32]),
    /// float32, 2-D row-major with the given `(rows, cols)`; `data.len()` must be `rows * cols`.
    F32x2(&'a [f32], usize, usize),
    /// int64, 2-D row-major with the given `(rows, cols)`.
    I64x2(&'a [i64], usize, usize),
    /// float64, 1-D.
    F64(&'a [f64]),
    /// int64, 1-D.
    I64(&'a [i64]),
    /// uint32, 1-D.
    U32(&'a [u32]),
}

impl NpzArray<'_> {
    fn descr(&self) -> &'static str {
        match self {
            NpzArray::F32(_) | NpzArray::F32x2(..) => "<f4",
            NpzArray::F64(_) => "<f8",
            NpzArray::I64(_) | NpzArray::I64x2(..) => "<i8",
            NpzArray::U32(_) => "<u4",
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            NpzArray::F32(d) => vec![d.len()],
            NpzArray::F32x2(_, r, c) => vec![*r, *c],
            NpzArray::F64(d) => vec![d.len()],
            NpzArray::I64(d) => vec![d.len()],
            NpzArray::I64x2(_, r, c) => vec![*r, *c],
            NpzArray::U32(d) => vec![d.len()],
        }
    }

    fn data_bytes(&self) -> u64 {
        let n = match self {
            NpzArray::F32(d) => d.len() * 4,
            NpzArray::F32x2(d, ..) => d.len() * 4,
            NpzArray::F64(d) => d.len() * 8,
            NpzArray::I64(d) | NpzArray::I64x2(d, ..) => d.len() * 8,
            NpzArray::U32(d) => d.len() * 4,
        };
        n as u64
    }

    /// Writes the little-endian data in chunks (no full-size byte copy).
    fn write_data(&self, w: &mut dyn Write) -> std::io::Result<()> {
        fn chunked<T: Copy, const B: usize>(
            w: &mut dyn Write,
            data: &[T],
            to_le: impl Fn(T) -> [u8; B],
        ) -> std::io::Result<()> {
            let mut buf = Vec::with_capacity(CHUNK_ELEMS.min(data.len()) * B);
            for chunk in data.chunks(CHUNK_ELEMS) {
                buf.clear();
                for &v in chunk {
                    buf.extend_from_slice(&to_le(v));
                }
                w.write_all(&buf)?;
            }
            Ok(())
        }
        match self {
            NpzArray::F32(d) | NpzArray::F32x2(d, ..) => chunked(w, d, f32::to_le_bytes),
            NpzArray::F64(d) => chunked(w, d, f64::to_le_bytes),
            NpzArray::I64(d) | NpzArray::I64x2(d, ..) => chunked(w, d, i64::to_le_bytes),
            NpzArray::U32(d) => chunked(w, d, u32::to_le_bytes),
        }
    }
}

fn zip_err(path: &Path, what: &str, e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(io) => Error::io(path, io),
        other => Error::format(path.display(), format!("{what}: {other}")),
    }
}

/// Writes `arrays` as one `.npz` (each as `<name>.npy`), atomically. Arrays are written
/// little-endian, C order; `compressed` selects deflate (`numpy.savez_compressed`).
pub fn save_npz_arrays(
    path: &Path,
    arrays: &[(&str, NpzArray<'_>)],
    compressed: bool,
) -> Result<()> {
    for (name, arr) in arrays {
        let shape_len = match arr {
            NpzArray::F32x2(d, r, c) => Some((d.len(), r, c)),
            NpzArray::I64x2(d, r, c) => Some((d.len(), r, c)),
            _ => None,
        };
        if let Some((len, r, c)) = shape_len {
            if r.checked_mul(*c) != Some(len) {
                return Err(Error::LengthMismatch {
                    what: format!("{}: {name}", path.display()),
                    detail: format!("{len} values for shape ({r}, {c})"),
                });
            }
        }
    }
    write_atomic_file(path, |file| {
        let mut zw = zip::ZipWriter::new(BufWriter::new(file));
        let method = if compressed {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        for (name, arr) in arrays {
            let header = npy_header(arr.descr(), &arr.shape());
            let total = header.len() as u64 + arr.data_bytes();
            // Fixed timestamp: same content => same bytes. Zip64 only when needed, so
            // small files stay readable by the simplest zip readers.
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .last_modified_time(zip::DateTime::default())
                .large_file(total >= u32::MAX as u64 - 1024);
            let member = format!("{name}.npy");
            zw.start_file(member.as_str(), opts)
                .map_err(|e| zip_err(path, name, e))?;
            zw.write_all(&header).map_err(|e| Error::io(path, e))?;
            arr.write_data(&mut zw).map_err(|e| Error::io(path, e))?;
        }
        let mut inner = zw.finish().map_err(|e| zip_err(path, "zip directory", e))?;
        inner.flush().map_err(|e| Error::io(path, e))
    })
}

/// Writes a prediction set: `logits` float32 `[N, K]`, and `labels`, `hospital`, `slide`
/// int64 `[N]` where present. Atomic; validates first so no invalid set is written.
pub fn save_npz(path: &Path, set: &PredictionSet, compressed: bool) -> Result<()> {
    set.validate()?;
    let logits = set.logits_slice();
    let mut arrays: Vec<(&str, NpzArray<'_>)> =
        vec![("logits", NpzArray::F32x2(&logits, set.n(), set.k()))];
    // Owned contiguous copies only when a caller built non-contiguous group arrays.
    let owned: Vec<(&str, std::borrow::Cow<'_, [i64]>)> = [
        ("labels", &set.labels),
        ("hospital", &set.hospital),
        ("slide", &set.slide),
    ]
    .into_iter()
    .filter_map(|(name, a)| {
        a.as_ref().map(|a| {
            let data = match a.as_slice() {
                Some(s) => std::borrow::Cow::Borrowed(s),
                None => std::borrow::Cow::Owned(a.to_vec()),
            };
            (name, data)
        })
    })
    .collect();
    for (name, data) in &owned {
        arrays.push((name, NpzArray::I64(data)));
    }
    save_npz_arrays(path, &arrays, compressed)
}
// ---------------------------------------------------------------------------------------
// Reading: .npz
// ---------------------------------------------------------------------------------------

/// Loads one prediction set from a `.npz` (DESIGN.md section 1): `logits` float32/16/64
/// `[N, K]` (or `[N]` / `[N, 1]` binary logits, read as rows `(0, z)`), optional `labels`,
/// `hospital`, `slide` int64/int32 `[N]`. The set's name is the file stem. The result is
/// validated; every error names the file and the array.
pub fn load_npz(path: &Path) -> Result<PredictionSet> {
    load_npz_hashed(path).map(|(set, _)| set)
}

/// [`load_npz`] and the file's SHA-256 (lowercase hex), taken on the same read: the
/// streaming reader ([`super::stream::NpzRowReader`]) reads the whole set chunk by chunk,
/// so a file is read, checked and hashed one way whether it is a source loaded whole or a
/// target streamed.
pub fn load_npz_hashed(path: &Path) -> Result<(PredictionSet, String)> {
    read_whole(super::stream::NpzRowReader::open(path)?)
}

/// Every row of `reader` as one set, and the SHA-256 of what it read.
fn read_whole(mut reader: super::stream::NpzRowReader) -> Result<(PredictionSet, String)> {
    let (n, k) = (reader.n(), reader.k());
    let mut logits = Vec::with_capacity(n * k);
    let mut labels = reader.has_labels().then(|| Vec::with_capacity(n));
    let mut hospital = reader.has_hospital().then(|| Vec::with_capacity(n));
    let mut slide = reader.has_slide().then(|| Vec::with_capacity(n));
    let mut chunk = super::stream::RowChunk::default();
    while reader.next_chunk(1 << 18, &mut chunk)? {
        logits.extend_from_slice(&chunk.logits);
        if let (Some(all), Some(c)) = (labels.as_mut(), chunk.labels.as_ref()) {
            all.extend(c.iter().map(|&y| y as i64));
        }
        for (all, c) in [(&mut hospital, &chunk.hospital), (&mut slide, &chunk.slide)] {
            if let (Some(all), Some(c)) = (all.as_mut(), c.as_ref()) {
                all.extend_from_slice(c);
            }
        }
    }
    let name = reader.name().to_string();
    let file = reader.path().display().to_string();
    let sha256 = reader.finish()?;
    let logits = Array2::from_shape_vec((n, k), logits)
        .map_err(|e| Error::format(&file, format!("array 'logits': {e}")))?;
    let set = PredictionSet {
        name,
        logits,
        labels: labels.map(Array1::from),
        hospital: hospital.map(Array1::from),
        slide: slide.map(Array1::from),
    };
    Ok((set, sha256))
}

/// Loads a prediction set from the bytes of a `.npz` file held in memory (same reader,
/// checks and errors as [`load_npz`]; `name` names the set and stands for the file in
/// messages).
pub fn load_npz_bytes(bytes: &[u8], name: &str) -> Result<PredictionSet> {
    read_whole(super::stream::NpzRowReader::from_bytes(bytes, name)?).map(|(set, _)| set)
}
