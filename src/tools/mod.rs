//! Operator tools behind pgberth's subcommands: `certs` (a development CA with server and
//! client certificates), `passwd` (a userlist.txt line) and `top` (a live view of the admin
//! console). The command line itself lives in
//! `main.rs`; these modules do the work and are usable from tests.

pub mod certs;
pub mod passwd;
pub mod top;
