//! One small error enum for every public entry point.
//!
//! Messages name the file, the array and the first offending row, so a user with a
//! million-row file can find the problem. [`Error::exit_code`] maps each class to the
//! command line's documented exit code.

use std::path::PathBuf;

/// Every failure the crate reports. Never a panic on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // fields are named by the messages
pub enum Error {
    /// Some cells of a sweep failed; the others were done (exit code 7).
    #[error("{failed} of {cells} sweep cells failed (listed in {path})")]
    CellsFailed {
        failed: usize,
        cells: usize,
        path: PathBuf,
    },
    /// Another sweep holds the output directory's lock (exit code 8).
    #[error("{path}: another sweep is writing into this directory (its lock is held)")]
    Locked { path: PathBuf },
    /// Reading or writing a file failed at the OS level.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `.npz`/`.npy` file is not what DESIGN.md section 1 describes (bad zip, bad header,
    /// wrong dtype/rank/shape, missing array, truncated data).
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },
    /// A NaN or infinite value in an array that must be finite.
    #[error("{what}: non-finite value {value} at row {row}, column {col}")]
    NonFinite {
        what: String,
        row: usize,
        col: usize,
        value: f32,
    },
    /// A label outside `0..k` (other than -1 = unknown).
    #[error("{what}: label {label} at row {row} is not a class: K = {k} classes are labelled 0 to {}, and -1 means unknown", .k.saturating_sub(1))]
    LabelOutOfRange {
        what: String,
        row: usize,
        label: i64,
        k: usize,
    },
    /// Arrays that must have one entry per row disagree in length.
    #[error("{what}: length mismatch: {detail}")]
    LengthMismatch { what: String, detail: String },
    /// An input that must not be empty is empty.
    #[error("{what}: empty ({detail})")]
    Empty { what: String, detail: String },
    /// Fewer than two classes.
    #[error("{what}: K = {k}, need at least 2 classes")]
    TooFewClasses { what: String, k: usize },
    /// A miscoverage level outside (0, 1) or NaN.
    #[error("alpha = {0} is not in (0, 1)")]
    BadAlpha(f64),
    /// A temperature that is not finite and positive.
    #[error("temperature T = {0} must be finite and > 0")]
    BadTemperature(f64),
    /// A source set with unknown labels (calibration needs every label).
    #[error("{what}: calibration needs every label; row {row} has label -1")]
    UnlabelledSource { what: String, row: usize },
    /// Pieces that do not fit together: a tally made with another calibration, tallies
    /// of different targets, rows tallied twice.
    #[error("{what}: {detail}")]
    Incompatible { what: String, detail: String },
    /// Any other invalid argument, with a sentence that says which.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// No GPU adapter could be found (or none matched `WGPU_ADAPTER_NAME`).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The GPU ran out of memory.
    #[error("GPU out of memory: {0}")]
    GpuOutOfMemory(String),
    /// The device was lost (driver reset, hang, removal).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Any other GPU failure (validation, map failure, request_device failure).
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// Crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error for `file`.
    pub fn format(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.to_string(),
            msg: msg.into(),
        }
    }

    /// True for the errors that mean "the GPU did not work" (the ones `--device auto`
    /// answers by falling back to the CPU path).
    pub fn is_gpu_failure(&self) -> bool {
        matches!(
            self,
            Error::NoAdapter(_) | Error::GpuOutOfMemory(_) | Error::DeviceLost(_) | Error::Gpu(_)
        )
    }

    /// The command line's exit code for this class of error (documented in the README):
    /// 2 usage/invalid argument, 3 I/O, 4 bad file format, 5 invalid data, 6 GPU failure,
    /// 7 sweep cells failed (the others done), 8 another sweep holds the output's lock.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadAlpha(_) | Error::BadTemperature(_) | Error::Invalid(_) => 2,
            Error::Io { .. } => 3,
            Error::Format { .. } => 4,
            Error::NonFinite { .. }
            | Error::LabelOutOfRange { .. }
            | Error::LengthMismatch { .. }
            | Error::Empty { .. }
            | Error::TooFewClasses { .. }
            | Error::UnlabelledSource { .. }
            | Error::Incompatible { .. } => 5,
            Error::NoAdapter(_)
            | Error::GpuOutOfMemory(_)
            | Error::DeviceLost(_)
            | Error::Gpu(_) => 6,
            Error::CellsFailed { .. } => 7,
            Error::Locked { .. } => 8,
        }
    }
}
