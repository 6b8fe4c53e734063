//! Prediction sets on disk, streamed: targets are read chunk by chunk by one decoding
//! thread (the next chunk, of this target or the next, is decoded while this one is
//! tallied) and hashed on the way, so memory is bounded by a few chunks, never by a
//! target.

use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;

use crate::backend::Backend;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::error::{Error, Result};
use crate::kernel::tally::GROUP_ARRAYS;
use crate::methods::calibration::{check_k, Calibration, TallyStream};
use crate::methods::tally::{Tally, TargetRows};
use crate::report::model::{InputFile, RowOutputs};

/// What streaming one file gives back.
#[derive(Debug)]
pub struct FileTally {
    /// The tally of the rows read.
    pub tally: Tally,
    /// Per-row outputs, when asked for (these do grow with the target).
    pub rows: Option<RowOutputs>,
}

/// One file to stream: an opened reader, the target name, an optional row range.
pub struct FileJob {
    /// The reader (headers checked).
    pub reader: NpzRowReader,
    /// Target name.
    pub name: String,
    /// Rows to read (all when `None`).
    pub rows: Option<Range<usize>>,
    /// Index in the whole target of the file's first row (`tally --row-offset`; a target
    /// in parts): the file holds rows `row_offset..` of a larger target.
    pub row_offset: usize,
}

impl FileJob {
    /// Opens `path` (headers checked) as target `name`, rows `rows` (all when `None`).
    pub fn open(path: &Path, name: &str, rows: Option<Range<usize>>) -> Result<Self> {
        Ok(FileJob {
            reader: NpzRowReader::open(path)?,
            name: name.to_string(),
            rows,
            row_offset: 0,
        })
    }

    /// The same job, its file holding rows `row_offset..` of a larger target.
    pub fn at_offset(mut self, row_offset: usize) -> Self {
        self.row_offset = row_offset;
        self
    }
}

/// The borrowed view of a decoded chunk of a file whose first row is row `file_offset`
/// of its target.
pub fn chunk_view<'a>(name: &'a str, c: &'a RowChunk, file_offset: usize) -> TargetRows<'a> {
    TargetRows {
        name,
        row_offset: file_offset + c.row_offset,
        k: c.k,
        logits: &c.logits,
        labels: c.labels.as_deref(),
        hospital: c.hospital.as_deref(),
        slide: c.slide.as_deref(),
    }
}

/// What the decoding thread sends: a chunk of file `i`, or file `i`'s end and SHA-256.
enum Decoded {
    Chunk(usize, RowChunk),
    End(usize, String, RowChunk),
}

/// Buffers in flight: one being tallied, up to two decoded ahead.
const BUFFERS: usize = 3;

/// Tallies every job under `cal` in chunks of `chunk_rows`, in order; each file's
/// SHA-256 lands in its tally's inputs. `want_rows` also collects per-row outputs.
pub fn tally_files<B: Backend>(
    backend: &B,
    cal: &Calibration,
    mut jobs: Vec<FileJob>,
    chunk_rows: usize,
    want_rows: bool,
) -> Result<Vec<FileTally>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        let file = job.reader.path().display().to_string();
        check_k(&file, job.reader.k(), cal)?;
        if let Some(r) = job.rows.clone() {
            job.reader.restrict(r)?;
        }
        let groups = [job.reader.has_hospital(), job.reader.has_slide()];
        out.push(FileTally {
            tally: Tally::empty(cal, &job.name, groups),
            rows: want_rows.then(|| RowOutputs {
                name: job.name.clone(),
                ..Default::default()
            }),
        });
    }
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let offsets: Vec<usize> = jobs.iter().map(|j| j.row_offset).collect();
    let files: Vec<String> = jobs
        .iter()
        .map(|j| j.reader.path().display().to_string())
        .collect();
    // Each job's rows, as a hint for what its tally keeps (capped by the rows of f32
    // logits the file's size can hold: a header is untrusted, and a hint must not make
    // room for more logits than the file has bytes for).
    let hints: Vec<usize> = jobs
        .iter()
        .map(|j| {
            let n = j.rows.as_ref().map_or(j.reader.n(), |r| r.len());
            let bytes = std::fs::metadata(j.reader.path()).map_or(0, |m| m.len());
            let row_bytes = 4 * j.reader.k().max(1) as u64;
            n.min(usize::try_from(bytes / row_bytes).unwrap_or(usize::MAX))
        })
        .collect();
    let chunk_rows = chunk_rows.max(1);
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Decoded>>(BUFFERS - 1);
    let (free_tx, free_rx) = mpsc::channel::<RowChunk>();
    for _ in 0..BUFFERS {
        let _ = free_tx.send(RowChunk::default());
    }
    std::thread::scope(|scope| -> Result<()> {
        let decoder = scope.spawn(move || {
            for (i, job) in jobs.into_iter().enumerate() {
                let mut reader = job.reader;
                loop {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    match reader.next_chunk(chunk_rows, &mut buf) {
                        Ok(true) => {
                            if full_tx.send(Ok(Decoded::Chunk(i, buf))).is_err() {
                                return;
                            }
                        }
                        Ok(false) => {
                            // The unused buffer travels back with the file's end.
                            let sent = match reader.finish() {
                                Ok(sha) => full_tx.send(Ok(Decoded::End(i, sha, buf))),
                                Err(e) => full_tx.send(Err(e)),
                            };
                            if sent.is_err() {
                                return;
                            }
                            break;
                        }
                        Err(e) => {
                            let _ = full_tx.send(Err(e));
                            return;
                        }
                    }
                }
            }
        });
        let mut failure = None;
        let mut streams: Vec<Option<TallyStream<'_, B>>> = Vec::new();
        for (i, f) in out.iter().enumerate() {
            let groups = GROUP_ARRAYS.map(|g| f.tally.group_arrays.iter().any(|x| x == g));
            match cal.tally_stream(backend, &names[i], groups) {
                Ok(mut s) => {
                    s.reserve_rows(hints[i]);
                    streams.push(Some(s));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        for msg in full_rx.iter() {
            if failure.is_some() {
                break;
            }
            let step = msg.and_then(|m| match m {
                Decoded::Chunk(i, c) => {
                    let view = chunk_view(&names[i], &c, offsets[i]);
                    let part = streams[i]
                        .as_mut()
                        .ok_or_else(|| Error::Invalid("tally stream finished".into()))?
                        .add_valid_with_rows(&view, out[i].rows.is_some())?;
                    if let (Some(rows), Some(part)) = (out[i].rows.as_mut(), part) {
                        rows.yhat.extend(part.yhat);
                        rows.modes.raw.append(part.modes.raw);
                        rows.modes.ts.append(part.modes.ts);
                    }
                    let _ = free_tx.send(c);
                    Ok(())
                }
                Decoded::End(i, sha256, buf) => {
                    if let Some(stream) = streams[i].take() {
                        out[i].tally = stream.finish()?;
                    }
                    out[i].tally.inputs.push(InputFile {
                        file: files[i].clone(),
                        sha256,
                    });
                    let _ = free_tx.send(buf);
                    Ok(())
                }
            });
            if let Err(e) = step {
                failure = Some(e);
                break;
            }
        }
        // Stops the decoder: it sees a closed channel at its next send or receive.
        drop(free_tx);
        drop(full_rx);
        decoder
            .join()
            .map_err(|_| Error::Invalid("the decoding thread panicked".into()))?;
        failure.map_or(Ok(()), Err)
    })?;
    Ok(out)
}

/// Opens `path` and tallies rows `rows` of it (all when `None`) as target `name`.
pub fn tally_file<B: Backend>(
    backend: &B,
    cal: &Calibration,
    path: &Path,
    name: &str,
    rows: Option<Range<usize>>,
    chunk_rows: usize,
) -> Result<Tally> {
    let job = FileJob::open(path, name, rows)?;
    let mut done = tally_files(backend, cal, vec![job], chunk_rows, false)?;
    Ok(done.remove(0).tally)
}
