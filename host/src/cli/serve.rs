//! `contextstore serve`: a live, read-only web view of a store, with
//! `/metrics` (see [`super::web`]); and the worker's own metrics server of
//! `flow run --metrics-listen` ([`WorkerMetrics`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::web::{self, AppState};
use super::{DbArgs, Outcome, output};

/// `contextstore serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The address to listen on, and only that one. The server has no
    /// authentication: keep it on a loopback address, or behind a proxy of
    /// yours that checks who asks.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Listen on an address that is not a loopback one (refused without).
    #[arg(long)]
    allow_remote: bool,
    /// A `Host` the server answers to besides its own address (and
    /// `localhost`), as `name:port`: what a proxy in front of it sends.
    /// Repeatable. Other hosts are refused (DNS rebinding).
    #[arg(long, value_name = "HOST:PORT")]
    allow_host: Vec<String>,
    /// How many of the newest runs the step histograms of `/metrics`
    /// cover (each of their outputs' provenance is read once).
    #[arg(long, value_name = "N", default_value_t = 200)]
    metrics_runs: usize,
}

/// Refuses a non-loopback address unless `allow_remote`.
fn check_listen(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !allow_remote {
        bail!(
            "refusing to listen on {addr}: it is not a loopback address, and this server has \
             no authentication; pass --allow-remote to listen there anyway (behind a proxy of \
             yours)"
        );
    }
    Ok(())
}

/// Binds `addr` (only it), ready for tokio.
fn bind(addr: SocketAddr) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    Ok((listener, local))
}

/// Runs `contextstore serve` until the process is stopped.
pub fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    check_listen(args.listen, args.allow_remote)?;
    let store = args.db.open_read_only()?;
    let async_store = Arc::clone(&store)
        .into_async()
        .context("this store has no async interface, which serve reads through")?;
    if async_store.runs().is_none() {
        bail!("this store keeps no runs index: serve has nothing to show");
    }
    let (listener, local) = bind(args.listen)?;
    // On a remote address with no --allow-host, any Host is answered
    // (the operator's proxy decides who asks).
    let hosts = (local.ip().is_loopback() || !args.allow_host.is_empty())
        .then(|| web::allowed_hosts(local, &args.allow_host));
    let state = Arc::new(AppState::new(
        Arc::clone(&store),
        async_store,
        args.metrics_runs,
        hosts,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("contextstore-serve")
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    tracing::info!(%local, "serving");
    output::note(format_args!(
        "serve: listening on http://{local}/ (read-only; no authentication)"
    ));
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        web::listen::serve(listener, web::router(state)).await;
        Ok::<(), std::io::Error>(())
    });
    // The runtime goes first: the store (a PostgreSQL store holds a runtime
    // of its own) is dropped outside it, here.
    drop(runtime);
    drop(store);
    served.context("the server stopped")?;
    Ok(Outcome::Done)
}

/// How long dropping a [`WorkerMetrics`] waits for its thread.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The server of `flow run --metrics-listen`: `/metrics` with this
/// process's metrics, on a thread of its own, until dropped.
pub struct WorkerMetrics {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: mpsc::Receiver<()>,
    addr: SocketAddr,
}

impl WorkerMetrics {
    /// Listens on `addr` (only it) and serves `/metrics` there. Fails if
    /// the address cannot be bound.
    pub fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let (listener, local) = bind(addr)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the metrics server's runtime")?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("contextstore-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::warn!(%error, "the metrics server cannot start");
                            return;
                        }
                    };
                    tokio::select! {
                        () = web::listen::serve(listener, web::worker_router()) => {}
                        _ = stop_rx => {}
                    }
                });
                drop(runtime);
                let _ = done.send(());
            })
            .context("cannot start the metrics server's thread")?;
        tracing::info!(%local, "serving process metrics");
        Ok(Self {
            stop: Some(stop),
            stopped,
            addr: local,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WorkerMetrics {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.stopped.recv_timeout(STOP_WAIT).is_err() {
            tracing::debug!("the metrics server did not stop within {STOP_WAIT:?}; leaving it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_taken_without_allow_remote() {
        assert!(check_listen("127.0.0.1:8080".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:8080".parse().unwrap(), false).is_ok());
        let refused = check_listen("0.0.0.0:8080".parse().unwrap(), false).unwrap_err();
        assert!(refused.to_string().contains("--allow-remote"), "{refused}");
        assert!(check_listen("0.0.0.0:8080".parse().unwrap(), true).is_ok());
    }
}
