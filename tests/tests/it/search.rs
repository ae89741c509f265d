//! Message search (`GET /v1/search`): the worker's indexer fills the index
//! from history; the gateway answers only over what the caller may read.

use std::time::Duration;

use anyhow::Result;
use chat_client::{direct_conv, Login, Method};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

/// How long the indexer may take to catch up in these tests.
const INDEXED: Duration = Duration::from_secs(20);

async fn search(
    s: &Stack,
    who: &Login,
    q: &str,
    conv: Option<&str>,
    before: Option<&str>,
    limit: Option<usize>,
) -> Value {
    s.http(0).search(&who.token, q, conv, before, limit).await.expect("search answers")
}

fn bodies(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().map(|r| r["body"].as_str().unwrap().to_owned()).collect()
}

/// Polls until `who`'s search for `q` returns exactly `n` hits.
async fn until_hits(s: &Stack, who: &Login, q: &str, n: usize) -> Result<Value> {
    wait_for(&format!("{n} hits for {q:?}"), INDEXED, || async move {
        let v = search(s, who, q, None, None, Some(100)).await;
        (v["results"].as_array().map(Vec::len) == Some(n)).then_some(v)
    })
    .await
}

async fn status(s: &Stack, who: &Login, path: &str) -> Result<(u16, Value)> {
    Ok(s.http(0).request(Method::GET, path, Some(&who.token), None).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn korean_and_english_substrings_are_found_newest_first_in_pages_with_highlights() -> Result<()> {
    let s = stack().env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &alice).await?;
    ca.send_to_user("k1", &bob.user_id, "오늘회의는취소되었습니다").await?;
    ca.send_to_user("k2", &bob.user_id, "내일 점심 약속").await?;
    for i in 0..5 {
        ca.send_to_user(&format!("e{i}"), &bob.user_id, &format!("Project MEETING number {i}")).await?;
    }

    // Two syllables find the longer word; the indexer catches up.
    let v = until_hits(&s, &bob, "회의", 1).await?;
    let hit = &v["results"][0];
    assert_eq!(hit["body"], "오늘회의는취소되었습니다");
    assert_eq!(hit["highlights"], json!([[2, 4]]));
    assert_eq!(hit["conv"], direct_conv(&alice.user_id, &bob.user_id));
    assert_eq!(hit["from"], alice.user_id.as_str());
    assert_eq!(bodies(&search(&s, &alice, "취소되었", None, None, None).await), ["오늘회의는취소되었습니다"]);
    // Sent after it, so possibly in the indexer's next transaction.
    assert_eq!(bodies(&until_hits(&s, &bob, "점심 약속", 1).await?), ["내일 점심 약속"]);
    assert!(bodies(&search(&s, &bob, "회의가", None, None, None).await).is_empty());

    // English: case-insensitive substrings, newest first, paged.
    let all = until_hits(&s, &bob, "meet", 5).await?;
    let expected: Vec<String> = (0..5).rev().map(|i| format!("Project MEETING number {i}")).collect();
    assert_eq!(bodies(&all), expected);
    assert_eq!(all["results"][0]["highlights"], json!([[8, 12]]));
    assert_eq!(all["has_more"], false);
    let p1 = search(&s, &bob, "meeting", None, None, Some(2)).await;
    assert_eq!((bodies(&p1), p1["has_more"].as_bool()), (expected[..2].to_vec(), Some(true)));
    let last = p1["results"][1]["id"].as_str().unwrap().to_owned();
    let p2 = search(&s, &bob, "meeting", None, Some(&last), Some(2)).await;
    assert_eq!(bodies(&p2), expected[2..4].to_vec());
    let last = p2["results"][1]["id"].as_str().unwrap().to_owned();
    let p3 = search(&s, &bob, "meeting", None, Some(&last), Some(2)).await;
    assert_eq!((bodies(&p3), p3["has_more"].as_bool()), (expected[4..].to_vec(), Some(false)));
    let dm = direct_conv(&alice.user_id, &bob.user_id);
    assert_eq!(bodies(&search(&s, &bob, "number 3", Some(&dm), None, None).await), [expected[1].clone()]);

    // Bad input: every refusal has its code.
    for path in [
        "/v1/search?q=a".to_owned(),
        "/v1/search".to_owned(),
        format!("/v1/search?q={}", "x".repeat(201)),
        "/v1/search?q=meeting&limit=0".into(),
        "/v1/search?q=meeting&limit=101".into(),
        "/v1/search?q=meeting&before=abc".into(),
        "/v1/search?q=meeting&conv=nope".into(),
        "/v1/search?q=%ZZ".into(),
    ] {
        let (st, v) = status(&s, &bob, &path).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("bad_request")), "{path}");
    }
    let (st, _) = s.http(0).request(Method::GET, "/v1/search?q=meeting", None, None).await?;
    assert_eq!(st, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_finds_messages_of_a_conversation_they_left_were_removed_from_or_never_were_in() -> Result<()> {
    let s = stack().env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let carol = s.user("carol", "c1").await?;
    let dave = s.user("dave", "d1").await?;
    let eve = s.user("eve", "e1").await?;
    let g = s.create_group(&alice, "zoo", &[&bob.user_id, &carol.user_id, &dave.user_id]).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    let (mut ca, _) = s.live(0, &alice).await?;
    ca.send_frame_and_ack(json!({"type": "send", "cid": "g1", "to": {"group": gid}, "body": "group zebra"}), "g1")
        .await?;
    ca.send_to_user("d1", &bob.user_id, "private zebra").await?;
    ca.send_to_user("d2", &carol.user_id, "carol zebra").await?;
    // Everything indexed: alice sees all three.
    until_hits(&s, &alice, "zebra", 3).await?;
    assert_eq!(bodies(&search(&s, &dave, "zebra", None, None, None).await), ["group zebra"]);

    // Carol leaves, the owner removes dave.
    let members = format!("/v1/groups/{gid}/members");
    let del = |who: Login, user: String| {
        let http = s.http(0);
        let path = format!("{members}/{user}");
        async move { http.request(Method::DELETE, &path, Some(&who.token), None).await }
    };
    assert_eq!(del(carol.clone(), carol.user_id.clone()).await?.0, 200);
    assert_eq!(del(alice.clone(), dave.user_id.clone()).await?.0, 200);

    assert_eq!(bodies(&search(&s, &bob, "zebra", None, None, None).await), ["private zebra", "group zebra"]);
    assert_eq!(bodies(&search(&s, &carol, "zebra", None, None, None).await), ["carol zebra"], "left the group");
    assert!(bodies(&search(&s, &dave, "zebra", None, None, None).await).is_empty(), "removed from the group");
    assert!(bodies(&search(&s, &eve, "zebra", None, None, None).await).is_empty(), "never in any");
    let dm = direct_conv(&alice.user_id, &bob.user_id);
    for (who, c) in [(&carol, &conv), (&dave, &conv), (&eve, &conv), (&eve, &dm), (&carol, &dm)] {
        let (st, v) = status(&s, who, &format!("/v1/search?q=zebra&conv={c}")).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{c}");
    }
    assert_eq!(bodies(&search(&s, &bob, "zebra", Some(&conv), None, None).await), ["group zebra"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_and_delete_events_in_history_reindex_and_unindex() -> Result<()> {
    let s = stack().env("CHAT_SEARCH_INDEXER", "true").worker_metrics().start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &alice).await?;
    let typo = ca.send_to_user("t1", &bob.user_id, "a mesage with a typo").await?;
    let gone = ca.send_to_user("t2", &bob.user_id, "banana split").await?;
    let (typo, gone) = (typo["id"].as_str().unwrap().to_owned(), gone["id"].as_str().unwrap().to_owned());
    until_hits(&s, &bob, "mesage", 1).await?;
    until_hits(&s, &bob, "banana", 1).await?;

    // Events as the edit/delete feature writes them to history.
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let conv = direct_conv(&alice.user_id, &bob.user_id);
    let event = |kind: &str, target: &str, body: &str| {
        json!({"id": "1", "conv": conv, "from": alice.user_id, "device": "a1", "cid": format!("{kind}-{target}"),
               "kind": kind, "target": target, "body": body, "ts": 1_900_000_000_000u64, "n": 0})
        .to_string()
    };
    let publish = |payload: String, target: String| {
        let (js, subject) = (js.clone(), format!("chat.hist.{conv}.e.0.{target}"));
        async move { js.publish(subject, payload.into()).await?.await.map(|_| ()).map_err(anyhow::Error::from) }
    };
    // A kind the indexer does not know is skipped, not fatal.
    publish(event("reaction", &typo, "👍"), typo.clone()).await?;
    publish(event("edit", &typo, "a message without a typo"), typo.clone()).await?;
    let v = until_hits(&s, &bob, "without", 1).await?;
    assert_eq!(v["results"][0]["id"], typo.as_str());
    assert_eq!(v["results"][0]["edited_at"], 1_900_000_000_000u64);
    assert_eq!(v["results"][0]["highlights"], json!([[10, 17]]));
    assert!(bodies(&search(&s, &bob, "mesage", None, None, None).await).is_empty(), "the old body is un-indexed");

    publish(event("delete", &gone, ""), gone.clone()).await?;
    until_hits(&s, &bob, "banana", 0).await?;
    // A replayed original of a deleted message stays out.
    let page = s.http(0).history(&bob.token, &conv, "limit=10").await?;
    let original = page["messages"].as_array().unwrap().iter().find(|m| m["id"] == gone.as_str()).unwrap().clone();
    publish(original.to_string(), gone.clone()).await?;
    ca.send_to_user("t3", &bob.user_id, "marker after the replay").await?;
    until_hits(&s, &bob, "marker after", 1).await?;
    assert!(bodies(&search(&s, &bob, "banana", None, None, None).await).is_empty());

    // The indexer reports its lag and what it applied.
    let addr = s.worker_metrics(0)?;
    let m = wait_for("the indexer to report no lag", INDEXED, || async {
        let m = chat_tests::prom::parse(&chat_tests::prom::scrape(&addr, None).await.ok()?.body).ok()?;
        (m.has("chat_search_index_lag_messages") && m.value("chat_search_index_lag_messages", &[]) == 0.0).then_some(m)
    })
    .await?;
    assert_eq!(m.value("chat_search_index_events_total", &[("op", "edit")]), 1.0);
    assert_eq!(m.value("chat_search_index_events_total", &[("op", "delete")]), 1.0);
    assert!(m.value("chat_search_index_events_total", &[("op", "insert")]) >= 4.0);

    // A rebuild (docs/operations.md#search): drop the consumer, empty the
    // tables; history is indexed again, with the edit and the delete.
    js.get_stream("CHAT_HISTORY").await?.delete_consumer("search-indexer").await?;
    let (db, conn) = tokio_postgres::connect(&s.pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.batch_execute("TRUNCATE search_messages, search_deleted").await?;
    until_hits(&s, &bob, "without", 1).await?;
    until_hits(&s, &bob, "marker after", 1).await?;
    assert!(bodies(&search(&s, &bob, "banana", None, None, None).await).is_empty(), "the delete is replayed too");
    assert!(bodies(&search(&s, &bob, "mesage", None, None, None).await).is_empty(), "and the edit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_the_newest_first_walk_fills_equals_the_gram_index_page_across_the_walk_boundary() -> Result<()> {
    use chat_gateway::store::search::{Plan, Query};
    let s = stack().env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let carol = s.user("carol", "c1").await?;
    let dave = s.user("dave", "d1").await?;
    let g = s.create_group(&alice, "walk", &[&bob.user_id]).await?;
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let (mut ca, _) = s.live(0, &alice).await?;
    let (mut cc, _) = s.live(0, &carol).await?;
    // Bob's hits interleaved with rows he may not read (carol-dave) and
    // rows without the word, so the walk has to skip both.
    let mut mine = 0;
    for i in 0..36 {
        match i % 4 {
            0 => ca.send_to_user(&format!("d{i}"), &bob.user_id, &format!("Needle in a dm {i}")).await?,
            1 => cc.send_to_user(&format!("x{i}"), &dave.user_id, &format!("needle not for bob {i}")).await?,
            2 => {
                ca.send_frame_and_ack(
                    json!({"type": "send", "cid": format!("g{i}"), "to": {"group": gid}, "body": format!("group neEdle {i}")}),
                    &format!("g{i}"),
                )
                .await?
            }
            _ => ca.send_to_user(&format!("h{i}"), &bob.user_id, &format!("just hay {i}")).await?,
        };
        if i % 4 == 0 || i % 4 == 2 {
            mine += 1;
        }
    }
    until_hits(&s, &bob, "needle", mine).await?;
    until_hits(&s, &dave, "needle", 9).await?;

    let db = chat_gateway::store::Db::connect(&s.pg.url, 4)?;
    let user: i64 = bob.user_id.parse()?;
    let dm = direct_conv(&alice.user_id, &bob.user_id);
    let mut plans = std::collections::HashSet::new();
    for conv in [None, Some(dm.as_str())] {
        for limit in [1i64, 3, 7, 30] {
            for walk in [1i64, 6, 10, 17, 1000] {
                // Page through with `before`, as a client does.
                let (mut before, mut walked, mut grams) = (None, vec![], vec![]);
                loop {
                    let q = Query { user, q: "needle", conv, before, limit };
                    let (page, plan) = db.search_with(&q, walk).await?;
                    let (want, _) = db.search_with(&q, 0).await?;
                    assert_eq!(page, want, "conv {conv:?} limit {limit} walk {walk} before {before:?} ({plan:?})");
                    plans.insert(plan);
                    walked.extend(page.iter().map(|h| h.id));
                    grams.extend(want.iter().map(|h| h.id));
                    match page.last() {
                        Some(h) if page.len() as i64 == limit => before = Some(h.id),
                        _ => break,
                    }
                }
                assert_eq!(walked, grams);
                let expected = if conv.is_some() { mine / 2 } else { mine };
                assert_eq!(walked.len(), expected, "every hit once, conv {conv:?} limit {limit} walk {walk}");
                assert!(walked.windows(2).all(|w| w[0] > w[1]), "newest first");
            }
        }
    }
    assert!(plans.contains(&Plan::Walk) && plans.contains(&Plan::Grams), "both plans answered: {plans:?}");
    // The full walk fills this page; what the gateway answers (here the
    // gram plan: a few rows, rare grams) is the same page.
    let q = Query { user, q: "needle", conv: None, before: None, limit: 3 };
    let (page, plan) = db.search_with(&q, chat_gateway::store::search::WALK_ROWS).await?;
    assert_eq!(plan, Plan::Walk);
    assert_eq!(db.search(&q).await?, page);
    Ok(())
}

/// Messages stored within `CHAT_SEARCH_LINGER_MS` are applied together:
/// eight sends, each acked before the next, cost at most two transactions
/// (the linger's window may open before the first), not eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_the_linger_are_indexed_in_one_transaction() -> Result<()> {
    const SENDS: usize = 8;
    let s = stack()
        .env("CHAT_SEARCH_INDEXER", "true")
        .env("CHAT_SEARCH_LINGER_MS", "4000")
        .worker_metrics()
        .start()
        .await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &alice).await?;
    for i in 0..SENDS {
        ca.send_to_user(&format!("l{i}"), &bob.user_id, &format!("lingering note {i}")).await?;
    }
    until_hits(&s, &bob, "lingering", SENDS).await?;
    let m = chat_tests::prom::metrics(&s.worker_metrics(0)?, None).await?;
    let txs = m.value("chat_search_index_transactions_total", &[]);
    assert!((1.0..=2.0).contains(&txs), "{SENDS} sends within the linger took {txs} transactions");
    assert_eq!(m.value("chat_search_index_events_total", &[("op", "insert")]), SENDS as f64);
    Ok(())
}

/// Migration 012 replaced `search_grams` (quadratic in the body's length)
/// with a linear version that must give the same grams for every body, or
/// the index built by the first one would no longer match its queries.
/// Compared here with the first version, taken from `008_search.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grams_are_the_same_as_the_first_version_s() -> Result<()> {
    let s = stack().start().await?;
    let (db, conn) = tokio_postgres::connect(&s.pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let src: String = db.query_one("SELECT prosrc FROM pg_proc WHERE proname = 'search_grams'", &[]).await?.get(0);
    assert!(src.contains("string_to_table"), "migration 012 is applied: {src}");
    let first = include_str!("../../../gateway/migrations/008_search.sql");
    let start = first.find("CREATE FUNCTION search_grams(").expect("008 defines search_grams");
    let end = start + first[start..].find("$$;").expect("its body ends") + 3;
    db.batch_execute(&first[start..end].replace("FUNCTION search_grams(", "FUNCTION search_grams_v1(")).await?;
    // Scripts, case, combining marks, 4-byte characters, whitespace, the
    // shortest bodies, and a long mixed one.
    let long: String =
        (0..3000u32).map(|i| ['a', 'Z', '가', '힣', '😀', ' ', 'é', '\n'][(i * 7 % 11 % 8) as usize]).collect();
    let bodies: Vec<String> = [
        "",
        "a",
        "ab",
        "ABC",
        "오늘회의",
        "Meeting 오늘 회의 MEETING",
        "👍🏽 ok 👍🏽",
        "e\u{301}t\u{e9}",
        "tab\tnew\nline  ",
        "aaaa",
        "ÀÉÎ ñ Straße",
    ]
    .iter()
    .map(|b| b.to_string())
    .chain([long])
    .collect();
    let rows = db.query("SELECT b, search_grams(b), search_grams_v1(b) FROM unnest($1::text[]) b", &[&bodies]).await?;
    assert_eq!(rows.len(), bodies.len());
    for r in rows {
        let (body, now, then): (String, Vec<String>, Vec<String>) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(now, then, "grams of {:?}", body.chars().take(40).collect::<String>());
    }
    Ok(())
}
