//! `delete`: deletes a message for everyone (see `messaging::change`); queued behind the device's sends.

use crate::conn::cmd::send::{queue, Op, SendReq};
use crate::conn::session::Session;
use crate::messaging::change::Change;

/// Handles `delete`.
pub(crate) fn delete(s: &mut Session, cid: String, conv: String, id: String) {
    queue(s, SendReq { cid, op: Op::Change { conv, id, change: Change::Delete } });
}
