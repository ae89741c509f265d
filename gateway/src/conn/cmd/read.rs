//! `read`: moves the user's read position in a conversation
//! ([`crate::messaging::reads::mark`]); answered with a `read` frame
//! carrying the position (which never moves backwards) and what is left
//! unread, or an `error` (`forbidden`, `not_found`, `bad_frame`).

use crate::conn::session::Session;
use crate::error::frame;

/// Handles a `read` frame.
pub(crate) fn read(s: &mut Session, conv: String, up_to: String) {
    let (state, out, user, device) = (s.state.clone(), s.out.clone(), s.user, s.device.clone());
    tokio::spawn(async move {
        let answer = match crate::messaging::reads::mark(&state, user, &device, &conv, &up_to).await {
            Ok(f) => f,
            Err(e) => e.into_frame(None),
        };
        out.push(frame(&answer));
    });
}
