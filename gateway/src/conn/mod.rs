//! Client connections: the transports ([`ws`], [`quic`]), the
//! transport-agnostic driver ([`transport`]) and [`session`], its bounded
//! [`outbound`] queue and the session's [`presence`] side.

pub mod outbound;
pub mod presence;
pub mod quic;
pub mod session;
pub mod transport;
pub mod ws;
