//! Serving a router with every wait on a client bounded: a connection
//! must send its request headers within [`HEADER_READ`], and lives at most
//! [`CONNECTION_LIFETIME`] (a page that polls opens a new one), so that a
//! client that stalls (sends half a request, or never reads the answer)
//! holds nothing for long. `axum::serve` has neither bound.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// How long a client has to send a request's headers.
pub const HEADER_READ: Duration = Duration::from_secs(10);

/// The longest a connection is kept, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves `router` on `listener` until the listener fails for good: each
/// connection on a task of its own, under the bounds above. A failed
/// accept (out of file descriptors, say) is logged and retried after a
/// pause, not the end of the server.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    serve_within(listener, router, HEADER_READ, CONNECTION_LIFETIME).await;
}

/// [`serve`] with other bounds.
pub async fn serve_within(
    listener: tokio::net::TcpListener,
    router: Router,
    header_read: Duration,
    lifetime: Duration,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(lifetime, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "connection ended"),
                Err(_) => tracing::debug!("connection closed at the end of its lifetime"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client that sends half a request, and one that keeps its
    /// connection open, are each cut off at their bound; a whole request
    /// is answered.
    #[test]
    fn a_stalled_client_is_cut_off_and_a_whole_request_answered() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let router = Router::new().route("/", axum::routing::get(|| async { "hello" }));
            let bounds = (Duration::from_millis(200), Duration::from_secs(1));
            tokio::spawn(serve_within(listener, router, bounds.0, bounds.1));

            let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
            half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut rest));
            assert!(read.await.is_ok(), "a half request was not cut off");
            assert!(started.elapsed() < Duration::from_secs(3));

            let mut whole = tokio::net::TcpStream::connect(addr).await.unwrap();
            whole
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = vec![0; 1024];
            let n = whole.read(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            // Kept alive, but not past its lifetime.
            let started = Instant::now();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), whole.read_to_end(&mut rest));
            assert!(
                read.await.is_ok(),
                "an idle connection outlived its lifetime"
            );
            assert!(started.elapsed() < Duration::from_secs(3));
        });
    }
}
