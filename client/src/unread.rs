//! Exact unread counts kept on a device from the frames it receives, as
//! `docs/protocol.md` ("Unread counts on a device") defines them: per
//! conversation the highest ordinal `n` seen (`top`) and the read
//! position's ordinal (`read`); unread = `top − read`. Frames may come in
//! any order (catch-up, live, the answer to one's own `read`): both only
//! ever rise, so the count is the server's whatever the order.
//!
//! Mentions of groups likewise: the ordinals of `msg`s whose `mentions`
//! hold `me`, counted above `read`. The list's `mentions` seeds a count
//! whose ordinals are unknown (all at or below the list's `last_n`): it
//! holds until a read reaches that `last_n`; a read below it keeps it
//! (fetch the list again for the exact figure then).

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// Unread counts of one user's conversations.
#[derive(Debug, Clone, Default)]
pub struct Unread {
    me: String,
    convs: HashMap<String, (u64, u64)>,
    mentions: HashMap<String, Mentions>,
}

/// One conversation's mentions of `me`: a seeded count (ordinals unknown,
/// at most `seed_top`) and the ordinals seen above it.
#[derive(Debug, Clone, Default)]
struct Mentions {
    seeded: u64,
    seed_top: u64,
    ns: BTreeSet<u64>,
}

impl Unread {
    /// Counts for user `me` (their own messages count as read).
    pub fn new(me: &str) -> Unread {
        Unread { me: me.to_owned(), convs: HashMap::new(), mentions: HashMap::new() }
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
            if let Some(m) = c["mentions"].as_u64() {
                let e = self.mentions.entry(conv.to_owned()).or_default();
                e.ns.retain(|&n| n > top);
                (e.seeded, e.seed_top) = (m, top);
            }
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
                let mine = frame["mentions"].as_array().is_some_and(|m| m.iter().any(|u| u == self.me.as_str()));
                if mine {
                    let e = self.mentions.entry(conv.to_owned()).or_default();
                    if n > e.seed_top {
                        e.ns.insert(n);
                    }
                }
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

    /// The count of messages mentioning `me` above the read position in
    /// `conv` (groups; 0 if nothing is known of it).
    pub fn mentions_of(&self, conv: &str) -> u64 {
        let read = self.convs.get(conv).map_or(0, |&(_, read)| read);
        self.mentions.get(conv).map_or(0, |m| {
            let seeded = if read < m.seed_top { m.seeded } else { 0 };
            seeded + m.ns.range(read + 1..).count() as u64
        })
    }

    fn raise(&mut self, conv: &str, top: u64, read: u64) {
        let e = self.convs.entry(conv.to_owned()).or_default();
        e.0 = e.0.max(top).max(read);
        e.1 = e.1.max(read);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Unread;

    #[test]
    fn mentions_count_above_read_and_a_seed_holds_until_read_passes_it() {
        let mut u = Unread::new("2");
        u.seed(&json!({"conversations": [{"conv": "g-1", "last_n": 5, "unread": 3, "mentions": 1}]}));
        assert_eq!(u.mentions_of("g-1"), 1);
        let msg = |n: u64, mentions: serde_json::Value| json!({"type": "msg", "conv": "g-1", "from": "1", "kind": "text", "n": n, "mentions": mentions});
        // A catch-up copy at or below the seed is already in it.
        u.apply(&msg(4, json!(["2"])));
        u.apply(&msg(6, json!(["3", "2"])));
        u.apply(&msg(7, json!(["3"])));
        assert_eq!(u.mentions_of("g-1"), 2);
        u.apply(&json!({"type": "read", "conv": "g-1", "n": 4}));
        assert_eq!(u.mentions_of("g-1"), 2, "below the seed's last_n: the seed holds");
        u.apply(&json!({"type": "read", "conv": "g-1", "n": 5}));
        assert_eq!(u.mentions_of("g-1"), 1);
        u.apply(&json!({"type": "read", "conv": "g-1", "n": 7}));
        assert_eq!((u.mentions_of("g-1"), u.of("g-1")), (0, 0));
    }
}
