//! The compiled-code cache: hits across runtimes, corrupt or foreign
//! entries recompiled (never trusted), concurrent fillers, the off switch.

use std::path::{Path, PathBuf};

use contextstore::runtime::RuntimeConfig;
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
