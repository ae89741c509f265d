//! The sequencers' push plans on their way to `CHAT_PUSH_PLANS`.
//!
//! Every round of every partition hands its plan (the text messages it
//! stored and their copies, see `sequencer::planned`) to one task per
//! worker, which gathers what arrives within `CHAT_PUSH_PLAN_LINGER_MS`
//! of the first into one plan, up to [`MAX_PLAN_MESSAGES`] messages and
//! [`MAX_PLAN_COPIES`] copies, and publishes it. At light load a round is
//! one message, so without this every message was a plan of its own: a
//! stored write, a delivery to the planner and an ack each. The planner
//! holds a plan for `CHAT_PUSH_DELAY_MS` (3 s by default) anyway, so the
//! linger delays no push that would have gone sooner.
//!
//! A push is not part of what an ack promises (`docs/architecture.md`,
//! "Push"): a worker that dies with plans lingering loses their pushes,
//! as it did with a plan published but not yet stored.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use chat_nats::envelope::{PlannedMessage, PushPlan};
use chat_nats::subjects;
use tokio::sync::mpsc;

/// Default of `CHAT_PUSH_PLAN_LINGER_MS`.
pub const DEFAULT_LINGER_MS: u64 = 100;

/// Most messages in one published plan.
pub const MAX_PLAN_MESSAGES: usize = 256;

/// Most copies in one published plan (with bodies cut to
/// `PLAN_BODY_CHARS`, a plan stays well under the server's 2 MB payload
/// limit; one message of the largest group, 5,000 members, fits).
pub const MAX_PLAN_COPIES: usize = 10_000;

/// Rounds' plans waiting for the task before sequencers wait for room.
const QUEUE: usize = 1024;

/// Where a worker's sequencers hand their rounds' push plans.
#[derive(Debug, Clone)]
pub struct Plans {
    tx: mpsc::Sender<Vec<PlannedMessage>>,
}

impl Plans {
    /// Starts the worker's plan task.
    pub fn start(js: jetstream::Context, linger: Duration) -> Plans {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(js, linger, rx));
        Plans { tx }
    }

    /// Hands over a round's planned messages (to be published within the
    /// linger).
    pub async fn add(&self, messages: Vec<PlannedMessage>) {
        if !messages.is_empty() && self.tx.send(messages).await.is_err() {
            tracing::warn!("push plan task stopped; these messages are not pushed");
        }
    }
}

fn full(messages: &[PlannedMessage]) -> bool {
    messages.len() >= MAX_PLAN_MESSAGES || messages.iter().map(|m| m.copies.len()).sum::<usize>() >= MAX_PLAN_COPIES
}

async fn run(js: jetstream::Context, linger: Duration, mut rx: mpsc::Receiver<Vec<PlannedMessage>>) {
    while let Some(mut waiting) = rx.recv().await {
        let until = tokio::time::Instant::now() + linger;
        while !full(&waiting) {
            let more = if linger.is_zero() {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    more = rx.recv() => more,
                    _ = tokio::time::sleep_until(until) => None,
                }
            };
            match more {
                Some(more) => waiting.extend(more),
                None => break,
            }
        }
        for plan in split(waiting) {
            publish(&js, plan).await;
        }
    }
}

/// `messages` as plans within [`MAX_PLAN_MESSAGES`] and [`MAX_PLAN_COPIES`]
/// (a message is never split; one with more copies is a plan of its own).
pub fn split(messages: Vec<PlannedMessage>) -> Vec<Vec<PlannedMessage>> {
    let mut plans: Vec<Vec<PlannedMessage>> = Vec::new();
    let mut copies = 0;
    for m in messages {
        let fits =
            plans.last().is_some_and(|p| p.len() < MAX_PLAN_MESSAGES && copies + m.copies.len() <= MAX_PLAN_COPIES);
        if !fits {
            plans.push(Vec::new());
            copies = 0;
        }
        copies += m.copies.len();
        plans.last_mut().expect("a plan was just pushed").push(m);
    }
    plans
}

/// Publishes one plan; its ack is waited for in a task of its own.
async fn publish(js: &jetstream::Context, messages: Vec<PlannedMessage>) {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else { return };
    let id = subjects::push_plan_id(first.msg.id, last.msg.id);
    let subject = subjects::push_plan(u32::try_from(first.msg.id % 64).unwrap_or(0));
    let payload = match serde_json::to_vec(&PushPlan { messages }) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            tracing::warn!(error = %e, plan = %id, "push plan not encoded; its messages are not pushed");
            return;
        }
    };
    match js.publish_with_headers(subject, subjects::msg_id(&id), payload).await {
        Ok(ack) => {
            tokio::spawn(async move {
                if let Err(e) = ack.await {
                    tracing::warn!(error = %e, plan = %id, "push plan not stored; its messages are not pushed");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, plan = %id, "push plan not published; its messages are not pushed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_nats::envelope::StoredMessage;

    fn planned(id: u64, copies: usize) -> PlannedMessage {
        let msg = StoredMessage { id, kind: chat_nats::envelope::MessageKind::Text, ..Default::default() };
        PlannedMessage::new(&msg, &(0..copies as i64).map(|u| (u, 1)).collect::<Vec<_>>())
    }

    #[test]
    fn plans_are_split_by_messages_and_copies_never_inside_a_message() {
        let sizes = |plans: &[Vec<PlannedMessage>]| plans.iter().map(Vec::len).collect::<Vec<_>>();
        assert!(split(Vec::new()).is_empty());
        let many: Vec<_> = (0..600).map(|i| planned(i, 2)).collect();
        assert_eq!(sizes(&split(many)), [256, 256, 88]);
        // 4,000 copies each: two fit 10,000, the third starts a plan.
        let groups: Vec<_> = (0..5).map(|i| planned(i, 4_000)).collect();
        let plans = split(groups);
        assert_eq!(sizes(&plans), [2, 2, 1]);
        assert_eq!(plans[1][0].msg.id, 2, "order kept");
        // A message with more copies than a plan holds goes alone.
        let big = vec![planned(1, 3), planned(2, 12_000), planned(3, 3)];
        assert_eq!(sizes(&split(big)), [1, 1, 1]);
    }
}
