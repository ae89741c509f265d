//! The HTTP API: [`route`] is the one table of paths and methods; one file
//! per resource holds its handlers, and [`body`] the JSON plumbing.
//!
//! A new route is one line in [`route`]'s `routes!` table: its path
//! pattern, then each method with its handler, and a comma (the pattern is
//! also the route's label in the HTTP metrics). A known path with another method is 405 (with the
//! allowed methods named), an unknown path 404, both before the token is
//! looked at.

pub mod accounts;
pub mod bans;
pub mod body;
pub mod conversations;
pub mod edges;
pub mod friends;
pub mod groups;
pub mod limits;
pub mod messages;
pub mod moderation;
pub mod push;
pub mod rooms;
pub mod search;
pub mod users;
pub mod web;

pub use body::*;

use std::sync::Arc;

use chat_nats::wire::ErrorCode;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::error::ClientError;
use crate::AppState;

/// Answers `method` from the handlers listed for one path, or 405 naming
/// the methods the path allows.
macro_rules! methods {
    ($method:expr, $path:expr; $($m:ident => $handler:expr),+ $(,)?) => {
        match $method {
            $(Method::$m => $handler,)+
            other => Err(ClientError::new(ErrorCode::MethodNotAllowed,
                format!("{other} is not allowed on {} (allowed: {})", $path, [$(stringify!($m)),+].join(", ")),
            )),
        }
    };
}

/// The route table: a `match` whose every arm also yields its pattern as
/// text (`stringify!`), the `route` label of the HTTP metrics (a bounded
/// set: one per arm, `_` for no route). Every arm ends with a comma.
macro_rules! routes {
    ($segs:expr; $($pat:pat $(if $guard:expr)? => $body:expr),+ $(,)?) => {
        match $segs {
            $($pat $(if $guard)? => (stringify!($pat), $body),)+
        }
    };
}

/// Routes one request. A `Content-Length` above
/// `CHAT_HTTP_MAX_BODY_BYTES` is refused (413 `body_too_large`) on every
/// route before anything else; a chunked body is cut at the same size
/// where it is read ([`read_json`]).
pub async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let (route, resp) = dispatch(&state, req).await;
    state.metrics.http(crate::metrics::Route(route), &method, resp.status().as_u16(), started);
    resp
}

/// Answers one request; also names the route pattern it took.
async fn dispatch(state: &Arc<AppState>, mut req: Request<Incoming>) -> (&'static str, Resp) {
    let max = state.cfg.http_max_body_bytes;
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        let mut resp = too_large(max).into_response();
        // The unread body is not drained: the connection ends after this answer.
        resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        return ("*", resp);
    }
    req.extensions_mut().insert(limits::BodyLimit(max));
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let st = state;
    let (route, result): (&'static str, Result<Resp, ClientError>) = routes! { segs.as_slice();
        [""] => methods!(method, path; GET => Ok(web::file("index.html"))),
        [name] if web::has(name) => methods!(method, path; GET => Ok(web::file(name))),
        ["healthz"] => methods!(method, path; GET => Ok(json(StatusCode::OK, &serde_json::json!({"ok": true})))),
        ["readyz"] => methods!(method, path; GET => Ok(accounts::readyz(st).await)),
        ["metrics"] => methods!(method, path; GET => crate::metrics::scrape(st, &req)),
        ["v1", "signup"] => methods!(method, path; POST => accounts::signup(st, req).await),
        ["v1", "login"] => methods!(method, path; POST => accounts::login(st, req).await),
        ["v1", "logout"] => methods!(method, path; POST => accounts::logout(st, req).await),
        ["v1", "users", "by-name", name] => methods!(method, path; GET => users::by_name(st, req, name).await),
        ["v1", "users", id] => methods!(method, path;
            GET => users::by_id(st, req, id).await,
            PATCH => users::update(st, req, id).await),
        ["v1", "ws"] => methods!(method, path; GET => match accounts::authenticate(st, &req).await {
            Ok(claims) => crate::edge::admit(st).map(|()| crate::conn::ws::upgrade(state.clone(), claims, req)),
            Err(e) => Err(e),
        }),
        ["v1", "edges"] => methods!(method, path; GET => edges::list(st, req).await),
        ["v1", "admin", "drain"] => methods!(method, path; POST => edges::drain(st, req).await, DELETE => edges::undrain(st, req).await),
        ["v1", "admin", "users", id] => methods!(method, path; GET => bans::show(st, req, id).await),
        ["v1", "admin", "users", id, "ban"] => methods!(method, path;
            PUT => bans::ban(st, req, id).await,
            DELETE => bans::unban(st, req, id).await),
        ["v1", "admin", "banned-words"] => methods!(method, path;
            GET => moderation::list(st, req).await,
            PUT => moderation::add(st, req).await,
            DELETE => moderation::remove(st, req).await),
        ["v1", "admin", "messages", conv, id] => methods!(method, path;
            DELETE => moderation::delete_message(st, req, conv, id).await),
        ["v1", "admin", "flood-events"] => methods!(method, path; GET => moderation::flood_events(st, req).await),
        ["v1", "conversations"] => methods!(method, path; GET => conversations::list(st, req).await),
        ["v1", "conversations", conv, "messages"] => {
            methods!(method, path; GET => messages::page(st, req, conv).await)
        },
        ["v1", "conversations", conv, "reads"] => methods!(method, path; GET => conversations::reads(st, req, conv).await),
        ["v1", "conversations", conv, "mute"] => methods!(method, path;
            PUT => push::mute(st, req, conv, true).await,
            DELETE => push::mute(st, req, conv, false).await),
        ["v1", "groups"] => methods!(method, path;
            GET => groups::list(st, req).await,
            POST => groups::create(st, req).await),
        ["v1", "groups", id] => methods!(method, path;
            GET => groups::show(st, req, id).await,
            PATCH => groups::update(st, req, id).await),
        ["v1", "groups", id, "members"] => methods!(method, path; POST => groups::add(st, req, id).await),
        ["v1", "groups", id, "members", user] => {
            methods!(method, path; DELETE => groups::remove(st, req, id, user).await)
        },
        ["v1", "groups", id, "members", user, "role"] => {
            methods!(method, path; PUT => groups::set_role(st, req, id, user).await)
        },
        ["v1", "rooms"] => methods!(method, path; POST => rooms::create(st, req).await),
        ["v1", "rooms", id] => methods!(method, path;
            GET => rooms::show(st, req, id).await,
            PATCH => rooms::update(st, req, id).await),
        ["v1", "rooms", id, "users", user] => methods!(method, path; PUT => rooms::standing(st, req, id, user).await),
        ["v1", "rooms", id, "bans", user] => methods!(method, path;
            PUT => rooms::sanction(st, req, id, user, crate::store::rooms::Sanction::Ban, false).await,
            DELETE => rooms::sanction(st, req, id, user, crate::store::rooms::Sanction::Ban, true).await),
        ["v1", "rooms", id, "mutes", user] => methods!(method, path;
            PUT => rooms::sanction(st, req, id, user, crate::store::rooms::Sanction::Mute, false).await,
            DELETE => rooms::sanction(st, req, id, user, crate::store::rooms::Sanction::Mute, true).await),
        ["v1", "search"] => methods!(method, path; GET => search::search(st, req).await),
        ["v1", "friends"] => methods!(method, path; GET => friends::list(st, req).await),
        ["v1", "friends", user] => methods!(method, path;
            PUT => friends::put(st, req, user).await,
            DELETE => friends::delete(st, req, user).await),
        ["v1", "devices", device, "push"] => methods!(method, path;
            PUT => push::put_device(st, req, device).await,
            GET => push::get_device(st, req, device).await,
            DELETE => push::delete_device(st, req, device).await),
        _ => Err(ClientError::not_found(format!("no route for {path}"))),
    };
    (route, result.unwrap_or_else(ClientError::into_response))
}
