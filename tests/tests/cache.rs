//! The compiled-code cache: hits across runtimes, corrupt, foreign and
//! renamed entries recompiled (never trusted), planted keys and entries in
//! a directory that is not the user's alone never loaded, concurrent
//! fillers, the off switch.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use contextstore::runtime::{CacheError, CodeCache, Lookup, RuntimeConfig};
use contextstore::{FlowRunId, Grant, Invocation, Limits, NodeId, Runtime};
use contextstore_tests::{components, temp_store};
use serde_json::json;

fn runtime_with_cache(dir: &Path) -> Runtime {
    Runtime::with_config(RuntimeConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

/// Loads greet with `runtime` and checks that it really runs.
fn greet_runs(runtime: &Runtime) {
    let component = runtime.load_file(components::GREET).unwrap();
    let (_dir, store) = temp_store();
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_params(json!({"name": "cache"}));
    let out = runtime
        .run(
            &component,
            &store,
            &invocation,
            &Grant::default(),
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(out.value().unwrap(), json!({"greeting": "Hello, cache!"}));
}

#[test]
fn a_second_runtime_loads_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    greet_runs(&runtime_with_cache(dir.path()));
    let written = entries(dir.path());
    assert_eq!(written.len(), 1);
    let modified = std::fs::metadata(&written[0]).unwrap().modified().unwrap();
    greet_runs(&runtime_with_cache(dir.path()));
    // A hit reads the entry and does not rewrite it.
    assert_eq!(
        std::fs::metadata(&written[0]).unwrap().modified().unwrap(),
        modified
    );
}

#[test]
fn corrupt_truncated_and_foreign_entries_are_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    greet_runs(&runtime_with_cache(dir.path()));
    let entry = entries(dir.path()).remove(0);
    let good = std::fs::read(&entry).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let foreign = {
        // A well-formed entry under another key: what a process without
        // this cache's key would write.
        let other = tempfile::tempdir().unwrap();
        greet_runs(&runtime_with_cache(other.path()));
        std::fs::read(entries(other.path()).remove(0)).unwrap()
    };
    for (what, bad) in [
        ("flipped byte", flipped),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("header only", good[..16].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"not a compiled component".to_vec()),
        ("foreign key", foreign),
    ] {
        std::fs::write(&entry, &bad).unwrap();
        greet_runs(&runtime_with_cache(dir.path()));
        // Recompiled and written again: compilation is deterministic, and
        // the MAC is this cache's, so the entry is the good one again.
        assert!(
            std::fs::read(&entry).unwrap() == good,
            "{what}: entry not rewritten"
        );
    }
}

#[test]
fn concurrent_runtimes_fill_one_cache_safely() {
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| greet_runs(&runtime_with_cache(dir.path())));
        }
    });
    assert_eq!(entries(dir.path()).len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    greet_runs(&runtime_with_cache(dir.path()));
}

#[test]
fn without_cache_nothing_is_written() {
    let runtime = Runtime::with_config(RuntimeConfig::without_cache()).unwrap();
    greet_runs(&runtime);
    // And a cache directory that cannot be created is not fatal.
    let broken = Runtime::with_config(RuntimeConfig {
        cache_dir: Some("/proc/no-such/cache".into()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    greet_runs(&broken);
}

/// A uid that is not this process's (the tests run as root, which may
/// hand files to any uid).
const OTHER_UID: u32 = 4242;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `path` to another user; `false` when this process may not (not root).
fn give_away(path: &Path) -> bool {
    match std::os::unix::fs::chown(path, Some(OTHER_UID), Some(OTHER_UID)) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => false,
        Err(e) => panic!("chown {}: {e}", path.display()),
    }
}

/// A cache directory as an attacker would leave it: their key (`mac.key`)
/// and, under greet's name, an entry holding `shout`'s compiled code with
/// a valid MAC under that key. Returns the directory and the entry.
fn planted_cache(parent: &Path) -> (PathBuf, PathBuf) {
    let dir = parent.join("cache");
    let runtime = Runtime::with_config(RuntimeConfig::without_cache()).unwrap();
    let engine = runtime.engine();
    let cache = CodeCache::open(&dir).unwrap();
    let shout =
        wasmtime::component::Component::new(engine, std::fs::read(components::SHOUT).unwrap())
            .unwrap();
    cache.put(engine, &greet_hash(), &shout).unwrap();
    let entry = entries(&dir).remove(0);
    (dir, entry)
}

fn greet_hash() -> blake3::Hash {
    blake3::hash(&std::fs::read(components::GREET).unwrap())
}

/// Whether the cache in `dir`, trusted as it is, would hand out a compiled
/// component for greet.
fn hit_for_greet(dir: &Path) -> bool {
    let runtime = Runtime::with_config(RuntimeConfig::without_cache()).unwrap();
    match CodeCache::open(dir).map(|c| c.get(runtime.engine(), &greet_hash())) {
        Ok(Lookup::Hit(_)) => true,
        Ok(Lookup::Miss) | Err(_) => false,
    }
}

#[test]
fn a_planted_entry_is_what_the_attacks_below_would_load() {
    // The control for the next test: a planted cache that passes the
    // checks does load the planted code (shout's, so greet's run fails).
    // That is why the key and the directory must be the user's alone.
    let parent = tempfile::tempdir().unwrap();
    let (dir, _) = planted_cache(parent.path());
    assert!(hit_for_greet(&dir));
    let runtime = runtime_with_cache(&dir);
    let greet = runtime.load_file(components::GREET).unwrap();
    let (_db, store) = temp_store();
    let invocation =
        Invocation::new(FlowRunId::new(), NodeId::new()).with_params(json!({"name": "cache"}));
    let ran = runtime.run(
        &greet,
        &store,
        &invocation,
        &Grant::default(),
        &Limits::default(),
    );
    assert!(
        !ran.is_ok_and(|out| out.value().unwrap() == json!({"greeting": "Hello, cache!"})),
        "the planted code should have run in place of greet's"
    );
}

#[test]
fn a_planted_key_with_planted_entries_leads_to_a_recompile() {
    type Attack = fn(&Path, &Path) -> bool;
    let attacks: [(&str, Attack); 8] = [
        ("world-writable directory", |dir, _| {
            chmod(dir, 0o777);
            true
        }),
        ("group-writable directory", |dir, _| {
            chmod(dir, 0o770);
            true
        }),
        ("directory of another user", |dir, _| give_away(dir)),
        ("key of another user", |_, key| give_away(key)),
        ("key readable by others", |_, key| {
            chmod(key, 0o644);
            true
        }),
        ("key with a second link", |dir, key| {
            std::fs::hard_link(key, dir.with_file_name("key-copy")).unwrap();
            true
        }),
        ("key that is a symlink", |dir, key| {
            // To a key file that passes every other check.
            let elsewhere = dir.with_file_name("real-key");
            std::fs::rename(key, &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, key).unwrap();
            true
        }),
        ("key of 33 bytes", |_, key| {
            let mut bytes = std::fs::read(key).unwrap();
            bytes.push(0);
            std::fs::write(key, bytes).unwrap();
            true
        }),
    ];
    for (what, attack) in attacks {
        let parent = tempfile::tempdir().unwrap();
        let (dir, entry) = planted_cache(parent.path());
        let key = dir.join("mac.key");
        if !attack(&dir, &key) {
            eprintln!("skipped ({what}): changing owners needs root");
            continue;
        }
        let planted = std::fs::read(&entry).unwrap();
        assert!(
            CodeCache::open(&dir).is_err(),
            "{what}: the cache was opened"
        );
        // Greet's own code runs: the planted entry was not loaded, and the
        // directory was not written either.
        greet_runs(&runtime_with_cache(&dir));
        assert_eq!(std::fs::read(&entry).unwrap(), planted, "{what}");
        assert_eq!(entries(&dir).len(), 1, "{what}");
    }
}

#[test]
fn a_renamed_entry_is_recompiled() {
    // An attacker who cannot read the key but can move files: shout's
    // genuine entry, renamed to greet's name.
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_with_cache(dir.path());
    greet_runs(&runtime);
    let greet_entry = entries(dir.path()).remove(0);
    let good = std::fs::read(&greet_entry).unwrap();
    runtime.load_file(components::SHOUT).unwrap();
    let shout_entry = entries(dir.path())
        .into_iter()
        .find(|e| *e != greet_entry)
        .unwrap();
    std::fs::rename(&shout_entry, &greet_entry).unwrap();

    assert!(!hit_for_greet(dir.path()), "the renamed entry was accepted");
    greet_runs(&runtime_with_cache(dir.path()));
    assert!(
        std::fs::read(&greet_entry).unwrap() == good,
        "the renamed entry was not replaced by greet's own"
    );
}

#[test]
fn a_world_writable_directory_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    assert!(matches!(
        CodeCache::open(dir.path()),
        Err(CacheError::WritableByOthers { mode: 0o777, .. })
    ));
    greet_runs(&runtime_with_cache(dir.path()));
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(written.is_empty(), "the cache wrote {written:?}");
}

#[test]
fn a_directory_of_another_user_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    if !give_away(dir.path()) {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    let refused = CodeCache::open(dir.path());
    assert!(
        matches!(
            refused,
            Err(CacheError::NotOwned {
                owner: OTHER_UID,
                ..
            })
        ),
        "{refused:?}"
    );
    greet_runs(&runtime_with_cache(dir.path()));
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn a_new_cache_directory_and_key_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a").join("b");
    greet_runs(&runtime_with_cache(&dir));
    assert_eq!(mode(&parent.path().join("a")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("mac.key")), 0o600);
    assert_eq!(std::fs::metadata(dir.join("mac.key")).unwrap().len(), 32);
    assert_eq!(entries(&dir).len(), 1);
}

#[test]
fn a_bad_key_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mac.key");
    std::fs::write(&key, [7u8; 31]).unwrap();
    chmod(&key, 0o600);
    let refused = CodeCache::open(dir.path());
    assert!(
        matches!(&refused, Err(CacheError::UntrustedKey { reason, .. }) if reason.contains("31 bytes")),
        "{refused:?}"
    );
    greet_runs(&runtime_with_cache(dir.path()));
    assert_eq!(
        std::fs::read(&key).unwrap(),
        [7u8; 31],
        "the key was replaced"
    );
    assert!(entries(dir.path()).is_empty());
}
