//! Estimators and fits, written once over [`crate::backend::Backend`]: calibrate once
//! ([`calibration`]), tally anywhere ([`tally`]), merge exactly, report ([`evaluate`]).

pub mod bootstrap;
pub mod calibration;
pub mod evaluate;
pub mod files;
pub mod quantile;
pub mod tally;
pub mod temperature;
