//! pgberth: a PostgreSQL connection pooler that reads PgBouncer's configuration.
//!
//! The binary in `main.rs` is a thin command-line layer over this library; `process::run`
//! is the pooler, `docs/LIFECYCLE.md` walks a connection through the modules.

pub mod admin;
pub mod app;
pub mod auth;
pub mod buffer;
pub mod cancel;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod fresh;
pub mod listener;
pub mod metrics;
pub mod parking;
pub mod pool;
pub mod prepared;
pub mod process;
pub mod protocol;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sql;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod tools;
pub mod workers;
