//! One handler file per client frame type, and the one dispatch table.
//! A new frame type: a variant in `chat_nats::wire::ClientFrame`, a file
//! here, and one arm in [`dispatch`].

pub mod delete;
pub mod edit;
pub mod join;
pub mod leave;
pub mod presence;
pub mod react;
pub mod read;
pub mod send;
pub mod sync;
pub mod typing;

use chat_nats::wire::ClientFrame;

use crate::conn::session::Session;

/// Runs the handler of a parsed frame.
pub(crate) fn dispatch(s: &mut Session, frame: ClientFrame) {
    match frame {
        ClientFrame::Ping => presence::ping(s),
        ClientFrame::PresenceSubscribe { users } => presence::follow(s, &users, true),
        ClientFrame::PresenceUnsubscribe { users } => presence::follow(s, &users, false),
        ClientFrame::Typing { conv } => typing::typing(s, conv),
        ClientFrame::Sync { cursor } => sync::sync(s, cursor),
        ClientFrame::Send { cid, to, body, reply_to } => send::send(s, cid, to, body, reply_to),
        ClientFrame::Edit { cid, conv, id, body } => edit::edit(s, cid, conv, id, body),
        ClientFrame::Delete { cid, conv, id } => delete::delete(s, cid, conv, id),
        ClientFrame::React { cid, conv, id, emoji, op } => react::react(s, cid, conv, id, emoji, op),
        ClientFrame::Read { conv, up_to } => read::read(s, conv, up_to),
        ClientFrame::Join { room } => join::join(s, room),
        ClientFrame::Leave { room } => leave::leave(s, room),
    }
}
