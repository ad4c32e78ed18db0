//! The admin console: the virtual database `pgbouncer` (also `pgberth`), spoken to with simple
//! queries as in PgBouncer. `admin_users` may run every command, `stats_users` only SHOW.
//! Columns of the SHOW commands follow PgBouncer's documented names and order, so that its
//! exporters and scripts work (`show.rs`). The control commands (PAUSE, RESUME, SUSPEND,
//! DISABLE, ENABLE, RECONNECT, WAIT_CLOSE, SHUTDOWN, SET) are in `control.rs`.

pub(crate) mod connections;
mod control;
mod resources;
mod show;
mod stats;

pub use control::{Control, OBJECT_NOT_IN_PREREQUISITE_STATE};

use std::sync::Arc;

use crate::app::App;
use crate::protocol::{ErrorResponse, SqlState, TxStatus, build, frontend};
use crate::stream::{MessageReader, ReadError, Stream};

/// What pgberth reports as `server_version` on the console and in SHOW VERSION.
pub const SERVER_VERSION: &str = concat!("pgberth ", env!("CARGO_PKG_VERSION"));

/// Largest query accepted on the console.
const MAX_COMMAND: usize = 64 * 1024;

const SYNTAX_ERROR: SqlState = SqlState::SYNTAX_ERROR;
const INSUFFICIENT_PRIVILEGE: SqlState = SqlState::INSUFFICIENT_PRIVILEGE;
const ADMIN_NEEDED: &str = "admin access needed: only admin_users may run commands other than SHOW";

/// One admin console connection.
#[derive(Debug)]
pub struct Console {
    app: Arc<App>,
    stream: Stream,
    /// Reads the console's queries; it may hold bytes read with the last login message.
    incoming: MessageReader,
    /// `admin_users` (and the `pgbouncer` user over the unix socket): every command, not only
    /// SHOW.
    may_control: bool,
}

/// A result set: column names with whether they are numbers (int8) or text, and text rows.
pub(crate) struct Table {
    pub columns: Vec<(&'static str, bool)>,
    pub rows: Vec<Vec<String>>,
}

impl Console {
    pub fn new(
        app: Arc<App>,
        stream: Stream,
        incoming: MessageReader,
        may_control: bool,
    ) -> Console {
        Console {
            app,
            stream,
            incoming,
            may_control,
        }
    }

    /// Answers queries until the client leaves.
    pub async fn run(&mut self) {
        let mut out = Vec::with_capacity(1024);
        loop {
            let read = self.incoming.message(&mut self.stream, MAX_COMMAND).await;
            match read.map(|msg| (msg[0], msg)) {
                Ok((frontend::QUERY, msg)) => {
                    let body = &msg[5..];
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    let query = String::from_utf8_lossy(&body[..end]).into_owned();
                    out.clear();
                    let after = self.execute(&query, &mut out).await;
                    build::ready_for_query(&mut out, TxStatus::Idle);
                    if after == control::After::Stop {
                        let _ = self.stream.send(&out).await;
                        self.app.set_run_state(crate::app::RunState::Stopping);
                        return;
                    }
                }
                Ok((frontend::TERMINATE, _)) | Err(ReadError::Closed) => return,
                Ok((tag, _)) => {
                    out.clear();
                    let msg = format!(
                        "the admin console takes simple queries only, not message type '{}'",
                        tag as char
                    );
                    ErrorResponse::error(SqlState::FEATURE_NOT_SUPPORTED, msg).encode(&mut out);
                    build::ready_for_query(&mut out, TxStatus::Idle);
                }
                Err(e) => {
                    let err = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string());
                    let _ = self.stream.send(&err.to_bytes()).await;
                    return;
                }
            }
            if self.stream.send(&out).await.is_err() {
                return;
            }
        }
    }

    /// Runs one command (a trailing `;` is fine) and appends the answer.
    async fn execute(&self, query: &str, out: &mut Vec<u8>) -> control::After {
        let text = query.trim().trim_end_matches(';');
        let typed: Vec<&str> = text.split_whitespace().collect();
        let words: Vec<String> = typed.iter().map(|w| w.to_ascii_lowercase()).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            [] => out.extend_from_slice(&[b'I', 0, 0, 0, 4]),
            ["show", what] => match show::table(&self.app, what) {
                Some(table) => {
                    encode_table(&table, out);
                    command_complete(out, "SHOW");
                }
                None if *what == "help" => {
                    for line in show::HELP {
                        notice(out, line);
                    }
                    command_complete(out, "SHOW");
                }
                None => unknown(out, query),
            },
            ["reload"] if self.may_control => {
                let path = self.app.config().path.clone();
                crate::process::reload(&self.app, &path);
                command_complete(out, "RELOAD");
            }
            // SET of a driver's session parameter is ignored for everyone, as in PgBouncer.
            ["set", ..] => control::set(&self.app, query, self.may_control, out),
            [command, ..] if *command != "show" && !self.may_control => {
                ErrorResponse::error(INSUFFICIENT_PRIVILEGE, ADMIN_NEEDED).encode(out);
            }
            [command, ..] if control::COMMANDS.contains(command) => {
                return control::execute(&self.app, command, &typed[1..], query, out).await;
            }
            _ => unknown(out, query),
        }
        control::After::Nothing
    }
}

fn unknown(out: &mut Vec<u8>, query: &str) {
    let msg = format!(
        "unknown or unsupported admin command \"{}\"; SHOW HELP lists the commands",
        query.trim()
    );
    ErrorResponse::error(SqlState::SYNTAX_ERROR, msg).encode(out);
}

fn command_complete(out: &mut Vec<u8>, tag: &str) {
    let start = build::begin(out, b'C');
    build::cstr(out, tag);
    build::patch_len(out, start);
}

fn notice(out: &mut Vec<u8>, text: &str) {
    let start = build::begin(out, b'N');
    for (field, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', text),
    ] {
        out.push(field);
        build::cstr(out, value);
    }
    out.push(0);
    build::patch_len(out, start);
}

/// RowDescription and DataRows, text format; numbers are typed int8 as in PgBouncer.
fn encode_table(table: &Table, out: &mut Vec<u8>) {
    const INT8: u32 = 20;
    const TEXT: u32 = 25;
    let start = build::begin(out, b'T');
    out.extend_from_slice(&(table.columns.len() as u16).to_be_bytes());
    for (name, numeric) in &table.columns {
        build::cstr(out, name);
        out.extend_from_slice(&0u32.to_be_bytes()); // table
        out.extend_from_slice(&0u16.to_be_bytes()); // column
        let (oid, len) = if *numeric {
            (INT8, 8i16)
        } else {
            (TEXT, -1i16)
        };
        out.extend_from_slice(&oid.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
        out.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    build::patch_len(out, start);
    for row in &table.rows {
        let start = build::begin(out, b'D');
        out.extend_from_slice(&(row.len() as u16).to_be_bytes());
        for value in row {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        build::patch_len(out, start);
    }
}
