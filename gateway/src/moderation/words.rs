//! The banned-word list: kept in KV `chat_banned_words` (one key per entry,
//! named after the entry's skeleton), watched by every gateway into one
//! Aho-Corasick automaton over [`Skeleton`]s, applied to every send.
//!
//! A change reaches every gateway through its watch (sub-millisecond on a
//! quiet server) and is in force once the automaton is rebuilt: a rebuild
//! runs on a blocking thread from a snapshot of the list, and changes that
//! arrive meanwhile are folded into the next one, so a burst of thousands
//! of edits costs a few rebuilds, not thousands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::{watch, Notify};

use crate::moderation::skeleton::{contributes, is_invisible, Skeleton};

/// Longest entry, in characters.
pub const MAX_WORD_CHARS: usize = 64;

/// What the policy does with a matching send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse it (`banned_word`).
    Reject,
    /// Store it with the matched letters replaced by `*`.
    Mask,
}

/// A compiled list.
#[derive(Debug, Default)]
pub struct Matcher {
    ac: Option<AhoCorasick>,
    len: usize,
}

impl Matcher {
    /// Compiles entries (their skeletons; empty ones are skipped).
    pub fn new<'a>(skeletons: impl IntoIterator<Item = &'a str>) -> Matcher {
        let patterns: Vec<&str> = skeletons.into_iter().filter(|s| !s.is_empty()).collect();
        if patterns.is_empty() {
            return Matcher::default();
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("a list of at most a few hundred thousand short words compiles");
        Matcher { ac: Some(ac), len: patterns.len() }
    }

    /// Entries compiled in.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is compiled in.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `skeleton` (of a text) contains an entry.
    pub fn matches(&self, skeleton: &str) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(skeleton))
    }

    /// `text` with the letters of every match replaced by `*` (invisible
    /// characters inside or right after a match dropped, visible separators
    /// kept); `None` when nothing matches.
    pub fn mask(&self, text: &str) -> Option<String> {
        let ac = self.ac.as_ref()?;
        let sk = Skeleton::mapped(text);
        let mut ranges = ac.find_iter(&sk.text).map(|m| sk.original_range(text, m.start(), m.end())).peekable();
        ranges.peek()?;
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (from, mut to) in ranges {
            if from < at {
                // Two matches in one original character (a syllable).
                continue;
            }
            to += text[to..].chars().take_while(|c| is_invisible(*c)).map(char::len_utf8).sum::<usize>();
            out.push_str(&text[at..from]);
            for c in text[from..to].chars() {
                if contributes(c) {
                    out.push('*');
                } else if !is_invisible(c) {
                    out.push(c);
                }
            }
            at = to;
        }
        out.push_str(&text[at..]);
        Some(out)
    }
}

/// The KV key of an entry: `w.` and the hex of its skeleton, so spellings
/// with one skeleton (`Bad`, `b a d`) are one entry.
pub fn key_of(skeleton: &str) -> String {
    let mut k = String::with_capacity(2 + 2 * skeleton.len());
    k.push_str("w.");
    for b in skeleton.bytes() {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

/// Why an entry is refused.
pub fn check_word(word: &str) -> Result<Skeleton, String> {
    let n = word.chars().count();
    if n == 0 || n > MAX_WORD_CHARS {
        return Err(format!("an entry is 1-{MAX_WORD_CHARS} characters"));
    }
    let sk = Skeleton::of(word);
    if sk.text.is_empty() {
        return Err(format!("{word:?} has no letters or digits to match"));
    }
    Ok(sk)
}

/// The live list of this gateway.
#[derive(Debug)]
pub struct BannedWords {
    /// key → the entry as the operator wrote it.
    entries: Mutex<BTreeMap<String, String>>,
    matcher: RwLock<Arc<Matcher>>,
    /// Highest KV revision in force (the automaton includes it).
    applied: watch::Sender<u64>,
    /// Highest KV revision seen by the watch.
    seen: Mutex<u64>,
    dirty: Notify,
}

impl BannedWords {
    /// The automaton in force now.
    pub fn matcher(&self) -> Arc<Matcher> {
        self.matcher.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The entries as written, sorted by key.
    pub fn entries(&self) -> Vec<String> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// True when the entry with this KV key is on the list.
    pub fn has(&self, key: &str) -> bool {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).contains_key(key)
    }

    /// Waits (up to `timeout`) until revision `rev` is in force here; true
    /// if it is.
    pub async fn wait_applied(&self, rev: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&a| a >= rev)).await.is_ok_and(|r| r.is_ok())
    }

    fn apply(&self, key: &str, op: kv::Operation, value: &[u8], revision: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match op {
            kv::Operation::Put => match std::str::from_utf8(value) {
                Ok(w) => {
                    entries.insert(key.to_owned(), w.to_owned());
                }
                Err(_) => tracing::warn!(key, "banned word entry is not UTF-8; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                entries.remove(key);
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen = (*seen).max(revision);
    }

    /// Compiles the current entries and puts them in force.
    async fn rebuild(self: &Arc<Self>) {
        let (words, rev) = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let rev = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
            (entries.values().cloned().collect::<Vec<_>>(), rev)
        };
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            let skeletons: Vec<String> = words.iter().map(|w| Skeleton::of(w).text).collect();
            Matcher::new(skeletons.iter().map(String::as_str))
        })
        .await;
        match built {
            Ok(m) => {
                tracing::debug!(entries = m.len(), ms = started.elapsed().as_millis() as u64, "banned words compiled");
                *self.matcher.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
                self.applied.send_modify(|a| *a = (*a).max(rev));
            }
            Err(e) => tracing::error!(error = %e, "compiling the banned words failed"),
        }
    }
}

/// Loads the whole list, then follows changes in the background. Returns
/// once the list is in force, so no send after start-up escapes an entry
/// that was already there.
///
/// The current entries are read with one ordered pull consumer (last value
/// per key) up to the bucket's last sequence; the watch then starts right
/// after it. (A push watch started on a non-empty bucket lost its initial
/// replay in tests: nothing arrived for a minute.)
pub async fn start(store: kv::Store) -> Result<Arc<BannedWords>, async_nats::Error> {
    let words = Arc::new(BannedWords {
        entries: Mutex::default(),
        matcher: RwLock::default(),
        applied: watch::channel(0).0,
        seen: Mutex::new(0),
        dirty: Notify::new(),
    });
    // Fresh stream info (`Store::status` answers from a cached copy).
    let state = store.stream.get_info().await?.state;
    if state.messages > 0 {
        let consumer = store
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{}>", store.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        while let Some(m) =
            tokio::time::timeout(LOAD_TIMEOUT, messages.next()).await.map_err(|_| "banned words load timed out")?
        {
            let m = m?;
            let info = m.info()?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let op = match m.headers.as_ref().and_then(|h| h.get("KV-Operation")).map(|v| v.as_str()) {
                Some("DEL") => kv::Operation::Delete,
                Some("PURGE") => kv::Operation::Purge,
                _ => kv::Operation::Put,
            };
            let key = m.subject.strip_prefix(store.prefix.as_str()).unwrap_or(&m.subject).to_owned();
            words.apply(&key, op, &m.payload, seq);
            if pending == 0 || seq >= state.last_sequence {
                break;
            }
        }
    }
    words.rebuild().await;
    let mut watch = store.watch_all_from_revision(state.last_sequence + 1).await?;
    let w = words.clone();
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => {
                    w.apply(&e.key, e.operation, &e.value, e.revision);
                    w.dirty.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "banned words watch error"),
            }
        }
        tracing::error!("banned words watch ended; list changes from now on are not seen by this gateway");
    });
    let w = words.clone();
    tokio::spawn(async move {
        loop {
            w.dirty.notified().await;
            w.rebuild().await;
        }
    });
    Ok(words)
}

/// How long loading the list at start-up may take.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(words: &[&str]) -> Matcher {
        let sks: Vec<String> = words.iter().map(|w| check_word(w).unwrap().text).collect();
        Matcher::new(sks.iter().map(String::as_str))
    }

    #[test]
    fn masks_the_matched_letters_only() {
        let m = matcher(&["bad", "씨발"]);
        assert_eq!(m.mask("a good day").as_deref(), None);
        assert_eq!(m.mask("so BAD!").as_deref(), Some("so ***!"));
        assert_eq!(m.mask("b.a d").as_deref(), Some("*.* *"));
        assert_eq!(m.mask("b\u{200B}ad\u{0301} end").as_deref(), Some("*** end"));
        assert_eq!(m.mask("ＢＡＤ and bad").as_deref(), Some("*** and ***"));
        assert_eq!(m.mask("야 ㅆㅣㅂㅏㄹ 진짜").as_deref(), Some("야 ***** 진짜"));
        assert_eq!(m.mask("씨발놈").as_deref(), Some("**놈"));
        assert!(m.matches(&Skeleton::of("x씨 발x").text));
    }

    #[test]
    fn entries_are_checked_and_keyed_by_skeleton() {
        assert!(check_word("").is_err());
        assert!(check_word(" .!? ").is_err());
        assert!(check_word(&"a".repeat(MAX_WORD_CHARS + 1)).is_err());
        let key = |w: &str| key_of(&check_word(w).unwrap().text);
        assert_eq!(key("Bad"), key("b a d"));
        assert_eq!(key("bad"), "w.626164");
        assert!(chat_nats::subjects::is_token(&key("bad").replace('.', "_")));
        assert_eq!(key("씨발"), key("ㅆㅣㅂㅏㄹ"));
    }

    #[test]
    fn an_empty_list_matches_nothing() {
        let m = Matcher::new([]);
        assert!(m.is_empty() && !m.matches("anything") && m.mask("anything").is_none());
    }
}
