//! Exact unread counts kept on a device from the frames it receives, as
//! `docs/protocol.md` ("Unread counts on a device") defines them: per
//! conversation the highest ordinal `n` seen (`top`) and the read
//! position's ordinal (`read`); unread = `top − read`. Frames may come in
//! any order (catch-up, live, the answer to one's own `read`): both only
//! ever rise, so the count is the server's whatever the order.

use std::collections::HashMap;

use serde_json::Value;

/// Unread counts of one user's conversations.
#[derive(Debug, Clone, Default)]
pub struct Unread {
    me: String,
    convs: HashMap<String, (u64, u64)>,
}

impl Unread {
    /// Counts for user `me` (their own messages count as read).
    pub fn new(me: &str) -> Unread {
        Unread { me: me.to_owned(), convs: HashMap::new() }
    }

    /// Takes a page of `GET /v1/conversations` (`last_n`, `unread`).
    pub fn seed(&mut self, page: &Value) {
        for c in page["conversations"].as_array().into_iter().flatten() {
            let (Some(conv), Some(top), Some(unread)) =
                (c["conv"].as_str(), c["last_n"].as_u64(), c["unread"].as_u64())
            else {
                continue;
            };
            self.raise(conv, top, top.saturating_sub(unread));
        }
    }

    /// Takes a server frame: `msg` (any kind: an edit or delete carries the
    /// ordinal reached) raises `top`, and `read` too when it is one's own
    /// text or system message; a `read` frame raises `read`. Others are
    /// ignored. Returns the conversation whose count may have changed.
    pub fn apply(&mut self, frame: &Value) -> Option<String> {
        let conv = frame["conv"].as_str()?;
        let n = frame["n"].as_u64()?;
        match frame["type"].as_str()? {
            "msg" => {
                let own =
                    frame["from"] == self.me.as_str() && matches!(frame["kind"].as_str(), Some("text" | "system"));
                self.raise(conv, n, if own { n } else { 0 });
            }
            "read" => self.raise(conv, 0, n),
            _ => return None,
        }
        Some(conv.to_owned())
    }

    /// The unread count of `conv` (0 if nothing is known of it).
    pub fn of(&self, conv: &str) -> u64 {
        self.convs.get(conv).map_or(0, |&(top, read)| top.saturating_sub(read))
    }

    fn raise(&mut self, conv: &str, top: u64, read: u64) {
        let e = self.convs.entry(conv.to_owned()).or_default();
        e.0 = e.0.max(top).max(read);
        e.1 = e.1.max(read);
    }
}
