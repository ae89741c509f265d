//! The reference web client (`web/` in the repository), compiled into the
//! gateway and served at `/`: plain HTML, CSS and JavaScript modules with
//! no build step and nothing fetched from elsewhere (`docs/web.md`).
//!
//! Every file is answered with its content type and a strict
//! Content-Security-Policy: scripts, styles and connections only from the
//! gateway itself, no inline script, no plugins, no framing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::http::Resp;

/// The policy sent with every file of the client. `connect-src 'self'`
/// covers the same-origin `ws:`/`wss:` session (CSP Level 3).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The client's files: name, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../../web/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../../web/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../../web/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../../web/api.js")),
    ("session.js", "text/javascript; charset=utf-8", include_str!("../../../web/session.js")),
    ("view.js", "text/javascript; charset=utf-8", include_str!("../../../web/view.js")),
    ("unread.js", "text/javascript; charset=utf-8", include_str!("../../../web/unread.js")),
    ("messages.js", "text/javascript; charset=utf-8", include_str!("../../../web/messages.js")),
    ("search.js", "text/javascript; charset=utf-8", include_str!("../../../web/search.js")),
    ("state.js", "text/javascript; charset=utf-8", include_str!("../../../web/state.js")),
    ("conversations.js", "text/javascript; charset=utf-8", include_str!("../../../web/conversations.js")),
    ("reads.js", "text/javascript; charset=utf-8", include_str!("../../../web/reads.js")),
    ("rooms.js", "text/javascript; charset=utf-8", include_str!("../../../web/rooms.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../../web/favicon.svg")),
];

/// True when `name` is one of the client's files (`/` is `index.html`).
pub fn has(name: &str) -> bool {
    FILES.iter().any(|(n, _, _)| *n == name)
}

/// `GET /<name>`: one file of the client.
pub fn file(name: &str) -> Resp {
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name).copied().unwrap_or(FILES[0]);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts are valid")
}
