//! `leave`: the session's place in a room ends (its room task is aborted,
//! which unregisters it from the room's feed); answered with `left`, also
//! when the session was not in the room.

use chat_nats::wire::ServerFrame;

use crate::conn::session::Session;
use crate::error::frame;
use crate::rooms::access;

/// Handles `leave`.
pub(crate) fn leave(s: &mut Session, room: String) {
    let id = match access::room_id(&room) {
        Ok(id) => id,
        Err(e) => return s.error(None, e.code, &e.message),
    };
    if let Some(task) = s.rooms.remove(&id) {
        task.abort();
    }
    s.out.push(frame(&ServerFrame::Left { room: id.to_string(), reason: None }));
}
