//! [`CodeCache`]: precompiled components on disk, so that a process loads a
//! large component (a Python or JavaScript step is 10-20 MB) in
//! milliseconds instead of compiling it again for seconds.
//!
//! Deserializing precompiled code runs it as native code, so the cache
//! trusts nothing it did not write:
//!
//! - the directory must be owned by the current user and writable by no one
//!   else (it is created with mode 0700), or the cache is not used;
//! - the secret MAC key in it must be a regular file (not a symlink) of
//!   exactly 32 bytes, owned by the current user, with mode 0600 and one
//!   link, or the cache is not used (a bad key is reported, never replaced);
//!   it is read once, when the cache opens;
//! - every entry carries a keyed BLAKE3 MAC over its identity (the
//!   component's content hash and the engine's compatibility hash) together
//!   with the code, so a corrupt, truncated, foreign, stale or renamed entry
//!   fails the check and is compiled and written again; it is never
//!   deserialized.
//!
//! Entries are written to a temporary file and renamed into place, so
//! concurrent processes filling the same cache never see half an entry.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

mod trust;

/// The first bytes of every entry: format name and version.
const MAGIC: &[u8; 16] = b"contextstore-cc2";
const MAC_LEN: usize = 32;
/// The secret key's file name in the cache directory.
const KEY_FILE: &str = "mac.key";

/// An on-disk cache of compiled components in one directory.
#[derive(Clone)]
pub struct CodeCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("CodeCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What a cache lookup found.
pub enum Lookup {
    /// A valid entry, deserialized.
    Hit(Component),
    /// No usable entry (missing, or rejected and to be replaced).
    Miss,
}

/// Why a cache directory is not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory or key file could not be created, opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory is owned by another user.
    #[error("{path} is owned by uid {owner}, not by this user (uid {user})")]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The current (effective) user.
        user: u32,
    },
    /// The directory is writable by its group or by others.
    #[error("{path} is writable by others (mode {mode:o}); it must be the user's alone")]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file exists but is not one this user could only have written
    /// through this cache; it is left alone.
    #[error("{path} is not a trusted cache key ({reason}); remove it to start a new cache")]
    UntrustedKey {
        /// The key file.
        path: PathBuf,
        /// Which check failed.
        reason: String,
    },
    /// This platform cannot check file ownership, so the cache is off.
    #[error("the compiled-code cache needs a Unix system to check file ownership")]
    Unsupported,
}

impl CodeCache {
    /// The default directory: `contextstore/compiled` under the user's cache
    /// directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux), if there is one.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|dir| dir.join("contextstore").join("compiled"))
    }

    /// Opens a cache in `dir`, creating the directory (and missing parents,
    /// mode 0700) and its key if needed.
    ///
    /// Refuses a directory that is not the current user's alone, and a key
    /// file that fails the checks in the module docs.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let dir = trust::private_dir(dir)?;
        let key = trust::load_or_create_key(&dir.join(KEY_FILE), new_key)?;
        Ok(Self { dir, key })
    }

    /// The part of an entry's name that names the engine: a hash of its
    /// compatibility hash (wasmtime version, settings, target), this
    /// crate's version and the entry format, so that builds sharing a
    /// cache directory never read (or overwrite) each other's entries.
    pub fn engine_hash(engine: &Engine) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        MAGIC.hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// The cache directory (symlinks resolved).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, engine_hash: &str, content: &blake3::Hash) -> PathBuf {
        self.dir
            .join(format!("{}-{engine_hash}.cwasm", content.to_hex()))
    }

    /// Looks up the component with content hash `content` (the BLAKE3 hash
    /// of its bytes) compiled by `engine`.
    pub fn get(&self, engine: &Engine, content: &blake3::Hash) -> Lookup {
        let engine_hash = Self::engine_hash(engine);
        let path = self.entry_path(&engine_hash, content);
        let Ok(bytes) = std::fs::read(&path) else {
            return Lookup::Miss;
        };
        let Some(code) = self.verify(content, &engine_hash, &bytes) else {
            tracing::warn!(path = %path.display(), "rejected a corrupt, foreign or renamed cache entry");
            return Lookup::Miss;
        };
        // SAFETY: `code` was produced by `Component::serialize` in a process
        // holding this cache's secret key, for the component with content
        // hash `content` and an engine with this compatibility hash: the MAC
        // covers all three. wasmtime checks the version and settings header
        // again.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Lookup::Hit(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cache entry did not deserialize");
                Lookup::Miss
            }
        }
    }

    /// Stores `component`, compiled by `engine`, as the entry of content
    /// hash `content`.
    pub fn put(
        &self,
        engine: &Engine,
        content: &blake3::Hash,
        component: &Component,
    ) -> std::io::Result<()> {
        let code = component.serialize().map_err(std::io::Error::other)?;
        let engine_hash = Self::engine_hash(engine);
        let mac = self.mac(content, &engine_hash, &code);
        let path = self.entry_path(&engine_hash, content);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(mac.as_bytes())?;
        tmp.write_all(&code)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The compiled code in an entry, if its header and MAC check out for
    /// this identity.
    fn verify<'a>(
        &self,
        content: &blake3::Hash,
        engine_hash: &str,
        bytes: &'a [u8],
    ) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < MAC_LEN {
            return None;
        }
        let (mac, code) = rest.split_at(MAC_LEN);
        let mac: [u8; MAC_LEN] = mac.try_into().ok()?;
        // `blake3::Hash` compares in constant time.
        (self.mac(content, engine_hash, code) == blake3::Hash::from(mac)).then_some(code)
    }

    /// The MAC of an entry: its identity (content hash, engine hash) and
    /// code, each field length-delimited.
    fn mac(&self, content: &blake3::Hash, engine_hash: &str, code: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(MAGIC);
        hasher.update(content.as_bytes());
        hasher.update(&(engine_hash.len() as u64).to_le_bytes());
        hasher.update(engine_hash.as_bytes());
        hasher.update(code);
        hasher.finalize()
    }
}

/// A fresh random key.
fn new_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}
