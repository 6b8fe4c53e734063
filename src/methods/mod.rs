//! Estimators and fits, written once over [`crate::backend::Backend`].

pub mod temperature;
