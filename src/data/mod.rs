//! Prediction sets: the in-memory form of one `.npz` file (DESIGN.md section 1),
//! its validation, the npz/npy reader and writer (whole sets in [`npz`], chunks of rows in
//! [`stream`]), atomic writes, the Camelyon17-shaped generator and the sweep's grid of other shapes.

mod atomic;
pub mod camelyon;
pub mod grid;
pub(crate) mod npy;
pub mod npz;
pub mod rows;
pub mod stream;

pub use camelyon::{generate_dataset, generate_split, split_specs, GeneratorConfig, SplitSpec};
pub use npz::{
    load_npy_scores, load_npz, load_npz_bytes, save_npz, save_npz_arrays, write_atomic, NpzArray,
};
pub use stream::{NpzRowReader, RowChunk};

use ndarray::{Array1, Array2};

use crate::error::{Error, Result};

/// How a `logits` array's shape reads (DESIGN.md 1), the one rule every reader (both
/// `.npz` paths, Python's arrays) follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsShape {
    /// `[N, K]`, K >= 2: rows of K classes.
    Rows {
        /// Rows.
        n: usize,
        /// Classes.
        k: usize,
    },
    /// `[N]` or `[N, 1]`: one binary logit z a row, read as the two-class row `(0, z)`
    /// (same softmax, same argmax).
    Binary {
        /// Rows.
        n: usize,
    },
    /// `[N, 0]`: too few classes.
    TooFewClasses {
        /// The K given.
        k: usize,
    },
    /// Any other rank.
    Unreadable,
}

impl LogitsShape {
    /// Reads `shape`.
    pub fn of(shape: &[usize]) -> Self {
        match *shape {
            [n, k] if k >= 2 => LogitsShape::Rows { n, k },
            [n] | [n, 1] => LogitsShape::Binary { n },
            [_, k] => LogitsShape::TooFewClasses { k },
            _ => LogitsShape::Unreadable,
        }
    }
}

/// Expands binary logits `z` to rows `(0, z)`.
pub fn binary_rows(z: impl IntoIterator<Item = f32>) -> impl Iterator<Item = f32> {
    z.into_iter().flat_map(|z| [0.0, z])
}

/// One prediction set: `logits` `[N, K]` (row-major), optional labels (-1 = unknown)
/// and optional group ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionSet {
    /// Name used in reports and errors (the file stem for sets read from disk).
    pub name: String,
    /// `[N, K]` logits in standard (row-major) layout.
    pub logits: Array2<f32>,
    /// `[N]` class index in `0..K`, or -1 where unknown. `None` = all unknown.
    pub labels: Option<Array1<i64>>,
    /// `[N]` hospital (WILDS centre) ids.
    pub hospital: Option<Array1<i64>>,
    /// `[N]` slide ids.
    pub slide: Option<Array1<i64>>,
}

impl PredictionSet {
    /// A set with logits only.
    pub fn new(name: impl Into<String>, logits: Array2<f32>) -> Self {
        PredictionSet {
            name: name.into(),
            logits: logits.as_standard_layout().into_owned(),
            labels: None,
            hospital: None,
            slide: None,
        }
    }

    /// Adds labels.
    pub fn with_labels(mut self, labels: Array1<i64>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Number of rows.
    pub fn n(&self) -> usize {
        self.logits.nrows()
    }

    /// Number of classes.
    pub fn k(&self) -> usize {
        self.logits.ncols()
    }

    /// The logits as one row-major slice (what the GPU uploads); copies only when a
    /// caller replaced `logits` with a non-standard layout.
    pub fn logits_slice(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.logits.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(self.logits.iter().copied().collect()),
        }
    }

    /// The set with every array in standard (contiguous, row-major) layout: itself when it
    /// already is (the usual case), else a copy.
    pub fn standard(&self) -> std::borrow::Cow<'_, PredictionSet> {
        let contiguous =
            |a: &Option<Array1<i64>>| a.as_ref().is_none_or(|a| a.as_slice().is_some());
        if self.logits.as_slice().is_some()
            && contiguous(&self.labels)
            && contiguous(&self.hospital)
            && contiguous(&self.slide)
        {
            return std::borrow::Cow::Borrowed(self);
        }
        let std = |a: &Option<Array1<i64>>| a.as_ref().map(|a| a.as_standard_layout().into_owned());
        std::borrow::Cow::Owned(PredictionSet {
            name: self.name.clone(),
            logits: self.logits.as_standard_layout().into_owned(),
            labels: std(&self.labels),
            hospital: std(&self.hospital),
            slide: std(&self.slide),
        })
    }

    /// Number of rows with a known label.
    pub fn n_labelled(&self) -> usize {
        self.labels
            .as_ref()
            .map_or(0, |l| l.iter().filter(|&&y| y >= 0).count())
    }

    /// Checks DESIGN.md section 6: K >= 2, finite logits, labels in range, lengths agree.
    /// Errors name the set, the array and the first offending row.
    pub fn validate(&self) -> Result<()> {
        let k = self.k();
        if k < 2 {
            return Err(Error::TooFewClasses {
                what: format!("{}: logits", self.name),
                k,
            });
        }
        let set = self.standard();
        fn ids(a: &Option<Array1<i64>>) -> Option<&[i64]> {
            a.as_ref().and_then(|a| a.as_slice())
        }
        rows::RowArrays {
            name: &self.name,
            row_offset: 0,
            k,
            logits: set.logits.as_slice().unwrap_or(&[]),
            labels: ids(&set.labels).map(rows::Labels::I64),
            hospital: ids(&set.hospital),
            slide: ids(&set.slide),
        }
        .check()
    }
}
