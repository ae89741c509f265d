//! Accounts: signup, login, logout, token checks and health.

use std::net::IpAddr;
use std::sync::OnceLock;

use chat_nats::envelope::Ephemeral;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Claims};
use crate::conn::presence::notify;
use crate::error::ClientError;
use crate::http::limits::{Budget, Peer};
use crate::http::{json, read_json, token, Resp};
use crate::AppState;

#[derive(Deserialize)]
struct SignupReq {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct LoginReq {
    username: String,
    password: String,
    device_id: String,
    /// The client's region, for the order of `edges` (default: ours).
    #[serde(default)]
    region: Option<String>,
}

/// Usernames: 3–32 characters of `[a-z0-9_.-]`, compared in lower case.
pub fn normalize_username(u: &str) -> Option<String> {
    let u = u.to_ascii_lowercase();
    let ok = (3..=32).contains(&u.len())
        && u.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    ok.then_some(u)
}

fn bad_credentials(m: &str) -> ClientError {
    ClientError::new(chat_nats::wire::ErrorCode::BadCredentials, m)
}

/// The brute-force limits of signup and login, per gateway (see
/// [`crate::http::limits`] for what the client address is).
#[derive(Debug)]
pub struct AuthLimits {
    /// Every login attempt spends one of its client address's.
    login_per_addr: Budget<IpAddr>,
    /// Every failed login spends one of its username's; an empty budget
    /// refuses the username's logins before the password is checked.
    login_failures: Budget<String>,
    /// Every signup attempt spends one of its client address's.
    signup_per_addr: Budget<IpAddr>,
}

impl AuthLimits {
    /// The budgets `cfg` sets.
    pub fn new(cfg: &crate::config::GatewayConfig) -> AuthLimits {
        AuthLimits {
            login_per_addr: Budget::new(cfg.login_per_addr_per_min, cfg.login_per_addr_burst),
            login_failures: Budget::new(cfg.login_failures_per_min, cfg.login_failures_burst),
            signup_per_addr: Budget::new(cfg.signup_per_addr_per_min, cfg.signup_per_addr_burst),
        }
    }
}

/// The client address of a request (unspecified when the accept loop did
/// not record one).
fn peer<B>(req: &Request<B>) -> IpAddr {
    req.extensions().get::<Peer>().map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0)
}

/// `POST /v1/signup`.
pub async fn signup(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    st.auth_limits.signup_per_addr.spend(peer(&req)).map_err(|wait| {
        ClientError::rate_limited(
            format!(
                "too many signups from this address (at most {} a minute); retry later",
                st.auth_limits.signup_per_addr.per_min()
            ),
            wait,
        )
    })?;
    let r: SignupReq = read_json(req).await?;
    let username = normalize_username(&r.username)
        .ok_or_else(|| bad_credentials("username must be 3-32 characters of a-z, 0-9, '_', '.', '-'"))?;
    let len = r.password.chars().count();
    if !(8..=128).contains(&len) {
        return Err(bad_credentials("password must be 8-128 characters"));
    }
    let hash = st
        .hasher
        .run(move || auth::hash_password(&r.password))
        .await
        .ok_or_else(|| ClientError::unavailable("password hashing queue is full"))?;
    match st.db.create_user(&username, &hash).await? {
        Some(id) => Ok(json(StatusCode::CREATED, &json!({"user_id": id.to_string(), "username": username}))),
        None => Err(ClientError::new(chat_nats::wire::ErrorCode::UsernameTaken, "username is taken")),
    }
}

/// `POST /v1/login`: every attempt spends one of its client address's
/// budget; a username whose failed-login budget is empty is refused (429
/// with `Retry-After`) before its password is checked.
pub async fn login(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let limits = &st.auth_limits;
    limits.login_per_addr.spend(peer(&req)).map_err(|wait| {
        ClientError::rate_limited(
            format!(
                "too many logins from this address (at most {} a minute); retry later",
                limits.login_per_addr.per_min()
            ),
            wait,
        )
    })?;
    let r: LoginReq = read_json(req).await?;
    if !auth::is_client_device(&r.device_id) {
        return Err(ClientError::bad_request(
            "device_id must be 1-64 characters of [A-Za-z0-9_-], not \"sys\" nor starting with \"svc-\" (reserved)",
        ));
    }
    let username = normalize_username(&r.username);
    if let Some(u) = &username {
        limits.login_failures.check(u).map_err(|wait| {
            ClientError::rate_limited(
                format!(
                    "too many failed logins for this username (at most {} a minute); retry later",
                    limits.login_failures.per_min()
                ),
                wait,
            )
        })?;
    }
    let found = match &username {
        Some(u) => st.db.credentials(u).await?,
        None => None,
    };
    // Without an account, verify against a dummy hash anyway so timing does
    // not reveal which usernames exist.
    static DUMMY: OnceLock<String> = OnceLock::new();
    let (user, hash) = found
        .map(|(u, h)| (Some(u), h))
        .unwrap_or_else(|| (None, DUMMY.get_or_init(|| auth::hash_password("not-a-password")).clone()));
    let password = r.password;
    let ok = st
        .hasher
        .run(move || auth::verify_password(&password, &hash))
        .await
        .ok_or_else(|| ClientError::unavailable("password hashing queue is full"))?;
    let Some(user) = user.filter(|_| ok) else {
        if let Some(u) = username {
            // Counted whether or not the account exists, so the refusals
            // do not reveal which usernames do.
            let _ = limits.login_failures.spend(u);
        }
        return Err(ClientError::unauthorized("wrong username or password"));
    };
    // Only after the password: a ban is nobody else's business.
    if let Some(ban) = st.db.ban_of(user).await? {
        let until = match ban.until_ms {
            Some(ms) => format!("until {ms} (unix ms)"),
            None => "until an operator lifts it".to_owned(),
        };
        return Err(ClientError::new(chat_nats::wire::ErrorCode::Banned, format!("this account is banned {until}")));
    }
    let gen = st.db.touch_device(user, &r.device_id).await?;
    let exp = auth::now_secs() + st.cfg.token_ttl.as_secs();
    let claims = Claims { user, device: r.device_id.clone(), exp, gen };
    let token = auth::issue(&st.cfg.token_secrets[0], &claims);
    let region = r.region.filter(|r| chat_nats::subjects::is_token(r));
    let edges = crate::http::edges::edges_json(st, region.as_deref());
    Ok(json(
        StatusCode::OK,
        &json!({"token": token, "user_id": user.to_string(), "device_id": r.device_id, "expires_at": exp, "edges": edges}),
    ))
}

/// The caller's claims, from the bearer token.
pub async fn authenticate<B>(st: &AppState, req: &Request<B>) -> Result<Claims, ClientError> {
    let t = token(req).ok_or_else(|| ClientError::unauthorized("missing token"))?;
    check_token(st, &t).await
}

/// Checks a token: signature, expiry, contents, not logged out, and a user
/// that exists.
pub async fn check_token(st: &AppState, token: &str) -> Result<Claims, ClientError> {
    let invalid = || ClientError::unauthorized("invalid, expired or logged-out token");
    let claims = auth::verify(&st.cfg.token_secrets, token, auth::now_secs())
        .filter(|c| st.revoked.allows(c))
        .ok_or_else(invalid)?;
    if !st.user_exists(claims.user).await? {
        return Err(invalid());
    }
    Ok(claims)
}

/// `GET /readyz`: NATS, JetStream, KV and PostgreSQL reachable.
pub async fn readyz(st: &AppState) -> Resp {
    let nats = st.client.connection_state() == async_nats::connection::State::Connected;
    let jetstream = st.storage.js.query_account().await.is_ok();
    let kv = st.storage.leases.get("readyz-probe").await.is_ok();
    let postgres = st.db.ping().await.is_ok();
    // A draining gateway leaves load balancers' rotation.
    let draining = st.edges.draining();
    let ready = nats && jetstream && kv && postgres && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(
        status,
        &json!({"ready": ready, "nats": nats, "jetstream": jetstream, "kv": kv, "postgres": postgres, "draining": draining}),
    )
}

/// `POST /v1/logout`: the device's sessions close and its presence ends
/// at once.
pub async fn logout(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let claims = authenticate(st, &req).await?;
    // Every token of this device issued so far stops working, on every
    // gateway (see `revoked`); a new login gets the new generation.
    if let Some(gen) = st.db.bump_token_gen(claims.user, &claims.device).await? {
        let key = chat_nats::subjects::revoked_key(claims.user, &claims.device);
        st.revoked_kv.put(&key, gen.to_string().into()).await.map_err(ClientError::unavailable)?;
        // This gateway refuses them at once; the others as their watch
        // delivers the entry (milliseconds).
        st.revoked.apply(&key, Some(gen.to_string().as_bytes()));
    }
    notify(st, claims.user, &Ephemeral::Logout { device: claims.device.clone() }).await;
    let _ = st.client.flush().await;
    // A logged-out phone must stop showing message previews.
    st.db.delete_registration(claims.user, &claims.device).await?;
    // The open sessions delete their own keys as they close; this also ends
    // connections that dropped without a close and are not yet expired.
    crate::conn::presence::end_device(st, claims.user, &claims.device).await.map_err(ClientError::unavailable)?;
    Ok(json(StatusCode::OK, &json!({"logged_out": claims.device})))
}
