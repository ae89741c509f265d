//! Mentions in group texts: `@username` resolved to the ids of current
//! members when the message is sent, and recorded for the conversation
//! list's `mentions` count (SQL in `store/mentions.rs`).
//!
//! A mention is `@` at the start of the text or after a character that
//! cannot be in a username (so `a@b.com` is no mention), followed by a
//! username (`[A-Za-z0-9_.-]`, 3–32, compared in lower case; trailing dots
//! are punctuation). The first [`MAX_MENTIONS`] distinct names count;
//! names of non-members, of unknown users and the sender's own are left as
//! text.

use chat_nats::envelope::MAX_MENTIONS;

use crate::error::ClientError;
use crate::AppState;

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.-".contains(&b)
}

/// The distinct lower-case `@names` of a text, in order, at most
/// [`MAX_MENTIONS`].
pub fn names(body: &str) -> Vec<String> {
    let b = body.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < MAX_MENTIONS {
        if b[i] != b'@' || (i > 0 && (name_byte(b[i - 1]) || b[i - 1] == b'@')) {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < b.len() && name_byte(b[end]) {
            end += 1;
        }
        let name = body[start..end].trim_end_matches('.').to_ascii_lowercase();
        if (3..=32).contains(&name.len()) && !out.contains(&name) {
            out.push(name);
        }
        i = end.max(i + 1);
    }
    out
}

/// The user ids a group text mentions: its `@names` that are current
/// members other than the sender.
pub async fn resolve(state: &AppState, group: i64, from: i64, body: &str) -> Result<Vec<i64>, ClientError> {
    let names = names(body);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    state.db.members_named(group, &names, from).await.map_err(ClientError::unavailable)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn names_are_found_after_a_boundary_distinct_and_bounded() {
        assert_eq!(names("hi @Bob and @carol_1, @bob again"), ["bob", "carol_1"]);
        assert_eq!(names("@dave."), ["dave"]);
        assert!(names("mail a@bob.com or @@x or @ab or @").is_empty());
        assert_eq!(names("(@eve)"), ["eve"]);
        let many: String = (0..60).map(|i| format!("@user{i} ")).collect();
        assert_eq!(names(&many).len(), chat_nats::envelope::MAX_MENTIONS);
        assert_eq!(names("안녕@bob"), ["bob"]);
    }
}
