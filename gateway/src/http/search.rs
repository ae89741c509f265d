//! `GET /v1/search?q=&conv=&before=&limit=`: the caller's messages that
//! contain `q`, newest first, with the character ranges that matched.

use chat_nats::subjects;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::messages::participant;
use crate::http::{json, query, Resp};
use crate::store::search::Query;
use crate::AppState;

/// Shortest query, in characters.
pub const MIN_QUERY_CHARS: usize = 2;
/// Hits per page when `limit` is not given (or `CHAT_SEARCH_MAX_LIMIT` if smaller).
pub const DEFAULT_LIMIT: usize = 20;

/// Decodes one `application/x-www-form-urlencoded` query value (`%XX`,
/// `+` for a space); `None` if it is not UTF-8 or a `%` is malformed.
pub fn decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The `[start, end)` character offsets of the non-overlapping,
/// case-insensitive occurrences of `q` in `body`, left to right.
pub fn highlights(body: &str, q: &str) -> Vec<[usize; 2]> {
    let fold = |c: char| c.to_lowercase().next().unwrap_or(c);
    let body: Vec<char> = body.chars().map(fold).collect();
    let q: Vec<char> = q.chars().map(fold).collect();
    let mut out = Vec::new();
    if q.is_empty() {
        return out;
    }
    let mut i = 0;
    while i + q.len() <= body.len() {
        if body[i..i + q.len()] == q[..] {
            out.push([i, i + q.len()]);
            i += q.len();
        } else {
            i += 1;
        }
    }
    out
}

/// `GET /v1/search`.
pub async fn search(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let claims = authenticate(st, &req).await?;
    let max_chars = st.cfg.search_max_query_chars;
    let q = query(&req, "q")
        .and_then(|v| decode(&v))
        .filter(|q| (MIN_QUERY_CHARS..=max_chars).contains(&q.chars().count()))
        .ok_or_else(|| ClientError::bad_request(format!("q must be {MIN_QUERY_CHARS}-{max_chars} characters")))?;
    let conv = match query(&req, "conv") {
        None => None,
        Some(c) => {
            let conv = crate::http::conv(&c)?;
            if !participant(st, &conv, claims.user).await? {
                return Err(ClientError::forbidden("not a participant of this conversation"));
            }
            Some(conv.to_string())
        }
    };
    let before = query(&req, "before")
        .map(|v| {
            subjects::parse_seq(&v)
                .and_then(|b| i64::try_from(b).ok())
                .ok_or_else(|| ClientError::bad_request("before must be a message id"))
        })
        .transpose()?;
    let max = st.cfg.search_max_limit;
    let limit = match query(&req, "limit") {
        None => DEFAULT_LIMIT.min(max),
        Some(l) => subjects::parse_seq(&l)
            .map(|l| l as usize)
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| ClientError::bad_request(format!("limit must be 1-{max}")))?,
    };
    let mut hits = st
        .db
        .search(&Query { user: claims.user, q: &q, conv: conv.as_deref(), before, limit: limit as i64 + 1 })
        .await?;
    let has_more = hits.len() > limit;
    hits.truncate(limit);
    let results: Vec<_> = hits
        .iter()
        .map(|h| {
            let mut hit = json!({"id": h.id.to_string(), "conv": h.conv, "from": h.from.to_string(), "ts": h.ts,
                                 "body": h.body, "highlights": highlights(&h.body, &q)});
            if let Some(e) = h.edited_at {
                hit["edited_at"] = json!(e);
            }
            hit
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({"results": results, "has_more": has_more})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(decode("%ED%9A%8C%EC%9D%98").as_deref(), Some("회의"));
        assert_eq!(decode("hello+world%21").as_deref(), Some("hello world!"));
        assert_eq!(decode("%ZZ"), None);
        assert_eq!(decode("%E"), None);
        assert_eq!(decode("%FF"), None);
    }

    #[test]
    fn highlights_are_character_offsets_of_every_match() {
        assert_eq!(highlights("오늘회의는취소되었습니다", "회의"), vec![[2, 4]]);
        assert_eq!(highlights("Meeting at the meeting", "MEET"), vec![[0, 4], [15, 19]]);
        assert_eq!(highlights("aaaa", "aa"), vec![[0, 2], [2, 4]]);
        assert_eq!(highlights("abc", "x"), Vec::<[usize; 2]>::new());
    }
}
