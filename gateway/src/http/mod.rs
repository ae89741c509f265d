//! The HTTP API: one file per resource, plus the JSON plumbing in [`body`].

pub mod accounts;
pub mod body;
pub mod conversations;
pub mod friends;
pub mod groups;
pub mod push;

pub use body::*;
