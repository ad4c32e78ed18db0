//! Operator tools behind pgberth's subcommands: `certs` (a development CA with server and
//! client certificates) and `passwd` (a userlist.txt line). The command line itself lives in
//! `main.rs`; these modules do the work and are usable from tests.

pub mod certs;
pub mod passwd;
