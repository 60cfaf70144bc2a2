//! Loading step components: compiled once per runtime (through the on-disk
//! cache), linked into an instance-pre for each engine that needs one.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::Runtime;
use super::bindings::StepPre;
use super::cache::Lookup;
use super::engines::{Allocation, EngineKind, Metering};
use super::state::StepState;

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
    /// The component is larger than
    /// [`RuntimeConfig::max_component_bytes`](super::RuntimeConfig::max_component_bytes):
    /// refused before it is read (a file) or compiled.
    #[error("component {name} is too large: {bytes} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The component's name (its file name, or the name given).
        name: String,
        /// Its size in bytes (for a file, what its metadata says, or more
        /// bytes than the limit if it grew while being read).
        bytes: u64,
        /// The limit.
        limit: u64,
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

/// How [`Runtime::load_file_with`] and [`Runtime::load_bytes_with`] load a
/// component: what to compile now, at load, rather than never.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Also compile the fuel-metered variant of the component now, so
    /// that invocations with a fuel budget ([`Limits::fuel`](crate::Limits::fuel))
    /// can run it. Off by default: compiling costs time (as long again as
    /// the plain compilation, on a cache miss), and the runtime never
    /// compiles inside an invocation, so an invocation with a fuel budget
    /// of a component loaded without it fails at once with
    /// [`StepError::NotMetered`](super::StepError::NotMetered). See also
    /// [`Runtime::prepare_metered`].
    pub fuel: bool,
}

impl LoadOptions {
    /// Options that compile the fuel-metered variant too.
    pub fn metered() -> Self {
        Self { fuel: true }
    }
}

/// A compiled step component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct StepComponent {
    pub(super) name: Arc<str>,
    /// The BLAKE3 hash of the component's bytes.
    pub(super) hash: blake3::Hash,
    /// The bytes, for a fuel-metered compilation made later
    /// ([`Runtime::prepare_metered`]).
    pub(super) bytes: Arc<[u8]>,
    /// The engine `pre` is for: pooled, unless the component does not fit.
    pub(super) kind: EngineKind,
    pub(super) pre: StepPre<StepState>,
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

impl Runtime {
    /// Loads a component file. See [`load_file_with`](Self::load_file_with).
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<StepComponent, LoadError> {
        self.load_file_with(path, LoadOptions::default())
    }

    /// Loads a component file with `options`. See
    /// [`load_bytes_with`](Self::load_bytes_with). A file larger than
    /// [`RuntimeConfig::max_component_bytes`](super::RuntimeConfig::max_component_bytes)
    /// is refused ([`LoadError::TooLarge`]) by its size before any of it is
    /// read, and it is read through a reader that stops past the limit (a
    /// file that grows meanwhile is refused too).
    pub fn load_file_with(
        &self,
        path: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<StepComponent, LoadError> {
        let path = path.as_ref();
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bytes = read_bounded(path, &name, self.max_component_bytes)?;
        self.load_bytes_with(&name, &bytes, options)
    }

    /// Compiles a component and checks that it fits the `step` world. See
    /// [`load_bytes_with`](Self::load_bytes_with).
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<StepComponent, LoadError> {
        self.load_bytes_with(name, bytes, LoadOptions::default())
    }

    /// Compiles a component and checks that it fits the `step` world; with
    /// [`LoadOptions::fuel`], compiles its fuel-metered variant too. The
    /// same bytes are compiled once per runtime: a second load returns the
    /// first compilation. Bytes longer than
    /// [`RuntimeConfig::max_component_bytes`](super::RuntimeConfig::max_component_bytes)
    /// are refused ([`LoadError::TooLarge`]).
    pub fn load_bytes_with(
        &self,
        name: &str,
        bytes: &[u8],
        options: LoadOptions,
    ) -> Result<StepComponent, LoadError> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len > self.max_component_bytes {
            return Err(LoadError::TooLarge {
                name: name.to_owned(),
                bytes: len,
                limit: self.max_component_bytes,
            });
        }
        let hash = blake3::hash(bytes);
        let (kind, pre) =
            self.prepare_fitting(name, &hash, bytes, self.preferred(Metering::Off))?;
        let component = StepComponent {
            name: name.into(),
            hash,
            bytes: Arc::from(bytes),
            kind,
            pre,
        };
        if options.fuel {
            self.prepare_metered(&component)?;
        }
        Ok(component)
    }

    /// Compiles the fuel-metered variant of `component` now (through the
    /// on-disk cache), if this runtime has not yet: what invocations with
    /// a fuel budget run. Call it before running the component with a fuel
    /// budget (or load it with [`LoadOptions::fuel`]): the runtime never
    /// compiles inside an invocation, whose deadline would pay for it.
    pub fn prepare_metered(&self, component: &StepComponent) -> Result<(), LoadError> {
        self.prepare_fitting(
            &component.name,
            &component.hash,
            &component.bytes,
            self.preferred(Metering::Fuel),
        )
        .map(|_| ())
    }

    /// Whether this runtime has compiled the fuel-metered variant of
    /// `component` ([`prepare_metered`](Self::prepare_metered)).
    pub fn is_metered(&self, component: &StepComponent) -> bool {
        self.prepared(&component.hash, self.preferred(Metering::Fuel))
            .is_some()
    }

    /// The instance-pre this runtime already made of the component with
    /// `hash` for `kind`, or for its on-demand engine if the component does
    /// not fit the pool; with the kind it is for. Compiles nothing.
    pub(super) fn prepared(
        &self,
        hash: &blake3::Hash,
        kind: EngineKind,
    ) -> Option<(EngineKind, StepPre<StepState>)> {
        let compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        match compiled.get(&(*hash, kind)) {
            Some(Some(pre)) => Some((kind, pre.clone())),
            Some(None) => {
                let on_demand = kind.on_demand();
                compiled
                    .get(&(*hash, on_demand))
                    .cloned()
                    .flatten()
                    .map(|pre| (on_demand, pre))
            }
            None => None,
        }
    }

    /// The instance-pre for `kind`, or for its on-demand engine if the
    /// component does not fit the pool; with the kind it is for.
    pub(super) fn prepare_fitting(
        &self,
        name: &str,
        hash: &blake3::Hash,
        bytes: &[u8],
        kind: EngineKind,
    ) -> Result<(EngineKind, StepPre<StepState>), LoadError> {
        if let Some(pre) = self.prepare_for_engine(name, hash, bytes, kind)? {
            return Ok((kind, pre));
        }
        let on_demand = kind.on_demand();
        match self.prepare_for_engine(name, hash, bytes, on_demand)? {
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
    fn prepare_for_engine(
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
}

/// The bytes of the file at `path`, refused ([`LoadError::TooLarge`]) if
/// its metadata says it is longer than `limit` (nothing read then), or if
/// more than `limit` bytes can be read from it (at most `limit + 1` read).
fn read_bounded(path: &Path, name: &str, limit: u64) -> Result<Vec<u8>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |bytes| LoadError::TooLarge {
        name: name.to_owned(),
        bytes,
        limit,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    if len > limit {
        return Err(too_large(len));
    }
    // The file's own length, not a guess: it may be smaller than the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > limit {
        return Err(too_large(read));
    }
    Ok(bytes)
}
