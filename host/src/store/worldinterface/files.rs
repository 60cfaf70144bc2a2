//! Files written whole or not at all: temporary names, syncs, and naming
//! a complete file without overwriting another.

use super::*;

/// What a file being written is named until it is complete: its final name
/// with this appended. A `.partial` file left by a process that died is
/// replaced by the next attempt.
pub(super) const PARTIAL_SUFFIX: &str = ".partial";

/// How long the connections of a copy or a write-back wait for a database
/// that another connection holds locked.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// `path` with `suffix` appended to its last component.
pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The message of a storage error or a timeout; any other error as it displays.
pub(super) fn message(error: ContextStoreError) -> String {
    match error {
        ContextStoreError::StorageError(msg) | ContextStoreError::Timeout(msg) => msg,
        other => other.to_string(),
    }
}

/// Whether something (a file, a directory, a link, even a dangling one) is at `path`.
pub(super) fn is_there(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the file at `path`, if there is one.
pub(super) fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Flushes the file at `path` to disk.
pub(super) fn sync_file(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?
        .sync_all()
}

/// Flushes the directory that holds `path` to disk, so that a file just
/// renamed into it keeps its name after a power loss. A no-op where
/// directories cannot be opened (Windows).
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Gives the complete file `from` the name `to`, never over an existing
/// file (a hard link, then the old name removed; a rename, having looked
/// first, where the file system has no hard links), then syncs the
/// directory (a failure there is only logged: the file has its name).
pub(super) fn publish(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(from) {
                tracing::warn!(file = %from.display(), error = %e, "cannot remove a file's temporary name");
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {
            if is_there(to)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} already exists", to.display()),
                ));
            }
            std::fs::rename(from, to)?;
        }
    }
    if let Err(e) = sync_dir(to) {
        tracing::warn!(file = %to.display(), error = %e, "cannot sync the directory of a file just named");
    }
    Ok(())
}
