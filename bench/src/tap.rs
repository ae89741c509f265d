//! `--tap`: counts every message through the nats-server during a run, by
//! subject prefix, with one core subscription to `>`. The counts do not
//! depend on how fast the machine is (below saturation), so two builds can
//! be compared on a noisy machine: messages per acked send, by kind.
//! Atomic batch commits are counted apart, by kind ([`COMMIT`]).
//! The subscription itself doubles the server's outgoing traffic: use it
//! for counting, not with timing figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

/// Prefix of the counts of atomic batch commits (the last entry of a
/// batch, header `Nats-Batch-Commit`) by kind: not messages of their own.
pub const COMMIT: &str = "commit ";

/// A running count.
pub struct Tap {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The kind of a subject: JetStream API calls by verb and stream, acks by
/// stream, KV by bucket, replies as one, anything else by its first two
/// tokens (`chat.inbox`, `chat.live`, ...).
pub fn kind(subject: &str) -> String {
    let t: Vec<&str> = subject.split('.').collect();
    let first = |n: usize| t[..n.min(t.len())].join(".");
    if subject.starts_with("$JS.API.DIRECT.GET") {
        first(5)
    } else if subject.starts_with("$JS.API") {
        first(4)
    } else if subject.starts_with("$JS.ACK") {
        first(3)
    } else if subject.starts_with("$KV") {
        first(2)
    } else if subject.starts_with("_INBOX") {
        "_INBOX (replies)".to_owned()
    } else {
        first(2)
    }
}

impl Tap {
    /// Subscribes to everything on `url`.
    pub async fn start(url: &str) -> anyhow::Result<Tap> {
        let client = chat_tests::nats_admin(url).await?;
        let mut sub = client.subscribe(">").await?;
        client.flush().await?;
        let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                let k = kind(&m.subject);
                // Replies may echo headers, and a stream's republish of a
                // commit keeps them (and adds `Nats-Stream`): only the
                // publishes count.
                let commit = !m.subject.starts_with("_INBOX")
                    && m.headers
                        .as_ref()
                        .is_some_and(|h| h.get("Nats-Batch-Commit").is_some() && h.get("Nats-Stream").is_none());
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                if commit {
                    *c.entry(format!("{COMMIT}{k}")).or_default() += 1;
                }
                *c.entry(k).or_default() += 1;
            }
        });
        Ok(Tap { counts, task })
    }

    /// Stops and returns the counts, largest first.
    pub fn finish(self) -> Vec<(String, u64)> {
        self.task.abort();
        let mut v: Vec<_> = self.counts.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds() {
        assert_eq!(super::kind("$JS.API.DIRECT.GET.CHAT_INBOX.chat.inbox.7"), "$JS.API.DIRECT.GET.CHAT_INBOX");
        assert_eq!(super::kind("$JS.API.STREAM.INFO.CHAT_INBOX"), "$JS.API.STREAM.INFO");
        assert_eq!(super::kind("$JS.ACK.CHAT_INBOX.push-planner.1.2.3.4.5.6"), "$JS.ACK.CHAT_INBOX");
        assert_eq!(super::kind("$KV.chat_acks.1.d.c"), "$KV.chat_acks");
        assert_eq!(super::kind("_INBOX.abc.def"), "_INBOX (replies)");
        assert_eq!(super::kind("chat.inbox.7"), "chat.inbox");
        assert_eq!(super::kind("x"), "x");
    }
}
