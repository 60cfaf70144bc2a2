//! The runtime's wasmtime engines: with and without fuel metering, pooled
//! and on demand, each with its linker.

use std::collections::HashMap;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy};

use super::RuntimeError;
use super::bindings::{self, StepPre};
use super::pool::PoolConfig;
use super::state::StepState;

/// Whether an engine meters fuel. Fuel metering costs every guest
/// instruction, so only invocations with a fuel budget pay for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Metering {
    Off,
    Fuel,
}

/// How an engine allocates instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Allocation {
    Pool,
    OnDemand,
}

/// Which of the runtime's engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct EngineKind {
    pub(super) metering: Metering,
    pub(super) allocation: Allocation,
}

impl EngineKind {
    pub(super) fn on_demand(self) -> Self {
        Self {
            allocation: Allocation::OnDemand,
            ..self
        }
    }
}

/// Instance-pres by component hash and engine; `None` for a component that
/// does not fit the pool.
pub(super) type Compiled = HashMap<(blake3::Hash, EngineKind), Option<StepPre<StepState>>>;

/// One wasmtime engine with its linker.
pub(super) struct EngineSet {
    pub(super) engine: Engine,
    pub(super) linker: Linker<StepState>,
}

impl EngineSet {
    /// An engine; `pool` makes it allocate from a pool. Engines that differ
    /// only in allocation compile the same code, so one compilation serves
    /// both (and one compiled-code cache entry).
    pub(super) fn new(metering: Metering, pool: Option<&PoolConfig>) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(metering == Metering::Fuel);
        if let Some(pool) = pool {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool.to_wasmtime()));
        }
        let engine = Engine::new(&config).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        bindings::Step::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        Ok(Self { engine, linker })
    }
}
