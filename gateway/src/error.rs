//! The one client-facing error, and the tables that map it.
//!
//! [`ClientError`] is a stable [`ErrorCode`] and a message for humans. It
//! becomes, by one table each: an HTTP status with the JSON body
//! `{"error":{"code","message"}}` ([`ClientError::into_response`]), or a
//! session `error` frame ([`ClientError::into_frame`]). Session close codes
//! and their reasons are one table too ([`close_reason`]), and [`frame`]
//! is the one serializer of server frames.

use bytes::Bytes;
use chat_nats::wire::{ErrorCode, ServerFrame};
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// A refused request: a stable code and a detail.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    /// Stable code (`docs/protocol.md`).
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
    /// Seconds sent as `Retry-After` with an HTTP answer (a budget that
    /// refills: login and signup limits); else the code's own, if any.
    pub retry_after: Option<u32>,
    /// Milliseconds sent as `retry_after_ms` in a session `error` frame
    /// (flood detection's `rate_limited` and `muted`).
    pub retry_after_ms: Option<u64>,
}

impl ClientError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError { code, message: message.into(), retry_after: None, retry_after_ms: None }
    }

    /// `bad_request` (400).
    pub fn bad_request(message: impl Into<String>) -> ClientError {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `unauthorized` (401).
    pub fn unauthorized(message: impl Into<String>) -> ClientError {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// `forbidden` (403).
    pub fn forbidden(message: impl Into<String>) -> ClientError {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `not_found` (404).
    pub fn not_found(message: impl Into<String>) -> ClientError {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `unavailable` (503), logging the cause (the client only learns that
    /// a dependency is down and it may retry).
    pub fn unavailable(cause: impl std::fmt::Display) -> ClientError {
        tracing::warn!(error = %cause, "dependency unavailable");
        Self::new(ErrorCode::Unavailable, "a dependency is unavailable; retry later")
    }

    /// `rate_limited` (429) with `Retry-After` rounded up to whole seconds
    /// (at least 1).
    pub fn rate_limited(message: impl Into<String>, retry_in: std::time::Duration) -> ClientError {
        let secs = retry_in.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        ClientError { retry_after: Some(secs), ..Self::new(ErrorCode::RateLimited, message) }
    }

    /// An error a send may retry after `ms` milliseconds: `retry_after_ms`
    /// in a session frame, `Retry-After` (whole seconds, at least 1) over
    /// HTTP.
    pub fn retry_later(code: ErrorCode, message: impl Into<String>, ms: u64) -> ClientError {
        let secs = ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32;
        ClientError { retry_after: Some(secs), retry_after_ms: Some(ms), ..Self::new(code, message) }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    /// The error as an HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = crate::http::json(self.status(), &body);
        if let Some(secs) = self.retry_after.or_else(|| retry_after(self.code)) {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, secs.into());
        }
        resp
    }

    /// The error as a session `error` frame, echoing the request's `cid`.
    pub fn into_frame(self, cid: Option<String>) -> ServerFrame {
        ServerFrame::Error { cid, code: self.code, message: self.message, retry_after_ms: self.retry_after_ms }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<crate::store::DbError> for ClientError {
    fn from(e: crate::store::DbError) -> ClientError {
        ClientError::unavailable(e)
    }
}

/// The HTTP status of each code: the one table.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::BadJson
        | E::UnknownType
        | E::BadFrame
        | E::TooLarge
        | E::EmptyBody
        | E::BadCid
        | E::BadCursor
        | E::BadRequest
        | E::BadCredentials
        | E::UnknownUser
        | E::UnknownGroup
        | E::LimitExceeded
        | E::PushProviderDisabled
        | E::BannedWord => StatusCode::BAD_REQUEST,
        E::Unauthorized => StatusCode::UNAUTHORIZED,
        E::Forbidden | E::Banned | E::EditWindowClosed => StatusCode::FORBIDDEN,
        E::NotFound | E::UnknownRoom => StatusCode::NOT_FOUND,
        E::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        E::UsernameTaken | E::GroupFull | E::Conflict => StatusCode::CONFLICT,
        E::RateLimited | E::Muted => StatusCode::TOO_MANY_REQUESTS,
        E::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        // Not confirmed in time (e.g. a group change's announcement while a
        // partition fails over): committed and will be sequenced; retry or
        // re-read.
        E::Timeout | E::Unavailable | E::AtCapacity | E::Draining => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `Retry-After` seconds sent with a refused session: another edge
/// (from `GET /v1/edges`) may be tried at once, this one after that long.
pub fn retry_after(code: ErrorCode) -> Option<u32> {
    match code {
        ErrorCode::AtCapacity => Some(5),
        ErrorCode::Draining => Some(30),
        _ => None,
    }
}

/// A server frame as the text a transport writes.
pub fn frame(f: &ServerFrame) -> String {
    serde_json::to_string(f).expect("server frames always serialize")
}

/// Declares the close codes and their reasons as one table.
macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal;)+) => {
        $($(#[$doc])* pub const $name: u16 = $code;)+

        /// The reason text sent with each close code.
        pub fn close_reason(code: u16) -> &'static str {
            match code {
                $($code => $reason,)+
                _ => "going_away",
            }
        }
    };
}

close_codes! {
    /// The client closed the session; the gateway answers (over WebSocket
    /// it echoes the client's own close code, RFC 6455 §5.5.1).
    CLOSE_NORMAL = 1000, "bye";
    /// The gateway is shutting down; reconnect (to any gateway).
    CLOSE_GOING_AWAY = 1001, "going_away";
    /// The client broke the WebSocket framing rules (unmasked frame,
    /// reserved opcode or RSV bits, continuation without a start).
    CLOSE_PROTOCOL = 1002, "protocol_error";
    /// A text frame that is not valid UTF-8.
    CLOSE_BAD_UTF8 = 1007, "bad_utf8";
    /// A message larger than the configured maximum frame size.
    CLOSE_TOO_BIG = 1009, "too_large";
    /// The server could not keep the session going (NATS lost); reconnect
    /// and `sync` from the last cursor.
    CLOSE_INTERNAL = 1011, "internal";
    /// The device logged out (`POST /v1/logout`).
    CLOSE_LOGGED_OUT = 4001, "logged_out";
    /// The connection was idle past the idle timeout.
    CLOSE_IDLE = 4002, "idle";
    /// (QUIC) no valid `auth` frame in time.
    CLOSE_UNAUTHORIZED = 4003, "unauthorized";
    /// The client did not read fast enough.
    CLOSE_SLOW_CONSUMER = 4008, "slow_consumer";
    /// The gateway is draining (or refuses the session: at capacity,
    /// draining): reconnect to another edge from `GET /v1/edges` and `sync`
    /// from the last cursor; every send before the close was answered.
    CLOSE_RECONNECT_ELSEWHERE = 4010, "reconnect_elsewhere";
    /// An operator banned the account: do not reconnect (a login answers
    /// 403 `banned` until the ban ends or is lifted).
    CLOSE_BANNED = 4011, "banned";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status_and_close_codes_their_reasons() {
        assert_eq!(ClientError::not_found("x").status(), StatusCode::NOT_FOUND);
        assert_eq!(status_of(ErrorCode::Timeout), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_of(ErrorCode::UsernameTaken), StatusCode::CONFLICT);
        let f = ClientError::new(ErrorCode::TooLarge, "m").into_frame(Some("c".into()));
        assert_eq!(frame(&f), r#"{"type":"error","cid":"c","code":"too_large","message":"m"}"#);
        assert_eq!(close_reason(CLOSE_SLOW_CONSUMER), "slow_consumer");
        assert_eq!(close_reason(CLOSE_NORMAL), "bye");
        assert_eq!(close_reason(CLOSE_RECONNECT_ELSEWHERE), "reconnect_elsewhere");
        let r = ClientError::new(ErrorCode::AtCapacity, "full").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "5");
        let r = ClientError::rate_limited("slow down", std::time::Duration::from_millis(1500)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "2");
        assert_eq!(status_of(ErrorCode::BodyTooLarge), StatusCode::PAYLOAD_TOO_LARGE);
        let f = ClientError::retry_later(ErrorCode::Muted, "m", 1500).into_frame(Some("c".into()));
        assert_eq!(frame(&f), r#"{"type":"error","cid":"c","code":"muted","message":"m","retry_after_ms":1500}"#);
        let r = ClientError::retry_later(ErrorCode::Muted, "m", 1500).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[hyper::header::RETRY_AFTER], "2");
    }
}
