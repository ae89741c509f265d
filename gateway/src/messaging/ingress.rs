//! Group commit on the ingress stream: the gateway's concurrent sends share
//! one fsync.
//!
//! Every send's ingress publish goes through one writer task per gateway.
//! It takes whatever sends are waiting as a round and stores it, with at
//! most [`ROUNDS_IN_FLIGHT`] rounds being stored at once: at light load a
//! send starts at once as one plain publish and waits for one fsync, as
//! before; under load the sends that queue while the rounds in flight are
//! stored form the next round, and a round of at least [`MIN_BATCH`] sends
//! is stored as one atomic batch (one fsync for all; a batch has a fixed
//! cost of several ms, which only pays for many).
//!
//! A batch is all or nothing. If it is refused (one of its sends is a
//! client's retry, whose `Nats-Msg-Id` is already stored, rejects the whole
//! batch) or its outcome is unknown (timeout), each send of the round is
//! published again on its own: its `Nats-Msg-Id` tells a stored one
//! (`duplicate`) from a new one, so nothing is stored twice or lost.

use async_nats::jetstream;
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig, BatchError};
use chat_nats::subjects::msg_id;
use tokio::sync::{mpsc, oneshot};

/// Fewest sends in a round stored as one atomic batch.
pub const MIN_BATCH: usize = 16;

/// Most sends in one round (the server's default batch limit is 1,000).
pub const MAX_ROUND: usize = 500;

/// Rounds being stored at once (a new send never waits behind a round
/// while fewer are in flight).
pub const ROUNDS_IN_FLIGHT: usize = 4;

/// Sends waiting for the writer before new ones wait for room.
const QUEUE: usize = 4096;

/// What storing one send's ingress message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Its `Nats-Msg-Id` was already stored (a retry of an earlier send).
    pub duplicate: bool,
}

struct Job {
    subject: String,
    msg_id: String,
    payload: Bytes,
    done: oneshot::Sender<Result<Stored, String>>,
}

/// The gateway's ingress writer.
#[derive(Debug, Clone)]
pub struct Ingress {
    tx: mpsc::Sender<Job>,
}

impl Ingress {
    /// Starts the writer.
    pub fn start(js: jetstream::Context) -> Ingress {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(js, rx));
        Ingress { tx }
    }

    /// Stores one ingress message with its dedupe id; returns once it is
    /// durable (or was already stored).
    pub async fn publish(&self, subject: String, msg_id: &str, payload: Bytes) -> Result<Stored, String> {
        let (done, rx) = oneshot::channel();
        let job = Job { subject, msg_id: msg_id.to_owned(), payload, done };
        self.tx.send(job).await.map_err(|_| "ingress writer stopped".to_string())?;
        rx.await.map_err(|_| "ingress writer stopped".to_string())?
    }
}

async fn run(js: jetstream::Context, mut rx: mpsc::Receiver<Job>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ROUNDS_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for room first, so that the sends arriving meanwhile join
        // this round.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(j) => round.push(j),
                Err(_) => break,
            }
        }
        let js = js.clone();
        tokio::spawn(async move {
            store(&js, round).await;
            drop(permit);
        });
    }
}

/// Stores one round: as one atomic batch when it is large enough and the
/// batch is taken, else one plain publish per send, concurrently.
async fn store(js: &jetstream::Context, round: Vec<Job>) {
    // The same send twice in one round (a device retrying on two
    // connections at once) goes one by one, so the store dedupes it.
    let distinct = || round.iter().map(|j| j.msg_id.as_str()).collect::<std::collections::HashSet<_>>().len();
    if round.len() >= MIN_BATCH && distinct() == round.len() {
        match commit(js, &round).await {
            Ok(()) => {
                for j in round {
                    let _ = j.done.send(Ok(Stored { duplicate: false }));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, sends = round.len(), "ingress batch not stored as one; publishing one by one")
            }
        }
    }
    let writes = round.into_iter().map(|j| async move {
        let r = plain(js, j.subject, &j.msg_id, j.payload).await;
        let _ = j.done.send(r);
    });
    futures::future::join_all(writes).await;
}

/// The round as one atomic batch.
async fn commit(js: &jetstream::Context, round: &[Job]) -> Result<(), BatchError> {
    let mut batch = AtomicBatch::new(BatchConfig::default());
    for j in round {
        batch.push(j.subject.clone(), msg_id(&j.msg_id), j.payload.clone())?;
    }
    batch.commit(&js.client()).await.map(|_| ())
}

async fn plain(js: &jetstream::Context, subject: String, id: &str, payload: Bytes) -> Result<Stored, String> {
    let ack = js.publish_with_headers(subject, msg_id(id), payload).await.map_err(|e| e.to_string())?;
    let ack = ack.await.map_err(|e| e.to_string())?;
    Ok(Stored { duplicate: ack.duplicate })
}
