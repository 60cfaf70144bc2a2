//! [`Limits`]: the resources one step invocation may use.

use std::time::Duration;

/// Per-invocation resource limits. Every field has a safe default; a guest
/// that exceeds one is stopped (time, memory, fuel, instances, tables,
/// resources) or refused (value size, key size, writes, reads, read bytes,
/// depth), and the store stays
/// consistent: a write is committed whole or not at all.
///
/// | limit | default | when exceeded |
/// | --- | --- | --- |
/// | `timeout` | 10 s | the invocation is stopped: `StepError::Timeout` |
/// | `memory_bytes` | 128 MiB | memory growth fails; a guest that then aborts gets `StepError::OutOfMemory` |
/// | `fuel` | none (unlimited, and not metered) | `StepError::OutOfFuel` |
/// | `max_value_bytes` | 16 MiB | the write is refused with `quota-exceeded` |
/// | `max_key_bytes` | 4 KiB | the global call is refused with `quota-exceeded` |
/// | `max_writes` | 1,000 | further writes are refused with `quota-exceeded` |
/// | `max_reads` | 10,000 | further reads are refused with `quota-exceeded` |
/// | `max_read_bytes` | 256 MiB | a read that would pass it is refused with `quota-exceeded` |
/// | `max_json_depth` | 1,024 (also the ceiling) | the write is refused with `invalid-json` |
/// | `max_instances` | 200 | instantiation fails: `StepError::Instantiate` |
/// | `max_tables` | 200 | instantiation or table creation fails |
/// | `max_table_elements` | 1,000,000 in all tables together | table growth fails |
/// | `max_memories` | 50 | instantiation or memory creation fails |
/// | `max_resources` | 10,000 live resource handles | the call that would make one more traps: `StepError::TooManyResources` |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for the whole invocation: instantiation, wasm code,
    /// WASI calls (sleeps and polls included) and store calls. Wasm code is
    /// interrupted by epochs (10 ms resolution); everything else by the
    /// runtime's timer.
    pub timeout: Duration,
    /// Largest linear memory of the guest, in bytes: all its memories together.
    pub memory_bytes: usize,
    /// Instructions budget in wasmtime fuel units (about one per wasm
    /// instruction), or `None` for no budget. Fuel is metered only for
    /// invocations that have a budget.
    pub fuel: Option<u64>,
    /// Largest JSON text, in bytes, of one value written by the guest.
    pub max_value_bytes: usize,
    /// Longest global key, in bytes, that the guest may name.
    pub max_key_bytes: usize,
    /// Most write calls (`put`, `put-global`, `upsert-global`, refused ones
    /// included) in one invocation.
    pub max_writes: u32,
    /// Most read calls (`get`, `list-keys`, `get-global`, refused ones
    /// included) in one invocation.
    pub max_reads: u32,
    /// Most bytes the guest may be given by its reads in one invocation:
    /// the JSON text of every value it `get`s (or `get-global`s) and the
    /// node ids `list-keys` returns, all added up. A read that would pass
    /// it is refused, its text not handed over, and so is every read after.
    pub max_read_bytes: u64,
    /// Deepest nesting of arrays and objects in a value written by the guest,
    /// counted in the text as sent (containers that a duplicate key would
    /// discard count too). Capped at [`json::MAX_DEPTH`](crate::json::MAX_DEPTH).
    pub max_json_depth: usize,
    /// Most core instances (a component holds several).
    pub max_instances: usize,
    /// Most tables, in all instances together.
    pub max_tables: usize,
    /// Most table elements, in all tables together.
    pub max_table_elements: usize,
    /// Most linear memories, in all instances together.
    pub max_memories: usize,
    /// Most live resource handles: entries of the host's WASI resource
    /// table (an output stream from `get-stderr`, a pollable from a clock
    /// subscription…), and, as a separate count of the same limit, the
    /// component-model handles of all the guest's instances together. A
    /// handle the guest drops gives its place back.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            fuel: None,
            max_value_bytes: 16 << 20,
            max_key_bytes: 4 << 10,
            max_writes: 1_000,
            max_reads: 10_000,
            max_read_bytes: 256 << 20,
            max_json_depth: crate::json::MAX_DEPTH,
            max_instances: 200,
            max_tables: 200,
            max_table_elements: 1_000_000,
            max_memories: 50,
            max_resources: 10_000,
        }
    }
}
