//! The NATS users of `nats/conf/auth.conf`, with the passwords the harness
//! gives every nats-server it starts ([`server_env`]), and connections as
//! each of them.

use anyhow::{Context, Result};

/// One NATS user of `nats/conf/auth.conf`.
#[derive(Debug, Clone, Copy)]
pub struct NatsUser {
    /// User name.
    pub user: &'static str,
    /// Its test password.
    pub password: &'static str,
    /// The reply-subject prefix its subscribe permission allows.
    pub inbox_prefix: &'static str,
    /// The nats-server environment variable holding the password.
    pub server_var: &'static str,
}

/// Every right: the harness's own inspections (streams, consumers).
pub const ADMIN: NatsUser = NatsUser {
    user: "admin",
    password: "test-admin-password",
    inbox_prefix: "_INBOX",
    server_var: "CHAT_NATS_ADMIN_PASSWORD",
};
/// What every gateway connects as.
pub const GATEWAY: NatsUser = NatsUser {
    user: "gateway",
    password: "test-gateway-password",
    inbox_prefix: chat_nats::subjects::GATEWAY_INBOX_PREFIX,
    server_var: "CHAT_NATS_GATEWAY_PASSWORD",
};
/// What every worker connects as.
pub const WORKER: NatsUser = NatsUser {
    user: "worker",
    password: "test-worker-password",
    inbox_prefix: chat_nats::subjects::WORKER_INBOX_PREFIX,
    server_var: "CHAT_NATS_WORKER_PASSWORD",
};
/// A trusted internal service (`chat.svc.send` only).
pub const SERVICE: NatsUser = NatsUser {
    user: "service",
    password: "test-service-password",
    inbox_prefix: "_INBOX",
    server_var: "CHAT_NATS_SERVICE_PASSWORD",
};

/// The environment nats-server needs for `auth.conf`'s passwords.
pub fn server_env() -> Vec<(&'static str, &'static str)> {
    [ADMIN, GATEWAY, WORKER, SERVICE].iter().map(|u| (u.server_var, u.password)).collect()
}

impl NatsUser {
    /// `CHAT_NATS_USER` and `CHAT_NATS_PASSWORD` for a process.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [("CHAT_NATS_USER", self.user), ("CHAT_NATS_PASSWORD", self.password)]
    }

    /// Connects as this user to `urls` (comma-separated). Fails if the
    /// server refuses the credentials.
    pub async fn connect(&self, urls: &str) -> Result<async_nats::Client> {
        let servers: Vec<&str> = urls.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        async_nats::ConnectOptions::with_user_and_password(self.user.into(), self.password.into())
            .custom_inbox_prefix(self.inbox_prefix)
            .connect(servers)
            .await
            .with_context(|| format!("connect to {urls} as NATS user {}", self.user))
    }
}

/// Connects as [`ADMIN`]: what tests use to look at streams and consumers.
pub async fn nats_admin(urls: &str) -> Result<async_nats::Client> {
    ADMIN.connect(urls).await
}
