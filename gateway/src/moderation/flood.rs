//! Flood detection across a user's devices and gateways.
//!
//! Each user has one window record in KV `chat_flood` (key `u.<user>`, a
//! memory bucket: counters need no fsync and may be lost with the server).
//! Every session send of the user, on any gateway, reads it, decides
//! ([`decide`], pure) and writes it back with a revision-checked update; a
//! write that lost a race to another gateway reads again and decides again,
//! so no send is counted twice or missed. A fixed window of
//! `CHAT_FLOOD_WINDOW_MS` counts accepted sends, how often each text (by
//! skeleton) was sent, and refused sends:
//!
//! - more than `CHAT_FLOOD_MAX_MESSAGES` sends, or the same text more than
//!   `CHAT_FLOOD_MAX_REPEATS` times: `rate_limited` with `retry_after_ms`
//!   (until the window ends);
//! - `CHAT_FLOOD_MUTE_AFTER` refused sends in one window: the user is muted
//!   for `CHAT_FLOOD_MUTE_MS` (`muted` with `retry_after_ms`), and the
//!   gateway whose write set the mute publishes one event on
//!   `chat.mod.flood.<user>` (stream `CHAT_MOD_EVENTS`, deduplicated by
//!   user and mute end) for `GET /v1/admin/flood-events`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chat_nats::config::{bounded, ConfigError, Source};
use chat_nats::subjects;
use serde::{Deserialize, Serialize};

/// Flood thresholds (see `docs/operations.md`, Moderation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodConfig {
    /// `CHAT_FLOOD_WINDOW_MS`: length of a counting window.
    pub window: Duration,
    /// `CHAT_FLOOD_MAX_MESSAGES`: sends accepted per user per window; 0
    /// turns flood detection off.
    pub max_messages: u32,
    /// `CHAT_FLOOD_MAX_REPEATS`: times one text is accepted per window.
    pub max_repeats: u32,
    /// `CHAT_FLOOD_MUTE_AFTER`: refused sends in one window that mute.
    pub mute_after: u32,
    /// `CHAT_FLOOD_MUTE_MS`: how long a mute lasts.
    pub mute: Duration,
}

impl FloodConfig {
    /// Reads the thresholds.
    pub fn from_source(src: &dyn Source) -> Result<FloodConfig, ConfigError> {
        Ok(FloodConfig {
            window: Duration::from_millis(bounded(src, "CHAT_FLOOD_WINDOW_MS", 10_000, 100, 3_600_000)?),
            max_messages: bounded(src, "CHAT_FLOOD_MAX_MESSAGES", 30, 0, 100_000)? as u32,
            max_repeats: bounded(src, "CHAT_FLOOD_MAX_REPEATS", 3, 1, 100_000)? as u32,
            mute_after: bounded(src, "CHAT_FLOOD_MUTE_AFTER", 10, 1, 100_000)? as u32,
            mute: Duration::from_millis(bounded(src, "CHAT_FLOOD_MUTE_MS", 300_000, 1000, 86_400_000)?),
        })
    }

    /// True unless `CHAT_FLOOD_MAX_MESSAGES=0`.
    pub fn enabled(&self) -> bool {
        self.max_messages > 0
    }
}

/// Distinct texts remembered per window (beyond, the oldest are forgotten).
const TEXTS: usize = 64;

/// One user's window, as stored in KV.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Unix ms the window began.
    pub start: u64,
    /// Sends accepted in it.
    pub sent: u32,
    /// Sends refused in it.
    pub refused: u32,
    /// (text hash, times accepted).
    pub texts: Vec<(u64, u32)>,
    /// Unix ms the current mute ends (0: none).
    pub muted_until: u64,
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Too many messages in the window.
    Messages,
    /// The same text too often in the window.
    Repeats,
}

/// The decision on one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// `rate_limited` for this long.
    Limited {
        /// Until the window ends.
        retry_ms: u64,
        /// Which limit.
        reason: Reason,
    },
    /// `muted` for this long.
    Muted {
        /// Until the mute ends.
        retry_ms: u64,
        /// True for the send that set the mute (it writes the event).
        new: Option<Reason>,
    },
}

/// Decides on one send of text `hash` at `now` (Unix ms), updating `w`.
pub fn decide(w: &mut Window, now: u64, hash: u64, cfg: &FloodConfig) -> Verdict {
    if w.muted_until > now {
        return Verdict::Muted { retry_ms: w.muted_until - now, new: None };
    }
    let window = cfg.window.as_millis() as u64;
    if now >= w.start.saturating_add(window) || now < w.start {
        *w = Window { start: now, ..Window::default() };
    }
    let repeats = w.texts.iter().find(|(h, _)| *h == hash).map_or(0, |(_, n)| *n);
    let reason = if w.sent >= cfg.max_messages {
        Some(Reason::Messages)
    } else if repeats >= cfg.max_repeats {
        Some(Reason::Repeats)
    } else {
        None
    };
    let Some(reason) = reason else {
        w.sent += 1;
        match w.texts.iter_mut().find(|(h, _)| *h == hash) {
            Some((_, n)) => *n += 1,
            None => {
                if w.texts.len() >= TEXTS {
                    w.texts.remove(0);
                }
                w.texts.push((hash, 1));
            }
        }
        return Verdict::Allow;
    };
    w.refused += 1;
    if w.refused >= cfg.mute_after {
        let until = now + cfg.mute.as_millis() as u64;
        // Counting starts afresh when the mute ends.
        *w = Window { start: until, muted_until: until, ..Window::default() };
        return Verdict::Muted { retry_ms: until - now, new: Some(reason) };
    }
    Verdict::Limited { retry_ms: (w.start + window).saturating_sub(now).max(1), reason }
}

/// FNV-1a of a text's skeleton: one value for one text across gateways.
pub fn text_hash(skeleton: &str) -> u64 {
    skeleton.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A mute as recorded for moderators.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloodEvent {
    /// The muted user.
    pub user: String,
    /// The device whose send set the mute.
    pub device: String,
    /// `messages` or `repeats`.
    pub reason: String,
    /// Unix ms of the mute.
    pub at: u64,
    /// Unix ms it ends.
    pub until: u64,
    /// The gateway that decided.
    pub gateway: String,
}

/// Counters of this gateway's flood decisions (exported by `metrics`, and
/// in `GET /v1/admin/flood-events`).
#[derive(Debug, Default)]
pub struct FloodStats {
    /// Sends refused with `rate_limited`.
    pub limited: AtomicU64,
    /// Mutes set (events written).
    pub mutes: AtomicU64,
    /// Sends refused because the sender is muted.
    pub muted_sends: AtomicU64,
}

/// Attempts at a revision-checked write before the send is refused as part
/// of a flood (that many concurrent sends of one user is one).
const ATTEMPTS: usize = 8;

/// The shared flood state of this gateway.
#[derive(Debug)]
pub struct Flood {
    cfg: FloodConfig,
    kv: kv::Store,
    js: jetstream::Context,
    gateway: String,
    /// Decisions so far.
    pub stats: std::sync::Arc<FloodStats>,
}

impl Flood {
    /// Flood detection over `kv` (the `chat_flood` bucket).
    pub fn new(cfg: FloodConfig, kv: kv::Store, js: jetstream::Context, gateway: String) -> Flood {
        Flood { cfg, kv, js, gateway, stats: Default::default() }
    }

    /// Decides on one send of `user`'s `device` with text `hash`. A store
    /// that cannot be read lets the send through (logged): the message
    /// store's own availability decides then.
    pub async fn check(&self, user: i64, device: &str, hash: u64) -> Verdict {
        if !self.cfg.enabled() {
            return Verdict::Allow;
        }
        let key = subjects::flood_key(user);
        for _ in 0..ATTEMPTS {
            let now = now_ms();
            let entry = match self.kv.entry(&key).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, user, "flood state unreadable; send allowed");
                    return Verdict::Allow;
                }
            };
            let (mut w, rev) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (serde_json::from_slice(&e.value).unwrap_or_default(), Some(e.revision))
                }
                Some(e) => (Window::default(), Some(e.revision)),
                None => (Window::default(), None),
            };
            let verdict = decide(&mut w, now, hash, &self.cfg);
            if let Verdict::Muted { new: None, .. } = verdict {
                self.stats.muted_sends.fetch_add(1, Ordering::Relaxed);
                return verdict;
            }
            let value = serde_json::to_vec(&w).expect("a window serializes").into();
            let written = match rev {
                Some(r) => self
                    .kv
                    .update(&key, value, r)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, async_nats::Error::from(e))),
                None => self
                    .kv
                    .create(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, async_nats::Error::from(e))),
            };
            match written {
                Ok(()) => {
                    self.record(user, device, now, verdict).await;
                    return verdict;
                }
                Err((true, _)) => continue,
                Err((false, e)) => {
                    tracing::warn!(error = %e, user, "flood state not writable; send allowed");
                    return Verdict::Allow;
                }
            }
        }
        self.stats.limited.fetch_add(1, Ordering::Relaxed);
        Verdict::Limited { retry_ms: 100, reason: Reason::Messages }
    }

    async fn record(&self, user: i64, device: &str, now: u64, verdict: Verdict) {
        match verdict {
            Verdict::Allow => {}
            Verdict::Limited { .. } => {
                self.stats.limited.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Muted { retry_ms, new } => {
                self.stats.mutes.fetch_add(1, Ordering::Relaxed);
                let reason = match new {
                    Some(Reason::Repeats) => "repeats",
                    _ => "messages",
                };
                let until = now + retry_ms;
                let event = FloodEvent {
                    user: user.to_string(),
                    device: device.to_owned(),
                    reason: reason.into(),
                    at: now,
                    until,
                    gateway: self.gateway.clone(),
                };
                tracing::warn!(user, device, reason, until, "user muted for flooding");
                let payload = serde_json::to_vec(&event).expect("an event serializes").into();
                let id = format!("{user}.{until}");
                let published =
                    self.js.publish_with_headers(subjects::flood_event(user), subjects::msg_id(&id), payload).await;
                if let Err(e) = match published {
                    Ok(ack) => ack.await.map(|_| ()).map_err(async_nats::Error::from),
                    Err(e) => Err(e.into()),
                } {
                    tracing::warn!(error = %e, user, "flood event not stored");
                }
            }
        }
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: FloodConfig = FloodConfig {
        window: Duration::from_secs(10),
        max_messages: 5,
        max_repeats: 2,
        mute_after: 3,
        mute: Duration::from_secs(60),
    };

    #[test]
    fn too_many_messages_are_limited_then_muted() {
        let mut w = Window::default();
        let t0 = 1_000_000;
        for i in 0..5 {
            assert_eq!(decide(&mut w, t0 + i, i, &CFG), Verdict::Allow);
        }
        assert_eq!(decide(&mut w, t0 + 10, 99, &CFG), Verdict::Limited { retry_ms: 9_990, reason: Reason::Messages });
        assert!(matches!(decide(&mut w, t0 + 20, 98, &CFG), Verdict::Limited { .. }));
        assert_eq!(decide(&mut w, t0 + 30, 97, &CFG), Verdict::Muted { retry_ms: 60_000, new: Some(Reason::Messages) });
        assert_eq!(decide(&mut w, t0 + 1030, 1, &CFG), Verdict::Muted { retry_ms: 59_000, new: None });
        // After the mute, a fresh window.
        assert_eq!(decide(&mut w, t0 + 60_030, 1, &CFG), Verdict::Allow);
        assert_eq!((w.sent, w.refused), (1, 0));
    }

    #[test]
    fn the_same_text_is_limited_sooner_and_windows_reset() {
        let mut w = Window::default();
        let t0 = 5_000;
        let h = text_hash("spam");
        assert_eq!(decide(&mut w, t0, h, &CFG), Verdict::Allow);
        assert_eq!(decide(&mut w, t0 + 1, h, &CFG), Verdict::Allow);
        assert!(matches!(decide(&mut w, t0 + 2, h, &CFG), Verdict::Limited { reason: Reason::Repeats, .. }));
        assert_eq!(decide(&mut w, t0 + 3, text_hash("other"), &CFG), Verdict::Allow);
        // The next window forgets.
        assert_eq!(decide(&mut w, t0 + 10_000, h, &CFG), Verdict::Allow);
        assert_eq!((w.sent, w.refused, w.start), (1, 0, t0 + 10_000));
        assert_ne!(text_hash("spam"), text_hash("spam!x"));
    }

    #[test]
    fn thresholds_are_read_and_bounded() {
        let src = |k: &str, v: &str| -> std::collections::HashMap<String, String> { [(k.into(), v.into())].into() };
        assert!(FloodConfig::from_source(&src("X", "1")).unwrap().enabled());
        assert!(!FloodConfig::from_source(&src("CHAT_FLOOD_MAX_MESSAGES", "0")).unwrap().enabled());
        let e = FloodConfig::from_source(&src("CHAT_FLOOD_WINDOW_MS", "5")).unwrap_err().to_string();
        assert!(e.contains("CHAT_FLOOD_WINDOW_MS"), "{e}");
    }
}
