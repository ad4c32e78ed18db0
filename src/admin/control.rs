//! The admin console's control commands, with PgBouncer's semantics: PAUSE, RESUME, SUSPEND,
//! DISABLE, ENABLE, RECONNECT, KILL, KILL_CLIENT, WAIT_CLOSE, SHUTDOWN and SET.
//!
//! [`Control`] is the process-wide state these commands change (which databases are paused
//! or disabled, whether everything is paused or suspended); every pool is paused according to
//! it (`Control::apply`), including pools created later (`App::pool`). Waiting (PAUSE,
//! WAIT_CLOSE) happens in the console's own task; only admin_users reach this module.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{command_complete, notice};
use crate::app::{App, RunState};
use crate::config::ADMIN_DATABASES;
use crate::pool::{PauseMode, Pool};
use crate::protocol::{ErrorResponse, SqlState};

/// 55000: the command does not fit the current state (already paused, not paused, disabled).
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState(*b"55000");
/// 3D000: no such database.
const UNDEFINED_DATABASE: SqlState = SqlState(*b"3D000");
/// 22023: SET with a value the setting does not take.
const INVALID_PARAMETER_VALUE: SqlState = SqlState(*b"22023");
/// 42704: SET of a setting that does not exist.
const UNDEFINED_OBJECT: SqlState = SqlState(*b"42704");
/// 55P02: SET of a setting only a restart changes.
const CANT_CHANGE_RUNTIME_PARAM: SqlState = SqlState(*b"55P02");

/// The commands of this module (SET is recognised separately).
pub(super) const COMMANDS: &[&str] = &[
    "pause",
    "resume",
    "suspend",
    "disable",
    "enable",
    "reconnect",
    "wait_close",
    "shutdown",
    "kill",
    "kill_client",
];

/// Session parameters drivers set on connect; SET of them is answered with a notice and
/// ignored, as in PgBouncer.
const IGNORED_SET: &[&str] = &[
    "client_encoding",
    "default_transaction_isolation",
    "standard_conforming_strings",
    "datestyle",
    "timezone",
];

/// Process-wide pause and disable state.
#[derive(Debug)]
pub struct Control {
    state: Mutex<State>,
    /// Serialises `apply`, so that two commands cannot leave a pool in the older one's state.
    applying: Mutex<()>,
    /// True while SUSPENDed: the accept loops stop accepting.
    suspended: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    /// PAUSE or SUSPEND without a database (also SHUTDOWN WAIT_FOR_SERVERS).
    global: Option<PauseMode>,
    /// Databases paused by `PAUSE db` (and, later, `KILL db`) until `RESUME db`.
    paused: BTreeSet<String>,
    /// Databases that refuse new client logins (`DISABLE db`).
    disabled: BTreeSet<String>,
}

impl Default for Control {
    fn default() -> Control {
        Control {
            state: Mutex::default(),
            applying: Mutex::default(),
            suspended: watch::Sender::new(false),
        }
    }
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the pools of `database` are paused now, if they are.
    pub fn pause_mode_for(&self, database: &str) -> Option<PauseMode> {
        let state = self.lock();
        match state.global {
            Some(PauseMode::Suspend) => Some(PauseMode::Suspend),
            Some(PauseMode::Pause) => Some(PauseMode::Pause),
            None if state.paused.contains(database) => Some(PauseMode::Pause),
            None => None,
        }
    }

    /// PAUSE or SUSPEND without a database, if in effect.
    pub fn global_pause(&self) -> Option<PauseMode> {
        self.lock().global
    }

    /// `database` was paused by name (SHOW DATABASES' `paused`).
    pub fn is_paused(&self, database: &str) -> bool {
        self.lock().paused.contains(database)
    }

    /// `database` refuses new clients (SHOW DATABASES' `disabled`, checked at login).
    pub fn is_disabled(&self, database: &str) -> bool {
        self.lock().disabled.contains(database)
    }

    /// Sees SUSPEND and RESUME: the accept loops do not accept while it is true.
    pub fn watch_suspended(&self) -> watch::Receiver<bool> {
        self.suspended.subscribe()
    }

    /// Pauses or resumes every pool according to the state.
    fn apply(&self, app: &App) {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        for pool in app.pools() {
            let mode = self.pause_mode_for(&pool.key.database);
            if pool.pause_mode() != mode {
                pool.set_pause(mode);
            }
        }
    }

    /// Marks `database` paused and pauses its pools, without waiting for their connections:
    /// new transactions wait for `RESUME database`. PAUSE waits afterwards; KILL drops the
    /// clients and connections instead.
    pub fn pause_database(&self, app: &App, database: &str) {
        self.lock().paused.insert(database.to_owned());
        self.apply(app);
    }
}

/// What the console does after sending the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    Nothing,
    /// SHUTDOWN: the process stops once the answer is out.
    Stop,
}

fn error(out: &mut Vec<u8>, code: SqlState, message: impl Into<String>) {
    let message = message.into();
    tracing::warn!("admin console: {message}");
    ErrorResponse::error(code, message).encode(out);
}

/// A database argument as typed, without double quotes around it (`"My DB"`).
fn database_arg(arg: &str) -> String {
    match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => arg.to_owned(),
    }
}

/// Checks that `name` is a database clients can use; otherwise writes PgBouncer's error.
fn known_database(app: &App, name: &str, verb: &str, out: &mut Vec<u8>) -> bool {
    if ADMIN_DATABASES.contains(&name) {
        let msg = format!("cannot {verb} admin db: {name}");
        error(out, OBJECT_NOT_IN_PREREQUISITE_STATE, msg);
        return false;
    }
    if app.config().database(name).is_none() {
        error(out, UNDEFINED_DATABASE, format!("no such database: {name}"));
        return false;
    }
    true
}

fn pools_of(app: &App, database: Option<&str>) -> Vec<Arc<Pool>> {
    app.pools()
        .into_iter()
        .filter(|p| database.is_none_or(|d| p.key.database == d))
        .collect()
}

/// Waits until no pool of `database` (all when `None`) has a server connection open.
async fn wait_released(app: &App, database: Option<&str>) {
    for pool in pools_of(app, database) {
        pool.wait_released().await;
    }
}

/// Runs one control command: `command` lower-cased, `args` as typed.
pub(super) async fn execute(
    app: &Arc<App>,
    command: &str,
    args: &[&str],
    query: &str,
    out: &mut Vec<u8>,
) -> After {
    let control = &app.control;
    let arg = match args {
        [] => None,
        [one] => Some(database_arg(one)),
        _ => {
            super::unknown(out, query);
            return After::Nothing;
        }
    };
    let arg = arg.as_deref();
    match (command, arg) {
        ("pause", arg) => {
            if control.global_pause().is_some() {
                error(
                    out,
                    OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "already suspended/paused",
                );
                return After::Nothing;
            }
            match arg {
                None => {
                    tracing::info!("PAUSE command issued");
                    control.lock().global = Some(PauseMode::Pause);
                    control.apply(app);
                }
                Some(db) => {
                    if !known_database(app, db, "pause", out) {
                        return After::Nothing;
                    }
                    if control.is_paused(db) {
                        let msg = format!("database {db} is already paused");
                        error(out, OBJECT_NOT_IN_PREREQUISITE_STATE, msg);
                        return After::Nothing;
                    }
                    tracing::info!("PAUSE '{db}' command issued");
                    control.pause_database(app, db);
                }
            }
            wait_released(app, arg).await;
            command_complete(out, "PAUSE");
        }
        ("resume", None) => {
            if app.run_state() != RunState::Running {
                error(
                    out,
                    OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "pooler is shutting down",
                );
                return After::Nothing;
            }
            let was = control.lock().global.take();
            match was {
                None => {
                    let paused = control.lock().paused.clone();
                    let mut msg = "pooler is not paused/suspended".to_owned();
                    if !paused.is_empty() {
                        let names: Vec<&str> = paused.iter().map(String::as_str).collect();
                        msg.push_str(&format!(
                            "; paused databases ({}) resume with RESUME <db>",
                            names.join(", ")
                        ));
                    }
                    error(out, OBJECT_NOT_IN_PREREQUISITE_STATE, msg);
                    return After::Nothing;
                }
                Some(mode) => {
                    tracing::info!("RESUME command issued");
                    if mode == PauseMode::Suspend {
                        control.suspended.send_replace(false);
                    }
                    control.apply(app);
                }
            }
            command_complete(out, "RESUME");
        }
        ("resume", Some(db)) => {
            if !known_database(app, db, "resume", out) {
                return After::Nothing;
            }
            if !control.lock().paused.remove(db) {
                let msg = format!("database {db} is not paused");
                error(out, OBJECT_NOT_IN_PREREQUISITE_STATE, msg);
                return After::Nothing;
            }
            tracing::info!("RESUME '{db}' command issued");
            control.apply(app);
            command_complete(out, "RESUME");
        }
        ("suspend", None) => {
            {
                let mut state = control.lock();
                if state.global.is_some() {
                    drop(state);
                    error(
                        out,
                        OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "already suspended/paused",
                    );
                    return After::Nothing;
                }
                if !state.paused.is_empty() {
                    drop(state);
                    error(
                        out,
                        OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "cannot suspend with paused databases",
                    );
                    return After::Nothing;
                }
                state.global = Some(PauseMode::Suspend);
            }
            tracing::info!("SUSPEND command issued");
            control.suspended.send_replace(true);
            control.apply(app);
            command_complete(out, "SUSPEND");
        }
        ("disable" | "enable", None) => {
            error(out, super::SYNTAX_ERROR, "a database is required");
        }
        ("disable" | "enable", Some(db)) => {
            let disable = command == "disable";
            if !known_database(app, db, command, out) {
                return After::Nothing;
            }
            tracing::info!("{} '{db}' command issued", command.to_ascii_uppercase());
            let mut state = control.lock();
            if disable {
                state.disabled.insert(db.to_owned());
            } else {
                state.disabled.remove(db);
            }
            drop(state);
            command_complete(out, if disable { "DISABLE" } else { "ENABLE" });
        }
        ("reconnect", arg) => {
            if let Some(db) = arg
                && !known_database(app, db, "reconnect", out)
            {
                return After::Nothing;
            }
            match arg {
                Some(db) => tracing::info!("RECONNECT '{db}' command issued"),
                None => tracing::info!("RECONNECT command issued"),
            }
            for pool in pools_of(app, arg) {
                pool.reconnect();
            }
            command_complete(out, "RECONNECT");
        }
        ("wait_close", arg) => {
            if let Some(db) = arg
                && !known_database(app, db, "wait_close", out)
            {
                return After::Nothing;
            }
            match arg {
                Some(db) => tracing::info!("WAIT_CLOSE '{db}' command issued"),
                None => tracing::info!("WAIT_CLOSE command issued"),
            }
            for pool in pools_of(app, arg) {
                pool.wait_retired_closed().await;
            }
            command_complete(out, "WAIT_CLOSE");
        }
        ("kill", None) => {
            error(out, super::SYNTAX_ERROR, "a database is required");
        }
        ("kill", Some(db)) => {
            if !known_database(app, db, "kill", out) {
                return After::Nothing;
            }
            // Paused first, so that no new transaction starts while its clients go.
            control.pause_database(app, db);
            let doomed: Vec<_> = app
                .clients_registry
                .lock()
                .values()
                .filter(|c| {
                    c.login()
                        .is_some_and(|l| l.pool.is_some() && &*l.database == db)
                })
                .cloned()
                .collect();
            for client in &doomed {
                app.kill_client(client);
            }
            for pool in pools_of(app, Some(db)) {
                pool.reconnect();
            }
            tracing::info!(
                "KILL '{db}' command issued: {} clients disconnected; the database stays paused until RESUME {db}",
                doomed.len()
            );
            command_complete(out, "KILL");
        }
        ("kill_client", None) => {
            error(out, super::SYNTAX_ERROR, "a client id is required");
        }
        ("kill_client", Some(id)) => {
            let client = id
                .parse::<u64>()
                .ok()
                .and_then(|id| app.clients_registry.get(id));
            match client {
                Some(client) if app.kill_client(&client) => {
                    let (database, user) = client.names();
                    tracing::info!(
                        "KILL_CLIENT {id} command issued: client of user {user} on database {database} disconnected"
                    );
                    command_complete(out, "KILL_CLIENT");
                }
                _ => error(
                    out,
                    UNDEFINED_OBJECT,
                    format!("client {id} not found (see the id column of SHOW CLIENTS)"),
                ),
            }
        }
        ("shutdown", None) => {
            tracing::info!("SHUTDOWN command issued: exiting now");
            command_complete(out, "SHUTDOWN");
            return After::Stop;
        }
        ("shutdown", Some(how)) if how.eq_ignore_ascii_case("wait_for_clients") => {
            tracing::info!(
                "SHUTDOWN WAIT_FOR_CLIENTS command issued: no new clients; exiting when the last of {} clients leaves",
                app.client_count()
            );
            app.set_run_state(RunState::Draining);
            command_complete(out, "SHUTDOWN");
        }
        ("shutdown", Some(how)) if how.eq_ignore_ascii_case("wait_for_servers") => {
            tracing::info!(
                "SHUTDOWN WAIT_FOR_SERVERS command issued: no new clients or transactions; exiting when every server connection is released"
            );
            app.set_run_state(RunState::Draining);
            control.lock().global = Some(PauseMode::Pause);
            control.suspended.send_replace(false);
            control.apply(app);
            let app = app.clone();
            tokio::spawn(async move {
                wait_released(&app, None).await;
                tracing::info!("every server connection is released; exiting");
                app.set_run_state(RunState::Stopping);
            });
            command_complete(out, "SHUTDOWN");
        }
        _ => super::unknown(out, query),
    }
    After::Nothing
}

/// `SET key = value` / `SET key TO value`: the value bare or in single quotes (`''` for a
/// quote). Changes the running config as a reload would.
pub(super) fn set(app: &App, text: &str, may_control: bool, out: &mut Vec<u8>) {
    let Some((key, value)) = parse_set(text) else {
        let msg = format!(
            "invalid SET command \"{}\": expected SET key = value or SET key = 'value'",
            text.trim()
        );
        error(out, super::SYNTAX_ERROR, msg);
        return;
    };
    let key = key.to_ascii_lowercase();
    if IGNORED_SET.contains(&key.as_str()) {
        notice(out, "SET ignored");
        command_complete(out, "SET");
        return;
    }
    if !may_control {
        error(out, super::INSUFFICIENT_PRIVILEGE, super::ADMIN_NEEDED);
        return;
    }
    let config = app.config();
    let new = match config.with_setting(&key, &value) {
        Ok(new) => new,
        Err(e) => {
            let code = match e {
                crate::config::SetError::Unknown(_) | crate::config::SetError::Unsupported(_) => {
                    UNDEFINED_OBJECT
                }
                crate::config::SetError::NotChangeable(_) => CANT_CHANGE_RUNTIME_PARAM,
                crate::config::SetError::Invalid(_) => INVALID_PARAMETER_VALUE,
            };
            error(out, code, e.to_string());
            return;
        }
    };
    match crate::process::prepare(new) {
        Ok(loaded) => {
            app.reload(loaded);
            tracing::info!("SET {key} = '{value}' applied");
            command_complete(out, "SET");
        }
        Err(e) => error(
            out,
            INVALID_PARAMETER_VALUE,
            format!("SET {key} refused: {e}"),
        ),
    }
}

/// Splits `SET key = value` into key and value.
fn parse_set(text: &str) -> Option<(String, String)> {
    let rest = text.trim();
    let rest = rest
        .get(..3)
        .filter(|w| w.eq_ignore_ascii_case("set"))
        .and(rest.get(3..))?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let key_end = rest
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(rest.len());
    let key = &rest[..key_end];
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let rest = rest[key_end..].trim_start();
    let rest = if let Some(r) = rest.strip_prefix('=') {
        r
    } else {
        let to = rest.get(..2).filter(|w| w.eq_ignore_ascii_case("to"))?;
        let after = &rest[to.len()..];
        if !after.starts_with(char::is_whitespace) {
            return None;
        }
        after
    };
    let rest = rest.trim();
    let rest = rest.strip_suffix(';').unwrap_or(rest).trim_end();
    let value = if let Some(body) = rest.strip_prefix('\'') {
        let body = body.strip_suffix('\'')?;
        // Inside the quotes, a quote appears only doubled.
        if body.replace("''", "").contains('\'') {
            return None;
        }
        body.replace("''", "'")
    } else {
        if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('\'') {
            return None;
        }
        rest.to_owned()
    };
    Some((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::parse_set;

    fn set(text: &str) -> Option<(String, String)> {
        parse_set(text)
    }

    #[test]
    fn set_takes_equals_or_to_and_bare_or_quoted_values() {
        let pair = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
        assert_eq!(
            set("SET default_pool_size = 5"),
            pair("default_pool_size", "5")
        );
        assert_eq!(
            set("set default_pool_size=5;"),
            pair("default_pool_size", "5")
        );
        assert_eq!(set("SET log_stats TO 0"), pair("log_stats", "0"));
        assert_eq!(
            set("SET server_check_query = 'select 2'"),
            pair("server_check_query", "select 2")
        );
        assert_eq!(
            set("SET server_reset_query TO 'SELECT ''x'''"),
            pair("server_reset_query", "SELECT 'x'")
        );
        assert_eq!(set("SET auth_query = ''"), pair("auth_query", ""));
        assert_eq!(set("SET x = a b"), None);
        assert_eq!(set("SET x = 'a' 'b'"), None);
        assert_eq!(set("SET = 5"), None);
        assert_eq!(set("SET x 5"), None);
        assert_eq!(set("SETx = 5"), None);
        assert_eq!(set("SET x = 'open"), None);
    }
}
