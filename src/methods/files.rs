//! Prediction sets on disk, streamed: a target `.npz` is read chunk by chunk (the next
//! chunk is decoded on another thread while this one is tallied) and hashed on the way,
//! so memory is bounded by two chunks, never by the target.

use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;

use crate::backend::Backend;
use crate::data::stream::{NpzRowReader, RowChunk};
use crate::error::{Error, Result};
use crate::methods::calibration::Calibration;
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

/// The borrowed view of a decoded chunk.
pub fn chunk_rows<'a>(name: &'a str, c: &'a RowChunk) -> TargetRows<'a> {
    TargetRows {
        name,
        row_offset: c.row_offset,
        k: c.k,
        logits: &c.logits,
        labels: c.labels.as_deref(),
        hospital: c.hospital.as_deref(),
        slide: c.slide.as_deref(),
    }
}

/// Tallies the rows `rows` (all when `None`) of an opened reader under `cal`, as target
/// `name`, in chunks of `chunk_rows`; the file's SHA-256 is recorded in the tally's
/// inputs. `want_rows` also collects per-row outputs.
pub fn tally_reader<B: Backend>(
    backend: &B,
    cal: &Calibration,
    mut reader: NpzRowReader,
    name: &str,
    rows: Option<Range<usize>>,
    chunk_rows: usize,
    want_rows: bool,
) -> Result<FileTally> {
    let file = reader.path().display().to_string();
    crate::methods::calibration::same_k(&file, reader.k(), &cal.source.name, cal.k)?;
    if let Some(r) = rows {
        reader.restrict(r)?;
    }
    let groups = [reader.has_hospital(), reader.has_slide()];
    let mut tally = Tally::empty(cal, name, groups);
    let mut outputs = want_rows.then(|| RowOutputs {
        name: name.to_string(),
        ..Default::default()
    });
    let chunk_rows = chunk_rows.max(1);
    // Two buffers circulate: one being decoded, one being tallied.
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<RowChunk>>(1);
    let (free_tx, free_rx) = mpsc::channel::<RowChunk>();
    let _ = free_tx.send(RowChunk::default());
    let _ = free_tx.send(RowChunk::default());
    let result = std::thread::scope(|scope| -> Result<NpzRowReader> {
        let decoder = scope.spawn(move || {
            while let Ok(mut buf) = free_rx.recv() {
                match reader.next_chunk(chunk_rows, &mut buf) {
                    Ok(true) => {
                        if full_tx.send(Ok(buf)).is_err() {
                            break;
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        break;
                    }
                }
            }
            reader
        });
        let mut failure = None;
        for chunk in full_rx.iter() {
            let step = chunk.and_then(|c| {
                let view = chunk_rows(name, &c);
                let part = cal.tally(backend, &view)?;
                tally.merge(&part)?;
                if let Some(out) = outputs.as_mut() {
                    let part = cal.row_outputs(backend, &view)?;
                    out.yhat.extend(part.yhat);
                    out.modes.raw.append(part.modes.raw);
                    out.modes.ts.append(part.modes.ts);
                }
                Ok(c)
            });
            match step {
                Ok(c) => {
                    let _ = free_tx.send(c);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Stops the decoder: it sees the closed channel at its next buffer.
        drop(free_tx);
        drop(full_rx);
        let reader = decoder
            .join()
            .map_err(|_| Error::Invalid(format!("{file}: the decoding thread panicked")))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(reader),
        }
    })?;
    let sha256 = result.finish()?;
    tally.inputs.push(InputFile { file, sha256 });
    Ok(FileTally {
        tally,
        rows: outputs,
    })
}

/// Opens `path` and tallies it (see [`tally_reader`]).
pub fn tally_file<B: Backend>(
    backend: &B,
    cal: &Calibration,
    path: &Path,
    name: &str,
    rows: Option<Range<usize>>,
    chunk_rows: usize,
) -> Result<Tally> {
    let reader = NpzRowReader::open(path)?;
    Ok(tally_reader(backend, cal, reader, name, rows, chunk_rows, false)?.tally)
}
