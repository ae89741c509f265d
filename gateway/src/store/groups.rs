//! PostgreSQL side of groups: membership, roles and the membership version
//! that orders changes (see [`chat_nats::envelope::GroupEvent`]).

use chat_nats::envelope::GroupOp;
use thiserror::Error;

use crate::store::{Db, DbError};

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Created the group (or inherited it); may do anything.
    Owner,
    /// May add and remove members.
    Admin,
    /// May send and leave.
    Member,
}

impl Role {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses a stored or requested role.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// Why a group operation was refused.
#[derive(Debug, Error)]
pub enum GroupError {
    /// No such group (or the caller may not know of it).
    #[error("no such group")]
    NotFound,
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The group is at its maximum size.
    #[error("the group is full ({0} members)")]
    Full(usize),
    /// A named user does not exist.
    #[error("no such user")]
    UnknownUser,
    /// The request is inconsistent (e.g. removing a non-member).
    #[error("{0}")]
    Invalid(&'static str),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for GroupError {
    fn from(e: tokio_postgres::Error) -> Self {
        GroupError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for GroupError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        GroupError::Db(e.into())
    }
}

/// A committed membership change: the new version and member list.
#[derive(Debug, Clone)]
pub struct Change {
    /// Membership version after the change.
    pub version: u64,
    /// Every member after the change.
    pub members: Vec<i64>,
}

/// A member as listed.
#[derive(Debug, Clone)]
pub struct Member {
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Role.
    pub role: Role,
}

/// What a membership request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Add `user` as a member.
    Add,
    /// Remove `user` (or leave, when the actor is the user).
    Remove,
    /// Give `user` this role (owner only; not `owner`).
    SetRole(Role),
}

async fn role_in(tx: &deadpool_postgres::Transaction<'_>, group: i64, user: i64) -> Result<Option<Role>, GroupError> {
    let r =
        tx.query_opt("SELECT role FROM group_members WHERE group_id = $1 AND user_id = $2", &[&group, &user]).await?;
    Ok(r.and_then(|r| Role::parse(r.get(0))))
}

impl Db {
    /// Creates a group owned by `creator` with `members` (the creator is
    /// added if missing). Fails with `Full` above `max`.
    pub async fn create_group(
        &self,
        creator: i64,
        name: &str,
        members: &[i64],
        max: usize,
    ) -> Result<(i64, Change), GroupError> {
        let mut all: Vec<i64> = members.iter().copied().filter(|m| *m != creator).collect();
        all.sort_unstable();
        all.dedup();
        if all.len() + 1 > max {
            return Err(GroupError::Full(max));
        }
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let found: i64 = tx.query_one("SELECT count(*) FROM users WHERE id = ANY($1)", &[&all]).await?.get(0);
        if found as usize != all.len() {
            return Err(GroupError::UnknownUser);
        }
        let gid: i64 = tx
            .query_one("INSERT INTO groups (name, created_by) VALUES ($1, $2) RETURNING id", &[&name, &creator])
            .await?
            .get(0);
        tx.execute("INSERT INTO group_members (group_id, user_id, role) VALUES ($1, $2, 'owner')", &[&gid, &creator])
            .await?;
        tx.execute(
            "INSERT INTO group_members (group_id, user_id, role) SELECT $1, unnest($2::bigint[]), 'member'",
            &[&gid, &all],
        )
        .await?;
        tx.commit().await?;
        let mut members = vec![creator];
        members.extend(all);
        Ok((gid, Change { version: 1, members }))
    }

    /// The caller's role in a group, `None` if not a member.
    pub async fn role(&self, group: i64, user: i64) -> Result<Option<Role>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt("SELECT role FROM group_members WHERE group_id = $1 AND user_id = $2", &[&group, &user])
            .await?;
        Ok(row.and_then(|r| Role::parse(r.get(0))))
    }

    /// True when the group exists.
    pub async fn group_exists(&self, group: i64) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt("SELECT 1 FROM groups WHERE id = $1", &[&group]).await?.is_some())
    }

    /// Sets a group's meta information if `actor` is its owner or an admin
    /// (fields left `None` keep their value); the meta after the change, its
    /// meta version, and the membership as it stands.
    pub async fn set_meta(
        &self,
        group: i64,
        actor: i64,
        name: Option<&str>,
        topic: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<(chat_nats::envelope::GroupMeta, u64, Change), GroupError> {
        let mut c = self.pool.get().await.map_err(DbError::from)?;
        let tx = c.transaction().await.map_err(DbError::from)?;
        let role = tx
            .query_opt(
                "SELECT m.role FROM groups g LEFT JOIN group_members m ON m.group_id = g.id AND m.user_id = $2
                 WHERE g.id = $1 FOR UPDATE OF g",
                &[&group, &actor],
            )
            .await
            .map_err(DbError::from)?
            .ok_or(GroupError::NotFound)?;
        match role.get::<_, Option<&str>>(0).and_then(Role::parse) {
            Some(Role::Owner | Role::Admin) => {}
            Some(Role::Member) => return Err(GroupError::Forbidden("only the owner or an admin may change this")),
            None => return Err(GroupError::Forbidden("not a member of this group")),
        }
        let row = tx
            .query_one(
                "UPDATE groups SET name = coalesce($2, name), topic = coalesce($3, topic),
                   avatar_url = coalesce($4, avatar_url), meta_version = meta_version + 1
                 WHERE id = $1 RETURNING name, topic, avatar_url, meta_version, version",
                &[&group, &name, &topic, &avatar_url],
            )
            .await
            .map_err(DbError::from)?;
        let members = tx
            .query("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id", &[&group])
            .await
            .map_err(DbError::from)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await.map_err(DbError::from)?;
        let meta = chat_nats::envelope::GroupMeta { name: row.get(0), topic: row.get(1), avatar_url: row.get(2) };
        Ok((meta, row.get::<_, i64>(3) as u64, Change { version: row.get::<_, i64>(4) as u64, members }))
    }

    /// A group's topic and avatar URL.
    pub async fn group_meta(&self, group: i64) -> Result<Option<(String, String)>, DbError> {
        let c = self.pool.get().await?;
        let row = c.query_opt("SELECT topic, avatar_url FROM groups WHERE id = $1", &[&group]).await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// A group's name and members.
    pub async fn group(&self, group: i64) -> Result<Option<(String, Vec<Member>)>, DbError> {
        let c = self.pool.get().await?;
        let Some(g) = c.query_opt("SELECT name FROM groups WHERE id = $1", &[&group]).await? else { return Ok(None) };
        let rows = c
            .query(
                "SELECT m.user_id, u.username, m.role FROM group_members m JOIN users u ON u.id = m.user_id
                 WHERE m.group_id = $1 ORDER BY m.joined_at, m.user_id",
                &[&group],
            )
            .await?;
        let members = rows
            .iter()
            .map(|r| Member {
                user_id: r.get(0),
                username: r.get(1),
                role: Role::parse(r.get(2)).unwrap_or(Role::Member),
            })
            .collect();
        Ok(Some((g.get(0), members)))
    }

    /// The caller's groups: (id, name, role, member count).
    pub async fn my_groups(&self, user: i64) -> Result<Vec<(i64, String, Role, i64)>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT g.id, g.name, m.role, (SELECT count(*) FROM group_members x WHERE x.group_id = g.id)
                 FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.user_id = $1 ORDER BY g.id",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), Role::parse(r.get(2)).unwrap_or(Role::Member), r.get(3))).collect())
    }

    /// Applies a membership change under the group's row lock and bumps the
    /// version. `Ok(None)` when nothing changed (adding a member twice).
    pub async fn change_member(
        &self,
        group: i64,
        actor: i64,
        user: i64,
        op: Op,
        max: usize,
    ) -> Result<Option<(GroupOp, Change)>, GroupError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        if tx.query_opt("SELECT 1 FROM groups WHERE id = $1 FOR UPDATE", &[&group]).await?.is_none() {
            return Err(GroupError::NotFound);
        }
        let Some(actor_role) = role_in(&tx, group, actor).await? else { return Err(GroupError::NotFound) };
        let target_role = role_in(&tx, group, user).await?;
        let kind = match op {
            Op::Add => {
                if actor_role == Role::Member {
                    return Err(GroupError::Forbidden("only owners and admins add members"));
                }
                if target_role.is_some() {
                    return Ok(None);
                }
                if tx.query_opt("SELECT 1 FROM users WHERE id = $1", &[&user]).await?.is_none() {
                    return Err(GroupError::UnknownUser);
                }
                let n: i64 =
                    tx.query_one("SELECT count(*) FROM group_members WHERE group_id = $1", &[&group]).await?.get(0);
                if n as usize >= max {
                    return Err(GroupError::Full(max));
                }
                tx.execute(
                    "INSERT INTO group_members (group_id, user_id, role) VALUES ($1, $2, 'member')",
                    &[&group, &user],
                )
                .await?;
                GroupOp::Added
            }
            Op::Remove => {
                let Some(target) = target_role else { return Err(GroupError::Invalid("not a member")) };
                let leaving = actor == user;
                let allowed =
                    leaving || actor_role == Role::Owner || (actor_role == Role::Admin && target == Role::Member);
                if !allowed {
                    return Err(GroupError::Forbidden(
                        "owners remove anyone, admins remove members, members may leave",
                    ));
                }
                tx.execute("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2", &[&group, &user]).await?;
                if target == Role::Owner {
                    // The longest-standing member inherits the group.
                    tx.execute(
                        "UPDATE group_members SET role = 'owner' WHERE (group_id, user_id) =
                         (SELECT group_id, user_id FROM group_members WHERE group_id = $1
                          ORDER BY (role = 'admin') DESC, joined_at, user_id LIMIT 1)",
                        &[&group],
                    )
                    .await?;
                }
                if leaving {
                    GroupOp::Left
                } else {
                    GroupOp::Removed
                }
            }
            Op::SetRole(role) => {
                if actor_role != Role::Owner || role == Role::Owner {
                    return Err(GroupError::Forbidden("only the owner sets roles (admin or member)"));
                }
                if target_role.is_none() || actor == user {
                    return Err(GroupError::Invalid("not a member, or the owner themself"));
                }
                tx.execute(
                    "UPDATE group_members SET role = $3 WHERE group_id = $1 AND user_id = $2",
                    &[&group, &user, &role.as_str()],
                )
                .await?;
                GroupOp::Role
            }
        };
        let version: i64 = tx
            .query_one("UPDATE groups SET version = version + 1 WHERE id = $1 RETURNING version", &[&group])
            .await?
            .get(0);
        let members: Vec<i64> = tx
            .query("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY joined_at, user_id", &[&group])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await?;
        Ok(Some((kind, Change { version: version as u64, members })))
    }
}
