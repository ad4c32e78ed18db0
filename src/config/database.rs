//! `[databases]` and `[users]` entries: the `Database` and `UserSettings`
//! structs, their parsing from connection strings, and effective-value helpers.

use std::fmt;
use std::path::PathBuf;

use super::PoolMode;
use super::connstring;
use super::error::{At, ConfigError, Diagnostic};
use super::general::General;
use super::keys::{UNSUPPORTED_DATABASE_KEYS, UNSUPPORTED_USER_KEYS};
use super::values::{non_empty, parse_count, parse_u16};

/// One `[databases]` line: where a client-facing database name leads.
#[derive(Clone, PartialEq)]
pub struct Database {
    /// The name clients ask for.
    pub name: String,
    /// `None` = unix socket in the default directory; a value starting with
    /// `/` is a unix socket directory.
    pub host: Option<String>,
    pub port: u16,
    /// The server-side database name. Defaults to `name`. On the `*` fallback
    /// entry (`Config::fallback_database`) an empty string means "the name the
    /// client asked for"; `Config::database` fills it in.
    pub dbname: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub reserve_pool: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<u32>,
    pub auth_user: Option<String>,
    pub application_name: Option<String>,
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    pub connect_query: Option<String>,
    /// File and line of the definition.
    pub defined_at: (PathBuf, usize),
}

impl Database {
    /// A database entry with every optional setting unset.
    pub fn new(name: &str, defined_at: (PathBuf, usize)) -> Database {
        Database {
            name: name.to_string(),
            host: None,
            port: 5432,
            dbname: name.to_string(),
            user: None,
            password: None,
            pool_size: None,
            min_pool_size: None,
            reserve_pool: None,
            pool_mode: None,
            max_db_connections: None,
            auth_user: None,
            application_name: None,
            client_encoding: None,
            datestyle: None,
            timezone: None,
            connect_query: None,
            defined_at,
        }
    }

    pub fn effective_pool_size(&self, general: &General) -> u32 {
        self.pool_size.unwrap_or(general.default_pool_size)
    }

    pub fn effective_min_pool_size(&self, general: &General) -> u32 {
        self.min_pool_size.unwrap_or(general.min_pool_size)
    }

    pub fn effective_reserve_pool(&self, general: &General) -> u32 {
        self.reserve_pool.unwrap_or(general.reserve_pool_size)
    }

    /// 0 = unlimited.
    pub fn effective_max_db_connections(&self, general: &General) -> u32 {
        self.max_db_connections
            .unwrap_or(general.max_db_connections)
    }

    /// Whether the server is reached over a unix socket (no host, or a host
    /// that is a directory path).
    pub fn is_unix_socket(&self) -> bool {
        self.host.as_deref().is_none_or(|h| h.starts_with('/'))
    }
}

/// Like a derived `Debug`, with the password redacted.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("min_pool_size", &self.min_pool_size)
            .field("reserve_pool", &self.reserve_pool)
            .field("pool_mode", &self.pool_mode)
            .field("max_db_connections", &self.max_db_connections)
            .field("auth_user", &self.auth_user)
            .field("application_name", &self.application_name)
            .field("client_encoding", &self.client_encoding)
            .field("datestyle", &self.datestyle)
            .field("timezone", &self.timezone)
            .field("connect_query", &self.connect_query)
            .field("defined_at", &self.defined_at)
            .finish()
    }
}

/// One `[users]` line: per-user overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSettings {
    pub pool_mode: Option<PoolMode>,
    pub max_user_connections: Option<u32>,
}

/// Parses the value of a `[databases]` line. For the `*` fallback, `dbname`
/// stays empty unless set explicitly.
pub(crate) fn parse_database(
    name: &str,
    value: &str,
    at: At<'_>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Database, ConfigError> {
    let pairs = connstring::parse(value)
        .map_err(|message| at.invalid(format!("database \"{name}\": {message}")))?;
    let mut db = Database::new(name, (at.file.to_path_buf(), at.line));
    if name == "*" {
        db.dbname = String::new();
    }
    for (key, v) in pairs {
        let invalid = |expected: String| {
            at.invalid_value(&format!("{key} of database \"{name}\""), &v, expected)
        };
        // Empty means unset, except for a password (an empty one is legal).
        let text = || non_empty(&v);
        match key.as_str() {
            "host" => db.host = text(),
            "port" => db.port = parse_u16(&v).map_err(invalid)?,
            "dbname" => db.dbname = v.clone(),
            "user" => db.user = text(),
            "password" => db.password = Some(v.clone()),
            "pool_size" => db.pool_size = Some(parse_count(&v).map_err(invalid)?),
            "min_pool_size" => db.min_pool_size = Some(parse_count(&v).map_err(invalid)?),
            "reserve_pool" | "reserve_pool_size" => {
                db.reserve_pool = Some(parse_count(&v).map_err(invalid)?)
            }
            "pool_mode" => db.pool_mode = Some(v.parse::<PoolMode>().map_err(invalid)?),
            "max_db_connections" => db.max_db_connections = Some(parse_count(&v).map_err(invalid)?),
            "auth_user" => db.auth_user = text(),
            "application_name" => db.application_name = text(),
            "client_encoding" => db.client_encoding = text(),
            "datestyle" => db.datestyle = text(),
            "timezone" => db.timezone = text(),
            "connect_query" => db.connect_query = text(),
            _ if UNSUPPORTED_DATABASE_KEYS.contains(&key.as_str()) => warnings.push(at.warning(
                format!("`{key}` (database \"{name}\") is not supported by pgberth yet, ignored"),
            )),
            _ => warnings.push(at.warning(format!(
                "unknown parameter `{key}` for database \"{name}\", ignored"
            ))),
        }
    }
    if db.dbname.is_empty() && name != "*" {
        db.dbname = name.to_string();
    }
    Ok(db)
}

/// Parses the value of a `[users]` line.
pub(crate) fn parse_user(
    name: &str,
    value: &str,
    at: At<'_>,
    warnings: &mut Vec<Diagnostic>,
) -> Result<UserSettings, ConfigError> {
    let pairs = connstring::parse(value)
        .map_err(|message| at.invalid(format!("user \"{name}\": {message}")))?;
    let mut user = UserSettings::default();
    for (key, v) in pairs {
        let invalid =
            |expected: String| at.invalid_value(&format!("{key} of user \"{name}\""), &v, expected);
        match key.as_str() {
            "pool_mode" => user.pool_mode = Some(v.parse::<PoolMode>().map_err(invalid)?),
            "max_user_connections" => {
                user.max_user_connections = Some(parse_count(&v).map_err(invalid)?)
            }
            _ if UNSUPPORTED_USER_KEYS.contains(&key.as_str()) => warnings.push(at.warning(
                format!("`{key}` (user \"{name}\") is not supported by pgberth yet, ignored"),
            )),
            _ => warnings.push(at.warning(format!(
                "unknown parameter `{key}` for user \"{name}\", ignored"
            ))),
        }
    }
    Ok(user)
}
