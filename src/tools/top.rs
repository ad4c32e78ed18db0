//! `pgberth top`: a live terminal view of a running pgberth's admin console. It owns the
//! conninfo parsing (libpq keyword/value strings and URLs), the console connection (plain or
//! TLS with libpq's sslmodes), sampling SHOW POOLS and SHOW STATS, turning two samples into
//! rates and averages, and rendering a snapshot either as plain text (`--once`, or when stdout
//! is not a terminal) or as a full-screen view refreshed every interval.
//!
//! Rendering is pure: [`render_text`] and [`draw`] take a [`Snapshot`] and nothing else, so
//! both can be tested without a console or a terminal.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, Wrap};
use tokio_postgres::SimpleQueryMessage;

use crate::config::SslMode;

/// The console `pgberth top` connects to when no conninfo is given.
pub const DEFAULT_CONNINFO: &str = "host=127.0.0.1 port=6432 dbname=pgbouncer user=pgbouncer";

/// How long a connection attempt may take unless `connect_timeout` says otherwise.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Connection parameters
// ---------------------------------------------------------------------------------------------

/// Where and how to reach the admin console, from a libpq-style conninfo.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnInfo {
    /// A host name or address, or a directory holding the unix socket (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<String>,
    /// libpq's sslmode; `allow` is taken as `prefer`.
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl Default for ConnInfo {
    fn default() -> ConnInfo {
        ConnInfo {
            host: "127.0.0.1".into(),
            port: 6432,
            user: "pgbouncer".into(),
            dbname: "pgbouncer".into(),
            password: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl ConnInfo {
    /// Parses `key=value ...` (values may be single-quoted) or a `postgres://` /
    /// `postgresql://` URL. Keys not given keep the defaults of [`DEFAULT_CONNINFO`] and
    /// sslmode `prefer`, as in libpq.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        let mut info = ConnInfo::default();
        let text = text.trim();
        let pairs = if let Some(rest) = text
            .strip_prefix("postgresql://")
            .or_else(|| text.strip_prefix("postgres://"))
        {
            parse_url(rest)?
        } else {
            parse_keywords(text)?
        };
        for (key, value) in pairs {
            info.set(&key, value)?;
        }
        Ok(info)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "host" | "hostaddr" => {
                if value.contains(',') {
                    return Err(format!("{key}={value}: only one host is supported"));
                }
                if !value.is_empty() {
                    self.host = value;
                }
            }
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| format!("port={value}: not a port number"))?;
            }
            "user" => self.user = value,
            "dbname" => self.dbname = value,
            "password" => self.password = Some(value),
            "sslmode" => {
                self.sslmode = match value.parse::<SslMode>() {
                    Ok(SslMode::Allow) => SslMode::Prefer,
                    Ok(mode) => mode,
                    Err(_) => {
                        return Err(format!(
                            "sslmode={value}: expected disable, allow, prefer, require, \
                             verify-ca or verify-full"
                        ));
                    }
                };
            }
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "sslcert" => self.sslcert = Some(PathBuf::from(value)),
            "sslkey" => self.sslkey = Some(PathBuf::from(value)),
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("connect_timeout={value}: not a number of seconds"))?;
                self.connect_timeout = if secs == 0 {
                    DEFAULT_CONNECT_TIMEOUT
                } else {
                    Duration::from_secs(secs)
                };
            }
            // Accepted and not needed here.
            "application_name" | "sslnegotiation" | "gssencmode" | "target_session_attrs" => {}
            other => return Err(format!("unknown conninfo keyword \"{other}\"")),
        }
        Ok(())
    }

    /// The password to use: the conninfo's, else `$PGPASSWORD`.
    pub fn with_env_password(mut self) -> ConnInfo {
        if self.password.is_none() {
            self.password = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty());
        }
        self
    }

    fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `host:port` (or the socket path), for messages and the title line.
    pub fn address(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// libpq's `key = value` list: values unquoted (backslash escapes) or single-quoted.
fn parse_keywords(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\" in the conninfo"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().unwrap_or('\\')),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value for \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().unwrap_or('\\'));
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The part of a URL after `postgresql://`: `[user[:password]@][host][:port][/dbname][?k=v&...]`.
fn parse_url(rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".into(), percent_decode(user)?));
            }
            if let Some(p) = password {
                pairs.push(("password".into(), percent_decode(p)?));
            }
            hostport
        }
        None => authority,
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unterminated \"[\" in the URL's host \"{hostport}\""))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        pairs.push(("host".into(), percent_decode(host)?));
    }
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        pairs.push(("port".into(), port.to_owned()));
    }
    if !path.is_empty() {
        pairs.push(("dbname".into(), percent_decode(path)?));
    }
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| format!("URL parameter \"{param}\" has no \"=\""))?;
        pairs.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in \"{text}\""))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("\"{text}\" is not UTF-8 once decoded"))
}

// ---------------------------------------------------------------------------------------------
// The console connection
// ---------------------------------------------------------------------------------------------

/// Connects to the console as `info` says; the connection task runs on the current runtime.
pub async fn connect(info: &ConnInfo) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&info.user)
        .dbname(&info.dbname)
        .port(info.port)
        .connect_timeout(info.connect_timeout)
        .application_name("pgberth top");
    if info.is_unix_socket() {
        config.host_path(&info.host);
    } else {
        config.host(&info.host);
    }
    if let Some(password) = &info.password {
        config.password(password);
    }
    let failed = || format!("cannot connect to {}", info.address());
    // As in libpq, TLS is not used over a unix socket.
    let client = if info.sslmode == SslMode::Disable || info.is_unix_socket() {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))
            .with_context(failed)?;
        tokio::spawn(connection);
        client
    } else {
        let tls = crate::tls::libpq_client_config(
            info.sslmode,
            info.sslrootcert.as_deref(),
            match (&info.sslcert, &info.sslkey) {
                (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                (None, None) => None,
                _ => anyhow::bail!("sslcert and sslkey go together"),
            },
        )?;
        config.ssl_mode(if info.sslmode == SslMode::Prefer {
            tokio_postgres::config::SslMode::Prefer
        } else {
            tokio_postgres::config::SslMode::Require
        });
        let (client, connection) = config
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))
            .with_context(failed)?;
        tokio::spawn(connection);
        client
    };
    Ok(client)
}

/// One line for an error: the server's message when it sent one, else the cause.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                let _ = write!(text, ": {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// A result set of a simple query, with columns looked up by name.
struct ResultSet {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    async fn query(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<ResultSet> {
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{sql}: {}", describe(&e)))?;
        let mut set = ResultSet {
            columns: Vec::new(),
            rows: Vec::new(),
        };
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    set.columns = columns.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(row) => {
                    set.rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        Ok(set)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Index of a column the caller cannot do without.
    fn required(&self, command: &str, name: &str) -> anyhow::Result<usize> {
        self.index(name)
            .ok_or_else(|| anyhow::anyhow!("{command} has no column \"{name}\""))
    }
}

fn text_at(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

fn number_at(row: &[Option<String>], i: Option<usize>) -> u64 {
    i.and_then(|i| row.get(i).cloned().flatten())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Samples and snapshots
// ---------------------------------------------------------------------------------------------

/// One row of SHOW POOLS, the columns top shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub cl_active: u64,
    pub cl_waiting: u64,
    pub sv_active: u64,
    pub sv_idle: u64,
    /// Longest wait of a waiting client, in microseconds (`maxwait` and `maxwait_us`).
    pub maxwait_us: u64,
    pub pool_mode: String,
}

/// The SHOW STATS totals of one database that top uses (times in microseconds).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsRow {
    pub database: String,
    pub xact_count: u64,
    pub query_count: u64,
    /// `total_server_assignment_count` when the console has it.
    pub server_assignment_count: Option<u64>,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

/// What one round of queries returned.
#[derive(Debug, Clone)]
pub struct Sample {
    pub taken: Instant,
    pub version: Option<String>,
    pub pools: Vec<PoolRow>,
    /// SHOW STATS, or why it could not be read.
    pub stats: Result<Vec<StatsRow>, String>,
}

/// Reads SHOW POOLS (an error here fails the sample) and SHOW STATS (an error here is kept
/// in the sample: the pools are still worth showing).
pub async fn sample(client: &tokio_postgres::Client) -> anyhow::Result<Sample> {
    let pools = ResultSet::query(client, "SHOW POOLS").await?;
    let taken = Instant::now();
    let stats = match ResultSet::query(client, "SHOW STATS").await {
        Ok(set) => stats_rows(&set).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let version = ResultSet::query(client, "SHOW VERSION")
        .await
        .ok()
        .and_then(|set| set.rows.first().map(|row| text_at(row, 0)));
    Ok(Sample {
        taken,
        version,
        pools: pool_rows(&pools)?,
        stats,
    })
}

fn pool_rows(set: &ResultSet) -> anyhow::Result<Vec<PoolRow>> {
    let database = set.required("SHOW POOLS", "database")?;
    let user = set.required("SHOW POOLS", "user")?;
    let col = |name| set.index(name);
    Ok(set
        .rows
        .iter()
        .map(|row| PoolRow {
            database: text_at(row, database),
            user: text_at(row, user),
            cl_active: number_at(row, col("cl_active")),
            cl_waiting: number_at(row, col("cl_waiting")),
            sv_active: number_at(row, col("sv_active")),
            sv_idle: number_at(row, col("sv_idle")),
            maxwait_us: number_at(row, col("maxwait")) * 1_000_000
                + number_at(row, col("maxwait_us")),
            pool_mode: col("pool_mode")
                .map(|i| text_at(row, i))
                .unwrap_or_default(),
        })
        .collect())
}

fn stats_rows(set: &ResultSet) -> anyhow::Result<Vec<StatsRow>> {
    const COMMAND: &str = "SHOW STATS";
    let database = set.required(COMMAND, "database")?;
    let xact_count = set.required(COMMAND, "total_xact_count")?;
    let query_count = set.required(COMMAND, "total_query_count")?;
    let xact_time = set.required(COMMAND, "total_xact_time")?;
    let query_time = set.required(COMMAND, "total_query_time")?;
    let wait_time = set.required(COMMAND, "total_wait_time")?;
    let assignments = set.index("total_server_assignment_count");
    Ok(set
        .rows
        .iter()
        .map(|row| StatsRow {
            database: text_at(row, database),
            xact_count: number_at(row, Some(xact_count)),
            query_count: number_at(row, Some(query_count)),
            server_assignment_count: assignments.map(|i| number_at(row, Some(i))),
            xact_time: number_at(row, Some(xact_time)),
            query_time: number_at(row, Some(query_time)),
            wait_time: number_at(row, Some(wait_time)),
        })
        .collect())
}

/// Rates and averages of one database between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub tps: f64,
    pub qps: f64,
    /// Average microseconds per transaction, query and wait; `None` when nothing happened.
    pub avg_xact_us: Option<f64>,
    pub avg_query_us: Option<f64>,
    pub avg_wait_us: Option<f64>,
}

/// One database's line of statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct DbStats {
    pub totals: StatsRow,
    /// `None` until there are two samples (or after a counter went backwards).
    pub rates: Option<Rates>,
}

/// What the statistics part of the view shows.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsView {
    Unavailable(String),
    Available {
        /// The time between the two samples the rates come from.
        interval: Option<Duration>,
        databases: Vec<DbStats>,
    },
}

/// Everything a rendering needs; rendering reads nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The console's address, and whether the connection is encrypted.
    pub target: String,
    pub version: Option<String>,
    pub pools: Vec<PoolRow>,
    pub stats: StatsView,
    /// A problem to show above the tables (e.g. a lost connection).
    pub status: Option<String>,
}

/// Combines the current sample with the previous one (for rates).
pub fn snapshot(target: &str, previous: Option<&Sample>, current: &Sample) -> Snapshot {
    let stats = match &current.stats {
        Err(e) => StatsView::Unavailable(e.clone()),
        Ok(rows) => {
            let before = previous.and_then(|p| p.stats.as_ref().ok().map(|s| (p.taken, s)));
            let interval = before.map(|(taken, _)| current.taken.saturating_duration_since(taken));
            StatsView::Available {
                interval,
                databases: rows
                    .iter()
                    .map(|row| DbStats {
                        totals: row.clone(),
                        rates: before.and_then(|(taken, prev)| {
                            let prev = prev.iter().find(|p| p.database == row.database)?;
                            rates(prev, row, current.taken.saturating_duration_since(taken))
                        }),
                    })
                    .collect(),
            }
        }
    };
    Snapshot {
        target: target.to_owned(),
        version: current.version.clone(),
        pools: current.pools.clone(),
        stats,
        status: None,
    }
}

/// Rates from two totals `elapsed` apart. Averages divide the time deltas by the count
/// deltas; the wait is per server assignment when the console counts them, else per
/// transaction.
pub fn rates(prev: &StatsRow, cur: &StatsRow, elapsed: Duration) -> Option<Rates> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let d = |a: u64, b: u64| b.checked_sub(a);
    let xacts = d(prev.xact_count, cur.xact_count)?;
    let queries = d(prev.query_count, cur.query_count)?;
    let avg = |time: Option<u64>, count: u64| match (time, count) {
        (Some(t), c) if c > 0 => Some(t as f64 / c as f64),
        _ => None,
    };
    let waits = match (prev.server_assignment_count, cur.server_assignment_count) {
        (Some(a), Some(b)) => d(a, b)?,
        _ => xacts,
    };
    Some(Rates {
        tps: xacts as f64 / secs,
        qps: queries as f64 / secs,
        avg_xact_us: avg(d(prev.xact_time, cur.xact_time), xacts),
        avg_query_us: avg(d(prev.query_time, cur.query_time), queries),
        avg_wait_us: avg(d(prev.wait_time, cur.wait_time), waits),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure)
// ---------------------------------------------------------------------------------------------

const POOL_HEADER: [&str; 8] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "sv_active",
    "sv_idle",
    "maxwait",
    "pool_mode",
];

const STATS_HEADER: [&str; 8] = [
    "database",
    "tps",
    "qps",
    "avg_xact",
    "avg_query",
    "avg_wait",
    "xacts",
    "queries",
];

/// A duration in microseconds as µs, ms or s.
pub fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn pool_cells(pool: &PoolRow) -> Vec<String> {
    vec![
        pool.database.clone(),
        pool.user.clone(),
        pool.cl_active.to_string(),
        pool.cl_waiting.to_string(),
        pool.sv_active.to_string(),
        pool.sv_idle.to_string(),
        if pool.maxwait_us == 0 {
            "0".into()
        } else {
            format_us(pool.maxwait_us as f64)
        },
        pool.pool_mode.clone(),
    ]
}

fn stats_cells(db: &DbStats) -> Vec<String> {
    let dash = || "-".to_owned();
    let time = |t: Option<f64>| t.map(format_us).unwrap_or_else(dash);
    let (tps, qps, xact, query, wait) = match &db.rates {
        Some(r) => (
            format!("{:.1}", r.tps),
            format!("{:.1}", r.qps),
            time(r.avg_xact_us),
            time(r.avg_query_us),
            time(r.avg_wait_us),
        ),
        None => (dash(), dash(), dash(), dash(), dash()),
    };
    vec![
        db.totals.database.clone(),
        tps,
        qps,
        xact,
        query,
        wait,
        db.totals.xact_count.to_string(),
        db.totals.query_count.to_string(),
    ]
}

fn title(snapshot: &Snapshot) -> String {
    match &snapshot.version {
        Some(version) => format!("pgberth top: {} ({version})", snapshot.target),
        None => format!("pgberth top: {}", snapshot.target),
    }
}

fn waiting_line(pools: &[PoolRow]) -> String {
    let waiting: u64 = pools.iter().map(|p| p.cl_waiting).sum();
    let longest = pools.iter().map(|p| p.maxwait_us).max().unwrap_or(0);
    if waiting == 0 {
        "clients waiting: 0".into()
    } else {
        format!(
            "clients waiting: {waiting} (longest {})",
            format_us(longest as f64)
        )
    }
}

fn stats_title(stats: &StatsView) -> String {
    match stats {
        StatsView::Unavailable(_) => "stats".into(),
        StatsView::Available {
            interval: Some(i), ..
        } => format!("stats (rates over {:.1} s)", i.as_secs_f64()),
        StatsView::Available { interval: None, .. } => {
            "stats (totals; rates need two samples)".into()
        }
    }
}

/// Left-aligned columns separated by two spaces.
fn text_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The plain-text snapshot `--once` prints.
pub fn render_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", title(snapshot));
    if let Some(status) = &snapshot.status {
        let _ = writeln!(out, "{status}");
    }
    out.push('\n');
    let _ = writeln!(out, "pools");
    let pools: Vec<Vec<String>> = snapshot.pools.iter().map(pool_cells).collect();
    text_table(&mut out, &POOL_HEADER, &pools);
    let _ = writeln!(out, "{}", waiting_line(&snapshot.pools));
    out.push('\n');
    let _ = writeln!(out, "{}", stats_title(&snapshot.stats));
    match &snapshot.stats {
        StatsView::Unavailable(why) => {
            let _ = writeln!(out, "stats unavailable: {why}");
        }
        StatsView::Available { databases, .. } => {
            let rows: Vec<Vec<String>> = databases.iter().map(stats_cells).collect();
            text_table(&mut out, &STATS_HEADER, &rows);
        }
    }
    out
}

/// Column widths for a ratatui table: the widest cell of each column.
fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<Constraint> {
    header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0);
            Constraint::Length(widest as u16)
        })
        .collect()
}

fn table<'a>(header: &[&'a str], rows: Vec<Vec<String>>, title: String) -> Table<'a> {
    let constraints = widths(header, &rows);
    Table::new(rows.into_iter().map(Row::new), constraints)
        .header(
            Row::new(header.iter().copied())
                .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED)),
        )
        .column_spacing(2)
        .block(Block::bordered().title(title))
}

/// Draws the full-screen view of a snapshot.
pub fn draw(frame: &mut Frame, snapshot: &Snapshot) {
    let pool_rows: Vec<Vec<String>> = snapshot.pools.iter().map(pool_cells).collect();
    let pools_height = pool_rows.len() as u16 + 3;
    let [head, pools, waiting, stats, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Max(pools_height.max(4)),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let mut head_lines = vec![Line::styled(
        title(snapshot),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(status) = &snapshot.status {
        head_lines.push(Line::raw(status.clone()));
    }
    frame.render_widget(Paragraph::new(head_lines), head);
    frame.render_widget(table(&POOL_HEADER, pool_rows, "pools".into()), pools);
    frame.render_widget(Paragraph::new(waiting_line(&snapshot.pools)), waiting);
    match &snapshot.stats {
        StatsView::Unavailable(why) => frame.render_widget(
            Paragraph::new(format!("stats unavailable: {why}"))
                .wrap(Wrap { trim: true })
                .block(Block::bordered().title(stats_title(&snapshot.stats))),
            stats,
        ),
        StatsView::Available { databases, .. } => frame.render_widget(
            table(
                &STATS_HEADER,
                databases.iter().map(stats_cells).collect(),
                stats_title(&snapshot.stats),
            ),
            stats,
        ),
    }
    frame.render_widget(Paragraph::new("q, Esc or Ctrl-C: quit"), keys);
}

// ---------------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------------

/// Options of `pgberth top`.
#[derive(Debug, Clone)]
pub struct TopOptions {
    pub conninfo: ConnInfo,
    /// Print one plain-text snapshot and exit (also when stdout is not a terminal).
    pub once: bool,
    /// Refresh period; with `--once`, the time between the two samples the rates come from
    /// (zero: one sample, totals only).
    pub interval: Duration,
}

/// Runs `pgberth top` to the end: one snapshot, or the live view until the user quits.
pub fn run(options: TopOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the runtime")?;
    runtime.block_on(async {
        if options.once || !std::io::stdout().is_terminal() {
            let text = once(&options).await?;
            print!("{text}");
            Ok(())
        } else {
            live(&options).await
        }
    })
}

/// `address` plus whether TLS is in use, for the title line.
fn target(info: &ConnInfo) -> String {
    let tls = match info.sslmode {
        _ if info.is_unix_socket() => "unix socket",
        SslMode::Disable => "no TLS",
        SslMode::Allow | SslMode::Prefer => "TLS if offered",
        SslMode::Require => "TLS",
        SslMode::VerifyCa => "TLS, CA verified",
        SslMode::VerifyFull => "TLS, CA and host verified",
    };
    format!(
        "{} db={} user={} ({tls})",
        info.address(),
        info.dbname,
        info.user
    )
}

/// Two samples `interval` apart (one when SHOW STATS fails or the interval is zero), rendered
/// as text.
pub async fn once(options: &TopOptions) -> anyhow::Result<String> {
    let client = connect(&options.conninfo).await?;
    let first = sample(&client).await?;
    let target = target(&options.conninfo);
    if first.stats.is_err() || options.interval.is_zero() {
        return Ok(render_text(&snapshot(&target, None, &first)));
    }
    tokio::time::sleep(options.interval).await;
    let second = sample(&client).await?;
    Ok(render_text(&snapshot(&target, Some(&first), &second)))
}

/// What the terminal sends the live view.
enum Input {
    Quit,
    Redraw,
}

/// Reads terminal events on a thread of its own until the receiver is gone.
fn spawn_input_thread() -> tokio::sync::mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => {
                    let _ = tx.send(Input::Quit);
                    return;
                }
            }
            let input = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Input::Quit,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        Input::Quit
                    }
                    _ => continue,
                },
                Ok(Event::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => Input::Quit,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
    rx
}

/// The full-screen view, refreshed every interval; reconnects when the console goes away.
async fn live(options: &TopOptions) -> anyhow::Result<()> {
    // Connect before taking over the terminal, so that a wrong conninfo fails plainly.
    let client = connect(&options.conninfo).await?;
    let mut terminal = ratatui::try_init().context("could not set up the terminal")?;
    let result = live_loop(options, client, &mut terminal).await;
    ratatui::restore();
    result
}

async fn live_loop(
    options: &TopOptions,
    client: tokio_postgres::Client,
    terminal: &mut ratatui::DefaultTerminal,
) -> anyhow::Result<()> {
    let target = target(&options.conninfo);
    let mut client = Some(client);
    let mut previous: Option<Sample> = None;
    let mut shown = Snapshot {
        target: target.clone(),
        version: None,
        pools: Vec::new(),
        stats: StatsView::Unavailable("waiting for the first sample".into()),
        status: None,
    };
    let mut input = spawn_input_thread();
    let mut ticker = tokio::time::interval(options.interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = input.recv() => match event {
                Some(Input::Redraw) => {}
                Some(Input::Quit) | None => return Ok(()),
            },
            _ = ticker.tick() => {
                if client.is_none() {
                    match connect(&options.conninfo).await {
                        Ok(c) => client = Some(c),
                        Err(e) => shown.status = Some(format!("{e:#}; retrying")),
                    }
                }
                if let Some(c) = &client {
                    match sample(c).await {
                        Ok(current) => {
                            shown = snapshot(&target, previous.as_ref(), &current);
                            previous = Some(current);
                        }
                        Err(e) => {
                            shown.status = Some(format!("connection lost: {e:#}; reconnecting"));
                            client = None;
                            previous = None;
                        }
                    }
                }
            }
        }
        terminal
            .draw(|frame| draw(frame, &shown))
            .context("could not draw")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_snapshot() -> Snapshot {
        let pool = PoolRow {
            database: "app".into(),
            user: "alice".into(),
            cl_active: 3,
            cl_waiting: 2,
            sv_active: 1,
            sv_idle: 4,
            maxwait_us: 1_500_000,
            pool_mode: "transaction".into(),
        };
        let totals = StatsRow {
            database: "app".into(),
            xact_count: 1200,
            query_count: 2400,
            server_assignment_count: Some(1200),
            xact_time: 600_000,
            query_time: 480_000,
            wait_time: 12_000,
        };
        Snapshot {
            target: "127.0.0.1:6432 db=pgbouncer user=admin (TLS)".into(),
            version: Some("pgberth 0.1.0".into()),
            pools: vec![pool],
            stats: StatsView::Available {
                interval: Some(Duration::from_secs(2)),
                databases: vec![DbStats {
                    totals,
                    rates: Some(Rates {
                        tps: 50.0,
                        qps: 100.0,
                        avg_xact_us: Some(500.0),
                        avg_query_us: Some(2_500.0),
                        avg_wait_us: Some(10.0),
                    }),
                }],
            },
            status: None,
        }
    }

    #[test]
    fn render_text_of_a_fixed_snapshot_is_a_pool_table_and_a_stats_line_per_database() {
        let text = render_text(&fixed_snapshot());
        let expected = "\
pgberth top: 127.0.0.1:6432 db=pgbouncer user=admin (TLS) (pgberth 0.1.0)

pools
database  user   cl_active  cl_waiting  sv_active  sv_idle  maxwait  pool_mode
app       alice  3          2           1          4        1.50 s   transaction
clients waiting: 2 (longest 1.50 s)

stats (rates over 2.0 s)
database  tps   qps    avg_xact  avg_query  avg_wait  xacts  queries
app       50.0  100.0  500 µs    2.5 ms     10 µs     1200   2400
";
        assert_eq!(text, expected);
    }

    #[test]
    fn render_text_says_stats_unavailable_and_still_shows_pools() {
        let mut snapshot = fixed_snapshot();
        snapshot.stats = StatsView::Unavailable("SHOW STATS: ERROR: unknown command".into());
        let text = render_text(&snapshot);
        assert!(text.contains("stats unavailable: SHOW STATS: ERROR: unknown command"));
        assert!(text.contains("app       alice  3"), "{text}");
    }

    #[test]
    fn draw_puts_pools_and_stats_on_the_screen() {
        let backend = ratatui::backend::TestBackend::new(100, 20);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal.draw(|f| draw(f, &fixed_snapshot())).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|line| line.concat() + "\n")
            .collect();
        assert!(screen.contains("app"), "{screen}");
        assert!(screen.contains("alice"), "{screen}");
        assert!(screen.contains("transaction"), "{screen}");
        assert!(screen.contains("50.0"), "{screen}");
        assert!(screen.contains("clients waiting: 2"), "{screen}");
        assert!(screen.contains("q, Esc or Ctrl-C: quit"), "{screen}");
    }

    #[test]
    fn rates_divide_deltas_by_elapsed_time_and_counts() {
        let prev = StatsRow {
            database: "app".into(),
            xact_count: 100,
            query_count: 200,
            server_assignment_count: Some(100),
            xact_time: 10_000,
            query_time: 8_000,
            wait_time: 1_000,
        };
        let cur = StatsRow {
            xact_count: 300,
            query_count: 600,
            server_assignment_count: Some(150),
            xact_time: 50_000,
            query_time: 48_000,
            wait_time: 6_000,
            ..prev.clone()
        };
        let r = rates(&prev, &cur, Duration::from_secs(2)).unwrap();
        assert_eq!(r.tps, 100.0);
        assert_eq!(r.qps, 200.0);
        assert_eq!(r.avg_xact_us, Some(200.0));
        assert_eq!(r.avg_query_us, Some(100.0));
        assert_eq!(r.avg_wait_us, Some(100.0), "per server assignment");
        // A counter that went backwards (a restart) gives no rates.
        assert_eq!(rates(&cur, &prev, Duration::from_secs(2)), None);
        // No traffic: zero rates, no averages.
        let idle = rates(&cur, &cur, Duration::from_secs(1)).unwrap();
        assert_eq!((idle.tps, idle.avg_xact_us), (0.0, None));
    }

    #[test]
    fn conninfo_keywords_urls_and_defaults() {
        assert_eq!(ConnInfo::parse("").unwrap(), ConnInfo::default());
        assert_eq!(
            ConnInfo::parse(DEFAULT_CONNINFO).unwrap(),
            ConnInfo::default()
        );
        let info = ConnInfo::parse(
            "host=db.example port = 7432 user=admin password='it\\'s secret' \
             sslmode=verify-full sslrootcert=/etc/ca.crt",
        )
        .unwrap();
        assert_eq!(info.host, "db.example");
        assert_eq!(info.port, 7432);
        assert_eq!(info.user, "admin");
        assert_eq!(info.dbname, "pgbouncer", "dbname defaults to pgbouncer");
        assert_eq!(info.password.as_deref(), Some("it's secret"));
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, Some(PathBuf::from("/etc/ca.crt")));

        let url = ConnInfo::parse(
            "postgresql://ad%40min:p%3Ass@[::1]:6433/pgberth?sslmode=require&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.user, "ad@min");
        assert_eq!(url.password.as_deref(), Some("p:ss"));
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 6433);
        assert_eq!(url.dbname, "pgberth");
        assert_eq!(url.sslmode, SslMode::Require);
        assert_eq!(url.connect_timeout, Duration::from_secs(3));
        assert_eq!(url.address(), "[::1]:6433");
        let short = ConnInfo::parse("postgres://localhost").unwrap();
        assert_eq!((short.host.as_str(), short.port), ("localhost", 6432));

        assert!(
            ConnInfo::parse("sslmode=sometimes")
                .unwrap_err()
                .contains("sslmode=sometimes")
        );
        assert!(
            ConnInfo::parse("hots=x")
                .unwrap_err()
                .contains("unknown conninfo keyword \"hots\"")
        );
        assert!(
            ConnInfo::parse("host")
                .unwrap_err()
                .contains("missing \"=\"")
        );
    }
}
