//! Compile time versus cached load time of the example components, as a
//! ratio measured in one run.
//!
//! ```sh
//! scripts/build-guests && guest/build-all.sh    # the components
//! cargo bench -p contextstore --bench load
//! ```
//!
//! For each component: a runtime with an empty cache directory loads it
//! (compiles and writes the cache), then a new runtime on the same
//! directory loads it again (reads the cache). Each is the best of
//! `ROUNDS` rounds. Missing components are listed and skipped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contextstore::Runtime;
use contextstore::runtime::RuntimeConfig;

const ROUNDS: usize = 3;

fn components() -> Vec<(&'static str, PathBuf)> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let rust = target.join("guest/wasm32-wasip2/release");
    let others = target.join("components");
    vec![
        ("Rust (greet)", rust.join("greet.wasm")),
        ("Rust (hostile)", rust.join("hostile.wasm")),
        ("C (count)", others.join("c-count.wasm")),
        ("Python (words)", others.join("python-words.wasm")),
        ("JavaScript (join)", others.join("js-join.wasm")),
    ]
}

fn time_load(cache: &Path, component: &Path) -> Duration {
    let runtime = Runtime::with_config(RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let started = Instant::now();
    runtime.load_file(component).expect("component loads");
    started.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    println!("| component | size | compile (first load) | cached load | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, path) in components() {
        let Ok(meta) = std::fs::metadata(&path) else {
            eprintln!("skipped {name}: {} is missing", path.display());
            continue;
        };
        let (mut compile, mut cached) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            let dir = tempfile::tempdir().expect("temp dir");
            compile = compile.min(time_load(dir.path(), &path));
            cached = cached.min(time_load(dir.path(), &path));
        }
        println!(
            "| {name} | {:.1} MB | {:.0} ms | {:.1} ms | {:.0}x |",
            meta.len() as f64 / 1e6,
            compile.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            compile.as_secs_f64() / cached.as_secs_f64()
        );
    }
}
