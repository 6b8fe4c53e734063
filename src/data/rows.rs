//! The one row validator (DESIGN.md 6): whatever holds rows (a whole set, a chunk of a
//! target, a backend's input) checks them here, so every path refuses the same rows with
//! the same error: non-finite logits and labels outside `-1..K` name the first offending
//! row of the whole set, arrays of another length name the array.

use crate::error::{Error, Result};

/// Labels as a caller holds them: -1 = unknown.
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    /// int32 (as the kernels read them).
    I32(&'a [i32]),
    /// int64 (as `.npz` files and [`super::PredictionSet`] hold them).
    I64(&'a [i64]),
}

impl Labels<'_> {
    /// Entries.
    pub fn len(&self) -> usize {
        match self {
            Labels::I32(l) => l.len(),
            Labels::I64(l) => l.len(),
        }
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first entry outside `-1..k`, as (index, label).
    fn first_out_of_range(&self, k: usize) -> Option<(usize, i64)> {
        let bad = |y: i64| y < -1 || y >= k as i64;
        match self {
            Labels::I32(l) => l
                .iter()
                .position(|&y| bad(y as i64))
                .map(|i| (i, l[i] as i64)),
            Labels::I64(l) => l.iter().position(|&y| bad(y)).map(|i| (i, l[i])),
        }
    }
}

/// Rows held as borrowed arrays: `name` (errors say `name: array`), the index of the
/// first row in the whole set, K, row-major logits and the optional per-row arrays. An
/// evaluation's in-memory target is one (`methods::target::TargetArrays`).
#[derive(Clone, Copy, Debug)]
pub struct RowArrays<'a> {
    /// The set's name.
    pub name: &'a str,
    /// Index of the first row in the whole set (errors name rows of the set).
    pub row_offset: usize,
    /// Classes.
    pub k: usize,
    /// `rows * k` logits.
    pub logits: &'a [f32],
    /// Labels, one per row.
    pub labels: Option<Labels<'a>>,
    /// Hospital ids, one per row.
    pub hospital: Option<&'a [i64]>,
    /// Slide ids, one per row.
    pub slide: Option<&'a [i64]>,
}

impl RowArrays<'_> {
    /// Checks that every per-row array has one entry a row (the cheap part of
    /// [`RowArrays::check`]: what a caller needs before it cuts the rows into chunks).
    pub fn check_lengths(&self) -> Result<()> {
        let n = self.logits.len().checked_div(self.k).unwrap_or(0);
        for (array, len) in [
            ("labels", self.labels.map(|l| l.len())),
            ("hospital", self.hospital.map(<[i64]>::len)),
            ("slide", self.slide.map(<[i64]>::len)),
        ] {
            if let Some(len) = len.filter(|&len| len != n) {
                return Err(Error::LengthMismatch {
                    what: format!("{}: {array}", self.name),
                    detail: format!("{len} entries for {n} logit rows"),
                });
            }
        }
        Ok(())
    }

    /// Checks, in this order: logits make rows of K, every logit finite, every per-row
    /// array one entry a row, every label in `-1..K`.
    pub fn check(&self) -> Result<()> {
        let k = self.k;
        if k == 0 || !self.logits.len().is_multiple_of(k) {
            return Err(Error::LengthMismatch {
                what: format!("{}: logits", self.name),
                detail: format!("{} values do not make rows of K = {k}", self.logits.len()),
            });
        }
        if let Some(i) = self.logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{}: logits", self.name),
                row: self.row_offset + i / k,
                col: i % k,
                value: self.logits[i],
            });
        }
        self.check_lengths()?;
        if let Some((i, label)) = self.labels.and_then(|l| l.first_out_of_range(k)) {
            return Err(Error::LabelOutOfRange {
                what: format!("{}: labels", self.name),
                row: self.row_offset + i,
                label,
                k,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows<'a>(logits: &'a [f32], labels: Option<Labels<'a>>) -> RowArrays<'a> {
        RowArrays {
            name: "t",
            row_offset: 100,
            k: 2,
            logits,
            labels,
            hospital: None,
            slide: None,
        }
    }

    #[test]
    fn errors_name_the_set_row_and_array() {
        assert!(rows(&[0.0, 1.0], Some(Labels::I32(&[1]))).check().is_ok());
        // Rows of the whole set: offset 100 + row 1.
        let e = rows(&[0.0, 1.0, f32::NAN, 0.0], None).check().unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFinite {
                    row: 101,
                    col: 0,
                    ..
                }
            ),
            "{e}"
        );
        let e = rows(&[0.0, 1.0, 0.0, 0.0], Some(Labels::I64(&[-1, 2])))
            .check()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::LabelOutOfRange {
                    row: 101,
                    label: 2,
                    k: 2,
                    ..
                }
            ),
            "{e}"
        );
        // -2 is out of range too; i32 and i64 agree.
        for l in [Labels::I32(&[-2]), Labels::I64(&[-2])] {
            let e = rows(&[0.0, 1.0], Some(l)).check().unwrap_err();
            assert!(matches!(e, Error::LabelOutOfRange { label: -2, .. }), "{e}");
        }
        let e = rows(&[0.0, 1.0], Some(Labels::I32(&[0, 1])))
            .check()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            Error::LengthMismatch {
                what: "t: labels".into(),
                detail: "2 entries for 1 logit rows".into()
            }
            .to_string()
        );
        let e = rows(&[0.0, 1.0, 2.0], None).check().unwrap_err();
        assert!(matches!(e, Error::LengthMismatch { .. }), "{e}");
    }
}
