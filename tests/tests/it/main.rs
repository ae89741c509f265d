//! Integration tests: every test starts its own nats-server and PostgreSQL
//! (see `chat_tests`) and talks to real gateways over real sockets.

mod bans;
mod batch;
mod bench_smoke;
mod changes;
mod cli;
mod cluster;
mod core;
mod durability;
mod fake_push;
mod fuzz;
mod group_commit;
mod groups;
mod limits;
mod limits_auth;
mod mentions;
mod metrics;
mod moderation;
mod nats_auth;
mod presence;
mod push;
mod receipts;
mod restarts;
mod robustness;
mod rooms;
mod scaleout;
mod search;
mod service;
mod stack;
mod transports;
mod users;
mod web;
