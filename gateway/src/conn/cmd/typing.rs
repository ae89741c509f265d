//! `typing`: relayed to the conversation's other participants, at most one
//! per device per `CHAT_TYPING_INTERVAL_MS` (more are dropped silently).

use std::time::Instant;

use chat_nats::wire::ErrorCode;

use crate::conn::session::Session;
use crate::error::frame;
use crate::AppState;

/// Handles a `typing` frame.
pub(crate) fn typing(s: &mut Session, conv: String) {
    let interval = s.state.cfg.typing_interval;
    if s.last_typing.is_some_and(|t| t.elapsed() < interval) {
        return; // rate-limited: dropped silently
    }
    s.last_typing = Some(Instant::now());
    let (state, out, user) = (s.state.clone(), s.out.clone(), s.user);
    tokio::spawn(async move {
        if let Err(r) = relay_typing(&state, user, &conv).await {
            out.push(frame(&r.into_frame(None)));
        }
    });
}

/// Relays a typing event to the conversation's other participants.
async fn relay_typing(state: &AppState, user: i64, conv: &str) -> Result<(), crate::error::ClientError> {
    use chat_nats::subjects::{ConvId, ConvKind};
    let forbidden = || crate::error::ClientError::new(ErrorCode::Forbidden, "not a participant of this conversation");
    let c = ConvId::parse(conv).ok_or_else(forbidden)?;
    let others: Vec<i64> = match c.kind() {
        ConvKind::Direct(a, b) if a == user || b == user => vec![if a == user { b } else { a }],
        ConvKind::Direct(..) => return Err(forbidden()),
        // A room's viewers are not told who is typing (thousands of them).
        ConvKind::Room(_) => return Err(forbidden()),
        ConvKind::Group(g) => {
            let db = |e: crate::store::DbError| crate::error::ClientError::unavailable(e);
            let (_, members) = state.db.group(g).await.map_err(db)?.ok_or_else(forbidden)?;
            if !members.iter().any(|m| m.user_id == user) {
                return Err(forbidden());
            }
            members.iter().map(|m| m.user_id).filter(|u| *u != user).collect()
        }
    };
    let ev = chat_nats::envelope::Ephemeral::Typing { conv: c.to_string(), user };
    let payload = bytes::Bytes::from(serde_json::to_vec(&ev).expect("serializable"));
    for o in others {
        let _ = state.client.publish(chat_nats::subjects::ephemeral(o), payload.clone()).await;
    }
    Ok(())
}
