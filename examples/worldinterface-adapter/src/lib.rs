//! contextstore behind a WorldInterface engine's own `ContextStore` trait:
//! the adapter the README shows ([`adapter`]), compiled and tested here
//! against local copies of the engine's trait, errors and ids
//! ([`engine`]), written from their documented shape.

pub mod adapter;
pub mod engine;
