//! `ping` (the heartbeat, answered with `pong`) and `presence.subscribe` /
//! `presence.unsubscribe`.

use chat_nats::subjects::parse_id;
use chat_nats::wire::{ErrorCode, ServerFrame};

use crate::conn::presence::Cmd;
use crate::conn::session::Session;
use crate::error::frame;

/// Handles `ping`.
pub(crate) fn ping(s: &mut Session) {
    s.presence.send(Cmd::Heartbeat);
    s.out.push(frame(&ServerFrame::Pong));
}

/// `presence.subscribe` (`on`) or `presence.unsubscribe`: ids in canonical
/// form or the frame is a `bad_frame`; an empty list does nothing. The
/// presence task does the rest (limit, who may be followed, answers).
pub(crate) fn follow(s: &mut Session, users: &[String], on: bool) {
    let Some(ids) = users.iter().map(|u| parse_id(u)).collect::<Option<Vec<i64>>>() else {
        let message = "users must be user ids (decimal digits, no sign, no leading zero)";
        return s.error(None, ErrorCode::BadFrame, message);
    };
    if !ids.is_empty() {
        s.presence.send(if on { Cmd::Follow(ids) } else { Cmd::Unfollow(ids) });
    }
}
