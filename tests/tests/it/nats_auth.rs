//! Least-privilege NATS users (`nats/conf/auth.conf`): each credential
//! connects to a real nats-server and is refused what its role does not
//! need, while what it needs works.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use chat_nats::provision::{self, Credentials, Identity};
use chat_nats::subjects;
use chat_tests::nats_auth::{NatsUser, ADMIN, GATEWAY, SERVICE, WORKER};
use chat_tests::{wait_for, NatsServer};

const WAIT: Duration = Duration::from_secs(5);

/// A connection as one user that records the server's `-ERR`s.
struct Probe {
    user: NatsUser,
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

async fn probe(url: &str, user: NatsUser) -> Result<Probe> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.user.into(), user.password.into())
        .custom_inbox_prefix(user.inbox_prefix)
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().unwrap().push(e.to_string().to_lowercase());
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("connect as {}", user.user))?;
    Ok(Probe { user, client, errors })
}

impl Probe {
    /// Waits for the server's permissions violation naming `op` and `subject`.
    async fn violation(&self, op: &str, subject: &str) -> Result<()> {
        let want = format!("permissions violation for {op} to \"{}\"", subject.to_lowercase());
        wait_for(&format!("{} refused {op} on {subject}", self.user.user), WAIT, || async {
            self.errors.lock().unwrap().iter().any(|e| e.contains(&want)).then_some(())
        })
        .await
    }

    /// Publishes on `subject` and waits for the refusal.
    async fn refused_publish(&self, subject: &str) -> Result<()> {
        self.client.publish(subject.to_owned(), "x".into()).await?;
        self.client.flush().await?;
        self.violation("publish", subject).await
    }

    /// Subscribes to `subject` and waits for the refusal.
    async fn refused_subscribe(&self, subject: &str) -> Result<()> {
        let _sub = self.client.subscribe(subject.to_owned()).await?;
        self.client.flush().await?;
        self.violation("subscription", subject).await
    }

    /// A JetStream publish that the stream acknowledges.
    async fn stored(&self, subject: &str) -> Result<u64> {
        let js = jetstream::new(self.client.clone());
        Ok(js.publish(subject.to_owned(), "x".into()).await?.await?.sequence)
    }

    fn no_violation(&self) -> Result<()> {
        let errors = self.errors.lock().unwrap();
        anyhow::ensure!(errors.is_empty(), "{}: unexpected refusals {errors:?}", self.user.user);
        Ok(())
    }
}

/// Messages in `stream`, read as the admin.
async fn count(admin: &async_nats::Client, stream: &str) -> Result<u64> {
    Ok(jetstream::new(admin.clone()).get_stream(stream).await?.info().await?.state.messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nats_user_is_refused_what_its_role_does_not_need() -> Result<()> {
    let nats = NatsServer::start()?;
    let admin = chat_tests::nats_admin(&nats.url).await?;
    provision::provision(&admin, &provision::StorageSettings::default()).await?;
    let conv = subjects::ConvId::direct(1, 2);
    let (history, inbox) = (subjects::history(&conv), subjects::inbox(2));

    // Gateways: store sends on the ingress stream, never history or
    // inboxes, never a stream's configuration, never as a service.
    let gw = probe(&nats.url, GATEWAY).await?;
    gw.stored(&subjects::ingress(0)).await?;
    let before = (count(&admin, subjects::HISTORY_STREAM).await?, count(&admin, subjects::INBOX_STREAM).await?);
    for subject in [
        history.as_str(),
        inbox.as_str(),
        subjects::SERVICE_SEND,
        "$KV.chat_acks.1.phone.c1",
        "$KV.chat_groups.g.1",
        "$KV.chat_leases.part.0",
        "$JS.API.STREAM.UPDATE.CHAT_HISTORY",
        "$JS.API.STREAM.DELETE.CHAT_HISTORY",
        "$JS.API.STREAM.PURGE.CHAT_INBOX",
        "$JS.API.CONSUMER.DELETE.CHAT_INBOX.push-planner",
    ] {
        gw.refused_publish(subject).await?;
    }
    gw.refused_subscribe("_INBOX_WK.>").await?;
    gw.refused_subscribe(subjects::INGRESS_ALL).await?;
    // It hands sends to the owners (chat.fast.*), never takes them.
    gw.refused_subscribe("chat.fast.*").await?;
    let after = (count(&admin, subjects::HISTORY_STREAM).await?, count(&admin, subjects::INBOX_STREAM).await?);
    assert_eq!(after, before, "nothing the gateway sent reached history or an inbox");

    // Workers: the only writers of history and inboxes; they cannot pose
    // as a gateway's client (ingress) or a service.
    let wk = probe(&nats.url, WORKER).await?;
    wk.stored(&history).await?;
    wk.stored(&inbox).await?;
    wk.stored(&subjects::push_job(2)).await?;
    wk.no_violation()?;
    let fast = subjects::fast(0);
    for subject in
        [subjects::ingress(0).as_str(), fast.as_str(), subjects::SERVICE_SEND, "chat.eph.2", "$KV.chat_revoked.2.phone"]
    {
        wk.refused_publish(subject).await?;
    }
    wk.refused_subscribe("_INBOX_GW.>").await?;
    wk.refused_subscribe("chat.live.*").await?;
    assert_eq!(count(&admin, subjects::INGRESS_STREAM).await?, 1, "only the gateway's send is in ingress");

    // A service: chat.svc.send and its own replies, nothing else.
    let svc = probe(&nats.url, SERVICE).await?;
    let asked = svc.client.request(subjects::SERVICE_SEND, "{}".into()).await;
    assert!(
        matches!(&asked, Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders),
        "published (no gateway runs to answer): {asked:?}"
    );
    svc.no_violation()?;
    for subject in [
        subjects::ingress(0).as_str(),
        fast.as_str(),
        history.as_str(),
        inbox.as_str(),
        "chat.eph.2",
        "chat.live.2",
        "$JS.API.INFO",
        "$JS.API.DIRECT.GET.CHAT_INBOX.chat.inbox.2",
        "$KV.chat_presence.2.phone.1",
    ] {
        svc.refused_publish(subject).await?;
    }
    for subject in ["chat.svc.send", "chat.live.*", "chat.eph.*", "chat.fast.*", "_INBOX_GW.>", "_INBOX_WK.>"] {
        svc.refused_subscribe(subject).await?;
    }
    assert_eq!(count(&admin, subjects::INGRESS_STREAM).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_nats_credentials_are_refused_at_connect() -> Result<()> {
    let nats = NatsServer::start()?;
    let identity = |user: &str, password: &str| Identity {
        credentials: Some(Credentials { user: user.into(), password: password.into() }),
        inbox_prefix: subjects::GATEWAY_INBOX_PREFIX,
    };
    let e = provision::connect(&nats.url, "probe", 16, &identity(GATEWAY.user, "wrong")).await.unwrap_err();
    assert!(e.to_string().contains("refused user gateway"), "{e}");
    let anonymous = Identity { credentials: None, inbox_prefix: "_INBOX" };
    let e = provision::connect(&nats.url, "probe", 16, &anonymous).await.unwrap_err();
    assert!(e.to_string().contains("authorization violation"), "{e}");
    let ok = provision::connect(&nats.url, "probe", 16, &identity(ADMIN.user, ADMIN.password))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    ok.flush().await?;
    Ok(())
}
