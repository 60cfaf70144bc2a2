//! The sandbox: [`Runtime`] compiles step components once and runs each
//! invocation in a fresh instance under a [`Grant`] and [`Limits`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use crate::grant::Grant;
use crate::guest_store::GuestStore;
use crate::json::JsonText;
use crate::limits::Limits;
use crate::store::{ContextStore, Provenance, deadline, provenance};
use crate::text::{self, MAX_MESSAGE_BYTES};

mod bindings;
mod cache;
mod epoch;
mod invocation;
mod limiter;
mod pool;
mod state;
mod stderr;
mod step_error;

pub use cache::{CacheError, CodeCache, Lookup};
pub use invocation::Invocation;
pub use pool::PoolConfig;
pub use step_error::{GuestFailure, StepError};

use bindings::{StepPre, WitInvocation, WitUpstream};

use epoch::EpochTicker;
use limiter::GuestLimiter;
use state::{STDERR_CAPTURE, StepState, Writes};
use stderr::StderrRing;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read component {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("{name} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The component's name (its file name, or the name given).
        name: String,
        /// What the compiler said.
        reason: String,
    },
    /// The component imports something the host does not provide, or does
    /// not export the `step` world's `run`.
    #[error("{name} does not fit the step world: {reason}")]
    WrongWorld {
        /// The component's name.
        name: String,
        /// What is missing or mismatched.
        reason: String,
    },
}

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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: CodeCache::default_dir(),
            pool: Some(PoolConfig::default()),
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

/// A compiled step component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct StepComponent {
    name: Arc<str>,
    /// The BLAKE3 hash of the component's bytes.
    hash: blake3::Hash,
    /// The bytes, for a fuel-metered compilation made on demand.
    bytes: Arc<[u8]>,
    /// The engine `pre` is for: pooled, unless the component does not fit.
    kind: EngineKind,
    pre: StepPre<StepState>,
}

impl StepComponent {
    /// The component's name: its file name, or the name it was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The BLAKE3 hash of the component's bytes, in hex.
    pub fn content_hash(&self) -> String {
        self.hash.to_hex().to_string()
    }
}

impl std::fmt::Debug for StepComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepComponent")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Whether an invocation ran the step or found its output already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// The step ran and wrote its output.
    Ran,
    /// The output was already in the store; the step was not run again.
    AlreadyDone,
}

/// The result of a successful invocation.
#[derive(Debug)]
pub struct StepOutcome {
    /// The node's stored output, as the exact text stored.
    pub output: JsonText,
    /// Whether the step ran now.
    pub status: StepStatus,
    /// The end of what the step wrote to stderr (the last 16 KiB); empty
    /// when it wrote nothing or did not run.
    pub stderr: String,
    /// How the step failed after it stored its output (it trapped, returned
    /// an error or ran out of time after its `put`). The output stands and
    /// the node is done; the failure is reported beside it.
    pub warning: Option<StepError>,
}

impl StepOutcome {
    /// The output parsed into a `serde_json::Value`.
    pub fn value(&self) -> Result<serde_json::Value, crate::json::JsonError> {
        self.output.to_value()
    }
}

/// Whether an engine meters fuel. Fuel metering costs every guest
/// instruction, so only invocations with a fuel budget pay for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Metering {
    Off,
    Fuel,
}

/// How an engine allocates instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Allocation {
    Pool,
    OnDemand,
}

/// Which of the runtime's engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EngineKind {
    metering: Metering,
    allocation: Allocation,
}

impl EngineKind {
    fn on_demand(self) -> Self {
        Self {
            allocation: Allocation::OnDemand,
            ..self
        }
    }
}

/// Instance-pres by component hash and engine; `None` for a component that
/// does not fit the pool.
type Compiled = HashMap<(blake3::Hash, EngineKind), Option<StepPre<StepState>>>;

/// One wasmtime engine with its linker.
struct EngineSet {
    engine: Engine,
    linker: Linker<StepState>,
}

impl EngineSet {
    /// An engine; `pool` makes it allocate from a pool. Engines that differ
    /// only in allocation compile the same code, so one compilation serves
    /// both (and one compiled-code cache entry).
    fn new(metering: Metering, pool: Option<&PoolConfig>) -> Result<Self, RuntimeError> {
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

    /// Loads a component file. See [`load_bytes`](Self::load_bytes).
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<StepComponent, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.load_bytes(&name, &bytes)
    }

    /// Compiles a component and checks that it fits the `step` world.
    /// The same bytes are compiled once per runtime: a second load returns
    /// the first compilation. (A fuel-metered compilation is made the first
    /// time an invocation with a fuel budget needs it.)
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<StepComponent, LoadError> {
        let hash = blake3::hash(bytes);
        let (kind, pre) =
            self.prepare_fitting(name, &hash, bytes, self.preferred(Metering::Off))?;
        Ok(StepComponent {
            name: name.into(),
            hash,
            bytes: Arc::from(bytes),
            kind,
            pre,
        })
    }

    /// The instance-pre for `kind`, or for its on-demand engine if the
    /// component does not fit the pool; with the kind it is for.
    fn prepare_fitting(
        &self,
        name: &str,
        hash: &blake3::Hash,
        bytes: &[u8],
        kind: EngineKind,
    ) -> Result<(EngineKind, StepPre<StepState>), LoadError> {
        if let Some(pre) = self.prepare(name, hash, bytes, kind)? {
            return Ok((kind, pre));
        }
        let on_demand = kind.on_demand();
        match self.prepare(name, hash, bytes, on_demand)? {
            Some(pre) => Ok((on_demand, pre)),
            None => Err(LoadError::Invalid {
                name: name.to_owned(),
                reason: "no engine accepts the component".into(),
            }),
        }
    }

    /// The instance-pre of `bytes` for the engine of `kind`: from this
    /// runtime's memory, or made now. `None` if the component does not fit
    /// the pool (for a pooled `kind`).
    ///
    /// The code is compiled once, for the on-demand engine (through the
    /// on-disk cache); a pooled engine gets a copy of that compiled code,
    /// and checks on the way in whether the component fits its slots.
    fn prepare(
        &self,
        name: &str,
        hash: &blake3::Hash,
        bytes: &[u8],
        kind: EngineKind,
    ) -> Result<Option<StepPre<StepState>>, LoadError> {
        let lookup = |kind: EngineKind| {
            let compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
            compiled.get(&(*hash, kind)).cloned()
        };
        let remember = |kind: EngineKind, pre: Option<StepPre<StepState>>| {
            self.compiled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((*hash, kind), pre);
        };
        if let Some(found) = lookup(kind) {
            return Ok(found);
        }
        // One compilation at a time: a second thread loading the same bytes
        // waits and takes the first one's result instead of compiling again.
        let _compiling = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = lookup(kind) {
            return Ok(found);
        }
        let started = Instant::now();
        let on_demand = kind.on_demand();
        let compiled = match lookup(on_demand).flatten() {
            Some(pre) => pre,
            None => {
                let component = self.compile(name, hash, bytes, kind.metering)?;
                let pre = self.link(name, on_demand, &component)?;
                remember(on_demand, Some(pre.clone()));
                pre
            }
        };
        let pre = if Engine::same(&self.engines(kind).engine, &self.engines(on_demand).engine) {
            Some(compiled)
        } else {
            let component = compiled.instance_pre().component();
            let pooled = self.move_to_pool(name, kind, component)?;
            remember(kind, pooled.clone());
            pooled
        };
        tracing::info!(name, bytes = bytes.len(), ?kind, fits = pre.is_some(), elapsed = ?started.elapsed(), "loaded component");
        Ok(pre)
    }

    /// The component compiled for the on-demand engine of `metering`: from
    /// the on-disk cache, or compiled now (and cached).
    fn compile(
        &self,
        name: &str,
        hash: &blake3::Hash,
        bytes: &[u8],
        metering: Metering,
    ) -> Result<Component, LoadError> {
        let engine = &self
            .engines(EngineKind {
                metering,
                allocation: Allocation::OnDemand,
            })
            .engine;
        self.compilations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(Lookup::Hit(component)) = self.cache.as_ref().map(|c| c.get(engine, hash)) {
            return Ok(component);
        }
        let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        })?;
        if let Some(cache) = &self.cache
            && let Err(error) = cache.put(engine, hash, &component)
        {
            tracing::warn!(name, %error, "could not write the compiled-code cache");
        }
        Ok(component)
    }

    /// `component` (compiled for an on-demand engine) moved into the pooled
    /// engine of `kind`, linked; `None` if it does not fit the pool.
    fn move_to_pool(
        &self,
        name: &str,
        kind: EngineKind,
        component: &Component,
    ) -> Result<Option<StepPre<StepState>>, LoadError> {
        let code = component.serialize().map_err(|e| LoadError::Invalid {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        })?;
        // SAFETY: `code` was serialized just now, in this process, by an
        // engine with the same compilation settings (the engines differ only
        // in how they allocate instances); wasmtime checks the settings again.
        match unsafe { Component::deserialize(&self.engines(kind).engine, &code) } {
            Ok(pooled) => self.link(name, kind, &pooled).map(Some),
            Err(error) => {
                tracing::info!(name, reason = %format!("{error:#}"), "component does not fit the instance pool; it is instantiated on demand");
                Ok(None)
            }
        }
    }

    /// Links `component` for the engine of `kind`.
    fn link(
        &self,
        name: &str,
        kind: EngineKind,
        component: &Component,
    ) -> Result<StepPre<StepState>, LoadError> {
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .engines(kind)
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        StepPre::new(instance_pre).map_err(wrong_world)
    }

    /// Runs one invocation of `component` against `store`, blocking the
    /// calling thread until it is done. For callers without an async
    /// runtime; from async code use [`run_async`](Self::run_async) (this
    /// one panics if called from within a tokio runtime).
    pub fn run(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
    ) -> Result<StepOutcome, StepError> {
        // The caller's thread is given over to this invocation, so the
        // guest's writes run on it directly instead of on a blocking pool
        // thread (a hand-over that costs more than a small write).
        self.blocking.handle().block_on(self.run_with(
            component,
            store,
            invocation,
            grant,
            limits,
            Writes::Inline,
        ))
    }

    /// Runs one invocation of `component` against `store`.
    ///
    /// If the node's output is already stored, the step is not run and the
    /// stored output is returned ([`StepStatus::AlreadyDone`]). Otherwise the
    /// step runs in a fresh instance under `grant` and `limits`; it succeeds
    /// only if `run` returns `ok` *and* the node's output is then in the store.
    ///
    /// One deadline, [`Limits::timeout`] from now, covers everything:
    /// instantiation, wasm code (interrupted by epochs), WASI calls (a
    /// guest sleeping or blocked on a pollable), and store calls (which stop
    /// waiting on a busy database at the deadline). Past it the invocation
    /// is [`StepError::Timeout`] and the runtime, the store and the calling
    /// task are free at once. Needs a tokio runtime with timers enabled.
    pub async fn run_async(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
    ) -> Result<StepOutcome, StepError> {
        self.run_with(
            component,
            store,
            invocation,
            grant,
            limits,
            Writes::Blocking,
        )
        .await
    }

    async fn run_with(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
        writes: Writes,
    ) -> Result<StepOutcome, StepError> {
        let started = Instant::now();
        let deadline = started
            .checked_add(limits.timeout)
            .unwrap_or_else(far_future);
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        let span = tracing::info_span!("step", component = %component.name, flow_run_id = %run_id, %node_id);
        let call = Call {
            component,
            store,
            invocation,
            grant,
            limits,
            deadline,
            writes,
        };
        let invoke = self.invoke(&call);
        match tokio::time::timeout_at(deadline.into(), invoke.instrument(span)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                tracing::info!(elapsed = ?started.elapsed(), "step timed out");
                // A step that stored its output before its time ran out is done.
                let look = Instant::now() + Duration::from_secs(1);
                match deadline::with_deadline(look, || store.get_text(run_id, node_id)) {
                    Ok(Some(output)) => Ok(StepOutcome {
                        output,
                        status: StepStatus::Ran,
                        stderr: String::new(),
                        warning: Some(StepError::Timeout(limits.timeout)),
                    }),
                    _ => Err(StepError::Timeout(limits.timeout)),
                }
            }
        }
    }

    async fn invoke(&self, call: &Call<'_>) -> Result<StepOutcome, StepError> {
        let Call {
            component,
            store,
            invocation,
            limits,
            deadline,
            ..
        } = *call;
        let started_at = provenance::unix_millis_now();
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        if let Some(error) = &invocation.invalid_params {
            return Err(StepError::InvalidParams(error.to_string()));
        }
        let stored = deadline::with_deadline(deadline, || store.get_text(run_id, node_id))?;
        if let Some(output) = stored {
            tracing::info!("output already stored; not running");
            return Ok(StepOutcome {
                output,
                status: StepStatus::AlreadyDone,
                stderr: String::new(),
                warning: None,
            });
        }
        let metering = match limits.fuel {
            None => Metering::Off,
            Some(_) => Metering::Fuel,
        };
        // A memory slot cannot grow past its size: an invocation allowed
        // more memory than the pool's slots has its instance made on demand.
        let fits_slot = self
            .pool
            .as_ref()
            .is_some_and(|pool| limits.memory_bytes <= pool.memory_bytes);
        let wanted = if fits_slot {
            self.preferred(metering)
        } else {
            self.preferred(metering).on_demand()
        };
        let (mut kind, pre) = self.pre_for(component, wanted)?;
        let mut wasm = self.new_store(kind, call, started_at)?;
        let instance = match pre.instantiate_async(&mut wasm).await {
            Err(error)
                if kind.allocation == Allocation::Pool && pool::is_pool_exhausted(&error) =>
            {
                // Every slot is taken: this invocation gets its own allocation.
                tracing::debug!(%error, "instance pool exhausted; instantiating on demand");
                let (on_demand, pre) = self.pre_for(component, kind.on_demand())?;
                kind = on_demand;
                wasm = self.new_store(kind, call, started_at)?;
                pre.instantiate_async(&mut wasm).await
            }
            other => other,
        }
        .map_err(|e| match classify(e, &wasm, limits) {
            StepError::Trap { message, .. } => StepError::Instantiate(message),
            other => other,
        })?;
        let wit_invocation = to_wit(invocation);
        let result = instance.call_run(&mut wasm, &wit_invocation).await;
        let guest = wasm.data().guest.as_ref();
        let writes = guest.map_or(0, GuestStore::writes);
        tracing::info!(elapsed = ?deadline.saturating_duration_since(Instant::now()), writes, "step returned");
        if let Some(output) = guest.and_then(GuestStore::own_output) {
            // The output is stored: the node is done, whatever came after.
            let output = output.clone();
            let warning = match result {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(StepError::Failed(failure.into())),
                Err(error) => Some(classify(error, &wasm, limits)),
            };
            if let Some(warning) = &warning {
                tracing::info!(error = %warning, "step stored its output, then failed; the node is done");
            }
            return Ok(StepOutcome {
                output,
                status: StepStatus::Ran,
                stderr: wasm.data().stderr.contents(),
                warning,
            });
        }
        let lost_race = guest.is_some_and(GuestStore::lost_race);
        let read_output = || deadline::with_deadline(deadline, || store.get_text(run_id, node_id));
        if result.as_ref().map_or(true, Result::is_err) && lost_race {
            // Another invocation stored this node's output first: the node is done.
            if let Some(output) = read_output()? {
                tracing::info!("another invocation finished this node first");
                return Ok(StepOutcome {
                    output,
                    status: StepStatus::AlreadyDone,
                    stderr: wasm.data().stderr.contents(),
                    warning: None,
                });
            }
        }
        match result {
            Err(error) => Err(classify(error, &wasm, limits)),
            Ok(Err(failure)) => Err(StepError::Failed(failure.into())),
            Ok(Ok(())) => match read_output()? {
                Some(output) => Ok(StepOutcome {
                    output,
                    status: StepStatus::AlreadyDone,
                    stderr: wasm.data().stderr.contents(),
                    warning: None,
                }),
                None => Err(StepError::NoOutput),
            },
        }
    }

    /// The instance-pre of `component` for the engine of `kind`, or for the
    /// on-demand engine if the component does not fit the pool; with the
    /// kind it is for.
    fn pre_for(
        &self,
        component: &StepComponent,
        kind: EngineKind,
    ) -> Result<(EngineKind, StepPre<StepState>), StepError> {
        if kind == component.kind {
            return Ok((kind, component.pre.clone()));
        }
        self.prepare_fitting(&component.name, &component.hash, &component.bytes, kind)
            .map_err(|e| StepError::Instantiate(e.to_string()))
    }

    /// A fresh wasmtime store for one invocation, on the engine of `kind`:
    /// a WASI context with nothing opened and stderr kept in a ring, the
    /// guest's view of `store`, the limiter, fuel and the epoch deadline.
    fn new_store(
        &self,
        kind: EngineKind,
        call: &Call<'_>,
        started_at: i64,
    ) -> Result<Store<StepState>, StepError> {
        let Call {
            component,
            store,
            invocation,
            grant,
            limits,
            deadline,
            writes,
            ..
        } = *call;
        let stderr = StderrRing::new(STDERR_CAPTURE);
        let state = StepState {
            wasi: WasiCtxBuilder::new().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits),
            guest: Some(
                GuestStore::new(
                    store.clone(),
                    invocation.flow_run_id,
                    invocation.node_id,
                    grant.clone(),
                    limits.clone(),
                )
                .with_provenance(Provenance {
                    component_hash: component.content_hash(),
                    params_hash: invocation.params_hash(),
                    upstream_hash: invocation.upstream_hash(),
                    attempt: invocation.attempt,
                    host: host_name().to_owned(),
                    started_at,
                    ended_at: started_at,
                }),
            ),
            stderr,
            deadline,
            writes,
        };
        let mut wasm = Store::new(&self.engines(kind).engine, state);
        wasm.limiter(|state| &mut state.limiter);
        if let Some(fuel) = limits.fuel {
            wasm.set_fuel(fuel)
                .map_err(|e| StepError::Instantiate(format!("{e:#}")))?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        wasm.set_epoch_deadline(EpochTicker::ticks_for(left));
        wasm.epoch_deadline_trap();
        Ok(wasm)
    }
}

/// One invocation's arguments, as [`Runtime::run_with`] received them.
#[derive(Clone, Copy)]
struct Call<'a> {
    component: &'a StepComponent,
    store: &'a Arc<dyn ContextStore>,
    invocation: &'a Invocation,
    grant: &'a Grant,
    limits: &'a Limits,
    deadline: Instant,
    writes: Writes,
}

/// Most bytes kept of a trap's report and of the guest's stderr, once
/// neutralised (stderr is captured as its last 16 KiB; escaping its control
/// characters can make it longer).
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// This machine's host name, read once.
fn host_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// A deadline for a timeout too long to add to now: practically never.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

fn to_wit(invocation: &Invocation) -> WitInvocation {
    WitInvocation {
        flow_run_id: invocation.flow_run_id.to_string(),
        node_id: invocation.node_id.to_string(),
        params: invocation.params.as_str().to_owned(),
        upstream: invocation
            .upstream
            .iter()
            .map(|(name, node_id)| WitUpstream {
                name: name.clone(),
                node_id: node_id.to_string(),
            })
            .collect(),
    }
}

/// Turns a wasmtime error from instantiate or `run` into a [`StepError`].
fn classify(error: wasmtime::Error, wasm: &Store<StepState>, limits: &Limits) -> StepError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return StepError::Timeout(limits.timeout),
        Some(Trap::OutOfFuel) => return StepError::OutOfFuel(limits.fuel.unwrap_or(u64::MAX)),
        _ => {}
    }
    if wasm.data().limiter.memory_hit() {
        return StepError::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        };
    }
    // Guest text all: a trap message can quote the guest, the report names
    // its functions (from its own name section), stderr is what it wrote.
    StepError::Trap {
        message: text::for_terminal(&error.root_cause().to_string(), MAX_MESSAGE_BYTES),
        report: text::lines_for_terminal(&format!("{error:?}"), MAX_REPORT_BYTES),
        stderr: text::lines_for_terminal(&wasm.data().stderr.contents(), MAX_REPORT_BYTES),
    }
}
