//! Group chat: membership and permissions, fan-out, order, durability.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use chat_client::{ClientError, Conn, Login, Method};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

async fn req(s: &Stack, who: &Login, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    Ok(s.http(0).request(method, path, Some(&who.token), body).await?)
}

async fn send_group(c: &mut Conn, cid: &str, group: &str, body: &str) -> Result<Value, ClientError> {
    c.send_frame_and_ack(json!({"type": "send", "cid": cid, "to": {"group": group}, "body": body}), cid).await
}

/// The next `msg` frame of conversation `conv`.
async fn next_in(c: &mut Conn, conv: &str) -> Result<Value> {
    Ok(c.wait_for(conv, |v| v["type"] == "msg" && v["conv"] == conv).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_follow_roles_and_reach_the_right_members() -> Result<()> {
    let s = stack().start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let carol = s.user("carol", "c1").await?;
    let dave = s.user("dave", "d1").await?;
    let eve = s.user("eve", "e1").await?;
    let g = s.create_group(&alice, "friends", &[&bob.user_id, &carol.user_id]).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    let members = format!("/v1/groups/{gid}/members");

    let (_, mine) = req(&s, &bob, Method::GET, "/v1/groups", None).await?;
    assert_eq!(mine["groups"][0]["group_id"], gid.as_str());
    let (_, shown) = req(&s, &bob, Method::GET, &format!("/v1/groups/{gid}"), None).await?;
    let roles: HashMap<String, String> = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(roles[&alice.user_id], "owner");
    assert_eq!(roles[&bob.user_id], "member");
    assert_eq!(req(&s, &eve, Method::GET, &format!("/v1/groups/{gid}"), None).await?.0, 403);
    assert_eq!(req(&s, &eve, Method::GET, "/v1/groups/999999", None).await?.0, 404);

    // A member may not add; the owner makes bob admin; then he may.
    let add_dave = Some(json!({"user_id": dave.user_id}));
    let (st, v) = req(&s, &bob, Method::POST, &members, add_dave.clone()).await?;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let role = json!({"role": "admin"});
    assert_eq!(
        req(&s, &bob, Method::PUT, &format!("{members}/{}/role", carol.user_id), Some(role.clone())).await?.0,
        403
    );
    assert_eq!(req(&s, &alice, Method::PUT, &format!("{members}/{}/role", bob.user_id), Some(role)).await?.0, 200);
    let (mut cd, _) = s.live(0, &dave).await?;
    assert_eq!(req(&s, &bob, Method::POST, &members, add_dave).await?.0, 200);
    let added = next_in(&mut cd, &conv).await?;
    assert_eq!((added["kind"].as_str(), added["event"]["op"].as_str()), (Some("system"), Some("added")));

    // An added member gets what is sent from then on; a non-member may not send.
    let (mut ca, _) = s.live(0, &alice).await?;
    send_group(&mut ca, "m1", &gid, "welcome dave").await?;
    assert_eq!(next_in(&mut cd, &conv).await?["body"], "welcome dave");
    let (mut ce, _) = s.live(0, &eve).await?;
    let denied = send_group(&mut ce, "x1", &gid, "let me in").await;
    assert!(matches!(denied, Err(ClientError::Api { ref code, .. }) if code == "forbidden"), "{denied:?}");
    let missing = send_group(&mut ce, "x2", "999999", "hello?").await;
    assert!(matches!(missing, Err(ClientError::Api { ref code, .. }) if code == "unknown_group"), "{missing:?}");

    // An admin may not remove the owner; carol leaves; the owner removes dave.
    assert_eq!(req(&s, &bob, Method::DELETE, &format!("{members}/{}", alice.user_id), None).await?.0, 403);
    assert_eq!(req(&s, &carol, Method::DELETE, &format!("{members}/{}", carol.user_id), None).await?.0, 200);
    assert_eq!(req(&s, &alice, Method::DELETE, &format!("{members}/{}", dave.user_id), None).await?.0, 200);
    assert_eq!(next_in(&mut cd, &conv).await?["event"]["op"], "left");
    let removed = next_in(&mut cd, &conv).await?;
    assert_eq!(removed["event"]["op"], "removed", "the removed member sees the removal");
    // Nothing sent after the removal was acknowledged reaches dave: the
    // marker sent afterwards is the next thing he gets.
    send_group(&mut ca, "m2", &gid, "dave is gone").await?;
    ca.send_to_user("marker", &dave.user_id, "marker").await?;
    assert_eq!(cd.next_msg().await?["body"], "marker");
    let (st, _) = req(&s, &dave, Method::GET, &format!("/v1/conversations/{conv}/messages"), None).await?;
    assert_eq!(st, 403, "a removed member no longer reads the history");

    // The history holds every change in order with the messages.
    let (_, page) = req(&s, &alice, Method::GET, &format!("/v1/conversations/{conv}/messages"), None).await?;
    let seen: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["op"].as_str().map(str::to_owned).unwrap_or_else(|| m["body"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(seen, ["created", "role", "added", "welcome dave", "left", "removed", "dave is gone"]);

    // The conversation list shows both kinds, newest first.
    let (_, list) = req(&s, &alice, Method::GET, "/v1/conversations", None).await?;
    let convs: Vec<&str> =
        list["conversations"].as_array().unwrap().iter().map(|c| c["conv"].as_str().unwrap()).collect();
    assert_eq!(convs, [chat_client::direct_conv(&alice.user_id, &dave.user_id).as_str(), conv.as_str()]);
    assert_eq!(list["conversations"][1]["last_message"]["body"], "dave is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_full_at_the_configured_limit() -> Result<()> {
    let s = stack().env("CHAT_GROUP_MAX_MEMBERS", "3").start().await?;
    let a = s.user("alice", "a1").await?;
    let others: Vec<Login> = vec![s.user("bob", "d").await?, s.user("carol", "d").await?, s.user("dave", "d").await?];
    let body = json!({"name": "big", "members": [others[0].user_id, others[1].user_id, others[2].user_id]});
    let (st, v) = req(&s, &a, Method::POST, "/v1/groups", Some(body)).await?;
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("group_full")));
    let g = s.create_group(&a, "ok", &[&others[0].user_id, &others[1].user_id]).await?;
    let path = format!("/v1/groups/{}/members", g["group_id"].as_str().unwrap());
    let (st, v) = req(&s, &a, Method::POST, &path, Some(json!({"user_id": others[2].user_id}))).await?;
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("group_full")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_every_member_gets_group_messages_live_or_on_sync() -> Result<()> {
    let s = stack().start().await?;
    let (a1, a2) = (s.user("alice", "a1").await?, s.device("alice", "a2").await?);
    let (b1, b2) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?);
    let carol = s.user("carol", "c1").await?;
    let g = s.create_group(&a1, "team", &[&b1.user_id, &carol.user_id]).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap(), g["conv"].as_str().unwrap());
    let mut live = Vec::new();
    for l in [&a2, &b1, &b2] {
        live.push(s.live(0, l).await?.0);
    }
    let (mut ca1, _) = s.live(0, &a1).await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(send_group(&mut ca1, &format!("t{i}"), gid, &format!("hi {i}")).await?["id"].clone());
    }
    for c in &mut live {
        for id in &acked {
            assert_eq!(&next_in(c, conv).await?["id"], id);
        }
    }
    // Carol was offline throughout: the creation, then the five, in order.
    let mut cc = s.connect(0, &carol).await?;
    let (msgs, _) = cc.sync(None).await?;
    assert_eq!(msgs[0]["event"]["op"], "created");
    assert_eq!(msgs[1..].iter().map(|m| m["id"].clone()).collect::<Vec<_>>(), acked);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_senders_on_three_gateways_produce_one_order_everywhere() -> Result<()> {
    let mut s = stack().start().await?;
    s.add_gateway().await?;
    s.add_gateway().await?;
    let owner = s.user("owner", "o1").await?;
    let mut senders = Vec::new();
    for i in 0..10 {
        senders.push(s.user(&format!("sender{i}"), "d").await?);
    }
    let watcher = s.user("watcher", "w0").await?;
    let ids: Vec<&str> = senders.iter().map(|l| l.user_id.as_str()).chain([watcher.user_id.as_str()]).collect();
    let g = s.create_group(&owner, "busy", &ids).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    // Watchers: three devices of one member, one per gateway, plus the owner.
    let mut watchers = Vec::new();
    for gw in 0..3 {
        let dev = s.device("watcher", &format!("w{gw}")).await?;
        watchers.push(s.live(gw, &dev).await?.0);
    }
    watchers.push(s.live(1, &owner).await?.0);
    let mut tasks = Vec::new();
    for (i, l) in senders.iter().enumerate() {
        let (mut c, _) = s.live(i % 3, l).await?;
        let gid = gid.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                send_group(&mut c, &format!("k{k}"), &gid, &format!("{i}:{k}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut orders = Vec::new();
    for w in &mut watchers {
        let mut order = Vec::new();
        for _ in 0..100 {
            let m = next_in(w, &conv).await?;
            order.push(m["id"].as_str().unwrap().parse::<u64>()?);
        }
        assert!(order.windows(2).all(|p| p[0] < p[1]), "ids strictly increase in delivery order");
        orders.push(order);
    }
    assert!(orders.iter().all(|o| o == &orders[0]), "every device saw the same order");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_fan_out_to_100_members_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = stack().start().await?;
    let owner = s.user("owner", "o1").await?;
    let mut ids = Vec::new();
    for i in 0..99 {
        ids.push(s.http(0).signup(&format!("member{i}"), "password123").await?);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let g = s.create_group(&owner, "hundred", &refs).await?;
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let (mut c, _) = s.live(0, &owner).await?;
    let sends = tokio::spawn(async move {
        for k in 0..30 {
            loop {
                match send_group(&mut c, &format!("f{k}"), &gid, &format!("{k}")).await {
                    Ok(_) => break,
                    Err(ClientError::Api { code, .. }) if code == "timeout" => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        anyhow::Ok(())
    });
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    wait_for("fan-out under way", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let mut st = js.get_stream(chat_nats::subjects::INBOX_STREAM).await.ok()?;
            (st.info().await.ok()?.state.messages >= 100 * 8 + 37).then_some(())
        }
    })
    .await?;
    s.kill_worker(0);
    s.add_worker(0)?;
    sends.await??;
    // Every member's inbox holds the creation and the 30 messages, once.
    let inbox = js.get_stream(chat_nats::subjects::INBOX_STREAM).await?;
    let info = inbox.info_with_subjects("chat.inbox.>").await?;
    let counts: Vec<(String, usize)> =
        futures::StreamExt::collect::<Vec<_>>(info).await.into_iter().collect::<Result<_, _>>()?;
    assert_eq!(counts.len(), 100);
    assert!(counts.iter().all(|(_, n)| *n == 31), "31 copies per member: {counts:?}");
    let mut cm = s.connect(0, &s.device("member7", "d").await?).await?;
    let (msgs, _) = cm.sync(None).await?;
    let bodies: Vec<&str> = msgs[1..].iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, (0..30).map(|k| k.to_string()).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_meta_is_edited_by_roles_and_reaches_exactly_the_members_in_order() -> Result<()> {
    let s = stack().start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let carol = s.user("carol", "c1").await?;
    let eve = s.user("eve", "e1").await?;
    let g = s.create_group(&alice, "friends", &[&bob.user_id, &carol.user_id]).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    let path = format!("/v1/groups/{gid}");
    let members = format!("{path}/members");

    // Only the owner or an admin edits; strangers and plain members are refused.
    let change = json!({"topic": "weekend plans"});
    for (who, status) in [(&bob, 403), (&eve, 403)] {
        let (st, v) = req(&s, who, Method::PATCH, &path, Some(change.clone())).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (status, Some("forbidden")), "{v}");
    }
    assert_eq!(req(&s, &alice, Method::PATCH, "/v1/groups/999999", Some(change.clone())).await?.0, 404);
    for bad in [
        json!({}),
        json!({"name": "  "}),
        json!({"name": "x".repeat(101)}),
        json!({"topic": "t".repeat(501)}),
        json!({"avatar_url": "http://insecure.example/a.png"}),
        json!({"avatar_url": "https://a b"}),
        json!({"title": "unknown field"}),
    ] {
        let (st, v) = req(&s, &alice, Method::PATCH, &path, Some(bad.clone())).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }

    let (mut cb, _) = s.live(0, &bob).await?;
    let (mut cc, _) = s.live(0, &carol).await?;
    let (mut ca, _) = s.live(0, &alice).await?;
    let role = json!({"role": "admin"});
    assert_eq!(req(&s, &alice, Method::PUT, &format!("{members}/{}/role", bob.user_id), Some(role)).await?.0, 200);
    // Carol is removed right before the meta change (so the membership
    // version it carries is the one that dropped her): she sees her
    // removal, and not the change.
    assert_eq!(req(&s, &alice, Method::DELETE, &format!("{members}/{}", carol.user_id), None).await?.0, 200);
    assert_eq!(next_in(&mut cc, &conv).await?["event"]["op"], "role");
    assert_eq!(next_in(&mut cc, &conv).await?["event"]["op"], "removed");
    let body = json!({"name": "Friends", "topic": "weekend plans", "avatar_url": "https://img.example/f.png"});
    let (st, v) = req(&s, &bob, Method::PATCH, &path, Some(body)).await?;
    assert_eq!(st, 200, "an admin edits: {v}");
    assert_eq!((v["name"].as_str(), v["meta_version"].as_u64()), (Some("Friends"), Some(1)));
    send_group(&mut ca, "after-meta", &gid, "after the rename").await?;

    // Bob gets the role change, the removal, the meta change, the message.
    assert_eq!(next_in(&mut cb, &conv).await?["event"]["op"], "role");
    assert_eq!(next_in(&mut cb, &conv).await?["event"]["op"], "removed");
    let meta = next_in(&mut cb, &conv).await?;
    assert_eq!((meta["kind"].as_str(), meta["event"]["op"].as_str()), (Some("system"), Some("meta")), "{meta}");
    assert_eq!(
        meta["event"]["meta"],
        json!({"name": "Friends", "topic": "weekend plans", "avatar_url": "https://img.example/f.png"})
    );
    assert_eq!(next_in(&mut cb, &conv).await?["body"], "after the rename");
    // Carol, removed before, gets none of it: the next thing she gets is a marker.
    ca.send_to_user("marker", &carol.user_id, "marker").await?;
    assert_eq!(cc.next_msg().await?["body"], "marker");

    // A partial change keeps the other fields; GET shows the current meta.
    let (st, v) = req(&s, &alice, Method::PATCH, &path, Some(json!({"avatar_url": ""}))).await?;
    assert_eq!((st, v["meta_version"].as_u64()), (200, Some(2)), "{v}");
    let (_, shown) = req(&s, &bob, Method::GET, &path, None).await?;
    assert_eq!(
        (shown["name"].as_str(), shown["topic"].as_str(), shown["avatar_url"].as_str()),
        (Some("Friends"), Some("weekend plans"), Some(""))
    );
    // The history holds both changes in conversation order.
    let (_, page) = req(&s, &alice, Method::GET, &format!("/v1/conversations/{conv}/messages"), None).await?;
    let seen: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"]["op"].as_str().map(str::to_owned).unwrap_or_else(|| m["body"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(seen, ["created", "role", "removed", "meta", "after the rename", "meta"]);
    Ok(())
}
