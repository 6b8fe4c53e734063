//! The contract of each kernel, shared by `gpu/` and `cpu/`: parameters, output layouts,
//! partial formats with their merge, and pure host steps. Neither backend imports the
//! other; both import this.

pub mod tally;
