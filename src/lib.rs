//! pgberth: a PostgreSQL connection pooler that reads PgBouncer's configuration.
//!
//! The binary in `main.rs` is a thin command-line layer over this library.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod protocol;
pub mod stream;
