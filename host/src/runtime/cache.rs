//! [`CodeCache`]: precompiled components on disk, so that a process loads a
//! large component (a Python or JavaScript step is 10-20 MB) in
//! milliseconds instead of compiling it again for seconds.
//!
//! An entry is keyed by the component's content hash and the engine's
//! compatibility hash (wasmtime version, engine settings, target CPU), so an
//! entry is only ever read by an engine that can run it. Deserializing
//! precompiled code is unsafe in general, so only files this host wrote are
//! trusted: every entry carries a keyed BLAKE3 MAC under a secret key kept
//! in the cache directory (created with owner-only permissions). A corrupt,
//! truncated, foreign or stale entry fails the check and is compiled and
//! written again; it is never deserialized. Entries are written to a
//! temporary file and renamed into place, so concurrent processes filling
//! the same cache never see half an entry.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry: format name and version.
const MAGIC: &[u8; 16] = b"contextstore-cc1";
const MAC_LEN: usize = 32;

/// An on-disk cache of compiled components in one directory.
#[derive(Clone, Debug)]
pub struct CodeCache {
    dir: PathBuf,
    key: [u8; 32],
}

/// What a cache lookup found.
pub enum Lookup {
    /// A valid entry, deserialized.
    Hit(Component),
    /// No usable entry (missing, or rejected and to be replaced).
    Miss,
}

impl CodeCache {
    /// The default directory: `contextstore/compiled` under the user's cache
    /// directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux), if there is one.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|dir| dir.join("contextstore").join("compiled"))
    }

    /// Opens (creating if needed) a cache in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = load_or_create_key(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The part of an entry's name that names the engine: its
    /// compatibility hash and this crate's version.
    fn engine_hash(engine: &Engine) -> String {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, engine: &Engine, content: &blake3::Hash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            content.to_hex(),
            Self::engine_hash(engine)
        ))
    }

    /// Looks up the component with content hash `content`.
    pub fn get(&self, engine: &Engine, content: &blake3::Hash) -> Lookup {
        let path = self.entry_path(engine, content);
        let Ok(bytes) = std::fs::read(&path) else {
            return Lookup::Miss;
        };
        let Some(code) = self.verify(&bytes) else {
            tracing::warn!(path = %path.display(), "rejected a corrupt or foreign cache entry");
            return Lookup::Miss;
        };
        // SAFETY: `code` was produced by `Component::serialize` in a process
        // holding this cache's secret key, for an engine with the same
        // compatibility hash (the MAC covers the bytes, the file name the
        // hashes). wasmtime checks the version and settings header again.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Lookup::Hit(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cache entry did not deserialize");
                Lookup::Miss
            }
        }
    }

    /// Stores the compiled `component` for content hash `content`.
    pub fn put(
        &self,
        engine: &Engine,
        content: &blake3::Hash,
        component: &Component,
    ) -> std::io::Result<()> {
        let code = component.serialize().map_err(std::io::Error::other)?;
        let mac = self.mac(&code);
        let path = self.entry_path(engine, content);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(mac.as_bytes())?;
        tmp.write_all(&code)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The compiled code in an entry, if its header and MAC check out.
    fn verify<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < MAC_LEN {
            return None;
        }
        let (mac, code) = rest.split_at(MAC_LEN);
        let mac: [u8; MAC_LEN] = mac.try_into().ok()?;
        // `blake3::Hash` compares in constant time.
        (self.mac(code) == blake3::Hash::from(mac)).then_some(code)
    }

    fn mac(&self, code: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.key, code)
    }
}

/// Reads the cache's secret key, creating it (owner-only) on first use.
fn load_or_create_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join("mac.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(&key)?;
    tmp.as_file().sync_all()?;
    // Another process may have created the key meanwhile: keep the first.
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(key),
        Err(_) => {
            let bytes = std::fs::read(&path)?;
            <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                std::io::Error::other(format!("{} is not a 32-byte key", path.display()))
            })
        }
    }
}
