//! Moderation of sends: the live banned-word list and flood detection.
//!
//! - [`skeleton`]: the normalised text both are computed on (NFKD, marks,
//!   case, Hangul jamo, separators), with a map back for masking;
//! - [`words`]: the list in KV `chat_banned_words`, watched into an
//!   Aho-Corasick automaton;
//! - [`flood`]: per-user window counters in KV `chat_flood`, shared by
//!   every gateway, and mute events in stream `CHAT_MOD_EVENTS`.
//!
//! [`Moderation::screen`] is the one call the send path makes.

pub mod flood;
pub mod skeleton;
pub mod words;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chat_nats::config::{var, ConfigError, Source};
use chat_nats::provision::Storage;
use chat_nats::wire::ErrorCode;

use crate::error::ClientError;
use flood::{Flood, FloodConfig, Verdict};
use skeleton::Skeleton;
use words::{BannedWords, Policy};

/// Moderation settings (see `docs/operations.md`, Moderation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModerationConfig {
    /// `CHAT_BANNED_WORDS_POLICY`: `reject` (default) or `mask`.
    pub policy: Policy,
    /// `CHAT_BANNED_WORDS_SERVICES`: apply the list to internal services'
    /// sends (`chat.svc.send`) too (default true).
    pub services: bool,
    /// Flood thresholds.
    pub flood: FloodConfig,
}

impl ModerationConfig {
    /// Reads the settings.
    pub fn from_source(src: &dyn Source) -> Result<ModerationConfig, ConfigError> {
        let policy = match src.get("CHAT_BANNED_WORDS_POLICY").as_deref() {
            None | Some("reject") => Policy::Reject,
            Some("mask") => Policy::Mask,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "CHAT_BANNED_WORDS_POLICY".into(),
                    value: other.into(),
                    reason: "use reject or mask".into(),
                })
            }
        };
        Ok(ModerationConfig {
            policy,
            services: var(src, "CHAT_BANNED_WORDS_SERVICES", true)?,
            flood: FloodConfig::from_source(src)?,
        })
    }
}

/// Who is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client session (WebSocket or QUIC): words and flood apply.
    Session,
    /// An internal service on `chat.svc.send`: words apply when
    /// `CHAT_BANNED_WORDS_SERVICES` is true; flood detection does not.
    Service,
}

/// Counters of banned-word decisions (exported by `metrics`).
#[derive(Debug, Default)]
pub struct WordStats {
    /// Sends refused with `banned_word`.
    pub rejected: AtomicU64,
    /// Sends stored masked.
    pub masked: AtomicU64,
}

/// This gateway's moderation state.
#[derive(Debug)]
pub struct Moderation {
    cfg: ModerationConfig,
    /// The live list.
    pub words: Arc<BannedWords>,
    /// Flood detection.
    pub flood: Flood,
    /// Banned-word decisions so far.
    pub word_stats: std::sync::Arc<WordStats>,
}

impl Moderation {
    /// Loads the list (returns once it is in force) and sets up flood
    /// detection.
    pub async fn start(cfg: ModerationConfig, st: &Storage, gateway: &str) -> Result<Moderation, async_nats::Error> {
        let words = words::start(st.banned_words.clone()).await?;
        let flood = Flood::new(cfg.flood, st.flood.clone(), st.js.clone(), gateway.to_owned());
        Ok(Moderation { cfg, words, flood, word_stats: Default::default() })
    }

    /// Screens one send: the body to store (masked under the mask policy),
    /// or the refusal (`rate_limited`, `muted`, `banned_word`).
    pub async fn screen(&self, from: i64, device: &str, origin: Origin, body: String) -> Result<String, ClientError> {
        let screen_words = origin == Origin::Session || self.cfg.services;
        let matcher = screen_words.then(|| self.words.matcher()).filter(|m| !m.is_empty());
        let flood = origin == Origin::Session && self.cfg.flood.enabled();
        if matcher.is_none() && !flood {
            // Nothing to screen: not even the skeleton is computed.
            return Ok(body);
        }
        let sk = Skeleton::of(&body);
        if flood {
            match self.flood.check(from, device, flood::text_hash(&sk.text)).await {
                Verdict::Allow => {}
                Verdict::Limited { retry_ms, reason } => {
                    let what = match reason {
                        flood::Reason::Messages => "too many messages",
                        flood::Reason::Repeats => "the same message too often",
                    };
                    return Err(ClientError::retry_later(
                        ErrorCode::RateLimited,
                        format!("{what} from this account; retry in {retry_ms} ms"),
                        retry_ms,
                    ));
                }
                Verdict::Muted { retry_ms, .. } => {
                    return Err(ClientError::retry_later(
                        ErrorCode::Muted,
                        format!("this account is muted for flooding; sends resume in {retry_ms} ms"),
                        retry_ms,
                    ))
                }
            }
        }
        let Some(matcher) = matcher.filter(|m| m.matches(&sk.text)) else {
            return Ok(body);
        };
        match self.cfg.policy {
            Policy::Reject => {
                self.word_stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(ClientError::new(ErrorCode::BannedWord, "the message contains a banned word"))
            }
            Policy::Mask => {
                self.word_stats.masked.fetch_add(1, Ordering::Relaxed);
                Ok(matcher.mask(&body).unwrap_or(body))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_read_and_checked() {
        let src = |v: &str| -> std::collections::HashMap<String, String> {
            [("CHAT_BANNED_WORDS_POLICY".into(), v.into())].into()
        };
        assert_eq!(ModerationConfig::from_source(&src("mask")).unwrap().policy, Policy::Mask);
        assert_eq!(ModerationConfig::from_source(&src("reject")).unwrap().policy, Policy::Reject);
        let e = ModerationConfig::from_source(&src("drop")).unwrap_err().to_string();
        assert!(e.contains("CHAT_BANNED_WORDS_POLICY") && e.contains("drop"), "{e}");
        let d = ModerationConfig::from_source(&std::collections::HashMap::new()).unwrap();
        assert!(d.services && d.policy == Policy::Reject && d.flood.enabled());
    }
}
