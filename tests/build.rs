//! Builds the Rust guest components (the `guest/` workspace) for
//! `wasm32-wasip2` and writes `components.rs` into `OUT_DIR`: one path
//! constant per component, and `foreach_component!`, which the tests use to
//! check at compile time that every component has a test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The components of the guest workspace, by crate name.
const COMPONENTS: &[&str] = &[
    "greet", "shout", "words", "join", "hostile", "bench", "slow",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let guest = root.join("guest");
    for watched in ["Cargo.toml", "Cargo.lock", "sdk", "steps", "hostile"] {
        println!("cargo:rerun-if-changed={}", guest.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let target_dir = root.join("target").join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("cannot run cargo for the guest components");
    if !status.success() {
        panic!(
            "building the guest components failed; is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`, which scripts/setup does)"
        );
    }

    let out_dir = target_dir.join("wasm32-wasip2").join("release");
    let mut code = String::new();
    for name in COMPONENTS {
        let path = out_dir.join(format!("{name}.wasm"));
        assert!(path.exists(), "expected component {}", path.display());
        code += &format!(
            "/// The `{name}` component.\npub const {}: &str = {:?};\n",
            name.to_uppercase(),
            path.display().to_string()
        );
    }
    code += "/// Calls `$m!(name)` for every guest component.\n#[macro_export]\nmacro_rules! foreach_component {\n    ($m:ident) => {\n";
    for name in COMPONENTS {
        code += &format!("        $m!({name});\n");
    }
    code += "    };\n}\n";
    let dest = Path::new(&std::env::var_os("OUT_DIR").expect("set by cargo")).join("components.rs");
    std::fs::write(dest, code).expect("cannot write components.rs");
}
