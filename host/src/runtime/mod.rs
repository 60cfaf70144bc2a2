//! The sandbox: [`Runtime`] compiles step components once and runs each
//! invocation in a fresh instance under a [`Grant`] and
//! [`Limits`].
//!
//! One concept a file: `engines` (the wasmtime engines and linkers),
//! `loading` (compiling and linking components), `prepared` (a step bound
//! to its store, grant and limits: [`PreparedStep`]), `invoke` (one
//! invocation under one deadline), `stop` (stopping an invocation from
//! outside: [`StopSignal`]), `state` (the host state of one instance) and
//! `outcome` (what an invocation gives back).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wasmtime::Engine;

use crate::grant::Grant;
use crate::limits::Limits;
use crate::store::ContextStore;

mod bindings;
mod cache;
mod engines;
mod epoch;
mod invocation;
mod invoke;
mod limiter;
mod loading;
mod outcome;
mod pool;
mod prepared;
mod state;
mod stderr;
mod step_error;
mod stop;

pub use cache::{CacheError, CodeCache, Lookup};
pub use invocation::Invocation;
pub use loading::{LoadError, LoadOptions, StepComponent};
pub use outcome::{StepOutcome, StepStatus};
pub use pool::PoolConfig;
pub use prepared::{PreparedStep, RunControl};
pub use step_error::{GuestFailure, StepError};
pub use stop::StopSignal;

use engines::{Allocation, Compiled, EngineKind, EngineSet, Metering};
use epoch::EpochTicker;

/// How to make a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached on disk; `None` turns the cache
    /// off. Default: [`CodeCache::default_dir`] (`~/.cache/contextstore/compiled`).
    pub cache_dir: Option<PathBuf>,
    /// The pooling instance allocator, for fast step start; `None`
    /// allocates every instance on demand. Default: [`PoolConfig::default`].
    /// Components that do not fit the pool are instantiated on demand (see
    /// [`PoolConfig`]).
    pub pool: Option<PoolConfig>,
    /// The largest component, in bytes, that [`Runtime::load_file`] and
    /// [`Runtime::load_bytes`] accept; a larger one is
    /// [`LoadError::TooLarge`], and a larger file is not read. Default:
    /// [`DEFAULT_MAX_COMPONENT_BYTES`] (64 MiB).
    pub max_component_bytes: u64,
}

/// The default [`RuntimeConfig::max_component_bytes`]: 64 MiB, over three
/// times the project's largest component (its Python steps, built by
/// componentize-py 0.25.1, are about 18.5 MB; its JavaScript steps about
/// 12.6 MB).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 64 << 20;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: CodeCache::default_dir(),
            pool: Some(PoolConfig::default()),
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

impl RuntimeConfig {
    /// No on-disk cache: every process compiles its components.
    pub fn without_cache() -> Self {
        Self {
            cache_dir: None,
            ..Self::default()
        }
    }
}

/// Why a [`Runtime`] could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm runtime: {0}")]
pub struct RuntimeError(String);

/// Two wasmtime engines (without and with fuel metering), their linkers,
/// compiled components, the epoch ticker that interrupts wasm code, and a
/// small async runtime for the blocking entry point. Share one `Runtime`
/// per process: it is `Send + Sync`, and every invocation uses its own
/// instance.
pub struct Runtime {
    plain: EngineSet,
    metered: EngineSet,
    /// The pooled engines (plain, metered), when the pool is on.
    pooled: Option<(EngineSet, EngineSet)>,
    pool: Option<PoolConfig>,
    /// Instance-pres by component and engine; `None` for a component that
    /// does not fit the pool.
    compiled: Mutex<Compiled>,
    /// Held while compiling, so that each component is compiled once.
    compiling: Mutex<()>,
    /// How many components this runtime compiled or took from the cache.
    compilations: std::sync::atomic::AtomicUsize,
    cache: Option<CodeCache>,
    /// [`RuntimeConfig::max_component_bytes`].
    max_component_bytes: u64,
    /// Drives the blocking [`run`](Runtime::run): its timers and WASI I/O.
    blocking: tokio::runtime::Runtime,
    _ticker: EpochTicker,
}

impl Runtime {
    /// A runtime with the default configuration (compiled code cached in
    /// the user's cache directory). See [`with_config`](Self::with_config).
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_config(RuntimeConfig::default())
    }

    /// A runtime with epoch interruption on, and WASI linked with nothing
    /// opened. A cache directory that cannot be used is logged and the
    /// runtime works without it. A pool that cannot be reserved is an error.
    pub fn with_config(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let plain = EngineSet::new(Metering::Off, None)?;
        let metered = EngineSet::new(Metering::Fuel, None)?;
        let pooled = match &config.pool {
            Some(pool) => Some((
                EngineSet::new(Metering::Off, Some(pool))?,
                EngineSet::new(Metering::Fuel, Some(pool))?,
            )),
            None => None,
        };
        let mut engines = vec![plain.engine.clone(), metered.engine.clone()];
        if let Some((a, b)) = &pooled {
            engines.extend([a.engine.clone(), b.engine.clone()]);
        }
        let ticker = EpochTicker::start(engines).map_err(|e| RuntimeError(e.to_string()))?;
        let cache = config.cache_dir.and_then(|dir| match CodeCache::open(&dir) {
            Ok(cache) => Some(cache),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "compiled-code cache unavailable; compiling every time");
                None
            }
        });
        let blocking = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("contextstore-runtime")
            .enable_time()
            .build()
            .map_err(|e| RuntimeError(e.to_string()))?;
        Ok(Self {
            plain,
            metered,
            pooled,
            pool: config.pool,
            compiled: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            compilations: std::sync::atomic::AtomicUsize::new(0),
            cache,
            max_component_bytes: config.max_component_bytes,
            blocking,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine of invocations without a fuel budget (the
    /// pooled one when the pool is on).
    pub fn engine(&self) -> &Engine {
        &self.engines(self.preferred(Metering::Off)).engine
    }

    /// The engine of `kind` (the on-demand one when the pool is off).
    fn engines(&self, kind: EngineKind) -> &EngineSet {
        match (kind.allocation, &self.pooled, kind.metering) {
            (Allocation::Pool, Some((plain, _)), Metering::Off) => plain,
            (Allocation::Pool, Some((_, metered)), Metering::Fuel) => metered,
            (_, _, Metering::Off) => &self.plain,
            (_, _, Metering::Fuel) => &self.metered,
        }
    }

    /// The pooled engine of `metering` if the pool is on, else the on-demand one.
    fn preferred(&self, metering: Metering) -> EngineKind {
        let allocation = match self.pooled {
            Some(_) => Allocation::Pool,
            None => Allocation::OnDemand,
        };
        EngineKind {
            metering,
            allocation,
        }
    }

    /// How many component compilations this runtime has made (taken from
    /// the on-disk cache or compiled), for every engine together. A
    /// component loaded again is not compiled again.
    pub fn compilations(&self) -> usize {
        self.compilations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Binds `component` to `store`, `grant` and `limits` once, for any
    /// number of invocations (as wasmtime binds an `InstancePre`).
    pub fn prepare(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        grant: &Grant,
        limits: &Limits,
    ) -> PreparedStep<'_> {
        self.prepare_async(
            component,
            crate::store::to_async(store.clone()),
            grant,
            limits,
        )
    }

    /// Runs one invocation, blocking the calling thread until it is done:
    /// [`prepare`](Self::prepare) then [`PreparedStep::run`]. Panics if
    /// called from within a tokio runtime; use [`run_async`](Self::run_async)
    /// there.
    pub fn run(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
    ) -> Result<StepOutcome, StepError> {
        self.prepare(component, store, grant, limits)
            .run(invocation)
    }

    /// Runs one invocation: [`prepare`](Self::prepare) then
    /// [`PreparedStep::run_async`]. Needs a tokio runtime with timers.
    pub async fn run_async(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
    ) -> Result<StepOutcome, StepError> {
        self.prepare(component, store, grant, limits)
            .run_async(invocation)
            .await
    }

    /// Runs `future` on this runtime's own executor, blocking the calling
    /// thread until it is done: for callers without an async runtime (the
    /// flow runner's threads, the command line). Panics if called from
    /// within a tokio runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.blocking.handle().block_on(future)
    }
}
