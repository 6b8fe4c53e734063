//! Streaming a `.npz` prediction set in chunks of rows (DESIGN.md section 3: "targets
//! stream from disk"), so peak memory is bounded by the chunk size, not the file.
//!
//! [`NpzRowReader`] reads the zip directory once, then gives each member it needs
//! (`logits`, and `labels`, `hospital`, `slide` when present; other arrays are ignored)
//! its own stream at its own place in the file: stored members are read as raw bytes,
//! deflated members through a streaming inflater. All streams read one shared file
//! handle with positional reads (no shared cursor), so every stream sees the same file
//! even if its path is replaced while it is being read. Each chunk is converted
//! (float16/64 -> f32, int32 -> int64), expanded (a binary logit z becomes the row
//! `(0, z)`) and validated, and errors name the absolute row.
//!
//! Memory: O(chunk) plus a few fixed buffers (a 64 Ki-value staging buffer for dtypes that
//! need converting, ~64 KiB of inflater state per deflated member, 1 MiB for hashing).
//! The one exception is Fortran order: a Fortran-order 2-D `logits` with more than one
//! row and column stores columns, not rows, so it is decoded whole when the reader opens,
//! which holds N x K x 4 bytes (twice that while it is transposed to rows); every other
//! layout streams.
//!
//! Integrity: claimed sizes (zip directory, npy header) are checked against each other and
//! the file's length before anything is read, buffers grow only as data arrives, and when
//! the last row of the set has been read every member is checked for extra bytes and its
//! CRC-32. Reading stops at the end of a [`NpzRowReader::restrict`] range: rows after
//! it are not read, so neither their bytes nor a CRC are checked then (the SHA-256 still
//! covers them); a stored member that `restrict` seeked into cannot check its CRC either.
//!
//! Hashing: the file's SHA-256 is taken by a second thread, started by `open`, that reads
//! the whole file sequentially through a 1 MiB buffer while the chunks are decoded (the
//! bytes come from the page cache when the member streams have just read them, or warm it
//! for them). Hashing on the decode reads themselves would need the bytes in file order,
//! but the members are read side by side (row r of `logits`, then row r of `labels`, far
//! later in the file), so all but the first member would have to be held back: O(N).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use flate2::read::DeflateDecoder;
use sha2::{Digest, Sha256};

use super::npy::{
    check_claim, conv_f32, conv_i64, expect_end, read_elems, read_npy_header, Dtype, CHUNK_ELEMS,
    MAX_DEFLATE_RATIO,
};
use super::LogitsShape;
use crate::error::{Error, Result};

/// Bytes per read of the hashing thread.
const HASH_BUF: usize = 1 << 20;

/// The optional per-row integer arrays, in the order a chunk reads them.
const ID_ARRAYS: [&str; 3] = ["labels", "hospital", "slide"];

/// One chunk of consecutive rows of a prediction set, row-major, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowChunk {
    /// Index in the whole set of this chunk's first row.
    pub row_offset: usize,
    /// Classes.
    pub k: usize,
    /// `rows * k` logits, row-major (a binary `[N]`/`[N,1]` logit z becomes the row (0, z)).
    pub logits: Vec<f32>,
    /// One per row, -1 = unknown; `None` when the file has no `labels` array.
    pub labels: Option<Vec<i32>>,
    /// `hospital` ids, one per row, when present.
    pub hospital: Option<Vec<i64>>,
    /// `slide` ids, one per row, when present.
    pub slide: Option<Vec<i64>>,
}

impl RowChunk {
    /// Rows in this chunk.
    pub fn rows(&self) -> usize {
        self.logits.len().checked_div(self.k).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// Positional reads on one shared handle
// ---------------------------------------------------------------------------------------

/// What a reader reads: a file (positional reads on one shared handle), or the bytes of
/// one held in memory (`load_npz_bytes`), through the same code.
pub(crate) enum Source {
    /// A file.
    File(File),
    /// A file's bytes.
    Bytes(Vec<u8>),
}

fn read_at(src: &Source, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    match src {
        Source::File(f) => read_file_at(f, buf, pos),
        Source::Bytes(b) => {
            let start = (pos.min(b.len() as u64)) as usize;
            let n = buf.len().min(b.len() - start);
            buf[..n].copy_from_slice(&b[start..start + n]);
            Ok(n)
        }
    }
}

fn read_file_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, pos)
    }
    #[cfg(windows)]
    {
        // Moves the handle's cursor, which nothing here relies on.
        std::os::windows::fs::FileExt::seek_read(file, buf, pos)
    }
    #[cfg(not(any(unix, windows)))]
    {
        // No positional read on this platform: serialise seek + read on the shared cursor.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = file;
        f.seek(SeekFrom::Start(pos))?;
        f.read(buf)
    }
}

/// Bytes `pos..end` of the shared file.
struct Window {
    file: Arc<Source>,
    pos: u64,
    end: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if m == 0 {
            return Ok(0);
        }
        let n = read_at(&self.file, &mut buf[..m], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Only the zip directory parser seeks, on a window over the whole file, so positions
/// are file offsets.
impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the file"))?;
        Ok(self.pos)
    }
}

// ---------------------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------------------

/// What the zip directory says about one member, checked against the file's length.
struct Entry {
    start: u64,
    compressed: u64,
    size: u64,
    crc: u32,
    deflated: bool,
}

enum Body {
    Stored(Window),
    Deflated(Box<DeflateDecoder<Window>>),
}

/// One member's decoded bytes, with the CRC-32 of what passed through.
struct Member {
    array: &'static str,
    body: Body,
    /// CRC-32 of the bytes read so far; `None` once a seek skipped bytes.
    crc: Option<crc32fast::Hasher>,
    expected_crc: u32,
    dtype: Dtype,
    big: bool,
    /// Values per row in the stream: K for C-order `[N, K]` logits, else 1.
    per_row: usize,
}

impl Read for Member {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.body {
            Body::Stored(w) => w.read(buf)?,
            Body::Deflated(d) => d.read(buf)?,
        };
        if let Some(c) = &mut self.crc {
            c.update(&buf[..n]);
        }
        Ok(n)
    }
}

fn member_err(file: &str, array: &str, msg: impl std::fmt::Display) -> Error {
    Error::format(file, format!("array '{array}': {msg}"))
}

/// Finds member `array` (`array.npy`, or bare `array`) and checks its directory claims.
fn find_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    file_len: u64,
    file: &str,
    array: &str,
) -> Result<Option<Entry>> {
    let Some(idx) = zip
        .index_for_name(&format!("{array}.npy"))
        .or_else(|| zip.index_for_name(array))
    else {
        return Ok(None);
    };
    let m = zip
        .by_index_raw(idx)
        .map_err(|e| member_err(file, array, format!("cannot open zip member ({e})")))?;
    if m.encrypted() {
        return Err(member_err(file, array, "encrypted zip member"));
    }
    let deflated = match m.compression() {
        zip::CompressionMethod::Stored => false,
        zip::CompressionMethod::Deflated => true,
        other => {
            return Err(member_err(
                file,
                array,
                format!("zip compression {other:?} not supported (need stored or deflate)"),
            ))
        }
    };
    let start = m
        .data_start()
        .ok_or_else(|| member_err(file, array, "zip member without a data offset"))?;
    let (compressed, size) = (m.compressed_size(), m.size());
    // The directory's sizes are claims: bound them by the file's real length and
    // deflate's maximum ratio before anything trusts them.
    if start.checked_add(compressed).is_none_or(|e| e > file_len)
        || (!deflated && size != compressed)
        || size > compressed.saturating_mul(MAX_DEFLATE_RATIO) + 1024
    {
        return Err(member_err(
            file,
            array,
            format!(
                "zip member claims {size} bytes ({compressed} compressed) at offset {start} in a {file_len}-byte file"
            ),
        ));
    }
    Ok(Some(Entry {
        start,
        compressed,
        size,
        crc: m.crc32(),
        deflated,
    }))
}

/// Opens a member's stream and reads its npy header; returns the member (positioned at
/// its first value), the header's shape and fortran flag.
fn open_member(
    handle: &Arc<Source>,
    e: &Entry,
    file: &str,
    array: &'static str,
    accept: impl Fn(Dtype) -> bool,
    want: &str,
) -> Result<(Member, Vec<usize>, bool)> {
    let w = Window {
        file: Arc::clone(handle),
        pos: e.start,
        end: e.start + e.compressed,
    };
    let body = if e.deflated {
        Body::Deflated(Box::new(DeflateDecoder::new(w)))
    } else {
        Body::Stored(w)
    };
    // Counts the header's bytes as they pass.
    struct Counted<'a>(&'a mut Member, u64);
    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
    let mut m = Member {
        array,
        body,
        crc: Some(crc32fast::Hasher::new()),
        expected_crc: e.crc,
        dtype: Dtype::F32,
        big: false,
        per_row: 1,
    };
    let mut counted = Counted(&mut m, 0);
    let h = read_npy_header(&mut counted, file, array)?;
    let header_len = counted.1;
    let (dtype, big) = match h.dtype {
        Some((t, big)) if accept(t) => (t, big),
        _ => {
            return Err(member_err(
                file,
                array,
                format!("dtype '{}' not supported (need {want})", h.descr),
            ))
        }
    };
    let avail = e
        .size
        .checked_sub(header_len)
        .ok_or_else(|| member_err(file, array, "npy header longer than the zip member"))?;
    let count = check_claim(&h, Some(avail), file, array)?;
    // check_claim refused more data than stored; less is the other disagreement.
    if count as u64 * dtype.size() as u64 != avail {
        return Err(member_err(
            file,
            array,
            "more data stored than the header's shape describes",
        ));
    }
    m.dtype = dtype;
    m.big = big;
    Ok((m, h.shape, h.fortran))
}

/// Appends `count` values of `m` to `out`, converted. Reads go in pieces of at most
/// [`CHUNK_ELEMS`] values, so `out` grows only as data arrives whatever a caller asks for,
/// and reuses its capacity in the steady state. `row0` is the absolute row of the first
/// value, for messages.
fn read_values<T: bytemuck::Pod>(
    m: &mut Member,
    count: usize,
    out: &mut Vec<T>,
    stage: &mut Vec<u64>,
    conv: impl Fn(&[u8], Dtype, bool) -> T,
    file: &str,
    row0: usize,
) -> Result<()> {
    let (size, array, per_row) = (m.dtype.size(), m.array, m.per_row);
    // Little-endian f32 logits and i64 ids (the common case) go straight into `out`.
    let native = !m.big && std::mem::size_of::<T>() == size && {
        let t = std::any::TypeId::of::<T>();
        (m.dtype == Dtype::F32 && t == std::any::TypeId::of::<f32>())
            || (m.dtype == Dtype::I64 && t == std::any::TypeId::of::<i64>())
    };
    let mut done = 0;
    while done < count {
        let piece = (count - done).min(CHUNK_ELEMS);
        let err = |e: io::Error| {
            member_err(
                file,
                array,
                format!(
                    "truncated or corrupt data at row {} ({e})",
                    row0 + done / per_row
                ),
            )
        };
        if native {
            let at = out.len();
            out.resize(at + piece, T::zeroed());
            m.read_exact(bytemuck::cast_slice_mut(&mut out[at..]))
                .map_err(err)?;
        } else {
            // u64 storage keeps the staging bytes aligned for any element type.
            let need = (piece * size).div_ceil(8);
            if stage.len() < need {
                stage.resize(need, 0);
            }
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(stage)[..piece * size];
            m.read_exact(bytes).map_err(err)?;
            out.extend(bytes.chunks_exact(size).map(|c| conv(c, m.dtype, m.big)));
        }
        done += piece;
    }
    Ok(())
}

/// Moves `m` past its first `rows` rows: stored members seek, deflated members inflate
/// and discard (deflate has no random access, so a shard far into a compressed file pays
/// for decoding the rows before it).
fn skip_rows(m: &mut Member, rows: usize, stage: &mut Vec<u64>, file: &str) -> Result<()> {
    let bytes = rows as u64 * (m.per_row * m.dtype.size()) as u64;
    if bytes == 0 {
        return Ok(());
    }
    let array = m.array;
    match &mut m.body {
        Body::Stored(w) => {
            // Bounded by the member: the claims were checked against its size at open.
            w.pos += bytes;
            m.crc = None;
        }
        Body::Deflated(_) => {
            if stage.len() < CHUNK_ELEMS {
                stage.resize(CHUNK_ELEMS, 0);
            }
            let buf = bytemuck::cast_slice_mut::<u64, u8>(stage);
            let mut left = bytes;
            while left > 0 {
                let piece = left.min(buf.len() as u64) as usize;
                m.read_exact(&mut buf[..piece]).map_err(|e| {
                    member_err(file, array, format!("truncated or corrupt data ({e})"))
                })?;
                left -= piece as u64;
            }
        }
    }
    Ok(())
}

/// After a member's last value: no byte may be left, and the CRC-32 (when every byte
/// passed through) must match the directory's.
fn check_end(m: &mut Member, file: &str) -> Result<()> {
    let array = m.array;
    expect_end(m, file, array)?;
    if let Some(c) = &m.crc {
        if c.clone().finalize() != m.expected_crc {
            return Err(member_err(
                file,
                array,
                format!(
                    "corrupt data (CRC-32 {:08x}, the zip directory says {:08x})",
                    c.clone().finalize(),
                    m.expected_crc
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------

/// Hashes the whole file on its own thread; `Ok(None)` when cancelled (reader dropped).
fn spawn_hasher(
    handle: Arc<Source>,
    len: u64,
    cancel: Arc<AtomicBool>,
) -> io::Result<JoinHandle<io::Result<Option<String>>>> {
    std::thread::Builder::new()
        .name("npz-sha256".into())
        .spawn(move || {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; HASH_BUF];
            let mut pos = 0u64;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let n = match read_at(&handle, &mut buf, pos) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..n]);
                pos += n as u64;
            }
            if pos != len {
                return Err(io::Error::other(format!(
                    "file changed while being read ({len} bytes at open, {pos} hashed)"
                )));
            }
            Ok(Some(
                h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            ))
        })
}

// ---------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------

enum Logits {
    /// Rows read from the member as chunks ask for them.
    Stream(Member),
    /// A Fortran-order member decoded whole at open, in row-major order.
    Whole(Vec<f32>),
}

/// Reads a `.npz` prediction set in chunks of rows with memory bounded by the chunk
/// (see the module docs for the one exception, Fortran-order logits).
///
/// ```no_run
/// # use conformal_gpu::data::{NpzRowReader, RowChunk};
/// # fn main() -> conformal_gpu::Result<()> {
/// let mut r = NpzRowReader::open(std::path::Path::new("test.npz"))?;
/// let mut chunk = RowChunk::default();
/// while r.next_chunk(1 << 16, &mut chunk)? {
///     // chunk.row_offset, chunk.rows(), chunk.logits ...
/// }
/// let sha256 = r.finish()?;
/// # Ok(()) }
/// ```
pub struct NpzRowReader {
    path: PathBuf,
    /// The path as messages print it.
    file: String,
    name: String,
    n: usize,
    k: usize,
    /// `[N]` / `[N, 1]` logits, expanded to rows `(0, z)`.
    binary: bool,
    logits: Logits,
    /// `labels`, `hospital`, `slide`, each when present.
    ids: [Option<Member>; 3],
    range: Range<usize>,
    next_row: usize,
    /// Set by the first `next_chunk` (which applies `range.start`).
    positioned: bool,
    /// Every row of the range was read and the end checks passed.
    done: bool,
    /// An error left the streams at an unknown place.
    failed: bool,
    /// Staging for conversions and skips (bounded by CHUNK_ELEMS values).
    stage: Vec<u64>,
    /// Binary logits before their expansion to rows.
    zs: Vec<f32>,
    /// Labels before their check and narrowing to i32.
    label_buf: Vec<i64>,
    hasher: Option<JoinHandle<io::Result<Option<String>>>>,
    cancel: Arc<AtomicBool>,
}

impl std::fmt::Debug for NpzRowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzRowReader")
            .field("path", &self.path)
            .field("n", &self.n)
            .field("k", &self.k)
            .field("range", &self.range)
            .field("next_row", &self.next_row)
            .finish_non_exhaustive()
    }
}

impl NpzRowReader {
    /// Opens `path`, reads every member's npy header (logits, labels, hospital, slide;
    /// extra arrays ignored), checks dtypes and shapes agree (errors name file and array),
    /// positions at row 0 and starts hashing the file. The set name is the file stem.
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.clone());
        Self::open_source(Source::File(f), len, path, file, name)
    }

    /// [`NpzRowReader::open`] over the bytes of a `.npz` held in memory; `name` names the
    /// set and stands for the file in messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let len = bytes.len() as u64;
        let source = Source::Bytes(bytes.to_vec());
        Self::open_source(
            source,
            len,
            Path::new(name),
            name.to_string(),
            name.to_string(),
        )
    }

    fn open_source(
        source: Source,
        len: u64,
        path: &Path,
        file: String,
        name: String,
    ) -> Result<Self> {
        let handle = Arc::new(source);

        let whole = Window {
            file: Arc::clone(&handle),
            pos: 0,
            end: len,
        };
        let mut zip = zip::ZipArchive::new(BufReader::new(whole)).map_err(|e| match e {
            zip::result::ZipError::Io(io) if io.kind() != io::ErrorKind::UnexpectedEof => {
                Error::io(path, io)
            }
            other => Error::format(&file, format!("not a readable .npz (zip) file: {other}")),
        })?;
        let logits_entry = find_entry(&mut zip, len, &file, "logits")?
            .ok_or_else(|| Error::format(&file, "no array named 'logits'"))?;
        let mut id_entries = [None, None, None];
        for (slot, array) in id_entries.iter_mut().zip(ID_ARRAYS) {
            *slot = find_entry(&mut zip, len, &file, array)?;
        }
        drop(zip);

        let (mut lm, shape, fortran) = open_member(
            &handle,
            &logits_entry,
            &file,
            "logits",
            Dtype::is_float,
            "float32, float16 or float64",
        )?;
        let (n, k, binary) = match LogitsShape::of(&shape) {
            LogitsShape::Rows { n, k } => (n, k, false),
            LogitsShape::Binary { n } => (n, 2, true),
            LogitsShape::TooFewClasses { k } => {
                return Err(Error::TooFewClasses {
                    what: format!("{file}: logits"),
                    k,
                })
            }
            LogitsShape::Unreadable => {
                return Err(member_err(
                    &file,
                    "logits",
                    format!("shape {shape:?}, need [N, K] or [N]"),
                ))
            }
        };
        // Chunks carry labels as i32.
        if k > i32::MAX as usize {
            return Err(member_err(
                &file,
                "logits",
                format!("K = {k} classes, more than labels can index"),
            ));
        }
        lm.per_row = if binary { 1 } else { k };
        // With one row or one column, Fortran and C order are the same bytes.
        let logits = if fortran && !binary && n > 1 {
            Logits::Whole(decode_fortran(&mut lm, n, k, &file)?)
        } else {
            Logits::Stream(lm)
        };

        let mut ids: [Option<Member>; 3] = [None, None, None];
        for ((slot, entry), array) in ids.iter_mut().zip(&id_entries).zip(ID_ARRAYS) {
            let Some(entry) = entry else { continue };
            let (m, shape, _) =
                open_member(&handle, entry, &file, array, is_int, "int64 or int32")?;
            match shape.as_slice() {
                [len] if *len == n => {}
                [len] => {
                    return Err(Error::LengthMismatch {
                        what: format!("{file}: {array}"),
                        detail: format!("{len} entries for {n} logit rows"),
                    })
                }
                s => {
                    return Err(member_err(
                        &file,
                        array,
                        format!("shape {s:?}, need 1-D [N]"),
                    ))
                }
            }
            *slot = Some(m);
        }

        let cancel = Arc::new(AtomicBool::new(false));
        let hasher = spawn_hasher(Arc::clone(&handle), len, Arc::clone(&cancel))
            .map_err(|e| Error::io(path, e))?;
        Ok(NpzRowReader {
            path: path.to_path_buf(),
            file,
            name,
            n,
            k,
            binary,
            logits,
            ids,
            range: 0..n,
            next_row: 0,
            positioned: false,
            done: false,
            failed: false,
            stage: Vec::new(),
            zs: Vec::new(),
            label_buf: Vec::new(),
            hasher: Some(hasher),
            cancel,
        })
    }

    /// The set's name (the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows in the file.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Classes, after the binary `(0, z)` expansion.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether the file has a `labels` array.
    pub fn has_labels(&self) -> bool {
        self.ids[0].is_some()
    }

    /// Whether the file has a `hospital` array.
    pub fn has_hospital(&self) -> bool {
        self.ids[1].is_some()
    }

    /// Whether the file has a `slide` array.
    pub fn has_slide(&self) -> bool {
        self.ids[2].is_some()
    }

    /// Restricts reading to rows `range` (half-open, within `0..n`, else
    /// [`Error::Invalid`] naming the range and n); must be called before the first chunk.
    /// Chunks then carry absolute row offsets. The end checks (extra bytes, CRC) run only
    /// when the range reaches row n; `finish` still hashes the whole file.
    pub fn restrict(&mut self, range: Range<usize>) -> Result<()> {
        if self.positioned || self.failed {
            return Err(Error::Invalid(format!(
                "{}: restrict() must be called before the first chunk",
                self.file
            )));
        }
        if range.start > range.end || range.end > self.n {
            return Err(Error::Invalid(format!(
                "{}: row range {}..{} is not within 0..{} (the file's rows)",
                self.file, range.start, range.end, self.n
            )));
        }
        self.range = range;
        Ok(())
    }

    /// Reads the next at most `max_rows` rows into `out` (its buffers are reused: no
    /// allocation per chunk in the steady state). Returns `Ok(false)` at the end of the
    /// range. Validates what it reads: non-finite logits are [`Error::NonFinite`] naming
    /// the file, `logits`, the absolute row and column; labels outside `-1..K` are
    /// [`Error::LabelOutOfRange`] (absolute row); truncated or corrupt data is
    /// [`Error::Format`] naming file and array. After an error `out` holds no meaningful
    /// rows and every later call fails. `max_rows = 0` is [`Error::Invalid`].
    pub fn next_chunk(&mut self, max_rows: usize, out: &mut RowChunk) -> Result<bool> {
        if self.failed {
            return Err(Error::Invalid(format!(
                "{}: the reader failed earlier and cannot continue",
                self.file
            )));
        }
        if self.done {
            return Ok(false);
        }
        if max_rows == 0 {
            return Err(Error::Invalid(format!(
                "{}: next_chunk needs max_rows > 0",
                self.file
            )));
        }
        let r = self.read_chunk(max_rows, out);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn read_chunk(&mut self, max_rows: usize, out: &mut RowChunk) -> Result<bool> {
        if !self.positioned {
            self.positioned = true;
            let start = self.range.start;
            if let Logits::Stream(m) = &mut self.logits {
                skip_rows(m, start, &mut self.stage, &self.file)?;
            }
            for m in self.ids.iter_mut().flatten() {
                skip_rows(m, start, &mut self.stage, &self.file)?;
            }
            self.next_row = start;
        }
        let rows = max_rows.min(self.range.end - self.next_row);
        if rows == 0 {
            // Only an empty range gets here: a non-empty one ends in the chunk that
            // reads its last row.
            self.finish_members()?;
            return Ok(false);
        }
        let (row0, k, file) = (self.next_row, self.k, self.file.as_str());
        out.row_offset = row0;
        out.k = k;
        out.logits.clear();
        match &mut self.logits {
            Logits::Whole(all) => out
                .logits
                .extend_from_slice(&all[row0 * k..(row0 + rows) * k]),
            Logits::Stream(m) if self.binary => {
                self.zs.clear();
                read_values(m, rows, &mut self.zs, &mut self.stage, conv_f32, file, row0)?;
                out.logits
                    .extend(super::binary_rows(self.zs.iter().copied()));
            }
            Logits::Stream(m) => read_values(
                m,
                rows * k,
                &mut out.logits,
                &mut self.stage,
                conv_f32,
                file,
                row0,
            )?,
        }
        if let Some(i) = out.logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{file}: logits"),
                row: row0 + i / k,
                col: i % k,
                value: out.logits[i],
            });
        }

        let [labels, hospital, slide] = &mut self.ids;
        match labels {
            Some(m) => {
                self.label_buf.clear();
                read_values(
                    m,
                    rows,
                    &mut self.label_buf,
                    &mut self.stage,
                    conv_i64,
                    file,
                    row0,
                )?;
                if let Some((i, &label)) = self
                    .label_buf
                    .iter()
                    .enumerate()
                    .find(|(_, &y)| y < -1 || y >= k as i64)
                {
                    return Err(Error::LabelOutOfRange {
                        what: format!("{file}: labels"),
                        row: row0 + i,
                        label,
                        k,
                    });
                }
                let out_labels = out.labels.get_or_insert_with(Vec::new);
                out_labels.clear();
                // In range -1..K with K <= i32::MAX (checked at open): exact.
                out_labels.extend(self.label_buf.iter().map(|&y| y as i32));
            }
            None => out.labels = None,
        }
        for (m, dst) in [(hospital, &mut out.hospital), (slide, &mut out.slide)] {
            match m {
                Some(m) => {
                    let v = dst.get_or_insert_with(Vec::new);
                    v.clear();
                    read_values(m, rows, v, &mut self.stage, conv_i64, file, row0)?;
                }
                None => *dst = None,
            }
        }

        self.next_row += rows;
        if self.next_row == self.range.end {
            self.finish_members()?;
        }
        Ok(true)
    }

    /// The end of the range: when it is the end of the file, checks every member for
    /// extra bytes and its CRC-32.
    fn finish_members(&mut self) -> Result<()> {
        if self.range.end == self.n {
            if let Logits::Stream(m) = &mut self.logits {
                check_end(m, &self.file)?;
            }
            for m in self.ids.iter_mut().flatten() {
                check_end(m, &self.file)?;
            }
        }
        self.done = true;
        Ok(())
    }

    /// SHA-256 (lowercase hex) of the whole file's bytes, available once the last chunk
    /// of the range was read ([`Error::Invalid`] before, or after a failed read).
    pub fn finish(mut self) -> Result<String> {
        if !self.done || self.failed {
            return Err(Error::Invalid(format!(
                "{}: finish() before the last chunk was read",
                self.file
            )));
        }
        let hasher = self.hasher.take().ok_or_else(|| {
            Error::Invalid(format!("{}: the file is not being hashed", self.file))
        })?;
        match hasher.join() {
            Ok(Ok(Some(hex))) => Ok(hex),
            Ok(Ok(None)) => Err(Error::Invalid(format!(
                "{}: hashing was cancelled",
                self.file
            ))),
            Ok(Err(e)) => Err(Error::io(&self.path, e)),
            Err(_) => Err(Error::Invalid(format!(
                "{}: the hashing thread panicked",
                self.file
            ))),
        }
    }
}

impl Drop for NpzRowReader {
    /// Stops the hashing thread (within one 1 MiB read) so a dropped reader leaves no
    /// thread reading the file.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

fn is_int(t: Dtype) -> bool {
    matches!(t, Dtype::I32 | Dtype::I64)
}

/// Decodes a Fortran-order `[n, k]` logits member whole and returns it row-major; checks
/// the member's end and CRC-32 too, since it is read to its end here.
fn decode_fortran(m: &mut Member, n: usize, k: usize, file: &str) -> Result<Vec<f32>> {
    // n * k fitted in the member's checked size at open.
    let (dtype, big) = (m.dtype, m.big);
    let cols = read_elems(m, n * k, dtype, big, conv_f32, file, "logits")?;
    check_end(m, file)?;
    let mut rows = Vec::new();
    rows.try_reserve_exact(n * k)
        .map_err(|_| member_err(file, "logits", "cannot allocate the transposed array"))?;
    rows.resize(n * k, 0.0);
    // Column j of the file is cols[j*n..(j+1)*n].
    for (j, col) in cols.chunks_exact(n).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            rows[i * k + j] = v;
        }
    }
    Ok(rows)
}
