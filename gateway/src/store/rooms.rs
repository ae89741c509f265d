//! PostgreSQL side of live rooms: the room, its policies, and each user's
//! standing in it (moderator, listed poster, invited, banned, muted).

use crate::store::{Db, DbError};

/// Who may post in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostPolicy {
    /// Everyone who may join.
    Everyone,
    /// The owner, the moderators and the listed posters.
    Listed,
}

/// Who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPolicy {
    /// Anyone logged in.
    Anyone,
    /// The owner, the moderators and the invited.
    Invited,
}

impl PostPolicy {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PostPolicy::Everyone => "everyone",
            PostPolicy::Listed => "listed",
        }
    }

    /// Parses a stored or requested policy.
    pub fn parse(s: &str) -> Option<PostPolicy> {
        match s {
            "everyone" => Some(PostPolicy::Everyone),
            "listed" => Some(PostPolicy::Listed),
            _ => None,
        }
    }
}

impl JoinPolicy {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinPolicy::Anyone => "anyone",
            JoinPolicy::Invited => "invited",
        }
    }

    /// Parses a stored or requested policy.
    pub fn parse(s: &str) -> Option<JoinPolicy> {
        match s {
            "anyone" => Some(JoinPolicy::Anyone),
            "invited" => Some(JoinPolicy::Invited),
            _ => None,
        }
    }
}

/// A room as stored.
#[derive(Debug, Clone)]
pub struct Room {
    /// Room id.
    pub id: i64,
    /// Title.
    pub title: String,
    /// Topic (may be empty).
    pub topic: String,
    /// Owner user id.
    pub owner: i64,
    /// Who may post.
    pub post: PostPolicy,
    /// Who may join.
    pub join: JoinPolicy,
}

/// One user's standing in a room, with the room.
#[derive(Debug, Clone)]
pub struct Access {
    /// The room.
    pub room: Room,
    /// Owner or moderator.
    pub moderator: bool,
    /// A listed poster.
    pub poster: bool,
    /// Invited.
    pub invited: bool,
    /// Banned until this unix ms (`i64::MAX`: for good), if banned now.
    pub banned_until_ms: Option<i64>,
    /// Muted until this unix ms, if muted now.
    pub muted_until_ms: Option<i64>,
}

impl Access {
    /// May join (and read the history): not banned, and the join policy
    /// lets them in.
    pub fn may_join(&self) -> bool {
        self.banned_until_ms.is_none() && (self.room.join == JoinPolicy::Anyone || self.invited || self.moderator)
    }

    /// May post, mutes aside: may join, and the post policy lists them.
    pub fn may_post(&self) -> bool {
        self.may_join() && (self.room.post == PostPolicy::Everyone || self.poster || self.moderator)
    }
}

/// Changes of a user's standing (`None`: unchanged).
#[derive(Debug, Clone, Copy, Default)]
pub struct Standing {
    /// Moderator.
    pub moderator: Option<bool>,
    /// Listed poster.
    pub poster: Option<bool>,
    /// Invited.
    pub invited: Option<bool>,
}

/// What a ban or mute does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sanction {
    /// May not join, read or post.
    Ban,
    /// May join and read, not post.
    Mute,
}

const ROOM_COLUMNS: &str = "r.id, r.title, r.topic, r.owner, r.post, r.join_policy";

fn room_of(r: &tokio_postgres::Row) -> Room {
    Room {
        id: r.get(0),
        title: r.get(1),
        topic: r.get(2),
        owner: r.get(3),
        post: PostPolicy::parse(r.get(4)).unwrap_or(PostPolicy::Listed),
        join: JoinPolicy::parse(r.get(5)).unwrap_or(JoinPolicy::Invited),
    }
}

fn ms(v: Option<f64>) -> Option<i64> {
    v.map(|v| if v.is_finite() { v as i64 } else { i64::MAX })
}

impl Db {
    /// Creates a room owned by `owner`; `posters`, `invited` and
    /// `moderators` get that standing. `None` when a listed user does not
    /// exist.
    pub async fn create_room(
        &self,
        owner: i64,
        title: &str,
        topic: &str,
        post: PostPolicy,
        join: JoinPolicy,
        lists: [&[i64]; 3],
    ) -> Result<Option<Room>, DbError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let mut all: Vec<i64> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        let found: i64 = tx.query_one("SELECT count(*) FROM users WHERE id = ANY($1)", &[&all]).await?.get(0);
        if found as usize != all.len() {
            return Ok(None);
        }
        let row = tx
            .query_one(
                "INSERT INTO rooms AS r (title, topic, owner, post, join_policy) VALUES ($1, $2, $3, $4, $5)
                 RETURNING r.id, r.title, r.topic, r.owner, r.post, r.join_policy",
                &[&title, &topic, &owner, &post.as_str(), &join.as_str()],
            )
            .await?;
        let room = room_of(&row);
        let [posters, invited, moderators] = lists;
        for u in &all {
            tx.execute(
                "INSERT INTO room_users (room_id, user_id, poster, invited, moderator) VALUES ($1, $2, $3, $4, $5)",
                &[&room.id, u, &posters.contains(u), &invited.contains(u), &moderators.contains(u)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(room))
    }

    /// A room.
    pub async fn room(&self, room: i64) -> Result<Option<Room>, DbError> {
        let c = self.pool.get().await?;
        let row = c.query_opt(&format!("SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = $1"), &[&room]).await?;
        Ok(row.as_ref().map(room_of))
    }

    /// A user's standing in a room (one query), or `None` if there is no
    /// such room.
    pub async fn room_access(&self, room: i64, user: i64) -> Result<Option<Access>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT {ROOM_COLUMNS}, coalesce(u.moderator, false), coalesce(u.poster, false),
                            coalesce(u.invited, false),
                            CASE WHEN u.banned_until > now() THEN (extract(epoch from u.banned_until) * 1000)::float8 END,
                            CASE WHEN u.muted_until > now() THEN (extract(epoch from u.muted_until) * 1000)::float8 END
                     FROM rooms r LEFT JOIN room_users u ON u.room_id = r.id AND u.user_id = $2
                     WHERE r.id = $1"
                ),
                &[&room, &user],
            )
            .await?;
        Ok(row.map(|r| {
            let room = room_of(&r);
            let owner = room.owner == user;
            Access {
                moderator: owner || r.get::<_, bool>(6),
                poster: r.get(7),
                invited: r.get(8),
                // The owner cannot be shut out of their own room.
                banned_until_ms: ms(r.get::<_, Option<f64>>(9)).filter(|_| !owner),
                muted_until_ms: ms(r.get::<_, Option<f64>>(10)).filter(|_| !owner),
                room,
            }
        }))
    }

    /// Changes a user's standing in a room; false if the user does not
    /// exist.
    pub async fn set_room_standing(&self, room: i64, user: i64, s: Standing) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "INSERT INTO room_users (room_id, user_id, moderator, poster, invited)
                 SELECT $1, id, coalesce($3, false), coalesce($4, false), coalesce($5, false) FROM users WHERE id = $2
                 ON CONFLICT (room_id, user_id) DO UPDATE SET
                   moderator = coalesce($3, room_users.moderator), poster = coalesce($4, room_users.poster),
                   invited = coalesce($5, room_users.invited)",
                &[&room, &user, &s.moderator, &s.poster, &s.invited],
            )
            .await?;
        Ok(n == 1)
    }

    /// Bans or mutes a user in a room for `secs` (`None`: for good), or
    /// lifts it (`lift`); false if the user does not exist.
    pub async fn sanction_room_user(
        &self,
        room: i64,
        user: i64,
        what: Sanction,
        secs: Option<i64>,
        lift: bool,
    ) -> Result<bool, DbError> {
        let column = match what {
            Sanction::Ban => "banned_until",
            Sanction::Mute => "muted_until",
        };
        let until = if lift {
            // Names $3 too: a statement's parameters are all used.
            "(NULL::timestamptz + make_interval(secs => coalesce($3::bigint, 0)))".to_owned()
        } else {
            "CASE WHEN $3::bigint IS NULL THEN 'infinity'::timestamptz ELSE now() + make_interval(secs => $3) END"
                .to_owned()
        };
        let c = self.pool.get().await?;
        let n = c
            .execute(
                &format!(
                    "INSERT INTO room_users (room_id, user_id, {column})
                     SELECT $1, id, {until} FROM users WHERE id = $2
                     ON CONFLICT (room_id, user_id) DO UPDATE SET {column} = EXCLUDED.{column}"
                ),
                &[&room, &user, &secs],
            )
            .await?;
        Ok(n == 1)
    }

    /// Sets a room's title and topic (`None`: unchanged); the new meta
    /// version, or `None` if there is no such room.
    pub async fn set_room_meta(
        &self,
        room: i64,
        title: Option<&str>,
        topic: Option<&str>,
    ) -> Result<Option<(Room, i64)>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "UPDATE rooms r SET title = coalesce($2, title), topic = coalesce($3, topic),
                   meta_version = meta_version + 1 WHERE id = $1
                 RETURNING r.id, r.title, r.topic, r.owner, r.post, r.join_policy, r.meta_version",
                &[&room, &title, &topic],
            )
            .await?;
        Ok(row.map(|r| (room_of(&r), r.get(6))))
    }
}
