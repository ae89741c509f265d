//! `react`: adds or removes one's reaction on a message (see `messaging::change`); queued behind the device's sends.

use chat_nats::envelope::{Reaction, ReactionOp};

use crate::conn::cmd::send::{queue, Op, SendReq};
use crate::conn::session::Session;
use crate::messaging::change::Change;

/// Handles `react`.
pub(crate) fn react(s: &mut Session, cid: String, conv: String, id: String, emoji: String, op: ReactionOp) {
    queue(s, SendReq { cid, op: Op::Change { conv, id, change: Change::React(Reaction { emoji, op }) } });
}
