//! `auth_query`: the secret of a user missing from `auth_file`, looked up on the server. The
//! query runs as `auth_user` (its password from the userlist) on a pooled server connection to
//! `auth_dbname`, else to the client's database, with the user name as `$1` over the extended
//! protocol. Found secrets are cached for a short while so that a connection storm does not
//! run one query per login.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::config::{Config, Database, Secret};
use crate::pool::CheckoutError;
use crate::protocol::build::{begin, cstr, patch_len};
use crate::protocol::error::{ServerError, parse_error_fields};
use crate::protocol::{ErrorResponse, SqlState, TxStatus, backend};
use crate::stream::{ReadError, Stream, read_message};

/// How long a looked-up secret is used before the query runs again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Largest message accepted from the server while the lookup runs.
const MAX_LOOKUP_MESSAGE: usize = 1 << 16;

/// DataRow: the one backend message only this module reads.
const DATA_ROW: u8 = b'D';

/// Above this many cached users, expired entries are dropped on insert.
const PRUNE_ABOVE: usize = 1024;

/// Why a lookup gave no answer (an unknown user is not an error: it is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum AuthQueryError {
    #[error("auth_dbname \"{0}\" is not in [databases]")]
    NoAuthDatabase(String),
    #[error("auth_user \"{user}\" got no server connection: {source}")]
    Checkout {
        user: String,
        #[source]
        source: CheckoutError,
    },
    #[error("the server refused it: {0}")]
    Query(ServerError),
    #[error("it must return the password in its second column")]
    Shape,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server connection failed: {0}")]
    Read(#[from] ReadError),
    #[error("the server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server left a transaction open")]
    NotIdle,
}

impl AuthQueryError {
    /// The error the client gets: the server's SQLSTATE when the query itself failed, else
    /// 08006. The message names auth_query; it never carries a secret.
    pub fn to_client(&self, database: &str) -> ErrorResponse {
        let code = match self {
            AuthQueryError::Query(e) => {
                SqlState::parse(&e.code).unwrap_or(SqlState::CONNECTION_FAILURE)
            }
            _ => SqlState::CONNECTION_FAILURE,
        };
        ErrorResponse::fatal(
            code,
            format!("auth_query failed for database \"{database}\": {self}"),
        )
    }
}

/// Secrets found by `auth_query`, per (client database, user), for [`CACHE_TTL`]. Unknown
/// users are not cached.
#[derive(Debug, Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<(String, String), (Instant, Secret)>>,
}

impl SecretCache {
    pub fn get(&self, database: &str, user: &str) -> Option<Secret> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (database.to_owned(), user.to_owned());
        entries
            .get(&key)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, secret)| secret.clone())
    }

    pub fn insert(&self, database: &str, user: &str, secret: Secret) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= PRUNE_ABOVE {
            entries.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        }
        let key = (database.to_owned(), user.to_owned());
        entries.insert(key, (Instant::now(), secret));
    }

    /// Drops one entry: a login failed against it, so the next one asks the server again
    /// (the password may have changed).
    pub fn forget(&self, database: &str, user: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&(database.to_owned(), user.to_owned()));
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The `auth_user` for clients of `db`: the database line's, else `[pgbouncer]`'s.
pub fn auth_user<'a>(config: &'a Config, db: &'a Database) -> Option<&'a str> {
    db.auth_user
        .as_deref()
        .or(config.general.auth_user.as_deref())
        .filter(|u| !u.is_empty())
}

/// The secret of `user` (not in the userlist) for a client of `db`: `Ok(None)` when no
/// `auth_user` applies, or the query returns no row or NULL.
pub async fn lookup(
    app: &App,
    config: &Config,
    db: &Database,
    user: &str,
) -> Result<Option<Secret>, AuthQueryError> {
    let Some(auth_user) = auth_user(config, db) else {
        return Ok(None);
    };
    if let Some(secret) = app.auth_cache.get(&db.name, user) {
        return Ok(Some(secret));
    }
    let auth_db = match &config.general.auth_dbname {
        Some(name) => config
            .database(name)
            .ok_or_else(|| AuthQueryError::NoAuthDatabase(name.clone()))?,
        None => crate::config::FoundDatabase::Borrowed(db),
    };
    let pool = app.pool(&auth_db, auth_user);
    let mut conn = pool
        .checkout()
        .await
        .map_err(|source| AuthQueryError::Checkout {
            user: auth_user.to_owned(),
            source,
        })?;
    // Clients of a storm waited for this connection; the first one may have filled the cache.
    if let Some(secret) = app.auth_cache.get(&db.name, user) {
        pool.checkin(conn);
        return Ok(Some(secret));
    }
    let timeout = pool.settings().server_connect_timeout;
    let result = run(&mut conn.stream, &config.general.auth_query, user, timeout).await;
    // After a server error the connection is back at ReadyForQuery; anything else leaves it
    // in an unknown state and it is closed.
    if matches!(result, Ok(_) | Err(AuthQueryError::Query(_))) {
        pool.checkin(conn);
    }
    let secret = result?;
    if let Some(secret) = &secret {
        app.auth_cache.insert(&db.name, user, secret.clone());
    }
    Ok(secret)
}

/// Runs the lookup on one server connection, within `timeout` (zero: unbounded).
async fn run(
    stream: &mut Stream,
    sql: &str,
    user: &str,
    timeout: Duration,
) -> Result<Option<Secret>, AuthQueryError> {
    let work = async {
        let mut out = Vec::with_capacity(64 + sql.len() + user.len());
        encode_lookup(&mut out, sql, user);
        stream.write_all(&out).await?;
        read_lookup(stream).await
    };
    if timeout.is_zero() {
        work.await
    } else {
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| AuthQueryError::Timeout(timeout))?
    }
}

/// Reads the answer up to ReadyForQuery: the second column of the first row.
async fn read_lookup(stream: &mut Stream) -> Result<Option<Secret>, AuthQueryError> {
    let mut buf = Vec::with_capacity(256);
    let mut secret = None;
    let mut first_row = true;
    let mut failed = None;
    loop {
        match read_message(stream, &mut buf, MAX_LOOKUP_MESSAGE).await? {
            DATA_ROW if first_row => {
                first_row = false;
                match second_column(&buf[5..]) {
                    Some(value) => secret = value.map(Secret::classify),
                    None => failed = failed.or(Some(AuthQueryError::Shape)),
                }
            }
            backend::ERROR_RESPONSE => {
                failed = Some(AuthQueryError::Query(parse_error_fields(&buf[5..])))
            }
            backend::READY_FOR_QUERY => {
                if TxStatus::from_byte(buf.get(5).copied().unwrap_or(0)) != Some(TxStatus::Idle) {
                    return Err(AuthQueryError::NotIdle);
                }
                return match failed {
                    Some(e) => Err(e),
                    None => Ok(secret),
                };
            }
            _ => {}
        }
    }
}

/// The second column of a DataRow body as text: `Some(None)` for NULL, `None` when the row
/// has fewer than two columns or is malformed.
fn second_column(body: &[u8]) -> Option<Option<&str>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if count < 2 {
        return None;
    }
    let mut rest = &body[2..];
    for column in 0..2 {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        let value = if len < 0 {
            None
        } else {
            let bytes = rest.get(..len as usize)?;
            rest = &rest[len as usize..];
            Some(std::str::from_utf8(bytes).ok()?)
        };
        if column == 1 {
            return Some(value);
        }
    }
    None
}

/// Parse (unnamed statement, parameter type left to the server), Bind `$1` = `user` as text,
/// Describe the portal, Execute, Sync.
fn encode_lookup(out: &mut Vec<u8>, sql: &str, user: &str) {
    let start = begin(out, b'P');
    cstr(out, "");
    cstr(out, sql);
    out.extend_from_slice(&0i16.to_be_bytes());
    patch_len(out, start);

    let start = begin(out, b'B');
    cstr(out, "");
    cstr(out, "");
    out.extend_from_slice(&0i16.to_be_bytes()); // parameter formats: all text
    out.extend_from_slice(&1i16.to_be_bytes());
    out.extend_from_slice(&(user.len() as i32).to_be_bytes());
    out.extend_from_slice(user.as_bytes());
    out.extend_from_slice(&0i16.to_be_bytes()); // result formats: all text
    patch_len(out, start);

    let start = begin(out, b'D');
    out.push(b'P');
    cstr(out, "");
    patch_len(out, start);

    let start = begin(out, b'E');
    cstr(out, "");
    out.extend_from_slice(&0i32.to_be_bytes());
    patch_len(out, start);

    out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(columns: &[Option<&str>]) -> Vec<u8> {
        let mut body = (columns.len() as i16).to_be_bytes().to_vec();
        for c in columns {
            match c {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn second_column_reads_text_null_and_refuses_short_rows() {
        let row = data_row(&[Some("bob"), Some("md5abc")]);
        assert_eq!(second_column(&row), Some(Some("md5abc")));
        assert_eq!(second_column(&data_row(&[Some("bob"), None])), Some(None));
        assert_eq!(second_column(&data_row(&[Some("bob")])), None);
        assert_eq!(second_column(&row[..row.len() - 1]), None);
        assert_eq!(second_column(&[]), None);
        let mut huge = data_row(&[Some("bob"), Some("x")]);
        huge[9..13].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(second_column(&huge), None);
    }

    #[test]
    fn lookup_messages_are_parse_bind_describe_execute_sync() {
        let mut out = Vec::new();
        encode_lookup(&mut out, "SELECT $1", "bob");
        let mut tags = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            tags.push(rest[0]);
            rest = &rest[1 + len..];
        }
        assert_eq!(tags, b"PBDES");
        // Bind: portal "", statement "", 0 formats, 1 parameter of 3 bytes "bob", 0 formats.
        let bind_at = out.iter().position(|&b| b == b'B').unwrap();
        assert_eq!(
            &out[bind_at + 5..bind_at + 5 + 15],
            b"\0\0\0\0\0\x01\0\0\0\x03bob\0\0"
        );
    }

    #[test]
    fn cache_entries_expire_and_can_be_forgotten() {
        let cache = SecretCache::default();
        cache.insert("app", "bob", Secret::classify("pw"));
        assert!(cache.get("app", "bob").is_some());
        assert!(cache.get("other", "bob").is_none());
        cache.forget("app", "bob");
        assert!(cache.get("app", "bob").is_none());
        cache.insert("app", "bob", Secret::classify("pw"));
        cache
            .entries
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|(at, _)| *at -= CACHE_TTL);
        assert!(cache.get("app", "bob").is_none());
    }
}
