//! HTTP plumbing: JSON responses, body, token and id reading. Errors are
//! `crate::error::ClientError`, answered as
//! `{"error":{"code":"...","message":"..."}}`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Largest request body when a request carries no [`BodyLimit`] (the
/// default of `CHAT_HTTP_MAX_BODY_BYTES`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

use crate::error::ClientError;
use crate::http::limits::BodyLimit;

/// An id from a path, a query or a body in its canonical form (decimal, no
/// sign, no leading zero: see [`chat_nats::subjects::parse_id`]); anything
/// else is 400 `bad_request`, so one spelling means one id everywhere.
pub fn id(s: &str, what: &str) -> Result<i64, ClientError> {
    chat_nats::subjects::parse_id(s).ok_or_else(|| {
        ClientError::bad_request(format!("{what} must be a user or group id (decimal, no sign or leading zero)"))
    })
}

/// A conversation id from a path: 400 when malformed (a well-formed id
/// of a conversation the caller is not in is 403 later).
pub fn conv(s: &str) -> Result<chat_nats::subjects::ConvId, ClientError> {
    chat_nats::subjects::ConvId::parse(s).ok_or_else(|| {
        ClientError::bad_request("conversation id must be dm-<user>-<user> (lower id first) or g-<group>")
    })
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).expect("response bodies always serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

/// 413 `body_too_large`.
pub fn too_large(max: usize) -> ClientError {
    ClientError::new(
        chat_nats::wire::ErrorCode::BodyTooLarge,
        format!("the request body is larger than {max} bytes (CHAT_HTTP_MAX_BODY_BYTES)"),
    )
}

/// Reads a JSON body of at most the request's [`BodyLimit`] (413
/// `body_too_large` beyond; [`crate::http::route`] already refused a
/// larger `Content-Length`, this catches chunked bodies).
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ClientError> {
    let max = req.extensions().get::<BodyLimit>().map_or(MAX_BODY_BYTES, |l| l.0);
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                too_large(max)
            } else {
                ClientError::bad_request(format!("cannot read body: {e}"))
            }
        })?
        .to_bytes();
    parse_json(&body)
}

/// Parses a request body (already read, within its limit) as `T`: a JSON
/// object without NUL in any key or string, else 400 `bad_request`. The
/// whole of [`read_json`] after the read, as a pure function (fuzzed by
/// `chat-fuzz http_json`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ClientError::bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ClientError::bad_request("the body must be a JSON object"));
    }
    if let Some(path) = nul_at(&value, "$") {
        return Err(ClientError::bad_request(format!("{path} contains U+0000 (NUL), which no text field may hold")));
    }
    serde_json::from_value(value).map_err(|e| ClientError::bad_request(format!("invalid JSON body: {e}")))
}

/// Where a NUL character sits in a JSON value (a key or a string), as a
/// path like `$.members[2]`. PostgreSQL cannot store NUL in text, so every
/// body is checked before a handler sees it: a client gets a 400 instead of
/// a database error reported as a retryable 503.
fn nul_at(v: &serde_json::Value, root: &str) -> Option<String> {
    nul_path(v).map(|p| format!("{root}{p}"))
}

/// The path below `v` to a NUL, built only once one is found (bodies
/// without NUL, nearly all of them, allocate nothing here).
fn nul_path(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0').then(String::new),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| nul_path(x).map(|p| format!("[{i}]{p}"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(format!(".{k}"))
            } else {
                nul_path(x).map(|p| format!(".{k}{p}"))
            }
        }),
        _ => None,
    }
}

/// The access token of a request: `Authorization: Bearer <t>` or `?token=`.
pub fn token<B>(req: &Request<B>) -> Option<String> {
    let header = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    header.and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_owned()).or_else(|| query(req, "token"))
}

/// A query parameter (percent-decoding is not needed for the parameters
/// this API uses: tokens and decimal ids).
pub fn query<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::nul_at;

    #[test]
    fn finds_nul_in_strings_and_keys_at_any_depth() {
        assert_eq!(nul_at(&json!({"name": "ab", "members": ["1", "2"]}), "$"), None);
        assert_eq!(nul_at(&json!({"name": "a\u{0}b"}), "$").as_deref(), Some("$.name"));
        assert_eq!(nul_at(&json!({"members": ["1", "\u{0}"]}), "$").as_deref(), Some("$.members[1]"));
        assert_eq!(nul_at(&json!({"s": {"keys": {"auth": "x\u{0}"}}}), "$").as_deref(), Some("$.s.keys.auth"));
        assert_eq!(nul_at(&json!({"a\u{0}": 1}), "$").as_deref(), Some("$.a\u{0}"));
        assert_eq!(nul_at(&json!("\u{0}"), "$").as_deref(), Some("$"));
    }
}
