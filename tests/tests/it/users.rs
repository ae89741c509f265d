//! Finding people: `GET /v1/users/by-name/{name}` and `GET /v1/users/{id}`
//! (exact matches only, each lookup spending the caller's budget), and the
//! names in the conversation list.

use anyhow::Result;
use chat_client::Method;
use serde_json::json;

use crate::stack::stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_found_by_exact_name_and_nothing_else() -> Result<()> {
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob.b", "phone").await?);
    let http = s.http(0);
    let get = |path: String, token: Option<String>| {
        let http = http.clone();
        async move { http.request(Method::GET, &path, token.as_deref(), None).await }
    };
    let t = Some(a.token.clone());
    let (status, v) = get("/v1/users/by-name/bob.b".into(), t.clone()).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["user_id"], json!(b.user_id));
    assert_eq!(v["username"], "bob.b");
    assert!(v["created_at"].as_i64().is_some(), "{v}");
    // Case-insensitive, like login.
    assert_eq!(get("/v1/users/by-name/BOB.B".into(), t.clone()).await?.1["user_id"], json!(b.user_id));
    // Exact only: no prefix, no pattern.
    for name in ["bob", "bob.", "bob.b.", "bo%", "bob*"] {
        let (status, v) = get(format!("/v1/users/by-name/{name}"), t.clone()).await?;
        assert!(status == 404 || status == 400, "{name}: {status} {v}");
        if status == 404 {
            assert_eq!(v["error"]["code"], "not_found", "{name}");
        }
    }
    // Not a username at all: 400 before any lookup.
    for name in ["ab", "a%20b", "x!y", &"a".repeat(33)] {
        let (status, v) = get(format!("/v1/users/by-name/{name}"), t.clone()).await?;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{name}: {v}");
    }
    // Authenticated; GET only.
    let (status, v) = get("/v1/users/by-name/bob.b".into(), None).await?;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = http.request(Method::POST, "/v1/users/by-name/bob.b", Some(&a.token), None).await?;
    assert_eq!(status, 405);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_budget_are_refused_per_user() -> Result<()> {
    let s = stack().env("CHAT_USER_LOOKUP_BURST", "3").env("CHAT_USER_LOOKUP_PER_MIN", "1").start().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob", "phone").await?);
    let http = s.http(0);
    // Hits, misses and lookups by id all spend the same budget.
    for path in ["/v1/users/by-name/bob", "/v1/users/by-name/nobody", &format!("/v1/users/{}", b.user_id)] {
        let status = http.request(Method::GET, path, Some(&a.token), None).await?.0;
        assert!(status == 200 || status == 404, "{path}: {status}");
    }
    for path in ["/v1/users/by-name/bob", &format!("/v1/users/{}", b.user_id)] {
        let (status, v) = http.request(Method::GET, path, Some(&a.token), None).await?;
        assert_eq!((status, v["error"]["code"].as_str()), (429, Some("rate_limited")), "{path}: {v}");
    }
    // Another user has a budget of their own.
    assert_eq!(http.request(Method::GET, "/v1/users/by-name/alice", Some(&b.token), None).await?.0, 200);
    // A malformed name is refused without spending anything.
    assert_eq!(http.request(Method::GET, "/v1/users/by-name/x", Some(&b.token), None).await?.0, 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_names_people_and_groups() -> Result<()> {
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob", "phone").await?);
    let (mut c, _) = s.live(0, &a).await?;
    c.send_to_user("c1", &b.user_id, "hi").await?;
    c.send_to_user("c2", &a.user_id, "note to self").await?;
    s.create_group(&a, "team", &[&b.user_id]).await?;
    let (status, v) = s.http(0).request(Method::GET, "/v1/conversations", Some(&b.token), None).await?;
    assert_eq!(status, 200);
    let convs = v["conversations"].as_array().unwrap();
    let titles: Vec<&str> = convs.iter().map(|c| c["title"].as_str().unwrap_or("?")).collect();
    assert_eq!(titles, ["team", "alice"], "{v}");
    assert_eq!(convs[1]["username"], "alice");
    assert_eq!(convs[0]["name"], "team");
    assert_eq!(convs[0]["last_message"]["event"]["op"], "created", "{v}");
    assert_eq!(convs[1]["last_message"]["event"], serde_json::Value::Null, "{v}");
    let (_, v) = s.http(0).request(Method::GET, "/v1/conversations", Some(&a.token), None).await?;
    let mine: Vec<(&str, &str)> = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["conv"].as_str().unwrap_or("?"), c["title"].as_str().unwrap_or("?")))
        .collect();
    let notes = format!("dm-{0}-{0}", a.user_id);
    assert!(mine.contains(&(notes.as_str(), "alice")), "notes to self are titled with your own name: {mine:?}");
    Ok(())
}
