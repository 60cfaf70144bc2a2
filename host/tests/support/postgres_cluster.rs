//! A throwaway PostgreSQL server for tests, and a fresh database per test.
//!
//! [`fresh_database`] returns the URL of a new, empty database. The server
//! behind it is, once per test binary, either the one that
//! `CONTEXTSTORE_TEST_POSTGRES` names (a URL of a role that may create
//! databases), or a cluster of the tests' own: `initdb` into a temporary
//! directory (as the `postgres` user when the tests run as root, since
//! initdb refuses root), started with `pg_ctl` listening on a Unix socket
//! in that directory and on a free TCP port of 127.0.0.1 (never another
//! address), and stopped and deleted when the test binary exits. If it
//! cannot start, the test panics saying why: no test is skipped.
//!
//! The URLs [`fresh_database`] returns name the socket; [`tcp_url`] gives
//! the same database over TCP (for a proxy in between, say), and
//! [`restart`] restarts the server (`pg_ctl restart -m fast`), for tests of
//! what clients do when it goes away.
//!
//! The cluster trusts the `postgres` role (on its socket and on
//! 127.0.0.1) and asks every other role for a password (scram-sha-256), so
//! that tests can check what a wrong password does.
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
    /// The TCP port of the tests' own cluster on 127.0.0.1 (`None` for a
    /// server named by [`ENV`]).
    tcp_port: Option<u16>,
}

/// The tests' own cluster, stopped and removed at exit.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    /// The server options (`pg_ctl -o`), the same at every (re)start.
    options: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);

/// The URL of a new, empty database on the test server (started on first use).
///
/// # Panics
///
/// When no server can be started or reached, with the reason.
pub fn fresh_database() -> String {
    let server = server();
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

/// The test server, started on first use.
fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) => panic!("PostgreSQL for the tests: {why}"),
    }
}

/// The same database as `url` (a URL on the test server, as
/// [`fresh_database`] returns, with any user) over TCP:
/// `127.0.0.1:<port>` as its host. With a server named by [`ENV`], `url`
/// itself if it is already a TCP URL of 127.0.0.1 or localhost.
///
/// # Panics
///
/// With a server named by [`ENV`] that is reached otherwise.
pub fn tcp_url(url: &str) -> String {
    match server().tcp_port {
        Some(port) => with_host(url, &format!("127.0.0.1:{port}")),
        None => {
            let host = host_of(url);
            assert!(
                host.starts_with("127.0.0.1") || host.starts_with("localhost"),
                "tcp_url: {ENV} names a server at `{host}`, not on 127.0.0.1 over TCP; \
                 point it at 127.0.0.1, or unset it to use the tests' own cluster"
            );
            url.to_owned()
        }
    }
}

/// Restarts the tests' own server (`pg_ctl restart -m fast -w`, as the
/// cluster's owner): every connection is dropped, and the server accepts
/// connections again (on the same socket and port) when this returns.
///
/// # Panics
///
/// If the restart fails (with the server log), or with a server named by
/// [`ENV`], which the tests do not own.
pub fn restart() {
    let server = server();
    assert!(
        server.tcp_port.is_some(),
        "restart: the server named by {ENV} is not the tests' own; unset it to use the tests' cluster"
    );
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = guard.as_ref().expect("the tests' cluster is running");
    let data = cluster.dir.path().join("data");
    let log = cluster.dir.path().join("server.log");
    let (data, log) = (path_str(&data).unwrap(), path_str(&log).unwrap());
    let restarted = cluster.run(
        "pg_ctl",
        &[
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "-o",
            &cluster.options,
            "restart",
        ],
    );
    if let Err(why) = restarted {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        panic!("PostgreSQL for the tests: restart: {why}\nserver log:\n{log_text}");
    }
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

/// `url` with its host (and port) replaced by `host`, such as
/// `127.0.0.1:5432`; user, password, database and query are kept.
pub fn with_host(url: &str, host: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    format!(
        "{}{}{host}{}",
        &url[..authority_start],
        &rest[..host_start],
        &rest[authority_end..]
    )
}

/// The host (and port) part of `url`: `127.0.0.1:5432` of a
/// [`tcp_url`], say.
pub fn host_of(url: &str) -> &str {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    &rest[host_start..authority_end]
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
        return Ok(Server {
            admin_url: url,
            tcp_port: None,
        });
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
    let mut cluster = Cluster {
        dir,
        bin,
        as_postgres,
        options: String::new(),
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
    // The admin role is trusted; every other role needs its password. Over
    // TCP the same, from 127.0.0.1 only (the only address it listens on).
    let hba = "local all postgres trust\nlocal all all scram-sha-256\n\
               host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    let log = cluster.dir.path().join("server.log");
    // A free port: one the kernel just gave out and took back. Another
    // process may take it in between, so a start that cannot bind it
    // tries again with another.
    let mut attempt = 0;
    let port = loop {
        attempt += 1;
        let port = free_port()?;
        // Each attempt's log alone, so that an old bind error is not read
        // again (removed, not emptied: the server's owner creates it).
        let _ = std::fs::remove_file(&log);
        cluster.options = format!(
            "-c listen_addresses='127.0.0.1' -c port={port} -c unix_socket_directories='{}' \
             -c max_connections=400",
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
                &cluster.options,
                "start",
            ],
        );
        match started {
            Ok(()) => break port,
            Err(why) => {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                let port_taken = log_text.contains("could not bind")
                    || log_text.contains("Address already in use");
                if !(port_taken && attempt < 5) {
                    return Err(format!("{why}\nserver log:\n{log_text}"));
                }
            }
        }
    };
    // The socket's file is named after the port, so the URL names it too.
    let admin_url = format!(
        "postgres://postgres@{}:{port}/postgres",
        percent_encode(path_str(&socket_dir)?)
    );
    *CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster);
    register_stop_at_exit();
    Ok(Server {
        admin_url,
        tcp_port: Some(port),
    })
}

/// A TCP port of 127.0.0.1 that is free right now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
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
