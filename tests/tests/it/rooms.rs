//! Live rooms: read fan-out to many viewers over several gateways, the
//! join seam, slow viewers skipping with a `gap`, and who may do what.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use chat_client::{ClientError, Conn, Login, Method};
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

async fn create_room(s: &Stack, owner: &Login, body: Value) -> Result<String> {
    let (status, v) = s.http(0).request(Method::POST, "/v1/rooms", Some(&owner.token), Some(body)).await?;
    anyhow::ensure!(status == 201, "create room: {status} {v}");
    Ok(v["room"].as_str().unwrap().to_owned())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The next `msg` of `room`, skipping nothing else but other frames.
async fn next_room_msg(c: &mut Conn, room: &str) -> Result<Value> {
    Ok(c.wait_for("room msg", |v| v["type"] == "msg" && v["room"] == room).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_1000_viewers_over_2_gateways_in_room_order() -> Result<()> {
    let s = stack().gateways(2).start().await?;
    let owner = s.user("owner", "o1").await?;
    let room = create_room(&s, &owner, json!({"title": "final"})).await?;
    // 10 accounts, 100 sessions each, alternating gateways.
    let mut logins = Vec::new();
    for i in 0..10 {
        logins.push(s.user(&format!("viewer{i}"), "v").await?);
    }
    let mut viewers = Vec::new();
    for i in 0..1000 {
        let mut c = s.connect(i % 2, &logins[i % 10]).await?;
        c.timeout = Duration::from_secs(60);
        c.send_json(&json!({"type": "join", "room": room})).await?;
        viewers.push(c);
    }
    for c in &mut viewers {
        c.wait_for("joined", |v| v["type"] == "joined").await?;
    }
    let (_, shown) = s.http(1).request(Method::GET, &format!("/v1/rooms/{room}"), Some(&owner.token), None).await?;
    assert!(shown["viewers"].as_u64().unwrap() >= 500, "at least this gateway's viewers: {shown}");

    let mut poster = s.connect(0, &owner).await?;
    const BURST: usize = 30;
    for i in 0..BURST {
        poster
            .send_json(&json!({"type": "send", "cid": format!("b{i}"), "to": {"room": room}, "body": format!("m{i}")}))
            .await?;
    }
    let mut acked = Vec::new();
    for i in 0..BURST {
        let cid = format!("b{i}");
        let a = poster.wait_for("ack", |v| v["type"] == "ack" && v["cid"] == cid.as_str()).await?;
        assert_eq!(a["conv"], format!("r-{room}"));
        acked.push(a["id"].as_str().unwrap().parse::<u64>()?);
    }
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "ids increase in room order");
    let want: Vec<String> = (0..BURST).map(|i| format!("m{i}")).collect();
    let reads = viewers.into_iter().map(|mut c| {
        let room = room.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < BURST {
                let m = next_room_msg(&mut c, &room).await?;
                got.push((m["id"].as_str().unwrap().parse::<u64>()?, m["body"].as_str().unwrap().to_owned()));
            }
            anyhow::Ok(got)
        })
    });
    for r in futures::future::join_all(reads).await {
        let got = r??;
        assert_eq!(got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(), want);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), acked);
    }
    // Stored once: the burst is the room's history, no inbox copies.
    let page = s.http(0).history(&owner.token, &format!("r-{room}"), "limit=100").await?;
    assert_eq!(page["messages"].as_array().unwrap().len(), BURST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_backlog_then_live_has_no_gap_or_duplicate() -> Result<()> {
    let s = stack().start().await?;
    let owner = s.user("owner", "o1").await?;
    let viewer = s.user("viewer", "v1").await?;
    let room = create_room(&s, &owner, json!({"title": "seam"})).await?;
    let mut poster = s.connect(0, &owner).await?;
    for i in 0..70 {
        poster.send_to_room(&format!("p{i}"), &room, &format!("{i}")).await?;
    }
    // Posting goes on while the viewer joins.
    let room2 = room.clone();
    let posting = tokio::spawn(async move {
        for i in 70..150 {
            poster.send_to_room(&format!("p{i}"), &room2, &format!("{i}")).await?;
        }
        anyhow::Ok(())
    });
    let mut c = s.connect(0, &viewer).await?;
    let (backlog, joined) = c.join_room(&room).await?;
    assert_eq!(joined["backlog"].as_u64(), Some(backlog.len() as u64));
    assert_eq!(backlog.len(), 50, "CHAT_ROOM_BACKLOG messages");
    let mut seen: Vec<u64> = backlog.iter().map(|m| m["body"].as_str().unwrap().parse().unwrap()).collect();
    while *seen.last().unwrap() < 149 {
        let m = next_room_msg(&mut c, &room).await?;
        seen.push(m["body"].as_str().unwrap().parse()?);
    }
    posting.await??;
    let first = seen[0];
    assert!(first >= 20, "the backlog is the latest 50 at the time of joining");
    assert_eq!(seen, (first..150).collect::<Vec<_>>(), "no gap and no duplicate at the seam");
    assert!(backlog.iter().all(|m| m.get("cursor").is_none()), "rooms are not part of the sync cursor");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_gets_a_gap_and_others_do_not_wait() -> Result<()> {
    let s = stack().env("CHAT_ROOM_QUEUE_FRAMES", "32").start().await?;
    let owner = s.user("owner", "o1").await?;
    let slow_user = s.user("slow", "s1").await?;
    let fast_user = s.user("fast", "f1").await?;
    let room = create_room(&s, &owner, json!({"title": "busy"})).await?;
    let mut slow = s.connect(0, &slow_user).await?;
    slow.join_room(&room).await?;
    let mut fast = s.connect(0, &fast_user).await?;
    fast.join_room(&room).await?;
    let mut poster = s.connect(0, &owner).await?;
    // 100 KB messages: more than the slow viewer's queue and socket
    // buffers hold while it reads nothing.
    const N: usize = 200;
    let big = "x".repeat(99_990);
    let room2 = room.clone();
    let fast_reader = tokio::spawn(async move {
        let mut worst = 0u64;
        for _ in 0..N {
            let m = next_room_msg(&mut fast, &room2).await?;
            worst = worst.max(now_ms().saturating_sub(m["ts"].as_u64().unwrap()));
        }
        anyhow::Ok((fast, worst))
    });
    for i in 0..N {
        poster.send_to_room(&format!("b{i}"), &room, &format!("{i:05}{big}")).await?;
    }
    let (mut fast, worst) = fast_reader.await??;
    assert!(worst < 1000, "the fast viewer's worst post-to-delivery latency: {worst} ms");
    // The slow viewer reads again what was queued for it, then the next
    // message comes after a gap notice.
    slow.timeout = Duration::from_secs(3);
    let mut got = 0;
    loop {
        match slow.next().await {
            Ok(v) if v["type"] == "msg" => got += 1,
            Ok(v) => anyhow::bail!("unexpected frame {v}"),
            Err(ClientError::Timeout(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    poster.send_to_room("last", &room, "last").await?;
    slow.timeout = Duration::from_secs(30);
    let gap = loop {
        let v = slow.next().await?;
        match v["type"].as_str() {
            Some("msg") => got += 1,
            Some("gap") => break v,
            other => anyhow::bail!("unexpected frame {other:?}: {v}"),
        }
    };
    let missed = gap["missed"].as_u64().unwrap();
    assert!(missed > 0 && got + missed as usize == N, "got {got}, missed {missed} of {N}");
    assert_eq!(next_room_msg(&mut slow, &room).await?["body"], "last", "still connected, at the latest");
    assert_eq!(next_room_msg(&mut fast, &room).await?["body"], "last");
    Ok(())
}

fn code_of<T: std::fmt::Debug>(r: &Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Api { code, .. }) => code.clone(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_join_post_and_moderate() -> Result<()> {
    let s = stack().gateways(2).start().await?;
    let owner = s.user("owner", "o1").await?;
    let guest = s.user("guest", "g1").await?;
    let listed = s.user("listed", "l1").await?;
    let troll = s.user("troll", "t1").await?;
    let path = |r: &str, rest: &str| format!("/v1/rooms/{r}{rest}");
    let req = |who: &Login, m: Method, p: String, b: Option<Value>| {
        let token = who.token.clone();
        let http = s.http(0);
        async move { http.request(m, &p, Some(&token), b).await }
    };

    // Listed posters: others may watch, not post.
    let stage =
        create_room(&s, &owner, json!({"title": "stage", "post": "listed", "posters": [listed.user_id]})).await?;
    let mut g = s.connect(1, &guest).await?;
    g.join_room(&stage).await?;
    assert_eq!(code_of(&g.send_to_room("x", &stage, "me too").await), "forbidden");
    let mut l = s.connect(0, &listed).await?;
    l.send_to_room("y", &stage, "on stage").await?;
    assert_eq!(next_room_msg(&mut g, &stage).await?["body"], "on stage");

    // By invitation: not invited may not join or read; invited may.
    let vip = create_room(&s, &owner, json!({"title": "vip", "join": "invited", "invited": [listed.user_id]})).await?;
    let mut g2 = s.connect(0, &guest).await?;
    assert_eq!(code_of(&g2.join_room(&vip).await), "forbidden");
    assert_eq!(req(&guest, Method::GET, format!("/v1/conversations/r-{vip}/messages"), None).await?.0, 403);
    assert_eq!(req(&guest, Method::GET, path(&vip, ""), None).await?.0, 403);
    l.join_room(&vip).await?;
    assert_eq!(code_of(&g2.join_room("999999").await), "unknown_room");

    // Open room: a troll posts, the owner deletes it, mutes, then bans.
    let open = create_room(&s, &owner, json!({"title": "open"})).await?;
    let mut o = s.connect(0, &owner).await?;
    o.join_room(&open).await?;
    let mut t = s.connect(1, &troll).await?;
    t.join_room(&open).await?;
    let a = t.send_to_room("t1", &open, "spam").await?;
    let id = a["id"].as_str().unwrap().to_owned();
    next_room_msg(&mut o, &open).await?;
    assert_eq!(next_room_msg(&mut t, &open).await?["body"], "spam", "the poster is a viewer too");
    assert_eq!(code_of(&g2.delete("d0", &format!("r-{open}"), &id).await), "forbidden");
    o.delete("d1", &format!("r-{open}"), &id).await?;
    let del = next_room_msg(&mut t, &open).await?;
    assert_eq!((del["kind"].as_str(), del["target"].as_str()), (Some("delete"), Some(id.as_str())));
    assert_eq!(
        req(&owner, Method::PUT, path(&open, &format!("/mutes/{}", troll.user_id)), Some(json!({"secs": 60}))).await?.0,
        200
    );
    assert_eq!(code_of(&t.send_to_room("t2", &open, "spam").await), "muted");
    assert_eq!(
        req(&guest, Method::PUT, path(&open, &format!("/bans/{}", troll.user_id)), Some(json!({}))).await?.0,
        403
    );
    assert_eq!(
        req(&owner, Method::PUT, path(&open, &format!("/bans/{}", owner.user_id)), Some(json!({}))).await?.0,
        403
    );
    assert_eq!(
        req(&owner, Method::PUT, path(&open, &format!("/bans/{}", troll.user_id)), Some(json!({}))).await?.0,
        200
    );
    // Banned on the other gateway: out of the room at once, and stays out.
    let left = t.wait_for("left", |v| v["type"] == "left").await?;
    assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some(open.as_str()), Some("banned")));
    assert_eq!(code_of(&t.join_room(&open).await), "forbidden");
    assert_eq!(code_of(&t.send_to_room("t3", &open, "spam").await), "forbidden");
    assert_eq!(req(&troll, Method::GET, format!("/v1/conversations/r-{open}/messages"), None).await?.0, 403);
    assert_eq!(req(&owner, Method::DELETE, path(&open, &format!("/bans/{}", troll.user_id)), None).await?.0, 200);
    t.join_room(&open).await?;

    // Meta changes are events in the room.
    let (st, v) = req(&owner, Method::PATCH, path(&open, ""), Some(json!({"topic": "kick-off at 8"}))).await?;
    assert_eq!((st, v["topic"].as_str()), (200, Some("kick-off at 8")));
    let ev = next_room_msg(&mut t, &open).await?;
    assert_eq!((ev["kind"].as_str(), ev["event"]["op"].as_str()), (Some("system"), Some("meta")));
    assert_eq!(ev["event"]["meta"]["topic"], "kick-off at 8");
    assert_eq!(req(&troll, Method::PATCH, path(&open, ""), Some(json!({"topic": "mine"}))).await?.0, 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_edits_and_deletes_reach_the_viewers_live() -> Result<()> {
    let s = stack().start().await?;
    let owner = s.user("owner", "o1").await?;
    let viewer = s.user("viewer", "v1").await?;
    let room = create_room(&s, &owner, json!({"title": "changes"})).await?;
    let conv = format!("r-{room}");
    let mut o = s.connect(0, &owner).await?;
    let mut v = s.connect(0, &viewer).await?;
    o.join_room(&room).await?;
    v.join_room(&room).await?;
    let m = v.send_to_room("m1", &room, "hi").await?;
    let id = m["id"].as_str().unwrap().to_owned();
    // The owner reacts: every viewer gets the event with the counts after it.
    o.react("r1", &conv, &id, "🎉", false).await?;
    for (c, who) in [(&mut v, "viewer"), (&mut o, "owner")] {
        let got = c.wait_for("the reaction", |f| f["type"] == "msg" && f["kind"] == "react").await?;
        assert_eq!(
            (got["room"].as_str(), got["target"].as_str()),
            (Some(room.as_str()), Some(id.as_str())),
            "{who}: {got}"
        );
        assert_eq!(got["reactions"], json!([{"emoji": "🎉", "count": 1, "users": [owner.user_id]}]), "{who}: {got}");
    }
    v.edit("e1", &conv, &id, "hi!").await?;
    let got = o.wait_for("the edit", |f| f["type"] == "msg" && f["kind"] == "edit").await?;
    assert_eq!(got["body"], "hi!");
    o.delete("d1", &conv, &id).await?;
    let got = v.wait_for("the delete", |f| f["type"] == "msg" && f["kind"] == "delete").await?;
    assert_eq!(got["target"], json!(id));
    Ok(())
}
