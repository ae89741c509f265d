//! The token secret: `CHAT_TOKEN_SECRET`, or the file `CHAT_TOKEN_SECRET_FILE`
//! names (what `scripts/run` generates once per data directory), plus an
//! optional `CHAT_TOKEN_SECRET_PREVIOUS` still accepted during a rotation.
//! There is no built-in default: a gateway without a secret does not start,
//! so no install runs with a key anyone can read in the docs.

use chat_nats::config::{ConfigError, Source};

/// Shortest secret accepted, in bytes (a 256-bit HMAC key written as text).
pub const MIN_SECRET_LEN: usize = 32;

/// The secret the old releases shipped as a default; refused everywhere.
const OLD_DEFAULT: &str = "dev-secret-change-me";

/// The secrets tokens are checked against: the current one first (tokens
/// are issued with it), then the previous one, if any.
pub fn token_secrets(src: &dyn Source) -> Result<Vec<Vec<u8>>, ConfigError> {
    let invalid = |name: &str, value: &str, reason: String| ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason,
    };
    let current = match (src.get("CHAT_TOKEN_SECRET"), src.get("CHAT_TOKEN_SECRET_FILE")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "CHAT_TOKEN_SECRET_FILE",
                "<set>",
                "set CHAT_TOKEN_SECRET or CHAT_TOKEN_SECRET_FILE, not both".into(),
            ))
        }
        (Some(s), None) => checked("CHAT_TOKEN_SECRET", s)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid("CHAT_TOKEN_SECRET_FILE", &path, format!("cannot read it: {e}")))?;
            checked("CHAT_TOKEN_SECRET_FILE", text.trim().to_owned())
                .map_err(|_| invalid("CHAT_TOKEN_SECRET_FILE", &path, too_short()))?
        }
        (None, None) => {
            return Err(invalid(
                "CHAT_TOKEN_SECRET",
                "<unset>",
                "no token secret: set CHAT_TOKEN_SECRET (at least 32 characters, the same on every gateway) \
                 or CHAT_TOKEN_SECRET_FILE (scripts/run generates one under CHAT_DATA_DIR)"
                    .into(),
            ))
        }
    };
    let mut secrets = vec![current];
    if let Some(prev) = src.get("CHAT_TOKEN_SECRET_PREVIOUS") {
        secrets.push(checked("CHAT_TOKEN_SECRET_PREVIOUS", prev)?);
    }
    Ok(secrets)
}

fn too_short() -> String {
    format!("a token secret must be at least {MIN_SECRET_LEN} characters (e.g. `head -c 32 /dev/urandom | base64`)")
}

fn checked(name: &str, s: String) -> Result<Vec<u8>, ConfigError> {
    if s == OLD_DEFAULT {
        return Err(ConfigError::Invalid {
            name: name.into(),
            value: "<the old documented default>".into(),
            reason: "this value is public; generate a secret of your own".into(),
        });
    }
    if s.len() < MIN_SECRET_LEN {
        return Err(ConfigError::Invalid { name: name.into(), value: "<hidden>".into(), reason: too_short() });
    }
    Ok(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn no_secret_no_start() {
        let e = token_secrets(&env(&[])).unwrap_err().to_string();
        assert!(e.contains("no token secret"), "{e}");
        for bad in [OLD_DEFAULT, "short", &GOOD[1..]] {
            assert!(token_secrets(&env(&[("CHAT_TOKEN_SECRET", bad)])).is_err(), "{bad}");
        }
        let both = env(&[("CHAT_TOKEN_SECRET", GOOD), ("CHAT_TOKEN_SECRET_FILE", "/x")]);
        assert!(token_secrets(&both).is_err());
        let missing = env(&[("CHAT_TOKEN_SECRET_FILE", "/nonexistent/secret")]);
        assert!(token_secrets(&missing).unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn secret_from_variable_file_and_previous() {
        assert_eq!(token_secrets(&env(&[("CHAT_TOKEN_SECRET", GOOD)])).unwrap(), vec![GOOD.as_bytes().to_vec()]);
        let dir = std::env::temp_dir().join(format!("chat-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token-secret");
        std::fs::write(&file, format!("{GOOD}\n")).unwrap();
        let path = file.display().to_string();
        let prev = "ffffffffffffffffffffffffffffffff";
        let got = token_secrets(&env(&[("CHAT_TOKEN_SECRET_FILE", &path), ("CHAT_TOKEN_SECRET_PREVIOUS", prev)]));
        assert_eq!(got.unwrap(), vec![GOOD.as_bytes().to_vec(), prev.as_bytes().to_vec()]);
        std::fs::write(&file, "short\n").unwrap();
        assert!(token_secrets(&env(&[("CHAT_TOKEN_SECRET_FILE", &path)])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
