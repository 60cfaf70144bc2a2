//! Power loss, simulated at every write and sync.
//!
//! Each trial opens a [`SqliteContextStore`] over [`PowerCutVfs`] (a
//! simulated disk), drives it (one writer, or 16 concurrent writers; a mix
//! of `put`, `put_global` and `upsert_global`, with checkpoints of every
//! kind and, for one writer, a close and reopen now and then), and cuts the
//! power at a seeded random point: any `xWrite`, `xSync`, `xTruncate` or
//! `xDelete`, so cuts land mid-transaction, mid-commit, mid-checkpoint and
//! mid-close. The unsynced writes are then dropped, kept, or kept in part
//! (torn, in 512- or 4096-byte sectors), and the file is reopened with the
//! normal VFS and checked:
//!
//! - `PRAGMA integrity_check` is `ok`, the store opens and takes a write;
//! - nothing is half there: a stored value is one that some call wrote,
//!   and every stored node id is one some call wrote;
//! - with one writer, what survived is a prefix of what was acknowledged;
//! - an acknowledged write is *lost* if its key is missing, or holds a
//!   value whose call ended before the acknowledged call began.
//!
//! Under `Durability::Full` nothing acknowledged may be lost; under
//! `Durability::Normal` losses are counted but nothing may be corrupt. A
//! store that acknowledges before its commit is synced (`Normal` held to
//! `Full`'s promise) must be caught, and so must one whose checkpoints do
//! not sync the database file (`synchronous=OFF` on the checkpointing
//! connection).
//!
//! `POWER_LOSS_CUTS=N` sets the cuts per durability (default 500),
//! `POWER_LOSS_SEED=S` the seed. Figures: run with `--nocapture`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use contextstore::{
    ContextStore, Durability, FlowRunId, NodeId, SqliteContextStore, SqliteOptions,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use support::power_cut::{self, Phase, PowerCutVfs, Unsynced};
use uuid::Uuid;

const DEFAULT_CUTS: u64 = 500;
const DEFAULT_SEED: u64 = 11;
/// Operations of the single writer in one trial.
const SINGLE_OPS: usize = 60;
/// Concurrent writers, and the operations of each in one trial.
const WRITERS: usize = 16;
const OPS_PER_WRITER: usize = 8;
/// Upserted keys, shared by all writers so that upserts race.
const UPSERT_KEYS: usize = 6;
/// Flow runs the outputs are spread over.
const RUNS: usize = 3;
/// Values up to this many bytes of padding: some span overflow pages.
const MAX_PAD: usize = 6000;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
        Err(_) => default,
    }
}

fn cuts() -> u64 {
    env_u64("POWER_LOSS_CUTS", DEFAULT_CUTS).max(2)
}

fn seed() -> u64 {
    env_u64("POWER_LOSS_SEED", DEFAULT_SEED)
}

/// The store's durability, and the sync level of the connection that runs
/// the checkpoints (SQLite syncs a checkpoint as that connection's
/// `synchronous` says).
#[derive(Clone, Copy, Debug)]
struct Setup {
    durability: Durability,
    checkpoint_sync: &'static str,
}

impl Setup {
    /// The store as it is meant to be run: checkpoints synced as its commits.
    fn honest(durability: Durability) -> Self {
        let checkpoint_sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        Self {
            durability,
            checkpoint_sync,
        }
    }
}

/// Where a write went; the kind of key says which call made it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// `put(run, node)`.
    Output(FlowRunId, NodeId),
    /// `put_global(key)`, each key written once.
    Once(String),
    /// `upsert_global(key)`, keys shared by all writers.
    Upserted(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Output(run, node) => write!(f, "output {run}/{node}"),
            Key::Once(key) => write!(f, "global {key:?} (put)"),
            Key::Upserted(key) => write!(f, "global {key:?} (upsert)"),
        }
    }
}

/// One store call: what it wrote, when (a logical clock shared by all
/// writers), and whether it returned `Ok`.
struct Entry {
    key: Key,
    value: Value,
    start: u64,
    end: u64,
    acked: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The store under test, its checkpointing connection and the ledger of calls.
struct Rig<'a> {
    path: &'a Path,
    options: SqliteOptions,
    checkpoint_sync: &'static str,
    vfs: &'a PowerCutVfs,
    store: RwLock<Option<Arc<SqliteContextStore>>>,
    checkpointer: Mutex<Option<Connection>>,
    clock: AtomicU64,
    ledger: Mutex<Vec<Entry>>,
}

impl<'a> Rig<'a> {
    fn open(path: &'a Path, setup: Setup, vfs: &'a PowerCutVfs) -> anyhow::Result<Self> {
        let options = SqliteOptions {
            durability: setup.durability,
            busy_deadline: Duration::from_secs(10),
            vfs: Some(vfs.name().to_owned()),
            ..SqliteOptions::default()
        };
        let store = SqliteContextStore::open_with(path, options.clone())?;
        let rig = Self {
            path,
            options,
            checkpoint_sync: setup.checkpoint_sync,
            vfs,
            store: RwLock::new(Some(Arc::new(store))),
            checkpointer: Mutex::new(None),
            clock: AtomicU64::new(0),
            ledger: Mutex::new(Vec::new()),
        };
        *lock(&rig.checkpointer) = Some(rig.open_checkpointer()?);
        Ok(rig)
    }

    /// A second connection over the same VFS that runs explicit
    /// checkpoints (the store's own autocheckpoint starts only at 1000
    /// pages).
    fn open_checkpointer(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags_and_vfs(
            self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            self.vfs.name(),
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", self.checkpoint_sync)?;
        Ok(conn)
    }

    fn store(&self) -> Option<Arc<SqliteContextStore>> {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_store(&self, store: Option<Arc<SqliteContextStore>>) {
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = store;
    }

    /// `Ok` if the power is out (so a failure was expected), else the error.
    fn failed(&self, what: &str, error: impl fmt::Display) -> anyhow::Result<()> {
        if self.vfs.is_cut() {
            Ok(())
        } else {
            bail!("{what} failed before the power cut: {error}")
        }
    }

    fn checkpoint(&self, mode: &str) -> anyhow::Result<bool> {
        let result = power_cut::during(Phase::Checkpoint, || {
            let guard = lock(&self.checkpointer);
            match guard.as_ref() {
                Some(conn) => {
                    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                }
                None => Ok(()),
            }
        });
        match result {
            Ok(()) => Ok(true),
            Err(e) => self.failed("checkpoint", e).map(|()| false),
        }
    }

    /// Closes the store (the last connection checkpoints and deletes the
    /// WAL) and opens it again.
    fn reopen(&self) -> anyhow::Result<bool> {
        power_cut::during(Phase::Close, || {
            *lock(&self.checkpointer) = None;
            self.set_store(None);
        });
        match SqliteContextStore::open_with(self.path, self.options.clone()) {
            Ok(store) => self.set_store(Some(Arc::new(store))),
            Err(e) => return self.failed("reopen", e).map(|()| false),
        }
        match self.open_checkpointer() {
            Ok(conn) => *lock(&self.checkpointer) = Some(conn),
            Err(e) => return self.failed("reopen", e).map(|()| false),
        }
        Ok(true)
    }
}

/// One writer's calls, until its operations run out or the power does.
fn writer(
    rig: &Rig<'_>,
    id: usize,
    ops: usize,
    seed: u64,
    runs: &[FlowRunId],
    may_reopen: bool,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for op in 0..ops {
        if rig.vfs.is_cut() {
            return Ok(());
        }
        if rng.usize(0..10) == 0 {
            let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][rng.usize(0..4)];
            if !rig.checkpoint(mode)? {
                return Ok(());
            }
        }
        if may_reopen && rng.usize(0..40) == 0 && !rig.reopen()? {
            return Ok(());
        }
        let Some(store) = rig.store() else {
            return rig.failed("opening the store", "it is closed");
        };
        let value = json!({"writer": id, "op": op, "pad": "x".repeat(rng.usize(0..MAX_PAD))});
        let key = match rng.usize(0..10) {
            0..=3 => Key::Output(
                runs[rng.usize(0..runs.len())],
                NodeId::from_uuid(Uuid::from_u128(rng.u128(..))),
            ),
            4..=6 => Key::Once(format!("once/{id}/{op}")),
            _ => Key::Upserted(format!("upsert/{}", rng.usize(0..UPSERT_KEYS))),
        };
        let start = rig.clock.fetch_add(1, Ordering::SeqCst);
        let result = match &key {
            Key::Output(run, node) => store.put(*run, *node, &value),
            Key::Once(key) => store.put_global(key, &value),
            Key::Upserted(key) => store.upsert_global(key, &value),
        };
        let end = rig.clock.fetch_add(1, Ordering::SeqCst);
        let acked = result.is_ok();
        lock(&rig.ledger).push(Entry {
            key,
            value,
            start,
            end,
            acked,
        });
        if let Err(e) = result {
            return rig.failed("a write", e);
        }
    }
    Ok(())
}

/// Runs `writers` writers (one: the single-writer workload, with
/// reopens) and returns the ledger of their calls.
fn drive(
    rig: &Rig<'_>,
    writers: usize,
    runs: &[FlowRunId],
    rng: &mut fastrand::Rng,
) -> anyhow::Result<Vec<Entry>> {
    let ops = if writers == 1 {
        SINGLE_OPS
    } else {
        OPS_PER_WRITER
    };
    let seeds: Vec<u64> = (0..writers).map(|_| rng.u64(..)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .into_iter()
            .enumerate()
            .map(|(id, seed)| s.spawn(move || writer(rig, id, ops, seed, runs, writers == 1)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    let mut ledger = std::mem::take(&mut *lock(&rig.ledger));
    ledger.sort_by_key(|e| e.start);
    Ok(ledger)
}

/// What one trial found.
struct Outcome {
    points: u64,
    phase: Phase,
    unsynced: Unsynced,
    checked: u64,
    lost: Vec<String>,
    corrupt: Vec<String>,
}

fn trial(setup: Setup, writers: usize, cut_at: Option<u64>, seed: u64) -> anyhow::Result<Outcome> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ctx.db");
    let vfs = PowerCutVfs::register();
    let runs: Vec<FlowRunId> = (0..RUNS)
        .map(|_| FlowRunId::from_uuid(Uuid::from_u128(rng.u128(..))))
        .collect();
    let (ledger, points) = {
        let rig = Rig::open(&path, setup, &vfs).context("opening the store")?;
        vfs.flush()?;
        let start = vfs.points();
        if let Some(after) = cut_at {
            vfs.arm(after);
        }
        let ledger = drive(&rig, writers, &runs, &mut rng)?;
        vfs.cut_now();
        (ledger, vfs.points() - start)
    };
    let phase = vfs.cut_phase().context("the power is out")?;
    let unsynced = match rng.usize(0..10) {
        0 | 1 => Unsynced::Dropped,
        2 => Unsynced::Kept,
        3..=5 => Unsynced::Torn { sector: 512 },
        _ => Unsynced::Torn { sector: 4096 },
    };
    vfs.settle(unsynced, &mut rng)?;
    drop(vfs);
    let verdict = check(&path, &ledger, &runs, writers == 1);
    Ok(Outcome {
        points,
        phase,
        unsynced,
        checked: verdict.checked,
        lost: verdict.lost,
        corrupt: verdict.corrupt,
    })
}

#[derive(Default)]
struct Verdict {
    checked: u64,
    lost: Vec<String>,
    corrupt: Vec<String>,
}

/// Reopens the file with the normal VFS and checks it against the ledger.
fn check(path: &Path, ledger: &[Entry], runs: &[FlowRunId], one_writer: bool) -> Verdict {
    let mut verdict = Verdict::default();
    match integrity_check(path) {
        Ok(rows) if rows == ["ok"] => {}
        Ok(rows) => verdict
            .corrupt
            .push(format!("integrity_check: {}", rows.join("; "))),
        Err(e) => verdict.corrupt.push(format!("integrity_check failed: {e}")),
    }
    let options = SqliteOptions {
        durability: Durability::Normal,
        ..SqliteOptions::default()
    };
    let store = match SqliteContextStore::open_with(path, options) {
        Ok(store) => store,
        Err(e) => {
            verdict.corrupt.push(format!("reopening: {e}"));
            return verdict;
        }
    };

    let mut by_key: HashMap<&Key, Vec<&Entry>> = HashMap::new();
    for entry in ledger {
        by_key.entry(&entry.key).or_default().push(entry);
    }
    // Per acknowledged call (by start), whether its effect survived.
    let mut survived: BTreeMap<u64, bool> = BTreeMap::new();
    for (key, entries) in &by_key {
        let stored = match read(&store, key) {
            Ok(stored) => stored,
            Err(e) => {
                verdict.corrupt.push(format!("reading {key}: {e}"));
                continue;
            }
        };
        let source = match &stored {
            None => None,
            Some(value) => match entries.iter().find(|e| &e.value == value) {
                Some(entry) => Some(*entry),
                None => {
                    verdict
                        .corrupt
                        .push(format!("{key} holds a value no call wrote"));
                    continue;
                }
            },
        };
        for entry in entries.iter().filter(|e| e.acked) {
            verdict.checked += 1;
            // Lost: nothing there, or a value whose call ended before this one began.
            let kept = source.is_some_and(|s| s.end > entry.start);
            survived.insert(entry.start, kept);
            if !kept {
                verdict.lost.push(match source {
                    None => format!("{key} is missing"),
                    Some(_) => format!("{key} holds a value older than the last acknowledged"),
                });
            }
        }
    }
    if one_writer {
        // Commits are applied in order: what survived is a prefix.
        if let Some(first_lost) = survived.iter().find(|(_, kept)| !**kept).map(|(s, _)| *s) {
            let later = survived
                .range(first_lost..)
                .filter(|(_, kept)| **kept)
                .count();
            if later > 0 {
                verdict.corrupt.push(format!(
                    "{later} acknowledged writes survived after an earlier one was lost"
                ));
            }
        }
    }
    for run in runs {
        match store.list_keys(*run) {
            Ok(nodes) => {
                let known: HashSet<&NodeId> = by_key
                    .keys()
                    .filter_map(|k| match k {
                        Key::Output(r, node) if r == run => Some(node),
                        _ => None,
                    })
                    .collect();
                let strays = nodes.iter().filter(|n| !known.contains(n)).count();
                if strays > 0 {
                    verdict
                        .corrupt
                        .push(format!("{strays} node ids in run {run} that no call wrote"));
                }
            }
            Err(e) => verdict.corrupt.push(format!("listing run {run}: {e}")),
        }
    }
    let after = json!("written after the power came back");
    match store
        .put_global("after-power-loss", &after)
        .and_then(|()| store.get_global("after-power-loss"))
    {
        Ok(Some(value)) if value == after => {}
        Ok(other) => verdict
            .corrupt
            .push(format!("a write after recovery read back as {other:?}")),
        Err(e) => verdict
            .corrupt
            .push(format!("a write after recovery failed: {e}")),
    }
    verdict
}

fn integrity_check(path: &Path) -> rusqlite::Result<Vec<String>> {
    // Read-write, so that the WAL is recovered; never creating the file.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    stmt.query_map([], |row| row.get(0))?.collect()
}

fn read(
    store: &SqliteContextStore,
    key: &Key,
) -> Result<Option<Value>, contextstore::ContextStoreError> {
    match key {
        Key::Output(run, node) => store.get(*run, *node),
        Key::Once(key) | Key::Upserted(key) => store.get_global(key),
    }
}

/// The figures of a run of cuts.
#[derive(Default)]
struct Figures {
    cuts: u64,
    phases: BTreeMap<Phase, u64>,
    checked: u64,
    /// Acknowledged writes lost.
    lost: u64,
    /// Cuts after which the file was corrupt.
    corrupt: u64,
    /// The first few findings of each kind, with how to replay them.
    lost_samples: Vec<String>,
    corrupt_samples: Vec<String>,
}

impl Figures {
    fn add(&mut self, outcome: Outcome, writers: usize, seed: u64) {
        self.cuts += 1;
        *self.phases.entry(outcome.phase).or_default() += 1;
        self.checked += outcome.checked;
        self.lost += outcome.lost.len() as u64;
        self.corrupt += u64::from(!outcome.corrupt.is_empty());
        let trial = format!(
            "trial seed {seed} ({writers} writers, cut {} after {} points, unsynced {:?})",
            outcome.phase.name(),
            outcome.points,
            outcome.unsynced
        );
        for (findings, samples) in [
            (&outcome.lost, &mut self.lost_samples),
            (&outcome.corrupt, &mut self.corrupt_samples),
        ] {
            match findings.first() {
                Some(first) if samples.len() < 5 => samples.push(format!("{trial}: {first}")),
                _ => {}
            }
        }
    }

    fn line(&self, label: &str, seed: u64) -> String {
        let phases: Vec<String> = Phase::ALL
            .iter()
            .map(|p| format!("{} {}", p.name(), self.phases.get(p).copied().unwrap_or(0)))
            .collect();
        format!(
            "power loss, {label}: {} cuts ({}), {} acknowledged writes checked, {} lost, {} corrupt after the cut (seed {seed})",
            self.cuts,
            phases.join(", "),
            self.checked,
            self.lost,
            self.corrupt,
        )
    }

    fn lost_detail(&self) -> String {
        self.lost_samples.join("\n")
    }

    fn corrupt_detail(&self) -> String {
        self.corrupt_samples.join("\n")
    }
}

/// Runs `cuts` trials, half with one writer and half with 16. The first
/// trial of each half runs to the end uncut, to count the points a workload
/// makes; the others cut at a point drawn uniformly from that count.
fn campaign(setup: Setup, cuts: u64, seed: u64) -> Figures {
    let mut figures = Figures::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    let single = cuts / 2;
    for (writers, trials) in [(1, single), (WRITERS, cuts - single)] {
        let mut points = None;
        for _ in 0..trials {
            let trial_seed = rng.u64(..);
            let cut_at = points.map(|p: u64| rng.u64(1..=p.max(1)));
            let outcome = trial(setup, writers, cut_at, trial_seed)
                .unwrap_or_else(|e| panic!("trial seed {trial_seed} ({writers} writers): {e:#}"));
            points.get_or_insert(outcome.points);
            figures.add(outcome, writers, trial_seed);
        }
    }
    figures
}

/// Prints the figures' line, and the first corruptions found (and losses,
/// where the store promised none).
fn report(figures: &Figures, label: &str, seed: u64, show_losses: bool) {
    println!("{}", figures.line(label, seed));
    let losses = if show_losses {
        &figures.lost_samples[..]
    } else {
        &[]
    };
    for sample in figures.corrupt_samples.iter().chain(losses) {
        println!("  {sample}");
    }
}

#[test]
fn full_durability_keeps_every_acknowledged_write() {
    let seed = seed();
    let figures = campaign(Setup::honest(Durability::Full), cuts(), seed);
    report(&figures, "Durability::Full", seed, true);
    assert!(figures.checked > 0, "no acknowledged write was checked");
    assert_eq!(figures.corrupt, 0, "{}", figures.corrupt_detail());
    assert_eq!(figures.lost, 0, "{}", figures.lost_detail());
    if figures.cuts >= 100 {
        for phase in [Phase::Transaction, Phase::Commit, Phase::Checkpoint] {
            assert!(
                figures.phases.get(&phase).copied().unwrap_or(0) > 0,
                "no cut landed {}",
                phase.name()
            );
        }
    }
}

#[test]
fn normal_durability_never_corrupts() {
    let seed = seed().wrapping_add(1);
    let figures = campaign(Setup::honest(Durability::Normal), cuts(), seed);
    report(&figures, "Durability::Normal", seed, false);
    assert!(figures.checked > 0, "no acknowledged write was checked");
    assert_eq!(figures.corrupt, 0, "{}", figures.corrupt_detail());
}

/// The test can fail: a store that acknowledges a write before its commit
/// is synced (`Durability::Normal`, held to `Full`'s promise) loses
/// acknowledged writes, and the checker sees it.
#[test]
fn acknowledging_before_the_sync_is_caught() {
    let seed = seed().wrapping_add(2);
    let figures = campaign(Setup::honest(Durability::Normal), broken_cuts(), seed);
    report(
        &figures,
        "Durability::Normal held to Full's promise",
        seed,
        false,
    );
    assert!(
        figures.lost > 0,
        "a store acknowledging unsynced commits lost nothing over {} cuts",
        figures.cuts
    );
}

/// The simulated disk tears unsynced writes: a store whose checkpoints do
/// not sync the database file before the WAL is reused (`synchronous=OFF`
/// on the checkpointing connection) loses or corrupts acknowledged writes.
#[test]
fn checkpoints_without_sync_are_caught() {
    let seed = seed().wrapping_add(3);
    let setup = Setup {
        durability: Durability::Full,
        checkpoint_sync: "OFF",
    };
    let figures = campaign(setup, broken_cuts(), seed);
    report(
        &figures,
        "Durability::Full, checkpoints unsynced",
        seed,
        false,
    );
    assert!(
        figures.lost + figures.corrupt > 0,
        "unsynced checkpoints did no harm over {} cuts",
        figures.cuts
    );
}

/// Cuts for the runs of a deliberately broken store: a quarter of the
/// honest runs', at least 40.
fn broken_cuts() -> u64 {
    (cuts() / 4).max(40)
}
