//! Keeping the original: the exact copy of a WorldInterface database
//! made inside the converting transaction, before it changes anything.

use super::*;

/// The suffix a conversion's copy of the original is named with: the
/// database file's name with this appended (see [`backup_path`]).
pub const BACKUP_SUFFIX: &str = ".worldinterface-backup";

/// Where converting the WorldInterface database at `db` keeps its original:
/// `<db>.worldinterface-backup`, beside it.
///
/// A conversion never overwrites that file: if it exists already (a copy
/// kept by an earlier conversion), the conversion is refused, and the
/// database left as it was, until it is moved away.
pub fn backup_path(db: impl AsRef<Path>) -> PathBuf {
    suffixed(db.as_ref(), BACKUP_SUFFIX)
}

/// The complete copy of a WorldInterface original, under its `.partial`
/// name until the conversion has committed ([`publish`](Self::publish)).
/// Dropped unpublished (the conversion failed), it is removed.
#[must_use = "a copy dropped unpublished is removed"]
pub(crate) struct PendingCopy {
    partial: PathBuf,
    backup: PathBuf,
    published: bool,
}

impl PendingCopy {
    /// Gives the copy its final name, never over an existing file, and
    /// syncs the directory: once the conversion has committed. Returns
    /// where the copy is: its final name or, if renaming failed, its
    /// `.partial` name, with a warning (the conversion is done and stays
    /// done; the copy is complete under either name).
    pub(crate) fn publish(mut self) -> PathBuf {
        self.published = true;
        match publish(&self.partial, &self.backup) {
            Ok(()) => std::mem::take(&mut self.backup),
            Err(e) => {
                tracing::warn!(
                    copy = %self.partial.display(),
                    backup = %self.backup.display(),
                    error = %e,
                    "converted the WorldInterface database, but could not give the copy of \
                     its original its final name: the complete copy is at the .partial name"
                );
                std::mem::take(&mut self.partial)
            }
        }
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Err(e) = remove_if_there(&self.partial) {
            tracing::warn!(
                copy = %self.partial.display(),
                error = %e,
                "cannot remove the copy of a WorldInterface database whose conversion failed"
            );
        }
    }
}

/// Copies the WorldInterface database that `conn` holds, as it is, to
/// `<db>.worldinterface-backup.partial`: called inside the converting
/// transaction once it holds the write lock and before it changes
/// anything, so that the copy is exactly the state that is converted.
///
/// The copy is made by a second, read-only connection (`VACUUM INTO`; a
/// read, which the write lock allows beside it), opened with `vfs` (the
/// VFS the database was opened with; `None`: the default), and synced to
/// disk. `None` for a database that has no file (in memory). Refuses,
/// changing nothing, when the final name exists already.
pub(crate) fn keep_copy(
    conn: &Connection,
    vfs: Option<&str>,
) -> Result<Option<PendingCopy>, ContextStoreError> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let refuse = |what: String| {
        ContextStoreError::StorageError(format!(
            "cannot convert the WorldInterface database: {what}; nothing was changed"
        ))
    };
    let backup = backup_path(db);
    let partial = suffixed(&backup, PARTIAL_SUFFIX);
    let exists = is_there(&backup)
        .map_err(|e| refuse(format!("cannot look for {}: {e}", backup.display())))?;
    if exists {
        return Err(refuse(format!(
            "{} already exists (the original kept by an earlier conversion?), and a conversion \
             keeps a copy of the original there and never overwrites one: move that file \
             elsewhere (or remove it), then open or migrate the database again",
            backup.display()
        )));
    }
    // A copy left by a conversion that did not finish is replaced.
    remove_if_there(&partial).map_err(|e| {
        refuse(format!(
            "cannot remove {}, left by an earlier attempt: {e}",
            partial.display()
        ))
    })?;
    let copy = PendingCopy {
        partial,
        backup,
        published: false,
    };
    copy_with_vacuum(db, &copy.partial, vfs).map_err(|e| {
        refuse(format!(
            "cannot keep a copy of the original at {} first: {}",
            copy.partial.display(),
            message(e)
        ))
    })?;
    Ok(Some(copy))
}

/// `VACUUM INTO to` on a new read-only connection to `db`, then syncs the copy.
pub(super) fn copy_with_vacuum(
    db: &str,
    to: &Path,
    vfs: Option<&str>,
) -> Result<(), ContextStoreError> {
    // No URI flag: both names are taken as plain file names.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let reader = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(db, flags, vfs)?,
        None => Connection::open_with_flags(db, flags)?,
    };
    reader.busy_timeout(BUSY_TIMEOUT)?;
    let target = to
        .to_str()
        .ok_or_else(|| ContextStoreError::StorageError("the copy's name is not UTF-8".into()))?;
    reader.execute("VACUUM INTO ?1", [target])?;
    let mode: String = reader.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    reader.close().map_err(|(_, e)| e)?;
    // `VACUUM INTO` writes a rollback-journal file; the original is in
    // WAL mode (which its store sets), and so is its copy.
    if mode.eq_ignore_ascii_case("wal") {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let copy = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(to, flags, vfs)?,
            None => Connection::open_with_flags(to, flags)?,
        };
        let set: String =
            copy.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !set.eq_ignore_ascii_case("wal") {
            return Err(ContextStoreError::StorageError(format!(
                "could not set the copy's journal_mode to WAL (it is {set})"
            )));
        }
        copy.close().map_err(|(_, e)| e)?;
    }
    sync_file(to).map_err(|e| ContextStoreError::StorageError(format!("cannot sync it: {e}")))
}
