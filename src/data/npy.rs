//! The `.npy` format (DESIGN.md sections 1 and 6): header parsing and writing, the
//! accepted dtypes, element conversion (float16/32/64 -> f32, int32/64 -> i64) and the
//! checks that keep a lying header from costing memory.
//!
//! The reader parses the format itself instead of going through `ndarray-npy`: it needs
//! float16, int32 fallbacks, Fortran order, and above all errors that name the file and
//! the array, plus a guard against headers that claim absurd sizes (the claimed size is
//! checked against the bytes really stored before anything is allocated, and data is
//! read in bounded chunks, so a lying header can never make us allocate more than the
//! bytes that actually decompress).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ndarray::ShapeBuilder;

use crate::error::{Error, Result};

/// Elements converted per read call: bounds the scratch buffer whatever the header says.
pub(crate) const CHUNK_ELEMS: usize = 1 << 16;

/// Largest ratio by which deflate can shrink data (a stream of zeros gives ~1032:1);
/// a header claiming more than this times the compressed size is a lie.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1100;

/// The `.npy` header (format 1.0, or 2.0 when the header would not fit in u16),
/// padded so the data starts on a 64-byte boundary as numpy does.
pub(crate) fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------
// Reading: .npy header
// ---------------------------------------------------------------------------------------

/// Element types the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F16,
    F32,
    F64,
    I32,
    I64,
}

impl Dtype {
    pub(crate) fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
    pub(crate) fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }
}

/// A parsed `.npy` header.
#[derive(Debug)]
pub(crate) struct NpyHeader {
    pub(crate) descr: String,
    pub(crate) dtype: Option<(Dtype, bool)>, // (type, big-endian)
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<usize>,
}

impl NpyHeader {
    pub(crate) fn count(&self) -> Option<usize> {
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

pub(crate) fn parse_dtype(descr: &str) -> Option<(Dtype, bool)> {
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
pub(crate) fn read_npy_header(r: &mut dyn Read, file: &str, array: &str) -> Result<NpyHeader> {
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
pub(crate) fn read_elems<T: bytemuck::Pod>(
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

pub(crate) fn bytes_n<const N: usize>(c: &[u8], big: bool) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    if big {
        a.reverse();
    }
    a
}

pub(crate) fn conv_f32(c: &[u8], t: Dtype, big: bool) -> f32 {
    match t {
        Dtype::F16 => half::f16::from_le_bytes(bytes_n::<2>(c, big)).to_f32(),
        Dtype::F32 => f32::from_le_bytes(bytes_n::<4>(c, big)),
        Dtype::F64 => f64::from_le_bytes(bytes_n::<8>(c, big)) as f32,
        Dtype::I32 => i32::from_le_bytes(bytes_n::<4>(c, big)) as f32,
        Dtype::I64 => i64::from_le_bytes(bytes_n::<8>(c, big)) as f32,
    }
}

pub(crate) fn conv_i64(c: &[u8], t: Dtype, big: bool) -> i64 {
    match t {
        Dtype::I32 => i32::from_le_bytes(bytes_n::<4>(c, big)) as i64,
        Dtype::I64 => i64::from_le_bytes(bytes_n::<8>(c, big)),
        // Not reached: callers check the dtype first.
        _ => 0,
    }
}

/// Checks that the data the header claims fits in `available` bytes (known before
/// reading), so an absurd shape is rejected before any allocation.
pub(crate) fn check_claim(
    h: &NpyHeader,
    available: Option<u64>,
    file: &str,
    array: &str,
) -> Result<usize> {
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
pub(crate) fn expect_end(r: &mut dyn Read, file: &str, array: &str) -> Result<()> {
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
pub(crate) struct Decoded<T> {
    pub(crate) data: Vec<T>,
    pub(crate) shape: Vec<usize>,
}

/// Reads one npy stream whose data must fit in `available` bytes.
pub(crate) fn read_npy<T>(
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

/// Loads a 1-D float32 (or float64/float16, converted) `.npy` of scores. NaN is rejected
/// with its index; errors name the file.
pub fn load_npy_scores(path: &Path) -> Result<Vec<f32>> {
    load_npy_scores_as(path, conv_f32, f32::is_nan)
}

/// [`load_npy_scores`] without rounding: every value as f64 (exact for float16, float32
/// and float64 files), and whether the file holds float64 (where rounding to f32 could
/// change an order statistic).
pub fn load_npy_scores_f64(path: &Path) -> Result<(Vec<f64>, bool)> {
    let f64_file = {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let h = read_npy_header(
            &mut BufReader::new(f),
            &path.display().to_string(),
            "scores",
        )?;
        matches!(h.dtype, Some((Dtype::F64, _)))
    };
    let conv = |c: &[u8], t: Dtype, big: bool| match t {
        Dtype::F64 => f64::from_le_bytes(bytes_n::<8>(c, big)),
        _ => conv_f32(c, t, big) as f64,
    };
    Ok((load_npy_scores_as(path, conv, f64::is_nan)?, f64_file))
}

/// Loads a 1-D int32/int64 `.npy` of row indices (each `>= 0`); errors name the file and
/// the first negative index.
pub fn load_npy_indices(path: &Path) -> Result<Vec<u64>> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(f);
    let d = read_npy(
        &mut r,
        Some(len),
        &file,
        "indices",
        |t| !t.is_float(),
        "int32 or int64",
        conv_i64,
    )?;
    if d.shape.len() != 1 {
        return Err(Error::format(
            &file,
            format!("array 'indices': shape {:?}, need 1-D", d.shape),
        ));
    }
    d.data
        .iter()
        .enumerate()
        .map(|(at, &i)| {
            u64::try_from(i).map_err(|_| {
                Error::format(
                    &file,
                    format!("array 'indices': index {i} at {at} is negative"),
                )
            })
        })
        .collect()
}

fn load_npy_scores_as<T: Clone + bytemuck::Pod>(
    path: &Path,
    conv: impl Fn(&[u8], Dtype, bool) -> T,
    is_nan: impl Fn(T) -> bool,
) -> Result<Vec<T>> {
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
        conv,
    )?;
    if d.shape.len() != 1 {
        return Err(Error::format(
            &file,
            format!("array '{array}': shape {:?}, need 1-D", d.shape),
        ));
    }
    if let Some(i) = d.data.iter().position(|&v| is_nan(v)) {
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
}
