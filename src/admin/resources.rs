//! SHOW MEM, FDS, SOCKETS, ACTIVE_SOCKETS, DNS_HOSTS and DNS_ZONES: what pgberth holds, in
//! PgBouncer's shapes where pgberth has an equivalent.

use super::Table;
use super::connections::{clients, servers};
use crate::app::App;
use crate::registry::{ClientInfo, ServerInfo};

/// SHOW MEM: pgberth's per-connection objects and buffers. PgBouncer lists its slab caches;
/// pgberth lists what it allocates per client, per server connection and per relay.
pub(crate) fn mem(app: &App) -> Table {
    let clients = app.clients_registry.lock().len();
    let servers: usize = app.pools().iter().map(|p| p.server_count()).sum();
    let buffers = crate::buffer::ALLOCATED.load(std::sync::atomic::Ordering::Relaxed);
    let statements = app.statements.live();
    let parked = app.parked_clients();
    let row = |name: &str, size: usize, used: usize| {
        vec![
            name.to_owned(),
            size.to_string(),
            used.to_string(),
            "0".to_owned(),
            (size * used).to_string(),
        ]
    };
    Table {
        columns: vec![
            ("name", false),
            ("size", true),
            ("used", true),
            ("free", true),
            ("memtotal", true),
        ],
        rows: vec![
            row("client_info", size_of::<ClientInfo>(), clients),
            row("server_info", size_of::<ServerInfo>(), servers),
            row("parked_client", size_of::<crate::parking::Parked>(), parked),
            row("relay_buffer", crate::buffer::BUFFER_SIZE, buffers),
            row(
                "prepared_statement",
                size_of::<crate::prepared::Statement>(),
                statements,
            ),
        ],
    }
}

/// SHOW FDS: the sockets PgBouncer hands to a new process at online restart. pgberth takes
/// over with `so_reuseport` instead, so there are none to list.
pub(crate) fn fds() -> Table {
    Table {
        columns: vec![
            ("fd", true),
            ("task", false),
            ("user", false),
            ("database", false),
            ("addr", false),
            ("port", true),
            ("cancel", true),
            ("link", true),
        ],
        rows: Vec::new(),
    }
}

/// The columns SHOW SOCKETS shares with SHOW CLIENTS and SERVERS.
const SHARED: [&str; 17] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
];

/// PgBouncer's per-socket buffer positions. pgberth keeps no buffer per socket between reads:
/// they are 0.
const BUFFER_COLUMNS: [&str; 7] = [
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];

/// SHOW SOCKETS (every client and server socket) or ACTIVE_SOCKETS (those moving data now:
/// clients holding a server connection, and server connections in use).
pub(crate) fn sockets(app: &App, only_active: bool) -> Table {
    let mut rows = Vec::new();
    for table in [clients(app), servers(app)] {
        let index = |name: &str| {
            table
                .columns
                .iter()
                .position(|(c, _)| *c == name)
                .expect("a connection column")
        };
        let picks: Vec<usize> = SHARED.iter().map(|c| index(c)).collect();
        let (state, link) = (index("state"), index("link"));
        for row in &table.rows {
            if only_active && (row[state] != "active" || row[link].is_empty()) {
                continue;
            }
            let mut out: Vec<String> = picks.iter().map(|&i| row[i].clone()).collect();
            out.extend(BUFFER_COLUMNS.iter().map(|_| "0".to_owned()));
            rows.push(out);
        }
    }
    let numeric = |c: &str| {
        matches!(
            c,
            "port" | "local_port" | "wait" | "wait_us" | "close_needed" | "remote_pid"
        )
    };
    let mut columns: Vec<(&'static str, bool)> = SHARED.iter().map(|&c| (c, numeric(c))).collect();
    columns.extend(BUFFER_COLUMNS.iter().map(|&c| (c, true)));
    Table { columns, rows }
}

/// SHOW DNS_HOSTS: pgberth resolves host names at connect time and keeps no DNS cache.
pub(crate) fn dns_hosts() -> Table {
    Table {
        columns: vec![("hostname", false), ("ttl", true), ("addrs", false)],
        rows: Vec::new(),
    }
}

/// SHOW DNS_ZONES: no DNS cache, so no zones.
pub(crate) fn dns_zones() -> Table {
    Table {
        columns: vec![("zonename", false), ("serial", true), ("count", true)],
        rows: Vec::new(),
    }
}
