//! Internal services sending over NATS request/reply.

use anyhow::Result;
use serde_json::{json, Value};

use crate::stack::stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_sends_by_publishing_on_the_service_subject() -> Result<()> {
    let s = stack().start().await?;
    let bot = s.user("notifier", "unused").await?;
    let b = s.user("bob", "b1").await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let nats = chat_tests::nats_auth::SERVICE.connect(&s.nats.url).await?;
    let request = |cid: &str| json!({"service": "billing", "as": bot.user_id, "cid": cid, "to": {"user": b.user_id}, "body": "invoice ready"});
    let ask = |v: Value| {
        let nats = nats.clone();
        async move {
            let reply = nats.request(chat_nats::subjects::SERVICE_SEND, v.to_string().into()).await?;
            anyhow::Ok(serde_json::from_slice::<Value>(&reply.payload)?)
        }
    };
    let ack = ask(request("inv-1")).await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    let msg = cb.next_msg().await?;
    assert_eq!(
        (msg["id"].clone(), msg["from"].clone(), msg["body"].clone()),
        (ack["id"].clone(), json!(bot.user_id), json!("invoice ready"))
    );

    let again = ask(request("inv-1")).await?;
    assert_eq!(again["id"], ack["id"], "same cid, same id");
    let bad = ask(json!({"service": "billing"})).await?;
    assert_eq!((bad["type"].as_str(), bad["code"].as_str()), (Some("error"), Some("bad_frame")));
    let unknown =
        ask(json!({"service": "x", "as": "424242", "cid": "c", "to": {"user": b.user_id}, "body": "b"})).await?;
    assert_eq!(unknown["code"], "unknown_user");
    Ok(())
}
