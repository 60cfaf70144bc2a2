//! The library's dependencies are the store's: with `default-features =
//! false` a flow engine that embeds contextstore takes in nothing of the
//! command line, flow files or the sandbox. Fails when a dependency outside
//! the allow-list creeps in; add to the list only what the store itself needs.

use std::collections::BTreeSet;
use std::process::Command;

/// Every crate the store alone may depend on, directly or not.
const ALLOWED: &[&str] = &[
    // the store's own dependencies
    "contextstore",
    "rusqlite",
    "serde",
    "serde_json",
    "serde_stacker",
    "thiserror",
    "time",
    "tracing",
    "uuid",
    // theirs
    "ahash", // rusqlite 0.32's hashlink 0.9 (hashbrown 0.14)
    "bitflags",
    "cfg-if",
    "deranged",
    "fallible-iterator",
    "fallible-streaming-iterator",
    "foldhash",
    "getrandom",
    "hashbrown",
    "hashlink",
    "itoa",
    "libc",
    "libsqlite3-sys",
    "memchr",
    "num-conv",
    "once_cell",
    "pin-project-lite",
    "powerfmt",
    "proc-macro2",
    "psm",
    "quote",
    "serde_core",
    "serde_derive",
    "sha1_smol",
    "smallvec",
    "stacker",
    "syn",
    "thiserror-impl",
    "time-core",
    "tracing-attributes",
    "tracing-core",
    "unicode-ident",
    "zerocopy", // ahash's, with rusqlite 0.32
    "zmij",
];

#[test]
fn without_default_features_the_library_depends_only_on_the_store() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--manifest-path",
            manifest,
            "-p",
            "contextstore",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{lib}",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.replace('_', "-"))
        .collect();
    let allowed: BTreeSet<String> = ALLOWED.iter().map(|n| n.replace('_', "-")).collect();
    let extra: Vec<&String> = found.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "the store alone now depends on {extra:?}: put it behind a feature, or allow it here if the store needs it"
    );
    for needed in ["rusqlite", "serde-json", "contextstore"] {
        assert!(found.contains(needed), "{needed} missing from {found:?}");
    }
    for binary_only in [
        "clap",
        "toml",
        "anyhow",
        "tracing-subscriber",
        "tempfile",
        "wasmtime",
    ] {
        assert!(!found.contains(binary_only), "{binary_only} in {found:?}");
    }
}
