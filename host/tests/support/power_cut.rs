//! A simulated disk under SQLite that can lose power.
//!
//! [`PowerCutVfs`] registers an SQLite VFS that wraps the default one
//! (`unix`): every call goes to the real file system, but the VFS
//! remembers, per file, what has been synced. Each `xWrite`, `xSync`,
//! `xTruncate` and `xDelete` of a database, WAL or journal file is a *point*;
//! the power goes out at a chosen point ([`PowerCutVfs::arm`]) or on demand
//! ([`PowerCutVfs::cut_now`]). From then on every operation fails with an
//! `SQLITE_IOERR_*` code, so the store above sees errors and acknowledges
//! nothing more, and nothing more reaches the files.
//!
//! After every connection is closed, [`PowerCutVfs::settle`] rewrites the
//! files into a state a real disk could be in after the power came back:
//! each file as of its last sync, plus none, all, or a random subset of the
//! writes made since, in whole sectors of 512 or 4096 bytes (so in any
//! order, and torn across sectors); an unsynced size change (truncation or
//! growth) may or may not have happened; a file deleted without a directory
//! sync may come back, and a file created since the directory was last
//! synced may be gone. The `-shm` file (SQLite's WAL index, rebuilt from
//! the WAL at the next open) is deleted.
//!
//! `xSync` is not passed to the real disk: what is durable is decided by
//! this simulation, and a real flush would only cost time.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::ffi;

/// The granularity at which unsynced writes are remembered: the smallest
/// sector a disk writes atomically.
const UNIT: u64 = 512;

/// Where in SQLite's work a point (and so a cut) falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Writing a transaction's pages to the WAL before its commit frame
    /// (and a new WAL's header).
    Transaction,
    /// Writing the commit frame, or syncing the WAL to make it durable.
    Commit,
    /// Copying the WAL into the database file, syncing it, resetting the WAL.
    Checkpoint,
    /// Closing the store (the last connection checkpoints and deletes the WAL).
    Close,
    /// After the workload: nothing was in flight.
    Idle,
}

impl Phase {
    /// Every phase, in report order.
    pub const ALL: [Phase; 5] = [
        Phase::Transaction,
        Phase::Commit,
        Phase::Checkpoint,
        Phase::Close,
        Phase::Idle,
    ];

    /// The phase's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Transaction => "mid-transaction",
            Phase::Commit => "mid-commit",
            Phase::Checkpoint => "mid-checkpoint",
            Phase::Close => "mid-close",
            Phase::Idle => "idle",
        }
    }
}

/// What became of the writes not yet synced when the power went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsynced {
    /// None reached the disk.
    Dropped,
    /// All reached the disk (as after a crash of the process alone).
    Kept,
    /// Each sector of this size (512 or 4096 bytes) independently did or
    /// did not, and each file's unsynced size change did or did not.
    Torn {
        /// The sector size in bytes, a multiple of 512.
        sector: u64,
    },
}

thread_local! {
    /// The phase this thread declared for the points it makes.
    static SCOPE: Cell<Option<Phase>> = const { Cell::new(None) };
}

/// Runs `f`, labelling every point this thread makes meanwhile as `phase`
/// (the VFS cannot tell a checkpoint's WAL sync from a commit's by itself).
pub fn during<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Phase>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPE.with(|s| s.replace(Some(phase))));
    f()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Db,
    Wal,
    Journal,
}

/// Old sector contents, by unit index: what each unit held at the last
/// sync, saved before the first write or truncation since.
type Dirty = BTreeMap<u64, Vec<u8>>;

/// A file's content as the disk holds it durably, and what changed since.
struct Track {
    kind: Kind,
    /// The file's size at its last sync.
    synced_len: u64,
    dirty: Dirty,
    /// The last WAL frame header written was a commit frame's.
    last_frame_commit: bool,
    /// Deleted (and not yet created again).
    deleted: bool,
    /// An earlier incarnation, deleted without a directory sync: it may
    /// come back (until this path's next sync, which syncs the directory).
    ghost: Option<Ghost>,
}

struct Ghost {
    bytes: Vec<u8>,
    synced_len: u64,
    dirty: Dirty,
}

#[derive(Default)]
struct State {
    points: u64,
    cut_at: Option<u64>,
    cut: Option<Phase>,
    files: HashMap<PathBuf, Track>,
    open: usize,
}

impl State {
    /// Counts a point; `true` when the power goes out at it (and so the
    /// operation must not happen).
    fn point(&mut self, phase: Phase) -> bool {
        self.points += 1;
        if self.cut_at == Some(self.points) {
            self.cut = Some(phase);
            return true;
        }
        false
    }
}

struct Disk {
    base: *mut ffi::sqlite3_vfs,
    state: Mutex<State>,
}

// SAFETY: `base` is SQLite's default VFS, a static object that SQLite
// itself calls from any thread; `state` is behind a mutex.
unsafe impl Send for Disk {}
unsafe impl Sync for Disk {}

impl Disk {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn base(&self) -> &ffi::sqlite3_vfs {
        // SAFETY: checked non-null at registration; SQLite's VFS objects live forever.
        unsafe { &*self.base }
    }
}

/// A registered fault-injecting VFS with its simulated disk. Unregistered
/// when dropped.
pub struct PowerCutVfs {
    name: String,
    vfs: *mut ffi::sqlite3_vfs,
    disk: *mut Disk,
}

// SAFETY: the VFS and disk are immutable once registered, apart from the
// disk state behind its mutex; SQLite calls a VFS from any thread.
unsafe impl Send for PowerCutVfs {}
unsafe impl Sync for PowerCutVfs {}

impl PowerCutVfs {
    /// Registers a new VFS (not the default) over SQLite's default VFS,
    /// under a name of its own.
    pub fn register() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("power-cut-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // SAFETY: a null name asks for the default VFS.
        let base = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
        assert!(!base.is_null(), "SQLite has no default VFS");
        let disk = Box::into_raw(Box::new(Disk {
            base,
            state: Mutex::default(),
        }));
        let z_name = CString::new(name.clone())
            .expect("the name has no NUL")
            .into_raw();
        // SAFETY: `base` is a valid VFS.
        let mx_pathname = unsafe { (*base).mxPathname };
        let vfs = Box::into_raw(Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: c_int::try_from(size_of::<FaultFile>()).expect("small struct"),
            mxPathname: mx_pathname,
            pNext: ptr::null_mut(),
            zName: z_name,
            pAppData: disk.cast::<c_void>(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        }));
        // SAFETY: `vfs` is fully initialised and lives until `drop` unregisters it.
        let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the VFS");
        Self { name, vfs, disk }
    }

    /// The VFS name to open connections with.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn disk(&self) -> &Disk {
        // SAFETY: freed only in `drop`.
        unsafe { &*self.disk }
    }

    /// Points counted so far.
    pub fn points(&self) -> u64 {
        self.disk().lock().points
    }

    /// Cuts the power at the `after`-th point from now (1: the next one).
    pub fn arm(&self, after: u64) {
        let mut state = self.disk().lock();
        state.cut_at = Some(state.points + after.max(1));
    }

    /// Whether the power is out.
    pub fn is_cut(&self) -> bool {
        self.disk().lock().cut.is_some()
    }

    /// Cuts the power now, if it is still on (the cut is then [`Phase::Idle`]).
    pub fn cut_now(&self) {
        let mut state = self.disk().lock();
        if state.cut.is_none() {
            state.cut = Some(Phase::Idle);
        }
    }

    /// The phase the cut fell in, once the power is out.
    pub fn cut_phase(&self) -> Option<Phase> {
        self.disk().lock().cut
    }

    /// Declares everything written so far durable, as if each file had
    /// been synced (the setup before the first cut point).
    pub fn flush(&self) -> io::Result<()> {
        let mut state = self.disk().lock();
        state.files.retain(|_, t| !t.deleted);
        for (path, track) in &mut state.files {
            track.synced_len = std::fs::metadata(path)?.len();
            track.dirty.clear();
            track.ghost = None;
        }
        Ok(())
    }

    /// After the power cut, with every connection closed: rewrites the
    /// files into what the disk holds when the power comes back, with
    /// `unsynced` deciding the fate of the writes not yet synced (drawn
    /// from `rng` where random), and deletes each database's `-shm` file.
    pub fn settle(&self, unsynced: Unsynced, rng: &mut fastrand::Rng) -> io::Result<()> {
        let mut state = self.disk().lock();
        if state.cut.is_none() {
            return Err(io::Error::other("settle before the power cut"));
        }
        if state.open != 0 {
            return Err(io::Error::other(format!(
                "{} files still open at settle",
                state.open
            )));
        }
        let mut files: Vec<(PathBuf, Track)> = state.files.drain().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, track) in files {
            let image = if track.deleted {
                match track.ghost {
                    Some(ghost) if !happened(unsynced, rng) => Some(ghost.image(unsynced, rng)),
                    _ => None,
                }
            } else {
                let created = happened(unsynced, rng);
                match track.ghost {
                    Some(ghost) if !created => Some(ghost.image(unsynced, rng)),
                    _ => {
                        let bytes = read_or_empty(&path)?;
                        Some(image(bytes, track.synced_len, &track.dirty, unsynced, rng))
                    }
                }
            };
            match image {
                Some(bytes) => std::fs::write(&path, bytes)?,
                None => remove_if_present(&path)?,
            }
            if track.kind == Kind::Db {
                let mut shm = path.into_os_string();
                shm.push("-shm");
                remove_if_present(Path::new(&shm))?;
            }
        }
        Ok(())
    }
}

impl Drop for PowerCutVfs {
    fn drop(&mut self) {
        // SAFETY: registered in `register`.
        unsafe { ffi::sqlite3_vfs_unregister(self.vfs) };
        if self.disk().lock().open != 0 {
            // A connection still uses it: leak rather than free under it.
            return;
        }
        // SAFETY: made by Box::into_raw / CString::into_raw in `register`,
        // and no longer reachable by SQLite.
        unsafe {
            let vfs = Box::from_raw(self.vfs);
            drop(CString::from_raw(vfs.zName.cast_mut()));
            drop(Box::from_raw(self.disk));
        }
    }
}

/// Whether one unsynced metadata change (a deletion, a creation) reached the disk.
fn happened(unsynced: Unsynced, rng: &mut fastrand::Rng) -> bool {
    match unsynced {
        Unsynced::Dropped => false,
        Unsynced::Kept => true,
        Unsynced::Torn { .. } => rng.bool(),
    }
}

impl Ghost {
    fn image(self, unsynced: Unsynced, rng: &mut fastrand::Rng) -> Vec<u8> {
        image(self.bytes, self.synced_len, &self.dirty, unsynced, rng)
    }
}

/// A file's content after the power cut: `current` (everything written)
/// with unsynced sectors reverted to their synced content as `unsynced`
/// decides, at the synced or the current size.
fn image(
    mut bytes: Vec<u8>,
    synced_len: u64,
    dirty: &Dirty,
    unsynced: Unsynced,
    rng: &mut fastrand::Rng,
) -> Vec<u8> {
    let current_len = bytes.len() as u64;
    let (len, sector) = match unsynced {
        Unsynced::Kept => return bytes,
        Unsynced::Dropped => (synced_len, None),
        Unsynced::Torn { sector } => {
            let len = if rng.bool() { synced_len } else { current_len };
            (len, Some(sector))
        }
    };
    bytes.resize(to_usize(current_len.max(synced_len)), 0);
    let mut reverted: HashMap<u64, bool> = HashMap::new();
    for (unit, old) in dirty {
        let start = unit * UNIT;
        let revert = match sector {
            None => true,
            // Past the current end: a truncation's victims, back if the size is.
            Some(_) if start >= current_len => true,
            Some(sector) => *reverted.entry(start / sector).or_insert_with(|| rng.bool()),
        };
        let end = (start + UNIT).min(bytes.len() as u64);
        if revert && start < end {
            bytes[to_usize(start)..to_usize(end)].copy_from_slice(&old[..to_usize(end - start)]);
        }
    }
    bytes.resize(to_usize(len), 0);
    bytes
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("file sizes in tests fit in memory")
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

// ---- the VFS ----

/// The file object SQLite allocates for this VFS (`szOsFile` bytes): the
/// base `sqlite3_file` first, then the wrapped default-VFS file.
#[repr(C)]
struct FaultFile {
    base: ffi::sqlite3_file,
    disk: *const Disk,
    real: *mut ffi::sqlite3_file,
    real_layout: Layout,
    /// `None` for files not tracked (temporary files).
    path: Option<PathBuf>,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 2: shared memory (for WAL), no memory-mapped I/O, so that
    // every read and write passes through here.
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `vfs` is a VFS registered by [`PowerCutVfs::register`].
unsafe fn disk_of<'a>(vfs: *mut ffi::sqlite3_vfs) -> &'a Disk {
    unsafe { &*(*vfs).pAppData.cast::<Disk>() }
}

/// # Safety
/// `file` was opened by [`x_open`].
unsafe fn fault_file<'a>(file: *mut ffi::sqlite3_file) -> &'a mut FaultFile {
    unsafe { &mut *file.cast::<FaultFile>() }
}

/// # Safety
/// `real` is an open default-VFS file.
unsafe fn real_methods<'a>(real: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    unsafe { &*(*real).pMethods }
}

/// The size of an open default-VFS file (0 if it cannot be read).
///
/// # Safety
/// `real` is an open default-VFS file.
unsafe fn real_size(real: *mut ffi::sqlite3_file) -> u64 {
    let mut size: ffi::sqlite3_int64 = 0;
    let methods = unsafe { real_methods(real) };
    let rc = unsafe { methods.xFileSize.expect("xFileSize")(real, &mut size) };
    if rc == ffi::SQLITE_OK {
        u64::try_from(size).unwrap_or(0)
    } else {
        0
    }
}

/// Saves the synced content of every unit in `[from, to)` not yet saved.
///
/// # Safety
/// `real` is an open default-VFS file.
unsafe fn save_old(track: &mut Track, real: *mut ffi::sqlite3_file, from: u64, to: u64) {
    if to <= from {
        return;
    }
    let size = unsafe { real_size(real) };
    let methods = unsafe { real_methods(real) };
    for unit in from / UNIT..to.div_ceil(UNIT) {
        track.dirty.entry(unit).or_insert_with(|| {
            let mut old = vec![0u8; to_usize(UNIT)];
            let start = unit * UNIT;
            if start < size {
                let n = (size - start).min(UNIT);
                // A short read fills the rest with zeros, as wanted.
                unsafe {
                    methods.xRead.expect("xRead")(
                        real,
                        old.as_mut_ptr().cast::<c_void>(),
                        c_int::try_from(n).expect("one unit"),
                        i64::try_from(start).expect("offset"),
                    )
                };
            }
            old
        });
    }
}

fn scope() -> Option<Phase> {
    SCOPE.with(Cell::get)
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    // SQLite calls xClose only on a file whose pMethods is set.
    unsafe { (*file).pMethods = ptr::null() };
    if disk.lock().cut.is_some() {
        return ffi::SQLITE_IOERR;
    }
    let base = disk.base();
    let Ok(layout) =
        Layout::from_size_align(usize::try_from(base.szOsFile).unwrap_or(0).max(8), 16)
    else {
        return ffi::SQLITE_NOMEM;
    };
    // SAFETY: non-zero size.
    let real = unsafe { alloc_zeroed(layout) }.cast::<ffi::sqlite3_file>();
    if real.is_null() {
        return ffi::SQLITE_NOMEM;
    }
    let rc = unsafe { base.xOpen.expect("xOpen")(disk.base, name, real, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        unsafe {
            if !(*real).pMethods.is_null() {
                real_methods(real).xClose.expect("xClose")(real);
            }
            dealloc(real.cast::<u8>(), layout);
        }
        return rc;
    }
    let kind = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        Some(Kind::Db)
    } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
        Some(Kind::Wal)
    } else if flags & ffi::SQLITE_OPEN_MAIN_JOURNAL != 0 {
        Some(Kind::Journal)
    } else {
        None
    };
    let path = match kind {
        Some(_) if !name.is_null() && flags & ffi::SQLITE_OPEN_DELETEONCLOSE == 0 => {
            // SAFETY: SQLite passes a NUL-terminated full path.
            Some(PathBuf::from(
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned(),
            ))
        }
        _ => None,
    };
    {
        let mut state = disk.lock();
        state.open += 1;
        if let (Some(path), Some(kind)) = (&path, kind) {
            let len = unsafe { real_size(real) };
            let track = state.files.entry(path.clone()).or_insert_with(|| Track {
                kind,
                synced_len: len,
                dirty: Dirty::new(),
                last_frame_commit: false,
                deleted: false,
                ghost: None,
            });
            if track.deleted {
                // Created again: the new file exists once the directory is synced.
                track.deleted = false;
                track.synced_len = 0;
                track.dirty.clear();
            }
        }
    }
    unsafe {
        ptr::write(
            file.cast::<FaultFile>(),
            FaultFile {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                disk,
                real,
                real_layout: layout,
                path,
            },
        );
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    let mut state = disk.lock();
    if state.cut.is_some() {
        return ffi::SQLITE_IOERR_DELETE;
    }
    if !name.is_null() {
        // SAFETY: SQLite passes a NUL-terminated path.
        let path = PathBuf::from(
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        );
        if state.files.get(&path).is_some_and(|t| !t.deleted) {
            if state.point(scope().unwrap_or(Phase::Close)) {
                return ffi::SQLITE_IOERR_DELETE;
            }
            let bytes = read_or_empty(&path).unwrap_or_default();
            if let Some(track) = state.files.get_mut(&path) {
                let dirty = std::mem::take(&mut track.dirty);
                if sync_dir != 0 {
                    track.ghost = None;
                } else if track.ghost.is_none() {
                    track.ghost = Some(Ghost {
                        bytes,
                        synced_len: track.synced_len,
                        dirty,
                    });
                }
                track.deleted = true;
                track.synced_len = 0;
            }
        }
    }
    let base = disk.base();
    unsafe { base.xDelete.expect("xDelete")(disk.base, name, sync_dir) }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    if disk.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_ACCESS;
    }
    unsafe { disk.base().xAccess.expect("xAccess")(disk.base, name, flags, out) }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    unsafe { disk.base().xFullPathname.expect("xFullPathname")(disk.base, name, n_out, out) }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    unsafe { disk.base().xRandomness.expect("xRandomness")(disk.base, n, out) }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    unsafe { disk.base().xSleep.expect("xSleep")(disk.base, micros) }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    unsafe { disk.base().xCurrentTime.expect("xCurrentTime")(disk.base, out) }
}

unsafe extern "C" fn x_current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    match disk.base().xCurrentTimeInt64 {
        Some(f) => unsafe { f(disk.base, out) },
        None => {
            let mut days = 0.0;
            let rc = unsafe { x_current_time(vfs, &mut days) };
            // Julian day in milliseconds, as SQLite's own fallback.
            unsafe { *out = (days * 86_400_000.0) as ffi::sqlite3_int64 };
            rc
        }
    }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let disk = unsafe { disk_of(vfs) };
    match disk.base().xGetLastError {
        Some(f) => unsafe { f(disk.base, n, out) },
        None => 0,
    }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = unsafe { fault_file(file) };
    let disk = unsafe { &*f.disk };
    let real = f.real;
    let rc = unsafe { real_methods(real).xClose.expect("xClose")(real) };
    unsafe {
        dealloc(real.cast::<u8>(), f.real_layout);
        // Drops the path; SQLite frees the FaultFile's memory itself.
        ptr::drop_in_place(file.cast::<FaultFile>());
    }
    disk.lock().open -= 1;
    rc
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let f = unsafe { fault_file(file) };
    if unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_READ;
    }
    unsafe { real_methods(f.real).xRead.expect("xRead")(f.real, buf, amount, offset) }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let f = unsafe { fault_file(file) };
    let mut state = unsafe { &*f.disk }.lock();
    if state.cut.is_some() {
        return ffi::SQLITE_IOERR_WRITE;
    }
    if let Some(path) = &f.path {
        let (Ok(start), Ok(len)) = (u64::try_from(offset), u64::try_from(amount)) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let phase = match state.files.get_mut(path) {
            Some(track) => scope().unwrap_or_else(|| write_phase(track, buf, len, start)),
            None => scope().unwrap_or(Phase::Transaction),
        };
        if state.point(phase) {
            return ffi::SQLITE_IOERR_WRITE;
        }
        if let Some(track) = state.files.get_mut(path) {
            unsafe { save_old(track, f.real, start, start + len) };
        }
    }
    // Written while holding the lock, so that no other handle's write to
    // the same file slips between saving the old content and writing.
    unsafe { real_methods(f.real).xWrite.expect("xWrite")(f.real, buf, amount, offset) }
}

/// The phase of a write outside any declared scope, from what it writes:
/// any write to the database file is a checkpoint's (in WAL mode only
/// checkpoints write it); in the WAL, a 24-byte write is a frame header
/// (bytes 4..8 non-zero for a commit frame), and a page follows its header.
fn write_phase(track: &mut Track, buf: *const c_void, len: u64, start: u64) -> Phase {
    match track.kind {
        Kind::Db => Phase::Checkpoint,
        Kind::Journal => Phase::Transaction,
        Kind::Wal if len == 24 => {
            // SAFETY: SQLite passes `len` readable bytes.
            let header = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), 24) };
            track.last_frame_commit = header[4..8] != [0, 0, 0, 0];
            if track.last_frame_commit {
                Phase::Commit
            } else {
                Phase::Transaction
            }
        }
        Kind::Wal if start == 0 && len == 32 => Phase::Transaction,
        Kind::Wal if track.last_frame_commit => Phase::Commit,
        Kind::Wal => Phase::Transaction,
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let f = unsafe { fault_file(file) };
    let mut state = unsafe { &*f.disk }.lock();
    if state.cut.is_some() {
        return ffi::SQLITE_IOERR_TRUNCATE;
    }
    if let Some(path) = &f.path {
        if state.point(scope().unwrap_or(Phase::Checkpoint)) {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
        let new_len = u64::try_from(size).unwrap_or(0);
        let current = unsafe { real_size(f.real) };
        if let Some(track) = state.files.get_mut(path) {
            unsafe { save_old(track, f.real, new_len, current) };
        }
    }
    unsafe { real_methods(f.real).xTruncate.expect("xTruncate")(f.real, size) }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    let f = unsafe { fault_file(file) };
    let mut state = unsafe { &*f.disk }.lock();
    if state.cut.is_some() {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    if let Some(path) = &f.path {
        let phase = match state.files.get(path).map(|t| t.kind) {
            Some(Kind::Db) => Phase::Checkpoint,
            _ => Phase::Commit,
        };
        if state.point(scope().unwrap_or(phase)) {
            return ffi::SQLITE_IOERR_FSYNC;
        }
        let len = unsafe { real_size(f.real) };
        if let Some(track) = state.files.get_mut(path) {
            track.synced_len = len;
            track.dirty.clear();
            // The default VFS syncs the directory with a new WAL's or
            // journal's first sync: its creation (and the deletion of an
            // earlier one) is durable from here.
            track.ghost = None;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    let f = unsafe { fault_file(file) };
    if unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_FSTAT;
    }
    unsafe { real_methods(f.real).xFileSize.expect("xFileSize")(f.real, out) }
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let f = unsafe { fault_file(file) };
    if unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_LOCK;
    }
    unsafe { real_methods(f.real).xLock.expect("xLock")(f.real, level) }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // Always passed on: releasing a lock writes nothing.
    let f = unsafe { fault_file(file) };
    unsafe { real_methods(f.real).xUnlock.expect("xUnlock")(f.real, level) }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let f = unsafe { fault_file(file) };
    if unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_CHECKRESERVEDLOCK;
    }
    unsafe {
        real_methods(f.real)
            .xCheckReservedLock
            .expect("xCheckReservedLock")(f.real, out)
    }
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // A size hint may grow the file outside xWrite: ignored (it is only a hint).
    if op == ffi::SQLITE_FCNTL_SIZE_HINT {
        return ffi::SQLITE_OK;
    }
    let f = unsafe { fault_file(file) };
    unsafe { real_methods(f.real).xFileControl.expect("xFileControl")(f.real, op, arg) }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let f = unsafe { fault_file(file) };
    unsafe { real_methods(f.real).xSectorSize.expect("xSectorSize")(f.real) }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let f = unsafe { fault_file(file) };
    unsafe {
        real_methods(f.real)
            .xDeviceCharacteristics
            .expect("xDeviceCharacteristics")(f.real)
    }
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let f = unsafe { fault_file(file) };
    if unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_SHMMAP;
    }
    unsafe { real_methods(f.real).xShmMap.expect("xShmMap")(f.real, region, size, extend, out) }
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let f = unsafe { fault_file(file) };
    // Taking a lock fails after the cut; releasing one is passed on.
    if flags & ffi::SQLITE_SHM_LOCK != 0 && unsafe { &*f.disk }.lock().cut.is_some() {
        return ffi::SQLITE_IOERR_SHMLOCK;
    }
    unsafe { real_methods(f.real).xShmLock.expect("xShmLock")(f.real, offset, n, flags) }
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    let f = unsafe { fault_file(file) };
    unsafe { real_methods(f.real).xShmBarrier.expect("xShmBarrier")(f.real) }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let f = unsafe { fault_file(file) };
    unsafe { real_methods(f.real).xShmUnmap.expect("xShmUnmap")(f.real, delete) }
}
