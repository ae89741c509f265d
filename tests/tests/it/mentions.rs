//! Mentions (issue #16 point 4): `@username` in group texts resolved to
//! current members' ids, the list's `mentions` count, and a device's own
//! count from its frames. The push of a mention in a muted group is in
//! `push.rs`.

use anyhow::Result;
use chat_client::{Conn, Login, Method, Unread};
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

/// The caller's list entry of `conv`.
async fn entry(s: &Stack, who: &Login, conv: &str) -> Result<Value> {
    let (st, v) = s.http(0).request(Method::GET, "/v1/conversations", Some(&who.token), None).await?;
    assert_eq!(st, 200, "{v}");
    Ok(v["conversations"].as_array().unwrap().iter().find(|c| c["conv"] == conv).cloned().unwrap())
}

async fn mentions(s: &Stack, who: &Login, conv: &str) -> Result<u64> {
    Ok(entry(s, who, conv).await?["mentions"].as_u64().unwrap())
}

async fn say(c: &mut Conn, gid: &str, cid: &str, body: &str) -> Result<String> {
    let ack =
        c.send_frame_and_ack(json!({"type": "send", "cid": cid, "to": {"group": gid}, "body": body}), cid).await?;
    Ok(ack["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_resolve_to_members_only_and_count_until_read() -> Result<()> {
    let s = stack().start().await?;
    let (a, b, c) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?, s.user("carol", "c1").await?);
    let b2 = s.device("bob", "b2").await?;
    s.user("eve", "e1").await?;
    let g = s.create_group(&a, "team", &[&b.user_id, &c.user_id]).await?;
    let (conv, gid) = (g["conv"].as_str().unwrap().to_owned(), g["group_id"].as_str().unwrap().to_owned());
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let (mut cb2, _) = s.live(0, &b2).await?;
    let mut counts = Unread::new(&b.user_id);
    let (st, list) = s.http(0).request(Method::GET, "/v1/conversations", Some(&b2.token), None).await?;
    assert_eq!(st, 200);
    counts.seed(&list);
    assert_eq!((mentions(&s, &b, &conv).await?, counts.mentions_of(&conv)), (0, 0));

    // eve is no member, nobody is nobody, alice is the sender: only bob.
    let m1 = say(&mut ca, &gid, "m1", "hi @Bob, @eve @nobody @alice and bob@mail.example").await?;
    let f = cb.wait_for("m1", |v| v["type"] == "msg" && v["id"] == m1.as_str()).await?;
    assert_eq!(f["mentions"], json!([b.user_id]), "{f}");
    let (st, page) =
        s.http(0).request(Method::GET, &format!("/v1/conversations/{conv}/messages"), Some(&b.token), None).await?;
    assert_eq!(st, 200, "{page}");
    let stored = page["messages"].as_array().unwrap().iter().find(|m| m["id"] == m1.as_str()).cloned().unwrap();
    assert_eq!(stored["mentions"], json!([b.user_id]), "history keeps them: {stored}");
    let m2 = say(&mut ca, &gid, "m2", "no mention here").await?;
    let f = cb.wait_for("m2", |v| v["type"] == "msg" && v["id"] == m2.as_str()).await?;
    assert!(f.get("mentions").is_none(), "{f}");
    let m3 = say(&mut ca, &gid, "m3", "@carol @bob again").await?;
    let f = cb.wait_for("m3", |v| v["type"] == "msg" && v["id"] == m3.as_str()).await?;
    assert_eq!(f["mentions"], json!([c.user_id, b.user_id]), "in order of first use: {f}");
    assert_eq!(mentions(&s, &b, &conv).await?, 2);
    assert_eq!(mentions(&s, &c, &conv).await?, 1);
    assert_eq!(mentions(&s, &a, &conv).await?, 0);
    assert_eq!(entry(&s, &b, &conv).await?["unread"], 4, "the group's system message and three texts");
    loop {
        let f = cb2.wait_for("m3 on b2", |_| true).await?;
        counts.apply(&f);
        if f["id"] == m3.as_str() {
            break;
        }
    }
    assert_eq!(counts.mentions_of(&conv), 2, "the device counts the same");

    // Reading past the first mention leaves the second; reading all clears.
    cb.read_up_to(&conv, &m2).await?;
    assert_eq!(mentions(&s, &b, &conv).await?, 1);
    let read = cb2.wait_for("read m2", |v| v["type"] == "read").await?;
    counts.apply(&read);
    assert_eq!(counts.mentions_of(&conv), 1);
    cb.read_up_to(&conv, &m3).await?;
    assert_eq!(mentions(&s, &b, &conv).await?, 0);
    assert_eq!(mentions(&s, &c, &conv).await?, 1, "carol has not read");

    // A deleted mention stops counting.
    let m4 = say(&mut ca, &gid, "m4", "@bob look").await?;
    assert_eq!(mentions(&s, &b, &conv).await?, 1);
    ca.delete("d4", &conv, &m4).await?;
    assert_eq!(mentions(&s, &b, &conv).await?, 0);

    // After leaving, a name is not resolved any more.
    let (st, v) = s
        .http(0)
        .request(Method::DELETE, &format!("/v1/groups/{gid}/members/{}", c.user_id), Some(&c.token), None)
        .await?;
    assert!(st == 200 || st == 204, "{st} {v}");
    let m5 = say(&mut ca, &gid, "m5", "@carol @bob").await?;
    let f = cb.wait_for("m5", |v| v["type"] == "msg" && v["id"] == m5.as_str()).await?;
    assert_eq!(f["mentions"], json!([b.user_id]), "{f}");
    Ok(())
}

/// The list's `mentions` agrees with the `last_n` beside it: a mention
/// recorded after the list read the conversation's head (here: a row
/// ahead of history, as when a send lands between the two reads) is not
/// counted until its message is, so a device that seeds from the list and
/// then applies that message's `msg` counts it once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_mentions_count_no_message_beyond_its_last_n() -> Result<()> {
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let g = s.create_group(&a, "team", &[&b.user_id]).await?;
    let (conv, gid) = (g["conv"].as_str().unwrap().to_owned(), g["group_id"].as_str().unwrap().to_owned());
    let (mut ca, _) = s.live(0, &a).await?;
    say(&mut ca, &gid, "m1", "@bob hi").await?;
    let e = entry(&s, &b, &conv).await?;
    let head = e["last_n"].as_u64().unwrap();
    assert_eq!(e["mentions"], 1, "{e}");
    let (db, conn) = tokio_postgres::connect(&s.pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.execute(
        "INSERT INTO mentions (user_id, conv, n, id) VALUES ($1, $2, $3, $4)",
        &[&b.user_id.parse::<i64>()?, &conv, &((head + 1) as i64), &1i64],
    )
    .await?;
    let e = entry(&s, &b, &conv).await?;
    assert_eq!((e["last_n"].as_u64(), e["mentions"].as_u64()), (Some(head), Some(1)), "{e}");
    // Once the head passes it, it counts.
    say(&mut ca, &gid, "m2", "@bob again").await?;
    let e = entry(&s, &b, &conv).await?;
    assert_eq!(e["last_n"].as_u64(), Some(head + 1), "{e}");
    assert_eq!(e["mentions"], 2, "{e}");
    Ok(())
}
