//! Messages: the [`send`] path, [`change`] (edits and deletes), [`delivery`] (catch-up and live) with its
//! wake-ups ([`live`], [`hub`]), [`history`] pages, delivered [`marks`], read positions ([`reads`]),
//! group [`mentions`],
//! 1:1 delivery receipts ([`receipts`]) and
//! the internal-service subject ([`service`]).

pub mod change;
pub mod delivery;
pub mod history;
pub mod hub;
pub mod ingress;
pub mod live;
pub mod marks;
pub mod mentions;
pub mod reads;
pub mod receipts;
pub mod send;
pub mod service;
pub mod subs;
