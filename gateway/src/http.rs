//! HTTP plumbing: JSON responses, the error shape, body and token reading.
//!
//! Every error is `{"error":{"code":"...","message":"..."}}` with a stable
//! code from [`ErrorCode`].

use bytes::Bytes;
use chat_nats::wire::ErrorCode;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Largest JSON request body accepted by the HTTP API.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An HTTP error with a stable code.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 503 `unavailable`, logging the cause.
    pub fn unavailable(cause: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %cause, "dependency unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "a dependency is unavailable; retry later")
    }

    /// The error as a response.
    pub fn into_response(self) -> Resp {
        json(self.status, &serde_json::json!({"error": {"code": self.code, "message": self.message}}))
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> ApiError {
        ApiError::unavailable(e)
    }
}

impl From<crate::send::Refusal> for ApiError {
    fn from(r: crate::send::Refusal) -> ApiError {
        let status = match r.code {
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // Not confirmed in time (e.g. a group change's announcement while
            // a partition fails over): the change is committed and will be
            // sequenced; the caller may retry or re-read.
            ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, r.code, r.message)
    }
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

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
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
