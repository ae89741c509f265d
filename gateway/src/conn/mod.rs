//! Client connections: the transports ([`ws`], [`quic`]), the
//! transport-agnostic driver ([`transport`]) and [`session`], one handler
//! file per client frame type ([`cmd`]), the bounded [`outbound`] queue,
//! [`rate`] limiting and the session's [`presence`] side.

pub mod cmd;
pub mod outbound;
pub mod presence;
pub mod quic;
pub mod rate;
pub mod session;
pub mod transport;
pub mod ws;
