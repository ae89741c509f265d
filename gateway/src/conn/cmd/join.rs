//! `join`: enter a live room. Checked (the room exists, the caller may
//! join), registered with the room's feed (live messages held), the
//! backlog read from history and sent, then `joined` and live messages
//! past the backlog (see [`crate::rooms`]). Runs in a task of its own that
//! holds the session's place in the room until `leave` or the session's
//! end aborts it.

use std::sync::Arc;

use chat_nats::subjects::ConvId;
use chat_nats::wire::ErrorCode;

use crate::conn::outbound::Outbound;
use crate::conn::session::Session;
use crate::error::{frame, ClientError};
use crate::messaging::history::{self, Page, Reader};
use crate::rooms::{access, Live, Membership};
use crate::AppState;

/// Handles `join`.
pub(crate) fn join(s: &mut Session, room: String) {
    let id = match access::room_id(&room) {
        Ok(id) => id,
        Err(e) => return s.error(None, e.code, &e.message),
    };
    // A second join of the same room starts over with a fresh backlog.
    if let Some(old) = s.rooms.remove(&id) {
        old.abort();
    }
    s.rooms.retain(|_, t| !t.is_finished());
    if s.rooms.len() >= s.state.cfg.room_max_joined {
        let max = s.state.cfg.room_max_joined;
        return s.error(None, ErrorCode::LimitExceeded, &format!("a session may join at most {max} rooms"));
    }
    let (state, out, user) = (s.state.clone(), s.out.clone(), s.user);
    let task = tokio::spawn(async move {
        match enter(&state, &out, id, user).await {
            // Stay in the room until aborted (leave, session end).
            Ok(Some(_membership)) => futures::future::pending::<()>().await,
            Ok(None) => {}
            Err(e) => {
                out.push(frame(&e.into_frame(None)));
            }
        }
    });
    s.rooms.insert(id, task);
}

/// Checks, registers, sends the backlog and goes live; `None` if the
/// session went away meanwhile.
async fn enter(state: &Arc<AppState>, out: &Outbound, room: i64, user: i64) -> Result<Option<Membership>, ClientError> {
    access::joinable(state, room, user).await?;
    let m = state.rooms.join(room, user, out.clone()).await.map_err(ClientError::unavailable)?;
    let (mut last_n, mut sent) = (0, 0);
    if state.cfg.room_backlog > 0 {
        let rd = Reader { storage: &state.storage, cache: &state.history_index };
        let page = history::page(rd, &ConvId::room(room), Page::Latest, state.cfg.room_backlog)
            .await
            .map_err(ClientError::unavailable)?;
        if let Some((_, last)) = page.messages.last() {
            m.seed(last.n, last.id);
        }
        for (_, msg) in page.messages {
            last_n = msg.n;
            if msg.deleted {
                continue;
            }
            let live = Live::of(room, msg);
            if !out.push_wait(live.text().to_owned(), 0, state.cfg.stall_timeout).await {
                return Ok(None);
            }
            sent += 1;
        }
    }
    m.viewer.go_live(last_n, sent, state.room_viewers(room));
    Ok(Some(m))
}
