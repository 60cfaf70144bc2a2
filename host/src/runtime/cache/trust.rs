//! What the cache checks before trusting its directory and key: ownership,
//! permissions and file type, read from the file handle itself where it
//! matters (the key), so a file swapped in between check and use is caught.

use std::path::{Path, PathBuf};

use super::CacheError;

/// The cache key length in bytes.
const KEY_LEN: usize = 32;

/// Creates `dir` (and missing parents) with mode 0700 if needed, and checks
/// that it is a directory owned by the current user and writable by no one
/// else. Returns it with symlinks resolved, so that later uses do not follow
/// a link that could be changed.
#[cfg(unix)]
pub fn private_dir(dir: &Path) -> Result<PathBuf, CacheError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let dir = dir.canonicalize().map_err(io(dir))?;
    let meta = std::fs::metadata(&dir).map_err(io(&dir))?;
    if !meta.is_dir() {
        return Err(CacheError::NotADirectory { path: dir });
    }
    let user = current_user();
    if meta.uid() != user {
        return Err(CacheError::NotOwned {
            path: dir,
            owner: meta.uid(),
            user,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(CacheError::WritableByOthers { path: dir, mode });
    }
    Ok(dir)
}

/// Reads the key at `path`, or creates it (mode 0600, from `fresh`) if there
/// is none. A key file that exists but fails a check is an error, never
/// replaced: it is reported so its owner can look at it.
#[cfg(unix)]
pub fn load_or_create_key(
    path: &Path,
    fresh: impl FnOnce() -> [u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], CacheError> {
    use std::io::Write;

    match read_key(path) {
        Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let io = |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let key = fresh();
    // `tempfile` creates the file with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&key).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    // Another process may have created the key meanwhile: keep the first,
    // after the same checks.
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(key),
        Err(_) => read_key(path),
    }
}

/// Reads a key file, checked through its open handle: a regular file (the
/// last path component not a symlink), owned by the current user, mode
/// 0600, one link, exactly [`KEY_LEN`] bytes.
#[cfg(unix)]
fn read_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    let io = |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let untrusted = |reason: String| CacheError::UntrustedKey {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        // No symlinks; and a FIFO must not block the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(untrusted("it is a symbolic link".into()));
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    let user = current_user();
    if meta.uid() != user {
        return Err(untrusted(format!(
            "owned by uid {}, not by this user (uid {user})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o600 {
        return Err(untrusted(format!("mode {mode:o}, expected 600")));
    }
    if meta.nlink() != 1 {
        return Err(untrusted(format!(
            "{} hard links, expected 1",
            meta.nlink()
        )));
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(untrusted(format!(
            "{} bytes, expected {KEY_LEN}",
            meta.len()
        )));
    }
    let mut key = [0u8; KEY_LEN];
    file.read_exact(&mut key).map_err(io)?;
    Ok(key)
}

/// The effective user id of this process.
#[cfg(unix)]
fn current_user() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Without Unix ownership checks the cache is not used.
#[cfg(not(unix))]
pub fn private_dir(_dir: &Path) -> Result<PathBuf, CacheError> {
    Err(CacheError::Unsupported)
}

/// Without Unix ownership checks the cache is not used.
#[cfg(not(unix))]
pub fn load_or_create_key(
    _path: &Path,
    _fresh: impl FnOnce() -> [u8; KEY_LEN],
) -> Result<[u8; KEY_LEN], CacheError> {
    Err(CacheError::Unsupported)
}
