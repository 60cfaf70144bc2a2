//! [`Limits`]: the resources one step invocation may use.

use std::time::Duration;

/// Per-invocation resource limits. Every field has a safe default; a guest
/// that exceeds one is stopped (time, memory, fuel) or refused (value size,
/// writes), and the store stays consistent: a write is committed whole or
/// not at all.
///
/// | limit | default | when exceeded |
/// | --- | --- | --- |
/// | `timeout` | 10 s | the guest is interrupted: `StepError::Timeout` |
/// | `memory_bytes` | 128 MiB | memory growth fails; a guest that then aborts gets `StepError::OutOfMemory` |
/// | `fuel` | none (unlimited) | `StepError::OutOfFuel` |
/// | `max_value_bytes` | 16 MiB | the write is refused with `quota-exceeded` |
/// | `max_writes` | 1,000 | further writes are refused with `quota-exceeded` |
/// | `max_json_depth` | 1,024 | the write is refused with `invalid-json` |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for the whole invocation, instantiation included.
    /// Enforced by epoch interruption with a resolution of the runtime's
    /// epoch tick (10 ms).
    pub timeout: Duration,
    /// Largest linear memory of the guest, in bytes: all its memories together.
    pub memory_bytes: usize,
    /// Instructions budget in wasmtime fuel units (about one per wasm
    /// instruction), or `None` for no budget.
    pub fuel: Option<u64>,
    /// Largest JSON text, in bytes, of one value written by the guest.
    pub max_value_bytes: usize,
    /// Most write calls (`put`, `put-global`, `upsert-global`, refused ones
    /// included) in one invocation.
    pub max_writes: u32,
    /// Deepest nesting of arrays and objects in a value written by the guest,
    /// counted in the text as sent (containers that a duplicate key would
    /// discard count too).
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            fuel: None,
            max_value_bytes: 16 << 20,
            max_writes: 1_000,
            max_json_depth: 1_024,
        }
    }
}
