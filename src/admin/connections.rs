//! SHOW CLIENTS (and the waiting times SHOW POOLS shows): the client registry in PgBouncer's
//! columns.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Table;
use crate::app::App;
use crate::registry::{ClientInfo, Ends, ServerState};
use crate::stats::{now_us, unix_seconds, wall_time};

/// The columns of SHOW CLIENTS and SHOW SERVERS.
pub(crate) const CONNECTION_COLUMNS: [(&str, bool); 21] = [
    ("type", false),
    ("user", false),
    ("database", false),
    ("replication", false),
    ("state", false),
    ("addr", false),
    ("port", true),
    ("local_addr", false),
    ("local_port", true),
    ("connect_time", false),
    ("request_time", false),
    ("wait", true),
    ("wait_us", true),
    ("close_needed", true),
    ("ptr", false),
    ("link", false),
    ("remote_pid", true),
    ("tls", false),
    ("application_name", false),
    ("prepared_statements", true),
    ("id", true),
];

pub(crate) fn clients(app: &App) -> Table {
    let now = now_us();
    let port = app.config().general.listen_port;
    // Which server connection each client holds: the servers know their holder.
    let held: HashMap<u64, u64> = app
        .pools()
        .iter()
        .flat_map(|pool| pool.servers())
        .filter_map(|s| match s.link.load(Ordering::Relaxed) {
            0 => None,
            client => Some((client, s.id)),
        })
        .collect();
    let mut clients: Vec<_> = app.clients_registry.lock().values().cloned().collect();
    clients.sort_by_key(|c| (c.connected_us, c.id));
    let rows = clients
        .iter()
        .map(|c| client_row(c, held.get(&c.id).copied(), now, port))
        .collect();
    Table {
        columns: CONNECTION_COLUMNS.to_vec(),
        rows,
    }
}

fn client_row(c: &ClientInfo, link: Option<u64>, now: u64, listen_port: u16) -> Vec<String> {
    let (database, user) = c.names();
    let login = c.login();
    let waited = c.waited_us(now);
    let request = c.request_us.load(Ordering::Relaxed);
    let (addr, port, local_addr, local_port) = addresses(&c.ends, listen_port);
    vec![
        "C".into(),
        user.into(),
        database.into(),
        "none".into(),
        c.state().name().into(),
        addr,
        port,
        local_addr,
        local_port,
        timestamp(c.connected_us),
        timestamp(if request == 0 {
            c.connected_us
        } else {
            request
        }),
        (waited / 1_000_000).to_string(),
        (waited % 1_000_000).to_string(),
        "0".into(),
        pointer('c', c.id),
        link.map_or(String::new(), |server| pointer('s', server)),
        "0".into(),
        login.map_or("", |l| &l.tls).into(),
        login.map_or("", |l| &l.application_name).into(),
        c.prepared.load(Ordering::Relaxed).to_string(),
        c.id.to_string(),
    ]
}

/// The longest wait of a client of each pool (keyed by the pool's address), in µs.
pub(crate) fn longest_waits(app: &App) -> HashMap<usize, u64> {
    let now = now_us();
    let mut waits = HashMap::new();
    for c in app.clients_registry.lock().values() {
        let waited = c.waited_us(now);
        if waited == 0 {
            continue;
        }
        if let Some(pool) = c.login().and_then(|l| l.pool.as_ref()) {
            let longest = waits
                .entry(std::sync::Arc::as_ptr(pool) as usize)
                .or_insert(0);
            *longest = waited.max(*longest);
        }
    }
    waits
}

/// addr, port, local_addr, local_port; a unix-socket connection shows "unix" and the listen
/// port, as in PgBouncer.
pub(crate) fn addresses(ends: &Ends, listen_port: u16) -> (String, String, String, String) {
    match (ends.remote, ends.local) {
        (Some(r), Some(l)) => (
            r.ip().to_string(),
            r.port().to_string(),
            l.ip().to_string(),
            l.port().to_string(),
        ),
        _ => (
            "unix".into(),
            listen_port.to_string(),
            "unix".into(),
            listen_port.to_string(),
        ),
    }
}

/// A stand-in for PgBouncer's object address: unique per connection, and the same in the
/// `ptr` column of one side and the `link` column of the other.
pub(crate) fn pointer(kind: char, id: u64) -> String {
    format!("{kind}{id:x}")
}

/// A [`now_us`] reading as PgBouncer prints times: `2026-01-31 12:34:56 UTC`.
pub(crate) fn timestamp(us: u64) -> String {
    let secs = unix_seconds(wall_time(us)) as i64;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::new(),
    }
}

/// SHOW SERVERS: every logged-in server connection of every pool.
pub(crate) fn servers(app: &App) -> Table {
    let mut rows = Vec::new();
    let mut pools = app.pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    for pool in pools {
        let generation = pool.generation();
        let mut servers = pool.servers();
        servers.sort_by_key(|s| s.id);
        for s in servers {
            let (addr, port, local_addr, local_port) = addresses(&s.ends, 0);
            let link = s.link.load(Ordering::Relaxed);
            rows.push(vec![
                "S".into(),
                pool.key.user.clone(),
                pool.key.database.clone(),
                "none".into(),
                match s.state() {
                    ServerState::Idle => "idle".into(),
                    ServerState::Active => "active".into(),
                },
                addr,
                port,
                local_addr,
                local_port,
                timestamp(s.connected_us),
                timestamp(s.request_us.load(Ordering::Relaxed)),
                "0".into(),
                "0".into(),
                u8::from(s.generation != generation).to_string(),
                pointer('s', s.id),
                if link == 0 {
                    String::new()
                } else {
                    pointer('c', link)
                },
                s.remote_pid.to_string(),
                s.tls.to_string(),
                s.application_name.to_string(),
                s.prepared.load(Ordering::Relaxed).to_string(),
                s.id.to_string(),
            ]);
        }
    }
    Table {
        columns: CONNECTION_COLUMNS.to_vec(),
        rows,
    }
}
