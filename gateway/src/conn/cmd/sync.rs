//! `sync`: (re)start inbox delivery from a cursor: catch-up, then live.

use chat_nats::wire::ErrorCode;

use crate::conn::session::Session;
use crate::messaging::delivery::{self, Start};

/// Handles `sync`.
pub(crate) fn sync(s: &mut Session, cursor: Option<String>) {
    let start = match cursor.as_deref() {
        None => 0,
        Some(c) => match chat_nats::subjects::parse_seq(c) {
            Some(v) => v,
            None => return s.error(None, ErrorCode::BadCursor, "cursor is not one this server issued"),
        },
    };
    if let Some(d) = s.delivery.take() {
        d.abort();
    }
    let epoch = s.out.new_epoch();
    let fut = delivery::run(s.state.clone(), s.user, s.device.clone(), Start::After(start), s.out.clone(), epoch);
    s.delivery = Some(tokio::spawn(fut));
}
