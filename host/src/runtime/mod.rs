//! The sandbox: [`Runtime`] compiles step components once and runs each
//! invocation in a fresh instance under a [`Grant`] and [`Limits`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use crate::grant::Grant;
use crate::guest_store::GuestStore;
use crate::json::JsonText;
use crate::limits::Limits;
use crate::store::{ContextStore, Provenance, deadline, provenance};

mod bindings;
mod cache;
mod epoch;
mod invocation;
mod limiter;
mod state;
mod stderr;
mod step_error;

pub use cache::CodeCache;
pub use invocation::Invocation;
pub use step_error::{GuestFailure, StepError};

use bindings::{StepPre, WitInvocation, WitUpstream};
use cache::Lookup;
use epoch::EpochTicker;
use limiter::GuestLimiter;
use state::{STDERR_CAPTURE, StepState};
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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: CodeCache::default_dir(),
        }
    }
}

impl RuntimeConfig {
    /// No on-disk cache: every process compiles its components.
    pub fn without_cache() -> Self {
        Self { cache_dir: None }
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

/// The result of an invocation that left the node's output stored: the
/// node is done.
#[derive(Debug)]
pub struct StepOutcome {
    /// The node's stored output, as the exact text stored.
    pub output: JsonText,
    /// Whether the step ran now.
    pub status: StepStatus,
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

/// One wasmtime engine with its linker.
struct EngineSet {
    engine: Engine,
    linker: Linker<StepState>,
}

impl EngineSet {
    fn new(metering: Metering) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(metering == Metering::Fuel);
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
    compiled: Mutex<HashMap<(blake3::Hash, Metering), StepPre<StepState>>>,
    /// Held while compiling, so that each component is compiled once.
    compiling: Mutex<()>,
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
    /// runtime works without it.
    pub fn with_config(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let plain = EngineSet::new(Metering::Off)?;
        let metered = EngineSet::new(Metering::Fuel)?;
        let ticker = EpochTicker::start(vec![plain.engine.clone(), metered.engine.clone()])
            .map_err(|e| RuntimeError(e.to_string()))?;
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
            compiled: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            cache,
            blocking,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine of invocations without a fuel budget.
    pub fn engine(&self) -> &Engine {
        &self.plain.engine
    }

    fn engines(&self, metering: Metering) -> &EngineSet {
        match metering {
            Metering::Off => &self.plain,
            Metering::Fuel => &self.metered,
        }
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
        let pre = self.prepare(name, &hash, bytes, Metering::Off)?;
        Ok(StepComponent {
            name: name.into(),
            hash,
            bytes: Arc::from(bytes),
            pre,
        })
    }

    /// The instance-pre of `bytes` for the engine of `metering`: from this
    /// runtime's memory, the on-disk cache, or compiled now.
    fn prepare(
        &self,
        name: &str,
        hash: &blake3::Hash,
        bytes: &[u8],
        metering: Metering,
    ) -> Result<StepPre<StepState>, LoadError> {
        let key = (*hash, metering);
        let lookup = || {
            let compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
            compiled.get(&key).cloned()
        };
        if let Some(found) = lookup() {
            return Ok(found);
        }
        // One compilation at a time: a second thread loading the same bytes
        // waits and takes the first one's result instead of compiling again.
        let _compiling = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = lookup() {
            return Ok(found);
        }
        let set = self.engines(metering);
        let started = Instant::now();
        let component = match self.cache.as_ref().map(|c| c.get(&set.engine, hash)) {
            Some(Lookup::Hit(component)) => component,
            _ => {
                let component =
                    Component::new(&set.engine, bytes).map_err(|e| LoadError::Invalid {
                        name: name.to_owned(),
                        reason: format!("{e:#}"),
                    })?;
                if let Some(cache) = &self.cache
                    && let Err(error) = cache.put(&set.engine, hash, &component)
                {
                    tracing::warn!(name, %error, "could not write the compiled-code cache");
                }
                component
            }
        };
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = set
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = StepPre::new(instance_pre).map_err(wrong_world)?;
        tracing::info!(name, bytes = bytes.len(), ?metering, elapsed = ?started.elapsed(), "loaded component");
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, pre.clone());
        Ok(pre)
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
        self.blocking
            .handle()
            .block_on(self.run_async(component, store, invocation, grant, limits))
    }

    /// Runs one invocation of `component` against `store`.
    ///
    /// If the node's output is already stored, the step is not run and the
    /// stored output is returned ([`StepStatus::AlreadyDone`]). Otherwise the
    /// step runs in a fresh instance under `grant` and `limits`.
    ///
    /// One rule decides the result: the node is done if and only if its
    /// output is stored. A step that stored its output and then trapped,
    /// returned an error or timed out is `Ok`, with the failure in
    /// [`StepOutcome::warning`]; a step that returned `ok` without storing
    /// its output is [`StepError::NoOutput`].
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
        let started = Instant::now();
        let deadline = started
            .checked_add(limits.timeout)
            .unwrap_or_else(far_future);
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        let span = tracing::info_span!("step", component = %component.name, flow_run_id = %run_id, %node_id);
        let invoke = self.invoke(component, store, invocation, grant, limits, deadline);
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
                        warning: Some(StepError::Timeout(limits.timeout)),
                    }),
                    _ => Err(StepError::Timeout(limits.timeout)),
                }
            }
        }
    }

    async fn invoke(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<StepOutcome, StepError> {
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
                warning: None,
            });
        }
        let (metering, pre) = match limits.fuel {
            None => (Metering::Off, component.pre.clone()),
            Some(_) => (
                Metering::Fuel,
                self.prepare(
                    &component.name,
                    &component.hash,
                    &component.bytes,
                    Metering::Fuel,
                )
                .map_err(|e| StepError::Instantiate(e.to_string()))?,
            ),
        };

        let stderr = StderrRing::new(STDERR_CAPTURE);
        let state = StepState {
            wasi: WasiCtxBuilder::new().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits),
            guest: Some(
                GuestStore::new(
                    store.clone(),
                    run_id,
                    node_id,
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
        };
        let mut wasm = Store::new(&self.engines(metering).engine, state);
        wasm.limiter(|state| &mut state.limiter);
        if let Some(fuel) = limits.fuel {
            wasm.set_fuel(fuel)
                .map_err(|e| StepError::Instantiate(format!("{e:#}")))?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        wasm.set_epoch_deadline(EpochTicker::ticks_for(left));
        wasm.epoch_deadline_trap();

        let instance = pre.instantiate_async(&mut wasm).await.map_err(|e| {
            match classify(e, &wasm, limits) {
                StepError::Trap { message, .. } => StepError::Instantiate(message),
                other => other,
            }
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
                    warning: None,
                }),
                None => Err(StepError::NoOutput),
            },
        }
    }
}

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
    StepError::Trap {
        message: error.root_cause().to_string(),
        report: format!("{error:?}"),
        stderr: wasm.data().stderr.contents(),
    }
}
