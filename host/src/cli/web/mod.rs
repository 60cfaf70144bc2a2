//! The HTTP side of `contextstore serve` (a read-only view of a store:
//! pages, a JSON API and `/metrics`) and of `flow run --metrics-listen`
//! (the worker's process metrics).
//!
//! Routes of [`router`]:
//!
//! | route | what |
//! | --- | --- |
//! | `/` | the runs, filtered by state (`?state=running,failed`) |
//! | `/runs/{run}` | one run: its graph and its nodes, updated every second |
//! | `/runs/{run}/nodes/{node}/output` | a node's output as indented JSON, capped |
//! | `/api/runs` | the runs as JSON (`?state=…&limit=…`) |
//! | `/api/runs/{run}` | one run and the status of each node, as JSON |
//! | `/metrics` | what the store holds, in the Prometheus text format |
//! | `/assets/…` | the pages' script and style sheet |
//!
//! The pages are plain HTML with one small script (no build step). Every
//! text from the store reaches the page as text: the script sets
//! `textContent` only, the output page escapes, and a content security
//! policy lets no inline script run. There is no authentication: the
//! server binds only the address it is given, and requests whose `Host`
//! is not one it answers to are refused (a web page elsewhere cannot
//! reach it through a rebound DNS name).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contextstore::ContextStore;
use contextstore::store::AsyncContextStore;

mod api;
pub mod listen;
mod output;
mod pages;
mod store_metrics;

/// How long one request may take the store: every store call of a
/// request runs under this deadline.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    /// The store, read only.
    pub store: Arc<dyn ContextStore>,
    /// Its async interface (which holds the runs index).
    pub async_store: Arc<dyn AsyncContextStore>,
    /// How many of the newest runs `/metrics` reads the provenance of.
    pub metrics_runs: usize,
    /// The `Host` headers answered (`None`: any).
    pub allowed_hosts: Option<Vec<String>>,
    /// What `/metrics` read of finished work, by run (see [`store_metrics`]).
    metrics_cache: Mutex<store_metrics::Cache>,
}

impl AppState {
    /// The state of a server on `store`.
    pub fn new(
        store: Arc<dyn ContextStore>,
        async_store: Arc<dyn AsyncContextStore>,
        metrics_runs: usize,
        allowed_hosts: Option<Vec<String>>,
    ) -> Self {
        Self {
            store,
            async_store,
            metrics_runs,
            allowed_hosts,
            metrics_cache: Mutex::new(store_metrics::Cache::default()),
        }
    }
}

/// The routes of `contextstore serve` (see the [module docs](self)).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pages::runs_page))
        .route("/runs/{run}", get(pages::run_page))
        .route("/runs/{run}/nodes/{node}/output", get(output::output_page))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{run}", get(api::run))
        .route("/metrics", get(store_metrics::metrics))
        .route("/assets/app.js", get(pages::script))
        .route("/assets/style.css", get(pages::style))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            check_host,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The routes of `flow run --metrics-listen`: `/metrics`, the process's own.
pub fn worker_router() -> Router {
    Router::new()
        .route("/metrics", get(worker_metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
}

async fn worker_metrics() -> Response {
    match contextstore::metrics::render() {
        Ok(text) => metrics_response(text),
        Err(error) => WebError::Internal(error.to_string()).into_response(),
    }
}

/// A `/metrics` answer.
fn metrics_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(contextstore::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> WebError {
    WebError::NotFound("no such page".into())
}

/// The `Host` values a server bound to `addr` answers to: the address
/// itself and, on a loopback address, `localhost` with its port; and
/// `extra` (names a proxy in front of it sends).
pub fn allowed_hosts(addr: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
    hosts
}

/// Refuses a request whose `Host` the server does not answer to.
async fn check_host(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(allowed) = &state.allowed_hosts
        && let Some(host) = request.headers().get(header::HOST)
    {
        let host = host.to_str().unwrap_or("").to_ascii_lowercase();
        if !allowed.contains(&host) {
            tracing::debug!(%host, "request for another host refused");
            return WebError::Forbidden(format!(
                "this server does not answer to host {host:?} (pass --allow-host to add it)"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// The headers every answer carries: no inline script or style, no
/// framing, no sniffing, no caching of live data.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Why a request failed, as its answer.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The host is not one the server answers to (403).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing is there (404).
    #[error("{0}")]
    NotFound(String),
    /// The store failed (502) or was too slow (504).
    #[error(transparent)]
    Store(#[from] contextstore::ContextStoreError),
    /// The request ran past its deadline (504).
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// Something else went wrong (500).
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Store(contextstore::ContextStoreError::Timeout(_)) | Self::Timeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Store(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Runs `work` (blocking store calls) on the blocking pool, giving up on
/// it after [`REQUEST_DEADLINE`] (the work then ends on its own, under the
/// store's own deadlines).
pub async fn blocking<T, F>(work: F) -> Result<T, WebError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, WebError> + Send + 'static,
{
    match tokio::time::timeout(REQUEST_DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(WebError::Internal(format!("a store read failed: {join}"))),
        Err(_) => Err(WebError::Timeout(REQUEST_DEADLINE)),
    }
}

/// Runs `work` (async store calls) under [`REQUEST_DEADLINE`].
pub async fn within<T>(work: impl Future<Output = Result<T, WebError>>) -> Result<T, WebError> {
    tokio::time::timeout(REQUEST_DEADLINE, work)
        .await
        .unwrap_or(Err(WebError::Timeout(REQUEST_DEADLINE)))
}

/// Locks `mutex`, also when a panic poisoned it (what it guards stays
/// usable: a cache).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Escapes `text` for HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
