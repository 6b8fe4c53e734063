//! `.npz` / `.npy` reading and writing (DESIGN.md sections 1 and 6).
//!
//! The reader parses the `.npy` format itself instead of going through `ndarray-npy`:
//! it needs float16, int32 fallbacks, Fortran order, and above all errors that name the
//! file and the array, plus a guard against headers that claim absurd sizes (the claimed
//! size is checked against the zip member's size before anything is allocated, and data
//! is read in bounded chunks, so a lying header can never make us allocate more than the
//! bytes that actually decompress).
//!
//! Writers go through [`write_atomic`]: a temporary file in the destination directory,
//! renamed into place only when everything was written, removed on error.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array1, Array2, ShapeBuilder};

use super::PredictionSet;
use crate::error::{Error, Result};

/// Elements converted per read call: bounds the scratch buffer whatever the header says.
const CHUNK_ELEMS: usize = 1 << 16;

/// Largest ratio by which deflate can shrink data (a stream of zeros gives ~1032:1);
/// a header claiming more than this times the compressed size is a lie.
const MAX_DEFLATE_RATIO: u64 = 1100;

// ---------------------------------------------------------------------------------------
// Atomic writing
// ---------------------------------------------------------------------------------------

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary path beside `path` (same directory, so the final rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let unique = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp.{}.{unique}", std::process::id()))
}

/// Writes through `f` into a temporary file beside `path`, then renames it onto `path`.
/// On any error the temporary file is removed and `path` is left untouched.
fn write_atomic_file(path: &Path, f: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f(&mut file)?;
        file.flush().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        // Best effort: the temp file may not exist if create failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The shared temp-then-rename helper: `f` writes the whole content to a buffered
/// writer; `path` appears only if `f` and the final flush succeed (DESIGN.md section 6:
/// never a partial output file).
pub fn write_atomic(path: &Path, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    write_atomic_file(path, |file| {
        let mut w = BufWriter::new(file);
        f(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))
    })
}

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

/// The `.npy` header (format 1.0, or 2.0 when the header would not fit in u16),
/// padded so the data starts on a 64-byte boundary as numpy does.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic(6) + version(2) + len(2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let hlen = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(unpadded + pad + 2);
    out.extend_from_slice(b"\x93NUMPY");
    if let Ok(h16) = u16::try_from(hlen) {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&h16.to_le_bytes());
    } else {
        // Version 2 has a 4-byte length; recompute padding for the 2 extra bytes.
        let unpadded = 12 + dict.len() + 1;
        let pad = (64 - unpadded % 64) % 64;
        let hlen = (dict.len() + pad + 1) as u32;
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&hlen.to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend(std::iter::repeat_n(b' ', pad));
        out.push(b'\n');
        return out;
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
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
// Reading: .npy header
// ---------------------------------------------------------------------------------------

/// Element types the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F16,
    F32,
    F64,
    I32,
    I64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }
}

/// A parsed `.npy` header.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    dtype: Option<(Dtype, bool)>, // (type, big-endian)
    fortran: bool,
    shape: Vec<usize>,
}

impl NpyHeader {
    fn count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

/// A tiny parser for the Python dict literal in an npy header.
struct Lit<'a> {
    s: &'a [u8],
    i: usize,
}

#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    Other,
}

impl<'a> Lit<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Option<String> {
        self.ws();
        let q = *self.s.get(self.i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let start = self.i + 1;
        let end = start + self.s.get(start..)?.iter().position(|&c| c == q)?;
        self.i = end + 1;
        Some(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }
    fn value(&mut self) -> Option<Value> {
        self.ws();
        match *self.s.get(self.i)? {
            b'\'' | b'"' => self.string().map(Value::Str),
            b'(' => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        return Some(Value::Tuple(dims));
                    }
                    self.ws();
                    let start = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    // Python 2 era headers may write `3L`.
                    let digits = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                    dims.push(digits.parse::<usize>().ok()?);
                    self.eat(b'L');
                    if !self.eat(b',') {
                        return self.eat(b')').then_some(Value::Tuple(dims));
                    }
                }
            }
            _ => {
                let rest = &self.s[self.i..];
                if rest.starts_with(b"True") {
                    self.i += 4;
                    Some(Value::Bool(true))
                } else if rest.starts_with(b"False") {
                    self.i += 5;
                    Some(Value::Bool(false))
                } else {
                    // Structured dtypes (lists) and anything else: skip to the next
                    // top-level separator is not worth it; report as unsupported.
                    Some(Value::Other)
                }
            }
        }
    }
}

fn parse_dtype(descr: &str) -> Option<(Dtype, bool)> {
    let b = descr.as_bytes();
    if b.len() < 2 {
        return None;
    }
    let (big, rest) = match b[0] {
        b'<' | b'=' => (false, &descr[1..]),
        b'>' => (true, &descr[1..]),
        b'|' => (false, &descr[1..]),
        _ => (false, descr),
    };
    let t = match rest {
        "f2" | "e" => Dtype::F16,
        "f4" | "f" => Dtype::F32,
        "f8" | "d" => Dtype::F64,
        "i4" => Dtype::I32,
        "i8" => Dtype::I64,
        _ => return None,
    };
    Some((t, big))
}

/// Reads and parses the npy header from `r`; `ctx` is "file: array" for messages.
fn read_npy_header(r: &mut dyn Read, file: &str, array: &str) -> Result<NpyHeader> {
    let fmt = |msg: String| Error::format(file, format!("array '{array}': {msg}"));
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| fmt(format!("truncated npy header ({e})")))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(fmt("not an .npy array (bad magic)".into()));
    }
    let hlen = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l)
                .map_err(|e| fmt(format!("truncated npy header ({e})")))?;
            u16::from_le_bytes(l) as usize
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            r.read_exact(&mut l)
                .map_err(|e| fmt(format!("truncated npy header ({e})")))?;
            u32::from_le_bytes(l) as usize
        }
        v => return Err(fmt(format!("unsupported npy format version {v}"))),
    };
    // Real headers are a few hundred bytes; refuse to allocate a claimed gigabyte.
    if hlen > 1 << 20 {
        return Err(fmt(format!("npy header length {hlen} is absurd")));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h)
        .map_err(|e| fmt(format!("truncated npy header ({e})")))?;
    let mut p = Lit { s: &h, i: 0 };
    if !p.eat(b'{') {
        return Err(fmt("malformed npy header (no dict)".into()));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p
            .string()
            .ok_or_else(|| fmt("malformed npy header (key)".into()))?;
        if !p.eat(b':') {
            return Err(fmt("malformed npy header (':')".into()));
        }
        let v = p
            .value()
            .ok_or_else(|| fmt(format!("malformed npy header (value of '{key}')")))?;
        match (key.as_str(), v) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", _) => {
                return Err(fmt(
                    "structured dtype not supported (need a plain numeric array)".into(),
                ))
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k @ ("fortran_order" | "shape"), _) => {
                return Err(fmt(format!("malformed npy header (value of '{k}')")))
            }
            _ => {}
        }
        if !p.eat(b',') {
            if p.eat(b'}') {
                break;
            }
            return Err(fmt("malformed npy header (',')".into()));
        }
    }
    let descr = descr.ok_or_else(|| fmt("npy header has no 'descr'".into()))?;
    let shape = shape.ok_or_else(|| fmt("npy header has no 'shape'".into()))?;
    Ok(NpyHeader {
        dtype: parse_dtype(&descr),
        descr,
        fortran: fortran.unwrap_or(false),
        shape,
    })
}

/// Reads exactly `count` elements of `dtype` in bounded chunks, converting with `conv`.
/// A short read (truncated or lying header) is an error, not a panic or an allocation
/// of the claimed size.
fn read_elems<T: bytemuck::Pod>(
    r: &mut dyn Read,
    count: usize,
    dtype: Dtype,
    big: bool,
    conv: impl Fn(&[u8], Dtype, bool) -> T,
    file: &str,
    array: &str,
) -> Result<Vec<T>> {
    let size = dtype.size();
    // Little-endian data already in T's layout (f32 logits, i64 labels: the common case)
    // is copied as a slice instead of element by element.
    let native = !big
        && ((dtype == Dtype::F32 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
            || (dtype == Dtype::I64
                && std::any::TypeId::of::<T>() == std::any::TypeId::of::<i64>()));
    let read_err = |e: std::io::Error, done: usize| {
        Error::format(
            file,
            format!(
                "array '{array}': truncated or corrupt data after {done} of {count} values ({e})"
            ),
        )
    };
    // `count` is bounded by the member's size as the zip directory claims it, which for a
    // deflated member may be ~1000x the file: reserve fallibly (a typed error, not an
    // abort) and touch memory only chunk by chunk as data really arrives, so a lying
    // header fails at its first missing chunk.
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(count).map_err(|_| {
        Error::format(
            file,
            format!(
                "array '{array}': header claims {count} values ({} bytes), more than can be allocated",
                count.saturating_mul(size)
            ),
        )
    })?;
    if native {
        // Straight into the output, chunk by chunk: one copy from the file, no staging
        // buffer (the zeroing is of a cache-sized chunk about to be overwritten).
        while out.len() < count {
            let done = out.len();
            out.resize(done + (count - done).min(CHUNK_ELEMS), T::zeroed());
            r.read_exact(bytemuck::cast_slice_mut(&mut out[done..]))
                .map_err(|e| read_err(e, done))?;
        }
        return Ok(out);
    }
    // u64 storage keeps the byte buffer 8-aligned, so it can be viewed as &[T].
    let mut store = vec![0u64; (CHUNK_ELEMS.min(count.max(1)) * size).div_ceil(8)];
    let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut store);
    let mut left = count;
    while left > 0 {
        let m = left.min(CHUNK_ELEMS);
        let bytes = &mut buf[..m * size];
        r.read_exact(bytes).map_err(|e| read_err(e, count - left))?;
        out.extend(bytes.chunks_exact(size).map(|c| conv(c, dtype, big)));
        left -= m;
    }
    Ok(out)
}

fn bytes_n<const N: usize>(c: &[u8], big: bool) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    if big {
        a.reverse();
    }
    a
}

fn conv_f32(c: &[u8], t: Dtype, big: bool) -> f32 {
    match t {
        Dtype::F16 => half::f16::from_le_bytes(bytes_n::<2>(c, big)).to_f32(),
        Dtype::F32 => f32::from_le_bytes(bytes_n::<4>(c, big)),
        Dtype::F64 => f64::from_le_bytes(bytes_n::<8>(c, big)) as f32,
        Dtype::I32 => i32::from_le_bytes(bytes_n::<4>(c, big)) as f32,
        Dtype::I64 => i64::from_le_bytes(bytes_n::<8>(c, big)) as f32,
    }
}

fn conv_i64(c: &[u8], t: Dtype, big: bool) -> i64 {
    match t {
        Dtype::I32 => i32::from_le_bytes(bytes_n::<4>(c, big)) as i64,
        Dtype::I64 => i64::from_le_bytes(bytes_n::<8>(c, big)),
        // Not reached: callers check the dtype first.
        _ => 0,
    }
}

/// Checks that the data the header claims fits in `available` bytes (known before
/// reading), so an absurd shape is rejected before any allocation.
fn check_claim(h: &NpyHeader, available: Option<u64>, file: &str, array: &str) -> Result<usize> {
    let fmt = |msg: String| Error::format(file, format!("array '{array}': {msg}"));
    let (t, _) = h
        .dtype
        .ok_or_else(|| fmt(format!("unsupported dtype '{}'", h.descr)))?;
    let count = h
        .count()
        .ok_or_else(|| fmt(format!("shape {:?} overflows", h.shape)))?;
    let bytes = (count as u64).checked_mul(t.size() as u64);
    match (bytes, available) {
        (None, _) => Err(fmt(format!("shape {:?} overflows", h.shape))),
        (Some(b), Some(avail)) if b > avail => Err(fmt(format!(
            "header claims shape {:?} ({b} bytes of data) but only {avail} bytes are stored",
            h.shape
        ))),
        _ => Ok(count),
    }
}

/// After the data: any byte left means the header and the data disagree. Reading to the
/// end also makes the zip reader verify the member's CRC.
fn expect_end(r: &mut dyn Read, file: &str, array: &str) -> Result<()> {
    let mut extra = [0u8; 64];
    let n = loop {
        match r.read(&mut extra) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::format(
                    file,
                    format!("array '{array}': corrupt data ({e})"),
                ))
            }
        }
    };
    if n > 0 {
        return Err(Error::format(
            file,
            format!("array '{array}': more data stored than the header's shape describes"),
        ));
    }
    Ok(())
}

/// A decoded array: values in C (row-major) order plus the shape.
struct Decoded<T> {
    data: Vec<T>,
    shape: Vec<usize>,
}

/// Reads one npy stream whose data must fit in `available` bytes.
fn read_npy<T>(
    r: &mut dyn Read,
    available: Option<u64>,
    file: &str,
    array: &str,
    accept: impl Fn(Dtype) -> bool,
    want: &str,
    conv: impl Fn(&[u8], Dtype, bool) -> T,
) -> Result<Decoded<T>>
where
    T: Clone + bytemuck::Pod,
{
    let h = read_npy_header(r, file, array)?;
    let fmt = |msg: String| Error::format(file, format!("array '{array}': {msg}"));
    match h.dtype {
        Some((t, _)) if accept(t) => {}
        _ => {
            return Err(fmt(format!(
                "dtype '{}' not supported (need {want})",
                h.descr
            )))
        }
    }
    let count = check_claim(&h, available, file, array)?;
    let (t, big) = h
        .dtype
        .ok_or_else(|| fmt(format!("unsupported dtype '{}'", h.descr)))?;
    let data = read_elems(r, count, t, big, conv, file, array)?;
    expect_end(r, file, array)?;
    let data = if h.fortran && h.shape.len() > 1 {
        // Reorder to C order through ndarray (handles any rank).
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&h.shape).f(), data)
            .map_err(|e| fmt(format!("shape {:?}: {e}", h.shape)))?;
        a.as_standard_layout().iter().cloned().collect()
    } else {
        data
    };
    Ok(Decoded {
        data,
        shape: h.shape,
    })
}

// ---------------------------------------------------------------------------------------
// Reading: .npz
// ---------------------------------------------------------------------------------------

/// Reads member `array` (stored as `array.npy`, or bare `array`) of an open archive,
/// or `None` when it is absent.
fn read_member<T: Clone + bytemuck::Pod, R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    file_len: u64,
    file: &str,
    array: &str,
    accept: impl Fn(Dtype) -> bool,
    want: &str,
    conv: impl Fn(&[u8], Dtype, bool) -> T,
) -> Result<Option<Decoded<T>>> {
    let npy = format!("{array}.npy");
    let name = if zip.index_for_name(&npy).is_some() {
        npy
    } else if zip.index_for_name(array).is_some() {
        array.to_string()
    } else {
        return Ok(None);
    };
    let mut member = zip.by_name(&name).map_err(|e| {
        Error::format(
            file,
            format!("array '{array}': cannot open zip member ({e})"),
        )
    })?;
    let compressed = member.compressed_size();
    let size = member.size();
    // The zip directory's sizes are claims too: bound them by the file's real length
    // and deflate's maximum ratio before trusting them as an allocation limit.
    if compressed > file_len || size > compressed.saturating_mul(MAX_DEFLATE_RATIO) + 1024 {
        return Err(Error::format(
            file,
            format!(
                "array '{array}': zip member claims {size} bytes ({compressed} compressed) in a {file_len}-byte file"
            ),
        ));
    }
    read_npy(&mut member, Some(size), file, array, accept, want, conv).map(Some)
}

fn is_int(t: Dtype) -> bool {
    matches!(t, Dtype::I32 | Dtype::I64)
}

/// Reads one optional 1-D int64/int32 array.
fn read_ids<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    file_len: u64,
    file: &str,
    array: &str,
) -> Result<Option<Array1<i64>>> {
    let Some(d) = read_member(
        zip,
        file_len,
        file,
        array,
        is_int,
        "int64 or int32",
        conv_i64,
    )?
    else {
        return Ok(None);
    };
    if d.shape.len() != 1 {
        return Err(Error::format(
            file,
            format!("array '{array}': shape {:?}, need 1-D [N]", d.shape),
        ));
    }
    Ok(Some(Array1::from(d.data)))
}

/// Loads one prediction set from a `.npz` (DESIGN.md section 1): `logits` float32/16/64
/// `[N, K]` (or `[N]` / `[N, 1]` binary logits, read as rows `(0, z)`), optional `labels`,
/// `hospital`, `slide` int64/int32 `[N]`. The set's name is the file stem. The result is
/// validated; every error names the file and the array.
pub fn load_npz(path: &Path) -> Result<PredictionSet> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    load_npz_from(BufReader::new(f), len, &file, name, Some(path))
}

/// Loads a prediction set from the bytes of a `.npz` file held in memory (same checks
/// and errors as [`load_npz`]; `name` names the set and stands for the file in messages).
pub fn load_npz_bytes(bytes: &[u8], name: &str) -> Result<PredictionSet> {
    load_npz_from(
        std::io::Cursor::new(bytes),
        bytes.len() as u64,
        name,
        name.to_string(),
        None,
    )
}

fn load_npz_from<R: Read + Seek>(
    reader: R,
    file_len: u64,
    file: &str,
    name: String,
    path: Option<&Path>,
) -> Result<PredictionSet> {
    let file = file.to_string();
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| match (e, path) {
        (zip::result::ZipError::Io(io), Some(path))
            if io.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            Error::io(path, io)
        }
        (other, _) => Error::format(&file, format!("not a readable .npz (zip) file: {other}")),
    })?;
    let logits = read_member(
        &mut zip,
        file_len,
        &file,
        "logits",
        Dtype::is_float,
        "float32, float16 or float64",
        conv_f32,
    )?
    .ok_or_else(|| Error::format(&file, "no array named 'logits'"))?;
    let logits = match logits.shape.as_slice() {
        [n, k] if *k >= 2 => Array2::from_shape_vec((*n, *k), logits.data)
            .map_err(|e| Error::format(&file, format!("array 'logits': {e}")))?,
        // A single binary logit z is the two-class row (0, z): same softmax, same argmax.
        [n] | [n, 1] => {
            let mut a = Array2::<f32>::zeros((*n, 2));
            for (mut row, z) in a.rows_mut().into_iter().zip(logits.data) {
                row[1] = z;
            }
            a
        }
        [_, k] => {
            return Err(Error::TooFewClasses {
                what: format!("{file}: logits"),
                k: *k,
            })
        }
        s => {
            return Err(Error::format(
                &file,
                format!("array 'logits': shape {s:?}, need [N, K] or [N]"),
            ))
        }
    };
    let labels = read_ids(&mut zip, file_len, &file, "labels")?;
    let hospital = read_ids(&mut zip, file_len, &file, "hospital")?;
    let slide = read_ids(&mut zip, file_len, &file, "slide")?;
    let set = PredictionSet {
        name,
        logits,
        labels,
        hospital,
        slide,
    };
    set.validate().map_err(|e| with_file(e, &set.name, &file))?;
    Ok(set)
}

/// `validate` names the set by its stem; a loaded set's errors name the whole path.
fn with_file(e: Error, stem: &str, file: &str) -> Error {
    let fix = |what: String| match what.strip_prefix(stem) {
        Some(rest) => format!("{file}{rest}"),
        None => format!("{file}: {what}"),
    };
    match e {
        Error::NonFinite {
            what,
            row,
            col,
            value,
        } => Error::NonFinite {
            what: fix(what),
            row,
            col,
            value,
        },
        Error::LabelOutOfRange {
            what,
            row,
            label,
            k,
        } => Error::LabelOutOfRange {
            what: fix(what),
            row,
            label,
            k,
        },
        Error::LengthMismatch { what, detail } => Error::LengthMismatch {
            what: fix(what),
            detail,
        },
        Error::TooFewClasses { what, k } => Error::TooFewClasses { what: fix(what), k },
        Error::Empty { what, detail } => Error::Empty {
            what: fix(what),
            detail,
        },
        other => other,
    }
}

/// Loads a 1-D float32 (or float64/float16, converted) `.npy` of scores. NaN is rejected
/// with its index; errors name the file.
pub fn load_npy_scores(path: &Path) -> Result<Vec<f32>> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(f);
    let array = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scores".into());
    let d = read_npy(
        &mut r,
        Some(len),
        &file,
        &array,
        Dtype::is_float,
        "float32 or float64",
        conv_f32,
    )?;
    if d.shape.len() != 1 {
        return Err(Error::format(
            &file,
            format!("array '{array}': shape {:?}, need 1-D", d.shape),
        ));
    }
    if let Some(i) = d.data.iter().position(|v| v.is_nan()) {
        return Err(Error::NonFinite {
            what: format!("{file}: {array}"),
            row: i,
            col: 0,
            value: f32::NAN,
        });
    }
    Ok(d.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<NpyHeader> {
        read_npy_header(&mut &bytes[..], "f.npz", "a")
    }

    #[test]
    fn written_headers_are_aligned_and_parse_back() {
        for shape in [vec![0usize], vec![7], vec![3, 2], vec![1 << 40, 5]] {
            let h = npy_header("<f4", &shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(h.last(), Some(&b'\n'));
            let p = parse(&h).unwrap();
            assert_eq!(p.shape, shape);
            assert!(!p.fortran);
            assert_eq!(p.dtype, Some((Dtype::F32, false)));
        }
    }

    #[test]
    fn header_variants() {
        // Python 2 long suffixes, double quotes, keys in another order, scalar shape.
        let dict = b"{\"shape\": (3L, 2L), \"fortran_order\": True, \"descr\": \">f8\"}\n";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict);
        let p = parse(&b).unwrap();
        assert_eq!(p.shape, vec![3, 2]);
        assert!(p.fortran);
        assert_eq!(p.dtype, Some((Dtype::F64, true)));

        let dict = b"{'descr': '<i4', 'fortran_order': False, 'shape': (), }\n";
        let mut b = b"\x93NUMPY\x03\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        b.extend_from_slice(dict);
        let p = parse(&b).unwrap();
        assert_eq!(p.shape, Vec::<usize>::new());
        assert_eq!(p.count(), Some(1));
    }

    #[test]
    fn malformed_headers_are_errors() {
        let cases: [&[u8]; 6] = [
            b"\x93NUMPY\x01\x00\x05\x00{'de",
            b"\x93NUMPY\x09\x00\x00\x00",
            b"\x93NUMPY\x01\x00\x10\x00not a dict here\n",
            b"\x93NUMPY\x01\x00\x12\x00{'shape': (2,), }\n",
            b"\x93NUMPY\x01\x00\x14\x00{'descr': '<f4', }\n",
            b"\x93NUMPY\x01\x00\x1c\x00{'descr': '<f4', 'shape': (-1,)}\n",
        ];
        for c in cases {
            match parse(c) {
                Err(e @ Error::Format { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("f.npz") && m.contains("'a'"), "{m}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(c)),
            }
        }
    }

    #[test]
    fn dtypes() {
        assert_eq!(parse_dtype("<f2"), Some((Dtype::F16, false)));
        assert_eq!(parse_dtype("<i8"), Some((Dtype::I64, false)));
        assert_eq!(parse_dtype(">i4"), Some((Dtype::I32, true)));
        assert_eq!(parse_dtype("|b1"), None);
        assert_eq!(parse_dtype("<u8"), None);
        assert_eq!(parse_dtype(""), None);
    }

    #[test]
    fn temp_paths_are_unique_and_beside_the_target() {
        let p = Path::new("/some/dir/out.npz");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
    }
}
