//! Helpers shared by integration tests.

pub mod power_cut;
