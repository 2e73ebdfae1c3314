//! The demo web page (`GET /`): plain HTML, CSS and JavaScript built into the
//! binary, no build step and nothing fetched from elsewhere, so it works
//! offline. The page is public; the API calls it makes carry the token.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");

/// Only this origin's own files; results play from `blob:` URLs that the
/// script makes from authenticated `fetch()` replies. No inline script or
/// style, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/`, `/page.css`, `/page.js` and an empty `/favicon.ico` (so the browser's
/// automatic request does not log a 404).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/page.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/page.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
        .route("/favicon.ico", get(|| async { (StatusCode::NO_CONTENT, security_headers()).into_response() }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (security_headers(), body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn security_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Small files that change with the binary: revalidate rather than keep a stale page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}
