//! The sandbox: [`Runtime`] compiles step components once and runs each
//! invocation in a fresh instance under a [`Grant`] and [`Limits`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::grant::Grant;
use crate::guest_store::GuestStore;
use crate::json;
use crate::limits::Limits;
use crate::store::ContextStore;

mod bindings;
mod cache;
mod epoch;
mod invocation;
mod memory;
mod state;
mod step_error;

pub use cache::CodeCache;
pub use invocation::Invocation;
pub use step_error::{GuestFailure, StepError};

use bindings::{StepPre, WitInvocation, WitUpstream};
use cache::Lookup;
use epoch::EpochTicker;
use memory::MemoryLimiter;
use state::{STDERR_CAPTURE, StepState};

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
    pre: StepPre<StepState>,
}

impl StepComponent {
    /// The component's name: its file name, or the name it was loaded under.
    pub fn name(&self) -> &str {
        &self.name
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
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutcome {
    /// The node's stored output.
    pub output: Value,
    /// Whether the step ran now.
    pub status: StepStatus,
}

/// One wasmtime engine, its linker, compiled components, and the epoch
/// ticker that enforces timeouts. Share one `Runtime` per process: it is
/// `Send + Sync`, and every [`run`](Runtime::run) uses its own instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StepState>,
    compiled: Mutex<HashMap<blake3::Hash, StepComponent>>,
    /// Held while compiling, so that each component is compiled once.
    compiling: Mutex<()>,
    cache: Option<CodeCache>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// A runtime with the default configuration (compiled code cached in
    /// the user's cache directory). See [`with_config`](Self::with_config).
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_config(RuntimeConfig::default())
    }

    /// A runtime with epoch interruption and fuel metering on, and WASI
    /// linked with nothing opened. A cache directory that cannot be used is
    /// logged and the runtime works without it.
    pub fn with_config(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let cache_dir = config.cache_dir;
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        bindings::Step::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone()).map_err(|e| RuntimeError(e.to_string()))?;
        let cache = cache_dir.and_then(|dir| match CodeCache::open(&dir, &engine) {
            Ok(cache) => Some(cache),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "compiled-code cache unavailable; compiling every time");
                None
            }
        });
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            cache,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
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
    /// the first compilation.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<StepComponent, LoadError> {
        let hash = blake3::hash(bytes);
        let lookup = || {
            let compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
            compiled.get(&hash).cloned()
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
        let started = Instant::now();
        let component = match self.cache.as_ref().map(|c| c.get(&self.engine, &hash)) {
            Some(Lookup::Hit(component)) => component,
            _ => {
                let component =
                    Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid {
                        name: name.to_owned(),
                        reason: format!("{e:#}"),
                    })?;
                if let Some(cache) = &self.cache
                    && let Err(error) = cache.put(&hash, &component)
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
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = StepPre::new(instance_pre).map_err(wrong_world)?;
        tracing::info!(name, bytes = bytes.len(), elapsed = ?started.elapsed(), "loaded component");
        let loaded = StepComponent {
            name: name.into(),
            pre,
        };
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, loaded.clone());
        Ok(loaded)
    }

    /// Runs one invocation of `component` against `store`.
    ///
    /// If the node's output is already stored, the step is not run and the
    /// stored output is returned ([`StepStatus::AlreadyDone`]). Otherwise the
    /// step runs in a fresh instance under `grant` and `limits`; it succeeds
    /// only if `run` returns `ok` *and* the node's output is then in the store.
    pub fn run(
        &self,
        component: &StepComponent,
        store: &Arc<dyn ContextStore>,
        invocation: &Invocation,
        grant: &Grant,
        limits: &Limits,
    ) -> Result<StepOutcome, StepError> {
        let (run_id, node_id) = (invocation.flow_run_id, invocation.node_id);
        let span = tracing::info_span!("step", component = %component.name, flow_run_id = %run_id, %node_id);
        let _entered = span.enter();
        if let Some(output) = store.get(run_id, node_id)? {
            tracing::info!("output already stored; not running");
            return Ok(StepOutcome {
                output,
                status: StepStatus::AlreadyDone,
            });
        }

        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let state = StepState {
            wasi: WasiCtxBuilder::new().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            guest: GuestStore::new(
                store.clone(),
                run_id,
                node_id,
                grant.clone(),
                limits.clone(),
            ),
            stderr,
        };
        let mut wasm = Store::new(&self.engine, state);
        wasm.limiter(|state| &mut state.limiter);
        wasm.set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .map_err(|e| StepError::Instantiate(format!("{e:#}")))?;
        wasm.set_epoch_deadline(EpochTicker::ticks_for(limits.timeout));
        wasm.epoch_deadline_trap();

        let started = Instant::now();
        let instance =
            component
                .pre
                .instantiate(&mut wasm)
                .map_err(|e| match classify(e, &wasm, limits) {
                    StepError::Trap { message, .. } => StepError::Instantiate(message),
                    other => other,
                })?;
        let wit_invocation = to_wit(invocation);
        let result = instance.call_run(&mut wasm, &wit_invocation);
        tracing::info!(elapsed = ?started.elapsed(), writes = wasm.data().guest.writes(), "step returned");
        if result.as_ref().map_or(true, Result::is_err) && wasm.data().guest.lost_race() {
            // Another invocation stored this node's output first: the node is done.
            if let Some(output) = store.get(run_id, node_id)? {
                tracing::info!("another invocation finished this node first");
                return Ok(StepOutcome {
                    output,
                    status: StepStatus::AlreadyDone,
                });
            }
        }
        match result {
            Err(error) => Err(classify(error, &wasm, limits)),
            Ok(Err(failure)) => Err(StepError::Failed(failure.into())),
            Ok(Ok(())) => match store.get(run_id, node_id)? {
                Some(output) => Ok(StepOutcome {
                    output,
                    status: StepStatus::Ran,
                }),
                None => Err(StepError::NoOutput),
            },
        }
    }
}

fn to_wit(invocation: &Invocation) -> WitInvocation {
    WitInvocation {
        flow_run_id: invocation.flow_run_id.to_string(),
        node_id: invocation.node_id.to_string(),
        // A serde_json::Value always serializes; "null" is the fallback all the same.
        params: json::to_text(&invocation.params).unwrap_or_else(|_| "null".to_owned()),
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
    if wasm.data().limiter.hit() {
        return StepError::OutOfMemory {
            limit_bytes: limits.memory_bytes,
        };
    }
    let captured = wasm.data().stderr.contents();
    let stderr = String::from_utf8_lossy(&captured).into_owned();
    StepError::Trap {
        message: error.root_cause().to_string(),
        report: format!("{error:?}"),
        stderr,
    }
}
