//! Names for ids and ids for names: users by exact username
//! (`GET /v1/users/by-name/{name}`) or id, groups by name among the
//! caller's groups, conversation titles from the conversation list; each
//! answer cached for the run.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::{direct_conv, ClientError, Http, Method};

use super::CliError;

/// Where a message goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Conversation id.
    pub conv: String,
    /// The `to` of a `send` frame.
    pub to: Value,
    /// What to call it.
    pub title: String,
}

/// Looks names up for one logged-in user.
pub struct Names {
    http: Http,
    token: String,
    server: String,
    /// The caller's user id.
    pub me: String,
    users: HashMap<String, String>,
    titles: Option<HashMap<String, String>>,
}

fn is_id(s: &str) -> bool {
    chat_nats::subjects::parse_id(s).is_some()
}

impl Names {
    /// A resolver for the user `me` holding `token`.
    pub fn new(server: &str, token: &str, me: &str, my_name: Option<&str>) -> Names {
        let mut users = HashMap::new();
        if let Some(n) = my_name {
            users.insert(me.to_owned(), n.to_owned());
        }
        Names {
            http: Http::new(server),
            token: token.into(),
            server: server.into(),
            me: me.into(),
            users,
            titles: None,
        }
    }

    /// An API call; errors in words.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let (status, v) = self.http.request(method, path, Some(&self.token), body).await.map_err(|e| self.err(e))?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        Err(self.err(ClientError::Api {
            status,
            code: v["error"]["code"].as_str().unwrap_or("").to_owned(),
            message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
        }))
    }

    /// A client error in words.
    pub fn err(&self, e: ClientError) -> CliError {
        CliError::from_client(e, &self.server)
    }

    /// A user by username or id: `(id, username)`.
    pub async fn user(&mut self, who: &str) -> Result<(String, String), CliError> {
        let path = if is_id(who) { format!("/v1/users/{who}") } else { format!("/v1/users/by-name/{who}") };
        match self.call(Method::GET, &path, None).await {
            Ok(v) => {
                let (id, name) =
                    (v["user_id"].as_str().unwrap_or_default(), v["username"].as_str().unwrap_or_default());
                self.users.insert(id.to_owned(), name.to_owned());
                Ok((id.to_owned(), name.to_owned()))
            }
            Err(CliError::Refused(m)) if m.ends_with("(not_found)") || m.ends_with("(bad_request)") => {
                Err(CliError::NotFound(if is_id(who) {
                    format!("no user with id {who}")
                } else {
                    format!("no user named {who:?}")
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// A user's name (the id itself if it cannot be found).
    pub async fn name_of(&mut self, id: &str) -> String {
        if let Some(n) = self.users.get(id) {
            return n.clone();
        }
        match self.user(id).await {
            Ok((_, n)) => n,
            Err(_) => {
                self.users.insert(id.to_owned(), id.to_owned());
                id.to_owned()
            }
        }
    }

    /// A group by `#name`, name, id or `g-<id>`: `(id, name)`.
    pub async fn group(&mut self, what: &str) -> Result<(String, String), CliError> {
        let list = self.call(Method::GET, "/v1/groups", None).await?;
        let groups = list["groups"].as_array().cloned().unwrap_or_default();
        let bare = what.strip_prefix("g-").filter(|s| is_id(s)).unwrap_or(what);
        if is_id(bare) {
            let name = groups.iter().find(|g| g["group_id"] == bare).and_then(|g| g["name"].as_str()).unwrap_or(bare);
            return Ok((bare.to_owned(), name.to_owned()));
        }
        let name = what.strip_prefix('#').unwrap_or(what);
        let found: Vec<&Value> = groups.iter().filter(|g| g["name"] == name).collect();
        match found.as_slice() {
            [g] => Ok((g["group_id"].as_str().unwrap_or_default().to_owned(), name.to_owned())),
            [] => Err(CliError::NotFound(format!("you are in no group named {name:?} (`chat group list`)"))),
            many => {
                let ids: Vec<String> =
                    many.iter().map(|g| format!("g-{}", g["group_id"].as_str().unwrap_or(""))).collect();
                Err(CliError::Usage(format!("several groups are named {name:?}: use one of {}", ids.join(", "))))
            }
        }
    }

    /// Where `to` points: a user (name or id), `#group`, or a conversation id.
    pub async fn target(&mut self, to: &str) -> Result<Target, CliError> {
        if let Some(rest) = to.strip_prefix("dm-") {
            let (a, b) =
                rest.split_once('-').ok_or_else(|| CliError::Usage(format!("{to:?} is not a conversation id")))?;
            let other = if a == self.me {
                b
            } else if b == self.me {
                a
            } else {
                return Err(CliError::Usage(format!("{to} is not one of your conversations")));
            };
            let (id, name) = self.user(other).await?;
            return Ok(Target { conv: to.to_owned(), to: json!({"user": id}), title: name });
        }
        if to.starts_with('#') || (to.starts_with("g-") && is_id(&to[2..])) {
            let (id, name) = self.group(to).await?;
            return Ok(Target { conv: format!("g-{id}"), to: json!({"group": id}), title: name });
        }
        let (id, name) = self.user(to).await?;
        Ok(Target { conv: direct_conv(&self.me, &id), to: json!({"user": id}), title: name })
    }

    /// The conversation list, every page of it (cached titles and peer
    /// names).
    pub async fn conversations(&mut self) -> Result<Vec<Value>, CliError> {
        let mut list = Vec::new();
        let mut path = "/v1/conversations?limit=200".to_owned();
        loop {
            let v = self.call(Method::GET, &path, None).await?;
            list.extend(v["conversations"].as_array().cloned().unwrap_or_default());
            match v["next_before"].as_str() {
                Some(next) => path = format!("/v1/conversations?limit=200&before={}", crate::encode_query(next)),
                None => break,
            }
        }
        let titles = self.titles.get_or_insert_with(HashMap::new);
        for c in &list {
            if let (Some(conv), Some(t)) = (c["conv"].as_str(), c["title"].as_str()) {
                titles.insert(conv.to_owned(), t.to_owned());
            }
            if let (Some(id), Some(n)) = (c["user_id"].as_str(), c["username"].as_str()) {
                self.users.insert(id.to_owned(), n.to_owned());
            }
        }
        Ok(list)
    }

    /// A conversation's title: the other person's name, or the group's.
    pub async fn title_of(&mut self, conv: &str) -> String {
        if conv.starts_with("r-") {
            return conv.to_owned(); // rooms are not in the conversation list
        }
        if self.titles.as_ref().is_none_or(|t| !t.contains_key(conv)) {
            let _ = self.conversations().await;
        }
        if let Some(t) = self.titles.as_ref().and_then(|t| t.get(conv)) {
            return t.clone();
        }
        match conv.strip_prefix("dm-").and_then(|r| r.split_once('-')) {
            Some((a, b)) => {
                let other = if a == self.me { b.to_owned() } else { a.to_owned() };
                self.name_of(&other).await
            }
            None => conv.to_owned(),
        }
    }
}
