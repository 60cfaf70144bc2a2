//! `contextstore new`: writes a ready step project in Rust, Python,
//! JavaScript or C, on the step SDK of that language.
//!
//! A Rust project depends on the SDK crate (`guest/sdk`) of the
//! contextstore repository by path. A Python, JavaScript or C project gets
//! a copy of its SDK and of the WIT (embedded in this binary), so its
//! sources are self-contained; its build script uses the pinned toolchain
//! that the repository's `guest/<lang>/build.sh` installs (componentize-py,
//! componentize-js, wit-bindgen), found through the repository's path,
//! written into the script (`CONTEXTSTORE_REPO` overrides it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::{Outcome, output};

/// The language of a new step project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `contextstore-guest` crate.
    Rust,
    /// Python, with `contextstore_step.py` (componentize-py).
    Python,
    /// JavaScript, with `contextstore-step.js` (componentize-js).
    Js,
    /// C, with `contextstore_step.h` (clang + wit-bindgen).
    C,
}

/// `contextstore new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The step's name: lowercase letters, digits, `-` and `_`, starting with a letter.
    name: String,
    /// The language of the step.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where to write the project (default: ./NAME); must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The contextstore repository, for the Rust SDK and the toolchains
    /// (default: the one this binary was built from, or $CONTEXTSTORE_REPO).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

/// The repository this binary was built from.
const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

const WIT: &str = include_str!("../../../wit/store.wit");
const TEST_SH: &str = include_str!("../../templates/common/test.sh");
const README: &str = include_str!("../../templates/common/README.md");

/// One file of a project: its path in the project, its text, whether it is
/// a script (made executable).
struct File {
    path: &'static str,
    text: String,
    executable: bool,
    what: &'static str,
}

impl File {
    fn new(path: &'static str, text: impl Into<String>, what: &'static str) -> Self {
        File {
            path,
            text: text.into(),
            executable: path.ends_with(".sh"),
            what,
        }
    }
}

/// A project's files and how to build and run it.
struct Project {
    files: Vec<File>,
    /// The build command, run in the project directory.
    build: &'static str,
    /// The component the build writes, relative to the project directory.
    component: String,
    /// What the build needs from the repository.
    tools: &'static str,
    /// Where the SDK's documentation is.
    sdk: String,
}

/// Writes the project and prints how to build, run and test it.
pub fn new(args: NewArgs) -> anyhow::Result<Outcome> {
    check_name(&args.name)?;
    let repo = args
        .repo
        .or_else(|| std::env::var_os("CONTEXTSTORE_REPO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(BUILT_FROM));
    let repo = repo.canonicalize().with_context(|| {
        format!(
            "cannot find the contextstore repository at {}: pass --repo DIR",
            repo.display()
        )
    })?;
    if !repo.join("wit/store.wit").is_file() || !repo.join("guest/sdk").is_dir() {
        bail!(
            "{} is not the contextstore repository (no wit/store.wit or guest/sdk): pass --repo DIR",
            repo.display()
        );
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    let repo_text = repo
        .to_str()
        .context("the repository's path is not UTF-8")?;
    let project = project(args.lang, &args.name, repo_text);
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{crate}}", &args.name.replace('-', "_"))
            .replace("{{repo}}", repo_text)
    };
    let mut files_table = String::new();
    for file in &project.files {
        if !file.what.is_empty() {
            let _ = writeln!(files_table, "| `{}` | {} |", file.path, file.what);
        }
    }
    let readme = README
        .replace("{{language}}", language(args.lang))
        .replace("{{lang}}", lang_flag(args.lang))
        .replace("{{files}}\n", &files_table)
        .replace("{{build}}", project.build)
        .replace("{{component}}", &project.component)
        .replace("{{tools}}", project.tools)
        .replace("{{sdk}}", &project.sdk);
    let test = TEST_SH
        .replace("{{build}}", project.build)
        .replace("{{component}}", &project.component);
    let mut files = project.files;
    files.push(File::new("README.md", readme, ""));
    files.push(File::new("test.sh", test, ""));
    for file in &files {
        write_file(&dir.join(file.path), &fill(&file.text), file.executable)?;
    }

    let dir_text = shell_quote(&dir.display().to_string());
    let component = shell_quote(&dir.join(&project.component).display().to_string());
    output::line(format_args!(
        "Created the {} step `{}` in {}.",
        language(args.lang),
        args.name,
        dir.display()
    ))?;
    output::line(format_args!("Build: cd {dir_text} && {}", project.build))?;
    output::line(format_args!(
        "Run:   contextstore run {component} --params '{{\"greeting\":\"Hi\"}}' --upstream-value 'input={{\"text\":\"Ada\"}}' --trace"
    ))?;
    output::line(format_args!("Test:  cd {dir_text} && ./test.sh"))?;
    Ok(Outcome::Done)
}

/// The files of a project in `lang`, before `{{…}}` is filled in.
fn project(lang: Lang, name: &str, repo: &str) -> Project {
    match lang {
        Lang::Rust => Project {
            files: vec![
                File::new(
                    "Cargo.toml",
                    include_str!("../../templates/rust/Cargo.toml"),
                    "the crate: a `cdylib` on `contextstore-guest` (by path)",
                ),
                File::new(
                    "Cargo.lock",
                    include_str!("../../../guest/Cargo.lock"),
                    "the versions the repository's steps build with",
                ),
                File::new(
                    "src/lib.rs",
                    include_str!("../../templates/rust/lib.rs"),
                    "the step",
                ),
                File::new(".gitignore", "/target\n", ""),
            ],
            build: "cargo build --release --target wasm32-wasip2",
            component: format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            tools: "Needs the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).",
            sdk: format!(
                "`contextstore-guest`, at `{repo}/guest/sdk` (`cargo doc --open` shows its docs)."
            ),
        },
        Lang::Python => Project {
            files: vec![
                File::new(
                    "app.py",
                    include_str!("../../templates/python/app.py"),
                    "the step",
                ),
                File::new(
                    "contextstore_step.py",
                    include_str!("../../../guest/python/contextstore_step.py"),
                    "the SDK (a copy)",
                ),
                File::new("wit/store.wit", WIT, "the `step` world (a copy)"),
                File::new(
                    "build.sh",
                    include_str!("../../templates/python/build.sh"),
                    "builds the component with componentize-py",
                ),
                File::new(".gitignore", "*.wasm\n__pycache__/\n", ""),
            ],
            build: "./build.sh",
            component: format!("{name}.wasm"),
            tools: "Uses the componentize-py that `guest/python/build.sh` of the contextstore \
                    repository installs (into `guest/python/.venv`); the repository's path is \
                    in `build.sh` (`CONTEXTSTORE_REPO` overrides it).",
            sdk: format!("`contextstore_step.py`; its guide: `{repo}/guest/python/README.md`."),
        },
        Lang::Js => Project {
            files: vec![
                File::new(
                    "app.js",
                    include_str!("../../templates/js/app.js"),
                    "the step",
                ),
                File::new(
                    "contextstore-step.js",
                    include_str!("../../../guest/js/contextstore-step.js"),
                    "the SDK (a copy)",
                ),
                File::new("wit/store.wit", WIT, "the `step` world (a copy)"),
                File::new(
                    "build.sh",
                    include_str!("../../templates/js/build.sh"),
                    "builds the component with componentize-js",
                ),
                File::new(".gitignore", "*.wasm\n", ""),
            ],
            build: "./build.sh",
            component: format!("{name}.wasm"),
            tools: "Uses the componentize-js that `guest/js/build.sh` of the contextstore \
                    repository installs (into `guest/js/node_modules`) and Node.js; the \
                    repository's path is in `build.sh` (`CONTEXTSTORE_REPO` overrides it).",
            sdk: format!("`contextstore-step.js`; its guide: `{repo}/guest/js/README.md`."),
        },
        Lang::C => Project {
            files: vec![
                File::new("app.c", include_str!("../../templates/c/app.c"), "the step"),
                File::new(
                    "contextstore_step.h",
                    include_str!("../../../guest/c/contextstore_step.h"),
                    "the SDK (a copy): API and ownership rules",
                ),
                File::new(
                    "contextstore_step.c",
                    include_str!("../../../guest/c/contextstore_step.c"),
                    "the SDK (a copy)",
                ),
                File::new(
                    "json.h",
                    include_str!("../../../guest/c/json.h"),
                    "finds string members of JSON objects (a copy)",
                ),
                File::new("json.c", include_str!("../../../guest/c/json.c"), ""),
                File::new("wit/store.wit", WIT, "the `step` world (a copy)"),
                File::new(
                    "build.sh",
                    include_str!("../../templates/c/build.sh"),
                    "generates the bindings and builds the component",
                ),
                File::new(".gitignore", "*.wasm\n/build\n", ""),
            ],
            build: "./build.sh",
            component: format!("{name}.wasm"),
            tools: "Needs Debian's clang-22, lld-22 and wasi-libc and a Rust toolchain, and \
                    uses the wit-bindgen that `guest/c/build.sh` of the contextstore repository \
                    installs (into `target/tools`); the repository's path is in `build.sh` \
                    (`CONTEXTSTORE_REPO` overrides it).",
            sdk: format!(
                "`contextstore_step.h` (API and ownership rules in its comments); its guide: \
                 `{repo}/guest/c/README.md`."
            ),
        },
    }
}

fn language(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::C => "C",
    }
}

fn lang_flag(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
        Lang::C => "c",
    }
}

/// A name usable as a crate, a file and a flow node name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !starts_with_letter || !rest_ok || name.len() > 64 {
        bail!(
            "invalid step name {name:?}: use lowercase letters, digits, `-` and `_`, starting with a letter (at most 64)"
        );
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if executable {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = executable;
    Ok(())
}

/// `text` as one word for a POSIX shell.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "hello", "my-step_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Hello", "a b", "a/b", "-a", "é", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/tmp/a-b"), "/tmp/a-b");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
