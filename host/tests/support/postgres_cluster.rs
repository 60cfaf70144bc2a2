//! A throwaway PostgreSQL server for tests, and a fresh database per test.
//!
//! [`fresh_database`] returns the URL of a new, empty database. The server
//! behind it is, once per test binary, either the one that
//! `CONTEXTSTORE_TEST_POSTGRES` names (a URL of a role that may create
//! databases), or a cluster of the tests' own: `initdb` into a temporary
//! directory (as the `postgres` user when the tests run as root, since
//! initdb refuses root), started with `pg_ctl` listening only on a Unix
//! socket in that directory (no TCP port), and stopped and deleted when the
//! test binary exits. If it cannot start, the test panics saying why: no
//! test is skipped.
//!
//! The cluster trusts the `postgres` role on its socket and asks every
//! other role for a password (scram-sha-256), so that tests can check what
//! a wrong password does.
//!
//! Shared by the host crate's tests and the workspace's integration tests
//! (included with `#[path]`), so it needs only std, `tempfile` and the
//! `postgres` crate.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The environment variable naming an existing server to test against.
pub const ENV: &str = "CONTEXTSTORE_TEST_POSTGRES";

/// The server the tests of this binary use.
struct Server {
    /// URL of a role that may create databases, with a database to connect to.
    admin_url: String,
}

/// The tests' own cluster, stopped and removed at exit.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// The URL of a new, empty database on the test server (started on first use).
///
/// # Panics
///
/// When no server can be started or reached, with the reason.
pub fn fresh_database() -> String {
    let server = match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) => panic!("PostgreSQL for the tests: {why}"),
    };
    let name = format!("cs_test_{}", uuid_like());
    let mut client = postgres::Client::connect(&server.admin_url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL for the tests: cannot connect: {e}"));
    client
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"
        ))
        .unwrap_or_else(|e| panic!("PostgreSQL for the tests: CREATE DATABASE: {e}"));
    with_dbname(&server.admin_url, &name)
}

/// Runs SQL as the admin role in the database at `url` (which must be on
/// the test server).
pub fn admin_execute(url: &str, sql: &str) {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `url` with its database name replaced by `dbname`.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{dbname}{query}", &base[..path_start])
}

/// `url` with its user and password replaced.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    format!(
        "{}{user}:{password}@{}",
        &url[..authority_start],
        &rest[host_start..]
    )
}

/// A random lowercase hex name part.
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        out += &format!("{:016x}", h.finish());
    }
    out
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var(ENV) {
        postgres::Client::connect(&url, postgres::NoTls)
            .map_err(|e| format!("{ENV}={url}: cannot connect: {e}"))?;
        return Ok(Server { admin_url: url });
    }
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("cs-pg")
        .tempdir_in("/tmp")
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let as_postgres = is_root(dir.path());
    if as_postgres {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cannot give {} to the postgres user (is the `postgresql` package installed? scripts/setup installs it)",
                dir.path().display()
            ));
        }
    }
    let data = dir.path().join("data");
    let socket_dir = dir.path().to_path_buf();
    let cluster = Cluster {
        dir,
        bin,
        as_postgres,
    };
    cluster.run(
        "initdb",
        &[
            "-D",
            path_str(&data)?,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "-A",
            "trust",
            "--no-sync",
        ],
    )?;
    // The admin role is trusted; every other role needs its password.
    let hba = "local all postgres trust\nlocal all all scram-sha-256\n";
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    let log = cluster.dir.path().join("server.log");
    let options = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=400",
        path_str(&socket_dir)?
    );
    let started = cluster.run(
        "pg_ctl",
        &[
            "-D",
            path_str(&data)?,
            "-l",
            path_str(&log)?,
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "start",
        ],
    );
    if let Err(why) = started {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("{why}\nserver log:\n{log_text}"));
    }
    let admin_url = format!(
        "postgres://postgres@{}/postgres",
        percent_encode(path_str(&socket_dir)?)
    );
    *CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster);
    register_stop_at_exit();
    Ok(Server { admin_url })
}

impl Cluster {
    /// Runs a PostgreSQL program as the cluster's owner; its output on failure.
    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn stop(self) {
        let data = self.dir.path().join("data");
        if let Some(data) = data.to_str() {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
        // `self.dir` removes the directory as it drops.
    }
}

/// The directory of the PostgreSQL programs: Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, else the directory of `pg_ctl` on
/// the PATH.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .ok_or_else(|| {
            "no PostgreSQL server programs (initdb, pg_ctl) found: install Debian's `postgresql` \
             package (scripts/setup does), or set CONTEXTSTORE_TEST_POSTGRES to a server's URL"
                .to_owned()
        })
}

/// Whether this process runs as root (it owns `dir`, just made, as uid 0).
fn is_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// Percent-encodes a socket directory for the host part of a URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

extern "C" fn stop_cluster() {
    let cluster = CLUSTER.lock().ok().and_then(|mut c| c.take());
    if let Some(cluster) = cluster {
        cluster.stop();
    }
}

/// Stops and removes the cluster when the test binary exits (statics are
/// never dropped; the test harness ends with `exit`, which runs `atexit`
/// handlers).
fn register_stop_at_exit() {
    unsafe extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
    }
    // SAFETY: `stop_cluster` is a plain function that lives as long as the
    // process and is safe to call once at exit.
    unsafe {
        atexit(stop_cluster);
    }
}
