//! The state file (`CHAT_CLI_STATE`, default `~/.chat-cli.json`): the
//! login, the sync cursor and, per conversation, the newest message id
//! the tool has printed (its read position, for unread counts).

use std::path::PathBuf;

use serde_json::{json, Value};

use super::CliError;

/// Where the state lives.
pub fn path() -> PathBuf {
    std::env::var_os("CHAT_CLI_STATE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".chat-cli.json")
    })
}

/// The saved login; "not logged in" without one.
pub fn load() -> Result<Value, CliError> {
    let p = path();
    let text = std::fs::read_to_string(&p).map_err(|_| {
        CliError::NotLoggedIn(format!("not logged in (no {}): run `chat login <username> <password>`", p.display()))
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Local(format!("{} is not a state file ({e}): run `chat login` again", p.display())))?;
    if !v["token"].is_string() {
        return Err(CliError::NotLoggedIn(format!("not logged in ({} has no login): run `chat login`", p.display())));
    }
    Ok(v)
}

/// Writes the state.
pub fn save(v: &Value) -> Result<(), CliError> {
    let p = path();
    let text = serde_json::to_string_pretty(v).map_err(|e| CliError::Local(e.to_string()))?;
    // Written aside and renamed, so a second `chat` reading it (while
    // `listen` saves its cursor) never sees half a file.
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &p))
        .map_err(|e| CliError::Local(format!("cannot write {}: {e}", p.display())))
}

/// Re-reads the state, changes it and writes it back: another `chat`
/// (a `listen` saving its cursor, a `history` its read positions) may have
/// written since this one loaded it.
pub fn update(change: impl FnOnce(&mut Value)) -> Result<(), CliError> {
    let mut st = load()?;
    change(&mut st);
    save(&st)
}

/// Forgets the login.
pub fn clear() -> Result<(), CliError> {
    match std::fs::remove_file(path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::Local(format!("cannot remove {}: {e}", path().display()))),
    }
}

/// The read position of `conv` ("0": nothing read).
pub fn read_pos(st: &Value, conv: &str) -> String {
    st["read"][conv].as_str().unwrap_or("0").to_owned()
}

/// Moves the read position of `conv` forward to `id`.
pub fn mark_read(st: &mut Value, conv: &str, id: &str) {
    let newer = match (read_pos(st, conv).parse::<u64>(), id.parse::<u64>()) {
        (Ok(old), Ok(new)) => new > old,
        _ => false,
    };
    if newer {
        if !st["read"].is_object() {
            st["read"] = json!({});
        }
        st["read"][conv] = json!(id);
    }
}
