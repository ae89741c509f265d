//! Atomic batches (`chat_nats::batch`) against a real nats-server 2.15.1:
//! all or nothing, consecutive sequences in batch order, typed rejections.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use chat_nats::batch::{AtomicBatch, BatchConfig, BatchError};
use chat_nats::provision;
use chat_tests::NatsServer;
use chat_workers::commit::{Committer, Tuning};
use std::time::Duration;

/// A server, a client and a JetStream context on it.
struct Js {
    _nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn js() -> Result<Js> {
    let nats = NatsServer::start()?;
    let client = chat_tests::nats_admin(&nats.url).await?;
    let js = jetstream::new(client.clone());
    Ok(Js { _nats: nats, client, js })
}

impl Js {
    /// A file stream on `<prefix>.>` with direct get, atomic publish as asked.
    async fn stream(&self, name: &str, prefix: &str, atomic: bool) -> Result<stream::Stream> {
        let config = stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            allow_direct: true,
            allow_atomic_publish: atomic,
            ..Default::default()
        };
        self.js.create_stream(config).await.with_context(|| format!("create stream {name}"))
    }

    /// Plain publishes, each awaited to its ack; returns the last sequence.
    async fn publish(&self, subject: &str, n: usize) -> Result<u64> {
        let mut last = 0;
        for i in 0..n {
            last = self.js.publish(subject.to_string(), format!("plain {i}").into()).await?.await?.sequence;
        }
        Ok(last)
    }
}

async fn stored(s: &mut stream::Stream) -> Result<(u64, u64)> {
    let state = &s.info().await?.state;
    Ok((state.messages, state.last_sequence))
}

fn msg_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h
}

/// A batch of `n` entries on `subjects` in turn, payloads `e0`, `e1`, ...
fn batch(subjects: &[&str], n: usize) -> AtomicBatch {
    let mut b = AtomicBatch::new(BatchConfig::default());
    for i in 0..n {
        b.push(subjects[i % subjects.len()].to_string(), HeaderMap::new(), format!("e{i}").into()).unwrap();
    }
    b
}

#[tokio::test]
async fn a_batch_of_500_over_two_subjects_lands_in_order_at_the_acked_sequences() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("B", "b", true).await?;
    let before = t.publish("b.x", 3).await?;
    let b = batch(&["b.x", "b.y"], 500);

    let c = b.commit(&t.client).await?;
    assert_eq!((c.stream.as_str(), c.count, c.first_seq(), c.last_seq), ("B", 500, before + 1, before + 500));
    assert_eq!(stored(&mut s).await?, (503, 503));
    for (i, (entry, seq)) in b.entries().iter().zip(c.sequences()).enumerate() {
        let m = s.direct_get(seq).await.with_context(|| format!("direct get {seq}"))?;
        assert_eq!((m.sequence, &m.subject, &m.payload), (seq, &entry.subject, &entry.payload), "entry {i}");
        assert_eq!(m.headers.get("Nats-Batch-Sequence").map(|v| v.as_str()), Some((i + 1).to_string().as_str()));
    }
    Ok(())
}

#[tokio::test]
async fn a_batch_of_one_entry_commits() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("B", "b", true).await?;
    t.publish("b.x", 2).await?;
    let c = batch(&["b.y"], 1).commit(&t.client).await?;
    assert_eq!((c.count, c.first_seq(), c.last_seq), (1, 3, 3));
    assert_eq!(s.direct_get(3).await?.payload, "e0");
    assert_eq!(stored(&mut s).await?, (3, 3));
    Ok(())
}

#[tokio::test]
async fn one_already_stored_msg_id_rejects_the_whole_batch() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("B", "b", true).await?;
    t.js.publish_with_headers("b.x", msg_id("dup"), "first".into()).await?.await?;
    let ids = ["m0", "m1", "dup", "m3", "m4"];
    let mut b = AtomicBatch::new(BatchConfig::default());
    for id in ids {
        b.push("b.y", msg_id(id), id.to_string().into())?;
    }

    let e = b.commit(&t.client).await.unwrap_err();
    assert!(matches!(e, BatchError::DuplicateMsgId { .. }), "{e:?}");
    assert!(!e.outcome_unknown());
    assert_eq!(stored(&mut s).await?, (1, 1), "a rejected batch stored something");

    // The rejection recorded none of the other ids: without the duplicate,
    // the same entries commit.
    let mut retry = AtomicBatch::new(BatchConfig::default());
    for e in b.entries().iter().filter(|e| e.payload != "dup") {
        retry.push(e.subject.clone(), e.headers.clone(), e.payload.clone())?;
    }
    let c = retry.commit(&t.client).await?;
    assert_eq!(c.sequences(), 2..=5);
    assert_eq!(stored(&mut s).await?, (5, 5));
    Ok(())
}

#[tokio::test]
async fn a_wrong_expected_last_sequence_reports_the_actual_one_and_tells_a_lost_ack_apart() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("B", "b", true).await?;
    let last = t.publish("b.x", 3).await?;
    let mut b = batch(&["b.x", "b.y"], 4);

    b.expect_last_sequence(last - 1);
    let e = b.commit(&t.client).await.unwrap_err();
    assert!(matches!(e, BatchError::WrongLastSequence { expected: Some(2), actual: Some(3) }), "{e:?}");
    assert_eq!(stored(&mut s).await?, (3, 3));

    b.expect_last_sequence(last);
    let c = b.commit(&t.client).await?;
    assert_eq!(c.sequences(), 4..=7);

    // A single writer that lost that ack commits the same batch again with
    // the same expectation: the actual last sequence says it had landed.
    let e = b.commit(&t.client).await.unwrap_err();
    assert!(matches!(e, BatchError::WrongLastSequence { expected: Some(3), actual: Some(7) }), "{e:?}");
    assert_eq!(stored(&mut s).await?, (7, 7));
    Ok(())
}

#[tokio::test]
async fn a_stream_without_atomic_publish_refuses_a_batch() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("PLAIN", "p", false).await?;
    for n in [3, 1] {
        let e = batch(&["p.x"], n).commit(&t.client).await.unwrap_err();
        assert!(matches!(&e, BatchError::AtomicPublishDisabled { stream: Some(s) } if s == "PLAIN"), "{n}: {e:?}");
    }
    assert_eq!(stored(&mut s).await?, (0, 0));
    Ok(())
}

#[tokio::test]
async fn a_batch_spanning_two_streams_stores_nothing() -> Result<()> {
    let t = js().await?;
    let mut a = t.stream("A", "a", true).await?;
    let mut b = t.stream("B", "b", true).await?;
    // Commit on the second stream, then on the first.
    for subjects in [["a.1", "a.2", "b.1", "b.2"], ["b.1", "b.2", "a.1", "a.2"]] {
        let mut batch = AtomicBatch::new(BatchConfig::default());
        for s in subjects {
            batch.push(s, HeaderMap::new(), s.to_string().into())?;
        }
        let e = batch.commit(&t.client).await.unwrap_err();
        assert!(matches!(e, BatchError::Incomplete { .. }), "{subjects:?}: {e:?}");
    }
    assert_eq!((stored(&mut a).await?, stored(&mut b).await?), ((0, 0), (0, 0)));
    // Both streams still take batches.
    batch(&["a.1"], 2).commit(&t.client).await?;
    batch(&["b.1"], 2).commit(&t.client).await?;
    assert_eq!((stored(&mut a).await?, stored(&mut b).await?), ((2, 2), (2, 2)));
    Ok(())
}

#[tokio::test]
async fn a_commit_nobody_stores_is_no_stream_and_an_overfull_batch_is_refused() -> Result<()> {
    let t = js().await?;
    let e = batch(&["nowhere.x"], 2).commit(&t.client).await.unwrap_err();
    assert!(matches!(e, BatchError::NoStream { .. }), "{e:?}");
    assert!(matches!(AtomicBatch::new(BatchConfig::default()).commit(&t.client).await, Err(BatchError::Empty)));
    let mut full = batch(&["b.x"], 1000);
    assert!(matches!(full.push("b.x", HeaderMap::new(), "one more".into()), Err(BatchError::Full { max: 1000 })));
    Ok(())
}

#[tokio::test]
async fn provisioned_streams_take_batches_and_the_server_is_new_enough() -> Result<()> {
    let t = js().await?;
    provision::check_batch_server(&t.client)?;
    let storage = provision::provision(&t.client, &provision::StorageSettings::default()).await?;
    for mut s in [storage.history, storage.inbox, storage.ingress] {
        assert!(s.info().await?.config.allow_atomic_publish, "{}", s.cached_info().config.name);
    }
    let acks = t.js.get_stream(format!("KV_{}", chat_nats::subjects::ACKS_BUCKET)).await?;
    assert!(acks.cached_info().config.allow_atomic_publish, "outcome records");
    let history = chat_nats::subjects::HISTORY_ALL.trim_end_matches('>').to_string() + "batchtest";
    assert_eq!(batch(&[&history], 3).commit(&t.client).await?.count, 3);
    Ok(())
}

/// `chat-bench fsync` with tiny sizes keeps working (what it measures is
/// not checked: benchmarks do not gate CI).
#[tokio::test]
async fn the_fsync_bench_scenario_runs_tiny() -> Result<()> {
    let nats = NatsServer::start()?;
    let t = chat_bench::Target::nats_only(nats.url.clone());
    let cfg = chat_bench::fsync::Cfg {
        fsyncs: 20,
        batch_sizes: vec![1, 5],
        window: 8,
        duration: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let r = chat_bench::fsync::run(&t, &cfg).await?;
    for m in ["raw_fsyncs_per_s", "plain_8_in_flight_msgs_per_s", "batch_1_msgs_per_s", "batch_5_msgs_per_s"] {
        assert!(r.get(m) > 0.0, "{m} in\n{}", r.table());
    }
    assert_eq!(r.lat("raw write+fsync, one thread").map(|l| l.count), Some(20), "{}", r.table());
    assert!(r.lat("commit of a batch of 5").is_some_and(|l| l.count >= 3), "{}", r.table());
    Ok(())
}

/// A round of 40 keys for `marks::raise_many`: 10 absent, 10 lower, 10
/// already further, 10 deleted; wanted values `100 + i`.
async fn raise_round(kv: &async_nats::jetstream::kv::Store) -> Result<Vec<(String, bytes::Bytes)>> {
    let mut items = Vec::new();
    for i in 0..40u64 {
        let key = format!("u.{i}");
        match i / 10 {
            1 => drop(kv.put(&key, "5".into()).await?),
            2 => drop(kv.put(&key, "1000".into()).await?),
            3 => {
                kv.put(&key, "7".into()).await?;
                kv.delete(&key).await?;
            }
            _ => {}
        }
        items.push((key, bytes::Bytes::from((100 + i).to_string())));
    }
    Ok(items)
}

fn num(v: &[u8]) -> u64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// Delivered marks and read positions of a round go in one read and one
/// atomic batch (`gateway/src/messaging/marks.rs`): values move forward,
/// never back, over absent and deleted keys too.
#[tokio::test]
async fn a_round_of_marks_is_raised_in_one_batch_and_never_lowered() -> Result<()> {
    use chat_gateway::messaging::marks::{raise_many, Raised, MIN_BATCH_WRITES};
    let t = js().await?;
    let storage = provision::provision(&t.client, &provision::StorageSettings::default()).await?;
    let kv = storage.delivered;
    let items = raise_round(&kv).await?;
    let mut before = kv.stream.clone();
    let last_before = before.info().await?.state.last_sequence;
    let done = raise_many(&t.client, &kv, items, |cur, want| num(cur) >= num(want)).await;
    assert_eq!(done.len(), 40);
    let mut written = 0;
    for (key, value, r) in &done {
        let i: u64 = key.trim_start_matches("u.").parse()?;
        let stored = kv.get(key).await?.context("stored")?;
        if (20..30).contains(&i) {
            assert_eq!(r, &Raised::Ahead("1000".into()), "{key}");
            assert_eq!(num(&stored), 1000, "{key} was lowered");
        } else {
            assert_eq!(r, &Raised::Written, "{key}");
            assert_eq!((num(&stored), num(value)), (100 + i, 100 + i), "{key}");
            written += 1;
        }
    }
    assert!(written >= MIN_BATCH_WRITES);
    // The 30 writes are the stream's next 30 entries, nothing else.
    assert_eq!(before.info().await?.state.last_sequence, last_before + 30);
    Ok(())
}

/// A batch the server refuses (here: a bucket whose stream takes no atomic
/// batches) stores nothing and leaves every key to be raised on its own;
/// a round too small to batch is written key by key with compare-and-set.
#[tokio::test]
async fn a_refused_round_stores_nothing_and_a_small_round_is_written_key_by_key() -> Result<()> {
    use chat_gateway::messaging::marks::{raise_many, Raised};
    let t = js().await?;
    let kv =
        t.js.create_key_value(async_nats::jetstream::kv::Config { bucket: "plain".into(), ..Default::default() })
            .await?;
    let items = raise_round(&kv).await?;
    let mut s = kv.stream.clone();
    let last_before = s.info().await?.state.last_sequence;
    let done = raise_many(&t.client, &kv, items.clone(), |cur, want| num(cur) >= num(want)).await;
    let retry = done.iter().filter(|(_, _, r)| *r == Raised::Retry).count();
    let ahead = done.iter().filter(|(_, _, r)| matches!(r, Raised::Ahead(_))).count();
    assert_eq!((retry, ahead), (30, 10), "{done:?}");
    assert_eq!(s.info().await?.state.last_sequence, last_before, "a refused batch stored something");
    // Three of them: below the batch threshold, plain compare-and-set.
    let small: Vec<_> = items.into_iter().filter(|(k, _)| ["u.0", "u.15", "u.35"].contains(&k.as_str())).collect();
    let done = raise_many(&t.client, &kv, small, |cur, want| num(cur) >= num(want)).await;
    assert!(done.iter().all(|(_, _, r)| *r == Raised::Written), "{done:?}");
    for (key, want) in [("u.0", 100), ("u.15", 115), ("u.35", 135)] {
        assert_eq!(num(&kv.get(key).await?.context("stored")?), want);
    }
    Ok(())
}

/// A round larger than one read or one batch (1,100 keys) is raised in
/// parts, every key written.
#[tokio::test]
async fn a_round_of_more_keys_than_one_batch_holds_is_raised_in_parts() -> Result<()> {
    use chat_gateway::messaging::marks::{raise_many, Raised};
    let t = js().await?;
    let storage = provision::provision(&t.client, &provision::StorageSettings::default()).await?;
    let kv = storage.delivered;
    let items: Vec<_> = (0..1100u64).map(|i| (format!("u.{i}"), bytes::Bytes::from((i + 1).to_string()))).collect();
    let done = raise_many(&t.client, &kv, items, |cur, want| num(cur) >= num(want)).await;
    assert_eq!(done.len(), 1100);
    assert!(done.iter().all(|(_, _, r)| *r == Raised::Written), "{:?}", done.iter().find(|d| d.2 != Raised::Written));
    for i in [0u64, 999, 1000, 1099] {
        assert_eq!(num(&kv.get(format!("u.{i}")).await?.context("stored")?), i + 1);
    }
    Ok(())
}

/// A committer of the test's stream, one commit in flight.
fn committer(t: &Js, linger: Duration) -> Committer {
    Committer::start(t.client.clone(), t.js.clone(), Tuning { in_flight: 1, linger }, Default::default())
}

/// A part of `n` entries for the committer tests: subject `c.<part>` (or
/// `subject`), dedupe ids `<part>.<i>`, payloads `<part>/<i>`.
fn part(p: usize, n: usize) -> AtomicBatch {
    let mut b = AtomicBatch::new(BatchConfig::default());
    for i in 0..n {
        b.push(format!("c.{p}"), msg_id(&format!("{p}.{i}")), format!("{p}/{i}").into()).unwrap();
    }
    b
}

/// Every entry of `part` is stored at the sequence the committer gave it.
async fn at_their_sequences(s: &stream::Stream, part: &AtomicBatch, seqs: &[u64]) -> Result<()> {
    assert_eq!(seqs.len(), part.len(), "one sequence per entry");
    for (e, seq) in part.entries().iter().zip(seqs) {
        let m = s.direct_get(*seq).await.with_context(|| format!("direct get {seq}"))?;
        assert_eq!((m.subject.as_str(), &m.payload), (e.subject.as_str(), &e.payload), "entry at {seq}");
    }
    Ok(())
}

/// The worker's stream committer (`chat_workers::commit`): the parts that
/// wait while its one commit slot is taken are stored as one atomic batch
/// (20 rounds' parts of 5 entries: one commit instead of 20 plain ones),
/// each part at consecutive sequences, in the order they were handed over.
#[tokio::test]
async fn a_committer_stores_the_parts_waiting_for_it_as_one_batch() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("C", "c", true).await?;
    let c = committer(&t, Duration::ZERO);
    let parts: Vec<AtomicBatch> = (0..20).map(|p| part(p, 5)).collect();
    // All handed over in one poll: this test's runtime has one thread, so
    // the committer first runs once all 20 wait.
    let stored = futures::future::join_all(parts.iter().cloned().map(|p| c.store(p))).await;
    let mut all = Vec::new();
    for (p, r) in parts.iter().zip(stored) {
        let seqs = r.map_err(|e| anyhow::anyhow!("{e}"))?;
        at_their_sequences(&s, p, &seqs).await?;
        all.extend(seqs);
    }
    assert_eq!(all, (1..=100).collect::<Vec<u64>>(), "consecutive, in hand-over order: one batch");
    assert_eq!(c.stats(), (1, 20), "(commits, parts)");
    assert_eq!(stored_count(&mut s).await?, 100);
    Ok(())
}

/// A merged batch refused with nothing stored (one part holds a dedupe id
/// already stored) is retried part by part: that part fails, for its round
/// to redo, and the others are stored.
#[tokio::test]
async fn a_committer_retries_a_refused_merged_batch_part_by_part() -> Result<()> {
    let t = js().await?;
    let mut s = t.stream("C", "c", true).await?;
    t.js.publish_with_headers("c.1", msg_id("1.0"), "stored before".into()).await?.await?;
    let c = committer(&t, Duration::ZERO);
    // Part 1's first entry is the stored one: together 24 entries, one batch.
    let parts: Vec<AtomicBatch> = (0..3).map(|p| part(p, 8)).collect();
    let stored = futures::future::join_all(parts.iter().cloned().map(|p| c.store(p))).await;
    assert!(stored[1].is_err(), "the part holding a stored id fails: {:?}", stored[1]);
    for p in [0, 2] {
        let seqs = stored[p].as_ref().map_err(|e| anyhow::anyhow!("part {p}: {e}"))?;
        at_their_sequences(&s, &parts[p], seqs).await?;
    }
    assert_eq!(stored_count(&mut s).await?, 1 + 16, "nothing of the failed part stored, the others whole");
    assert_eq!(c.stats(), (1 + 3, 3), "the merged batch, then each part on its own");
    Ok(())
}

async fn stored_count(s: &mut stream::Stream) -> Result<u64> {
    Ok(stored(s).await?.0)
}

/// Writes nobody waits on (outcome records) linger for a large batch
/// (`LINGER_ENTRIES`): a part handed over while a lone one lingers joins
/// its commit, which is stored as soon as it holds that many, and a lone
/// part is stored once the linger is over.
#[tokio::test]
async fn a_lingering_committer_waits_for_a_batch_worth_of_parts() -> Result<()> {
    let t = js().await?;
    let s = t.stream("C", "c", true).await?;
    let c = committer(&t, Duration::from_secs(60));
    let lone = part(0, 2);
    let first = tokio::spawn({
        let (c, p) = (c.clone(), lone.clone());
        async move { c.store(p).await.map_err(|e| e.to_string()) }
    });
    // Let the committer take the lone part (and, without a linger, commit it).
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let more = part(1, chat_workers::commit::LINGER_ENTRIES - 2);
    let seqs = c.store(more.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let first = first.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        c.stats(),
        (1, 2),
        "(commits, parts): LINGER_ENTRIES entries, one commit, long before the linger is over"
    );
    at_their_sequences(&s, &lone, &first).await?;
    at_their_sequences(&s, &more, &seqs).await?;

    let short = committer(&t, Duration::from_millis(200));
    let alone = part(2, 3);
    let seqs = short.store(alone.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    at_their_sequences(&s, &alone, &seqs).await?;
    assert_eq!(short.stats(), (1, 1), "stored on its own once the linger was over");
    Ok(())
}
