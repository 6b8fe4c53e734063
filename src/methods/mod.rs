//! Estimators and fits, written once over [`crate::backend::Backend`]: calibrate once
//! ([`calibration`]), tally anywhere ([`tally`]), merge exactly, report ([`evaluate`]).

pub mod bootstrap;
pub mod calibration;
pub mod cot;
pub mod cot_dual;
pub mod cot_files;
pub mod cot_passes;
pub mod cot_reference;
pub mod cott;
pub mod evaluate;
pub mod files;
pub mod quantile;
pub mod report;
pub mod row_outputs;
pub mod scores;
pub mod sets;
pub mod shift_scores;
pub mod tally;
pub mod target;
pub mod temperature;
pub mod thresholds;
pub mod transport;
