//! Estimators and fits, written once over [`crate::backend::Backend`].

pub mod quantile;
pub mod temperature;
