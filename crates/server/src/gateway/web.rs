//! The browser client: three static files compiled into the binary, so
//! `dyad serve` needs nothing beside it (no Node, no build step).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// Scripts, styles and connections only from this server (`'self'` covers
/// its own `ws:`/`wss:` too): a message that somehow reached the page as HTML
/// still could not run code, nor talk to another host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

type Headers = [(HeaderName, &'static str); 5];

fn headers(content_type: &'static str) -> Headers {
    [
        (CONTENT_TYPE, content_type),
        // Small files: revalidate every load so an upgrade shows at once.
        (CACHE_CONTROL, "no-cache"),
        (
            HeaderName::from_static("content-security-policy"),
            CONTENT_SECURITY_POLICY,
        ),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("referrer-policy"), "no-referrer"),
    ]
}

pub(crate) async fn index() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), INDEX_HTML)
}

pub(crate) async fn script() -> impl IntoResponse {
    (headers("text/javascript; charset=utf-8"), APP_JS)
}

pub(crate) async fn stylesheet() -> impl IntoResponse {
    (headers("text/css; charset=utf-8"), APP_CSS)
}
