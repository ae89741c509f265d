//! Reading typed settings from `CHAT_*` environment variables.
//!
//! Each process parses its whole configuration once at start-up, before it
//! binds anything; a bad value stops it with a [`ConfigError`] naming the
//! variable. Every variable is listed with its default in the README.

use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::provision::StorageSettings;

/// A setting could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The variable is set but does not parse as its type.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// Variable name.
        name: String,
        /// The value found.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// Settings read by more than one process: each name is one constant here,
/// with its one default, so the gateway and the worker cannot drift apart.
/// (A setting only one process reads is named once, in that process's
/// config.)
pub mod shared {
    use super::{bounded, var, ConfigError, Source};

    /// NATS server URL(s), comma-separated.
    pub const NATS_URL: &str = "CHAT_NATS_URL";
    /// NATS user name (with [`NATS_PASSWORD`]); unset: no credentials.
    pub const NATS_USER: &str = "CHAT_NATS_USER";
    /// NATS password of [`NATS_USER`].
    pub const NATS_PASSWORD: &str = "CHAT_NATS_PASSWORD";
    /// A file holding the NATS password (instead of [`NATS_PASSWORD`]).
    pub const NATS_PASSWORD_FILE: &str = "CHAT_NATS_PASSWORD_FILE";
    /// PostgreSQL connection string.
    pub const DATABASE_URL: &str = "CHAT_DATABASE_URL";
    /// PostgreSQL connections per process (1-1000, default 16).
    pub const DB_POOL_SIZE: &str = "CHAT_DB_POOL_SIZE";
    /// FCM service-account JSON file; set = FCM configured.
    pub const FCM_CREDENTIALS: &str = "CHAT_FCM_CREDENTIALS";
    /// APNs `.p8` key file; set = APNs configured.
    pub const APNS_KEY: &str = "CHAT_APNS_KEY";
    /// VAPID private key file; set = Web Push configured.
    pub const VAPID_PRIVATE_KEY: &str = "CHAT_VAPID_PRIVATE_KEY";

    /// [`NATS_URL`], default `nats://127.0.0.1:4222`. A URL carrying
    /// `user:password@` is refused: the NATS client ignores credentials in
    /// a URL, so they would silently not be used.
    pub fn nats_url(src: &dyn Source) -> Result<String, ConfigError> {
        let urls = var(src, NATS_URL, "nats://127.0.0.1:4222".to_string())?;
        let with_userinfo = urls.split(',').any(|u| {
            let rest = u.trim().split_once("://").map_or(u.trim(), |(_, r)| r);
            rest.split(['/', '?']).next().unwrap_or("").contains('@')
        });
        if with_userinfo {
            return Err(ConfigError::Invalid {
                name: NATS_URL.into(),
                value: "(a URL with credentials, not shown)".into(),
                reason: format!("credentials in the URL are not used: set {NATS_USER} and {NATS_PASSWORD} instead"),
            });
        }
        Ok(urls)
    }

    /// [`NATS_USER`] with [`NATS_PASSWORD`] or [`NATS_PASSWORD_FILE`]
    /// (trailing newline removed); `None` when no user is set. A user
    /// without a password, or a password without a user, is refused.
    pub fn nats_credentials(src: &dyn Source) -> Result<Option<crate::provision::Credentials>, ConfigError> {
        let invalid =
            |name: &str, reason: String| ConfigError::Invalid { name: name.into(), value: String::new(), reason };
        let password = match (src.get(NATS_PASSWORD), src.get(NATS_PASSWORD_FILE)) {
            (Some(_), Some(_)) => {
                return Err(invalid(NATS_PASSWORD_FILE, format!("set either {NATS_PASSWORD} or {NATS_PASSWORD_FILE}")))
            }
            (Some(p), None) => Some(p),
            (None, Some(f)) => {
                let p = std::fs::read_to_string(&f).map_err(|e| invalid(NATS_PASSWORD_FILE, format!("{f}: {e}")))?;
                Some(p.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        match (src.get(NATS_USER), password) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) if !password.is_empty() => {
                Ok(Some(crate::provision::Credentials { user, password }))
            }
            (Some(_), _) => Err(invalid(NATS_PASSWORD, format!("{NATS_USER} is set without a password"))),
            (None, Some(_)) => Err(invalid(NATS_USER, format!("a NATS password is set without {NATS_USER}"))),
        }
    }

    /// [`DATABASE_URL`], default `postgres://postgres@127.0.0.1:5432/chat`.
    pub fn database_url(src: &dyn Source) -> Result<String, ConfigError> {
        var(src, DATABASE_URL, "postgres://postgres@127.0.0.1:5432/chat".to_string())
    }

    /// [`DB_POOL_SIZE`], default 16.
    pub fn db_pool_size(src: &dyn Source) -> Result<usize, ConfigError> {
        Ok(bounded(src, DB_POOL_SIZE, 16, 1, 1000)? as usize)
    }
}

/// Where settings come from: the process environment, or a map in tests.
pub trait Source {
    /// The raw value of a variable, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A typed variable with a default.
pub fn var<T: FromStr>(src: &dyn Source, name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match src.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
            name: name.into(),
            value: v.clone(),
            reason: e.to_string(),
        }),
    }
}

/// A duration variable given in milliseconds.
pub fn millis(src: &dyn Source, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    var(src, name, default.as_millis() as u64).map(Duration::from_millis)
}

/// Like [`bounded`], but `0` (meaning "forever") is also accepted.
pub fn zero_or_bounded(src: &dyn Source, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    match var(src, name, default)? {
        0 => Ok(0),
        _ => bounded(src, name, default, min, max),
    }
}

/// A positive integer variable bounded by `max`.
pub fn bounded(src: &dyn Source, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let v = var(src, name, default)?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            name: name.into(),
            value: v.to_string(),
            reason: format!("must be between {min} and {max}"),
        })
    }
}

impl StorageSettings {
    /// Reads the storage settings every process must agree on.
    pub fn from_source(src: &dyn Source) -> Result<StorageSettings, ConfigError> {
        let d = StorageSettings::default();
        Ok(StorageSettings {
            partitions: bounded(src, "CHAT_PARTITIONS", d.partitions.into(), 1, 4096)? as u32,
            replicas: bounded(src, "CHAT_REPLICAS", d.replicas as u64, 1, 5)? as usize,
            inbox_retention: Duration::from_secs(zero_or_bounded(
                src,
                "CHAT_INBOX_RETENTION_SECS",
                d.inbox_retention.as_secs(),
                3600,
                10 * 365 * 86_400,
            )?),
            dedupe_window: Duration::from_secs(zero_or_bounded(
                src,
                "CHAT_DEDUPE_WINDOW_SECS",
                d.dedupe_window.as_secs(),
                60,
                365 * 86_400,
            )?),
            lease_ttl: Duration::from_millis(bounded(
                src,
                "CHAT_LEASE_TTL_MS",
                d.lease_ttl.as_millis() as u64,
                500,
                600_000,
            )?),
            presence_timeout: Duration::from_millis(bounded(
                src,
                "CHAT_PRESENCE_TIMEOUT_MS",
                d.presence_timeout.as_millis() as u64,
                1000,
                3_600_000,
            )?),
            registry_ttl: Duration::from_millis(bounded(
                src,
                "CHAT_REGISTRY_TTL_MS",
                d.registry_ttl.as_millis() as u64,
                1000,
                600_000,
            )?),
            max_msg_bytes: d.max_msg_bytes,
            push_plan_max_bytes: bounded(
                src,
                "CHAT_PUSH_PLAN_MAX_MB",
                (d.push_plan_max_bytes / (1024 * 1024)) as u64,
                1,
                65_536,
            )? as i64
                * 1024
                * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn nats_credentials_come_in_pairs_and_never_in_the_url() {
        let src = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(shared::nats_credentials(&src(&[])).unwrap().is_none());
        let c = shared::nats_credentials(&src(&[("CHAT_NATS_USER", "gateway"), ("CHAT_NATS_PASSWORD", "pw")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("gateway", "pw"));
        assert!(!format!("{c:?}").contains("pw"), "Debug hides the password: {c:?}");
        for bad in [&[("CHAT_NATS_USER", "gateway")][..], &[("CHAT_NATS_PASSWORD", "pw")][..]] {
            assert!(shared::nats_credentials(&src(bad)).is_err(), "{bad:?}");
        }
        let e = shared::nats_url(&src(&[("CHAT_NATS_URL", "nats://127.0.0.1:1,nats://gw:secret@127.0.0.1:2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CHAT_NATS_USER") && !e.contains("secret"), "{e}");
        assert!(shared::nats_url(&src(&[("CHAT_NATS_URL", "nats://127.0.0.1:1, tls://host:2")])).is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let src: HashMap<String, String> = [("CHAT_PARTITIONS".to_string(), "0".to_string())].into();
        let e = StorageSettings::from_source(&src).unwrap_err().to_string();
        assert!(e.contains("CHAT_PARTITIONS"), "{e}");
        let src: HashMap<String, String> = [("CHAT_LEASE_TTL_MS".to_string(), "soon".to_string())].into();
        assert!(StorageSettings::from_source(&src).unwrap_err().to_string().contains("soon"));
    }

    #[test]
    fn retention_and_dedupe_are_bounded_but_may_be_forever() {
        let one = |k: &str, v: &str| -> HashMap<String, String> { [(k.to_string(), v.to_string())].into() };
        let e = StorageSettings::from_source(&one("CHAT_DEDUPE_WINDOW_SECS", "5")).unwrap_err().to_string();
        assert!(e.contains("CHAT_DEDUPE_WINDOW_SECS"), "{e}");
        let e = StorageSettings::from_source(&one("CHAT_INBOX_RETENTION_SECS", "60")).unwrap_err().to_string();
        assert!(e.contains("CHAT_INBOX_RETENTION_SECS"), "{e}");
        let s = StorageSettings::from_source(&one("CHAT_INBOX_RETENTION_SECS", "0")).unwrap();
        assert_eq!(s.inbox_retention, Duration::ZERO);
        let s = StorageSettings::from_source(&one("CHAT_DEDUPE_WINDOW_SECS", "600")).unwrap();
        assert_eq!(s.dedupe_window, Duration::from_secs(600));
    }
}
