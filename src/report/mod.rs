//! Reports of an evaluation: the data model, the JSON document, a readable table, SVG
//! plots, and writing them all or nothing.

pub mod estimates;
pub mod intervals;
pub mod json;
pub mod model;
pub mod plots;
pub mod table;
pub mod write;

pub use json::{to_json, InputFile, KernelMs, Meta, SkippedFile, Transfers};
pub use table::table;
pub use write::write_outputs;
