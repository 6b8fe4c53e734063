//! A target as an evaluation takes it: rows in memory, borrowed ([`TargetArrays`]: a
//! [`PredictionSet`] or Python's numpy arrays), or an `.npz` file streamed in chunks
//! ([`FileJob`]). In-memory rows go through the one chunk loop here, files through
//! `methods::files`; both tally chunks of the same size under the same calibration, so a
//! target's report does not depend on where its rows came from.

use crate::backend::Backend;
use crate::data::PredictionSet;
use crate::error::{Error, Result};
use crate::methods::calibration::Calibration;
use crate::methods::files::FileJob;
use crate::methods::tally::{Tally, TargetRows};
use crate::report::model::RowOutputs;

pub use crate::data::rows::Labels;
use crate::data::rows::RowArrays;

/// A whole target in memory, borrowed: row-major `n * k` logits and optional labels and
/// group ids, `row_offset` the index of its first row in a larger target (0 for a whole
/// one; bootstrap weights follow it).
pub type TargetArrays<'a> = RowArrays<'a>;

impl<'a> TargetArrays<'a> {
    /// The arrays of a whole set in standard layout ([`PredictionSet::standard`] gives
    /// one); another layout is an error naming the set.
    pub fn of_set(set: &'a PredictionSet) -> Result<Self> {
        let not_standard = |arr: &str| {
            Error::Invalid(format!(
                "{}: {arr} is not in standard layout (use PredictionSet::standard)",
                set.name
            ))
        };
        let ids = |a: &'a Option<ndarray::Array1<i64>>, arr: &str| -> Result<Option<&'a [i64]>> {
            a.as_ref()
                .map(|a| a.as_slice().ok_or_else(|| not_standard(arr)))
                .transpose()
        };
        Ok(TargetArrays {
            name: &set.name,
            row_offset: 0,
            k: set.k(),
            logits: set
                .logits
                .as_slice()
                .ok_or_else(|| not_standard("logits"))?,
            labels: ids(&set.labels, "labels")?.map(Labels::I64),
            hospital: ids(&set.hospital, "hospital")?,
            slide: ids(&set.slide, "slide")?,
        })
    }

    /// Rows `start..end` of these arrays, as arrays of their own (offset kept); a range
    /// past the rows is an error naming the target.
    pub fn rows(&self, start: usize, end: usize) -> Result<Self> {
        self.check_lengths()?;
        if start > end || end > self.n() {
            return Err(Error::Invalid(format!(
                "{}: rows {start}..{end} of a target of {} rows",
                self.name,
                self.n()
            )));
        }
        let k = self.k;
        Ok(TargetArrays {
            row_offset: self.row_offset + start,
            logits: &self.logits[start * k..end * k],
            labels: self.labels.map(|l| match l {
                Labels::I32(y) => Labels::I32(&y[start..end]),
                Labels::I64(y) => Labels::I64(&y[start..end]),
            }),
            hospital: self.hospital.map(|h| &h[start..end]),
            slide: self.slide.map(|s| &s[start..end]),
            ..*self
        })
    }

    /// Runs `f` on all these rows as one chunk (lengths checked, labels narrowed).
    pub fn with_rows<R>(&self, f: impl FnOnce(&TargetRows<'_>) -> Result<R>) -> Result<R> {
        self.check_lengths()?;
        self.with_chunk((0, self.n()), &mut Vec::new(), f)
    }

    /// Rows.
    pub fn n(&self) -> usize {
        self.logits.len().checked_div(self.k).unwrap_or(0)
    }

    /// Runs `f` on rows `start..end` as the tally takes them; int64 labels are narrowed
    /// into `buf`.
    fn with_chunk<R>(
        &self,
        (start, end): (usize, usize),
        buf: &mut Vec<i32>,
        f: impl FnOnce(&TargetRows<'_>) -> Result<R>,
    ) -> Result<R> {
        let k = self.k;
        let labels = match self.labels {
            Some(Labels::I32(y)) => Some(&y[start..end]),
            Some(Labels::I64(y)) => {
                narrow(&y[start..end], self.row_offset + start, k, self.name, buf)?;
                Some(buf.as_slice())
            }
            None => None,
        };
        f(&TargetRows {
            name: self.name,
            row_offset: self.row_offset + start,
            k,
            logits: &self.logits[start * k..end * k],
            labels,
            hospital: self.hospital.map(|h| &h[start..end]),
            slide: self.slide.map(|s| &s[start..end]),
        })
    }

    /// The chunks `(start, end)` of `chunk_rows` rows; an empty target is one empty
    /// chunk, so its shapes are still checked.
    fn chunks(&self, chunk_rows: usize) -> impl Iterator<Item = (usize, usize)> {
        let n = self.n();
        let step = chunk_rows.max(1);
        let count = n.div_ceil(step).max(1);
        (0..count).map(move |c| (c * step, ((c + 1) * step).min(n)))
    }

    /// The tally of every row, chunk by chunk, under `cal`.
    pub fn tally<B: Backend>(
        &self,
        backend: &B,
        cal: &Calibration,
        chunk_rows: usize,
    ) -> Result<Tally> {
        self.check_lengths()?;
        let groups = [self.hospital.is_some(), self.slide.is_some()];
        let mut tally = Tally::empty(cal, self.name, groups);
        let mut buf = Vec::new();
        for chunk in self.chunks(chunk_rows) {
            let part = self.with_chunk(chunk, &mut buf, |rows| cal.tally(backend, rows))?;
            tally.merge(&part)?;
        }
        Ok(tally)
    }

    /// Per-row outputs of every row, chunk by chunk.
    pub fn row_outputs<B: Backend>(
        &self,
        backend: &B,
        cal: &Calibration,
        chunk_rows: usize,
    ) -> Result<RowOutputs> {
        self.check_lengths()?;
        let mut out = RowOutputs {
            name: self.name.to_string(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        for chunk in self.chunks(chunk_rows) {
            let part = self.with_chunk(chunk, &mut buf, |r| cal.row_outputs(backend, r))?;
            out.yhat.extend(part.yhat);
            out.modes.raw.append(part.modes.raw);
            out.modes.ts.append(part.modes.ts);
        }
        Ok(out)
    }
}

/// Narrows int64 labels to int32 into `buf`, or returns the label error for the first
/// that is not a class of `k` (-1 = unknown); `first_row` is the target's index of
/// `labels[0]`.
fn narrow(
    labels: &[i64],
    first_row: usize,
    k: usize,
    name: &str,
    buf: &mut Vec<i32>,
) -> Result<()> {
    buf.clear();
    for (i, &y) in labels.iter().enumerate() {
        if y < -1 || y >= k as i64 {
            return Err(Error::LabelOutOfRange {
                what: format!("{name}: labels"),
                row: first_row + i,
                label: y,
                k,
            });
        }
        buf.push(y as i32);
    }
    Ok(())
}

/// One target of an evaluation.
pub enum TargetInput<'a> {
    /// Rows in memory.
    Arrays(TargetArrays<'a>),
    /// An `.npz` file (or a row range of it), streamed.
    File(Box<FileJob>),
}

impl TargetInput<'_> {
    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            TargetInput::Arrays(a) => a.name,
            TargetInput::File(f) => &f.name,
        }
    }

    /// Its classes.
    pub fn k(&self) -> usize {
        match self {
            TargetInput::Arrays(a) => a.k,
            TargetInput::File(f) => f.reader.k(),
        }
    }

    /// Its rows.
    pub fn n(&self) -> usize {
        match self {
            TargetInput::Arrays(a) => a.n(),
            TargetInput::File(f) => f.reader.n(),
        }
    }
}
