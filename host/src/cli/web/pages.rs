//! The pages and their assets: static HTML, one script, one style sheet
//! (`assets/`, built into the binary). The script fetches the JSON API
//! and fills the pages in, as text.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use super::WebError;
use super::api::run_id;

const RUNS_HTML: &str = include_str!("assets/runs.html");
const RUN_HTML: &str = include_str!("assets/run.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// `GET /`: the runs.
pub async fn runs_page() -> Html<&'static str> {
    Html(RUNS_HTML)
}

/// `GET /runs/{run}`: one run (the script reads its id from the address).
pub async fn run_page(Path(run): Path<String>) -> Result<Html<&'static str>, WebError> {
    run_id(&run)?;
    Ok(Html(RUN_HTML))
}

/// `GET /assets/app.js`.
pub async fn script() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /assets/style.css`.
pub async fn style() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

fn asset(text: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        text,
    )
        .into_response()
}
