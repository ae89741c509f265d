//! Discovery and the operator's drain: `GET /v1/edges` lists the live
//! gateways that accept sessions, best first; `POST /v1/admin/drain` makes
//! this gateway drain (operator credential `CHAT_OPERATOR_TOKEN`).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::http::{json, query, token, Resp};
use crate::AppState;

/// The edges for a client of `region` (default: this gateway's), as JSON.
pub fn edges_json(st: &AppState, region: Option<&str>) -> Value {
    let list = st.edges.list(region, st.connections.count(), st.storage.settings.registry_ttl);
    let edges: Vec<Value> = list
        .iter()
        .map(|e| {
            json!({"id": e.id, "ws_url": e.ws_url, "quic_addr": e.quic_addr, "region": e.region,
                   "connections": e.connections, "capacity": e.capacity, "load": e.load()})
        })
        .collect();
    Value::Array(edges)
}

/// `GET /v1/edges[?region=]` (no token: clients ask before they log in).
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let region = query(&req, "region");
    if let Some(r) = &region {
        if !chat_nats::subjects::is_token(r) {
            return Err(ClientError::bad_request("region must be 1-64 characters of [A-Za-z0-9_-]"));
        }
    }
    Ok(json(StatusCode::OK, &json!({"edges": edges_json(st, region.as_deref())})))
}

/// Refuses a request without the operator credential: 403 when operator
/// endpoints are disabled (`CHAT_OPERATOR_TOKEN` unset), 401 for any other
/// bearer (a user's token included).
pub fn require_operator<B>(st: &AppState, req: &Request<B>) -> Result<(), ClientError> {
    let Some(expected) = &st.cfg.operator_token else {
        return Err(ClientError::forbidden("operator endpoints are disabled: set CHAT_OPERATOR_TOKEN"));
    };
    let given = token(req).unwrap_or_default();
    if !crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(ClientError::unauthorized("not the operator credential"));
    }
    Ok(())
}

/// `POST /v1/admin/drain`: answers 202 at once and drains in the background
/// (the gateway keeps running, refusing sessions, until it is stopped).
pub async fn drain(st: &Arc<AppState>, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let sessions = st.connections.count();
    // Draining from here on: a `DELETE` after this answer undoes it.
    if let Some(epoch) = crate::edge::start_drain(st) {
        let state = st.clone();
        tokio::spawn(async move { crate::edge::close_gradually(&state, epoch).await });
    }
    Ok(json(
        StatusCode::ACCEPTED,
        &json!({"gateway": st.cfg.gateway_id, "draining": true, "sessions": sessions, "drain_secs": st.cfg.drain.as_secs()}),
    ))
}

/// `DELETE /v1/admin/drain`: undoes a drain started by the endpoint; the
/// sessions it has not closed yet stay (`was_draining` false if none ran).
pub async fn undrain(st: &Arc<AppState>, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let was = crate::edge::undrain(st);
    let sessions = st.connections.count();
    Ok(json(
        StatusCode::OK,
        &json!({"gateway": st.cfg.gateway_id, "draining": false, "was_draining": was, "sessions": sessions}),
    ))
}
