//! `edit`: changes the text of one's own message (see `messaging::change`); queued behind the device's sends.

use crate::conn::cmd::send::{queue, Op, SendReq};
use crate::conn::session::Session;
use crate::messaging::change::Change;

/// Handles `edit`.
pub(crate) fn edit(s: &mut Session, cid: String, conv: String, id: String, body: String) {
    queue(s, SendReq { cid, op: Op::Change { conv, id, change: Change::Edit(body) } });
}
