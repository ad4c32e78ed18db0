//! The SHOW commands of the admin console, each a function returning rows with PgBouncer's
//! column names in PgBouncer's order.

use std::collections::BTreeMap;

use super::{SERVER_VERSION, Table};
use crate::app::App;
use crate::config::{Config, Database};

/// What SHOW HELP answers, one notice per line.
pub const HELP: &[&str] = &[
    "Console usage",
    "\tSHOW HELP|VERSION|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|STATE",
    "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS",
    "\tSHOW LISTS|MEM|FDS|SOCKETS|ACTIVE_SOCKETS|DNS_HOSTS|DNS_ZONES",
    "\tSET key = arg",
    "\tRELOAD",
    "\tPAUSE [<db>]",
    "\tRESUME [<db>]",
    "\tDISABLE <db>",
    "\tENABLE <db>",
    "\tRECONNECT [<db>]",
    "\tKILL <db>",
    "\tKILL_CLIENT <id>",
    "\tSUSPEND",
    "\tSHUTDOWN",
    "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS",
    "\tWAIT_CLOSE [<db>]",
];

/// The table for `SHOW <what>`, or `None` for a SHOW pgberth does not have (yet).
pub(crate) fn table(app: &App, what: &str) -> Option<Table> {
    Some(match what {
        "version" => Table {
            columns: vec![("version", false)],
            rows: vec![vec![SERVER_VERSION.to_owned()]],
        },
        "pools" => pools(app),
        "databases" => databases(app),
        "users" => users(app),
        "lists" => lists(app),
        "state" => state(app),
        "config" => config(app),
        "stats" => super::stats::stats(app),
        "stats_totals" => super::stats::one_kind(app, false),
        "stats_averages" => super::stats::one_kind(app, true),
        "totals" => super::stats::totals(app),
        "clients" => super::connections::clients(app),
        "servers" => super::connections::servers(app),
        "mem" => super::resources::mem(app),
        "fds" => super::resources::fds(),
        "sockets" => super::resources::sockets(app, false),
        "active_sockets" => super::resources::sockets(app, true),
        "dns_hosts" => super::resources::dns_hosts(),
        "dns_zones" => super::resources::dns_zones(),
        _ => return None,
    })
}

fn num(n: impl ToString) -> String {
    n.to_string()
}

fn pools(app: &App) -> Table {
    let config = app.config();
    let columns = vec![
        ("database", false),
        ("user", false),
        ("cl_active", true),
        ("cl_waiting", true),
        ("cl_active_cancel_req", true),
        ("cl_waiting_cancel_req", true),
        ("sv_active", true),
        ("sv_active_cancel", true),
        ("sv_being_canceled", true),
        ("sv_idle", true),
        ("sv_used", true),
        ("sv_tested", true),
        ("sv_login", true),
        ("maxwait", true),
        ("maxwait_us", true),
        ("pool_mode", false),
        ("load_balance_hosts", false),
    ];
    let mut pools = app.pools();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    let waits = super::connections::longest_waits(app);
    let rows = pools
        .iter()
        .map(|pool| {
            let maxwait = waits
                .get(&(std::sync::Arc::as_ptr(pool) as usize))
                .copied()
                .unwrap_or(0);
            let counts = pool.counts();
            // Clients held by a pause wait for a connection too.
            let waiting = counts.waiting + pool.held_clients();
            let clients = pool.client_count();
            let logged_in = pool.server_count();
            let mode = config
                .database(&pool.key.database)
                .map(|db| config.pool_mode_for(&db, &pool.key.user).to_string())
                .unwrap_or_default();
            vec![
                pool.key.database.clone(),
                pool.key.user.clone(),
                num(clients.saturating_sub(waiting)),
                num(waiting),
                num(0),
                num(0),
                num(logged_in.saturating_sub(counts.idle)),
                num(0),
                num(0),
                num(counts.idle),
                num(0),
                num(0),
                num(counts.open.saturating_sub(logged_in)),
                num(maxwait / 1_000_000),
                num(maxwait % 1_000_000),
                mode,
                String::new(),
            ]
        })
        .collect();
    Table { columns, rows }
}

/// Server connections and clients per database name, over its pools.
fn per_database(app: &App) -> BTreeMap<String, (usize, usize)> {
    let mut totals = BTreeMap::new();
    for pool in app.pools() {
        let entry = totals.entry(pool.key.database.clone()).or_insert((0, 0));
        entry.0 += pool.counts().open;
        entry.1 += pool.client_count();
    }
    totals
}

fn databases(app: &App) -> Table {
    let config = app.config();
    let g = &config.general;
    let columns = vec![
        ("name", false),
        ("host", false),
        ("port", true),
        ("database", false),
        ("force_user", false),
        ("pool_size", true),
        ("min_pool_size", true),
        ("reserve_pool_size", true),
        ("server_lifetime", true),
        ("pool_mode", false),
        ("load_balance_hosts", false),
        ("max_connections", true),
        ("current_connections", true),
        ("max_client_connections", true),
        ("current_client_connections", true),
        ("paused", true),
        ("disabled", true),
        // PgBouncer's name for reserve_pool_size before 1.24, still read by exporters.
        ("reserve_pool", true),
    ];
    let totals = per_database(app);
    let mut rows: Vec<Vec<String>> = config
        .databases
        .values()
        .map(|db| {
            database_row(
                app,
                &config,
                db,
                totals.get(&db.name).copied().unwrap_or_default(),
            )
        })
        .collect();
    // Names served by the `*` fallback appear once they have pools, as in PgBouncer.
    for (name, counts) in &totals {
        if !config.databases.contains_key(name)
            && let Some(db) = config.database(name)
        {
            rows.push(database_row(app, &config, &db, *counts));
        }
    }
    rows.push(vec![
        "pgbouncer".into(),
        String::new(),
        num(g.listen_port),
        "pgbouncer".into(),
        "pgbouncer".into(),
        num(2),
        num(0),
        num(0),
        num(0),
        "statement".into(),
        String::new(),
        num(0),
        num(0),
        num(0),
        num(0),
        num(0),
        num(0),
        num(0),
    ]);
    Table { columns, rows }
}

fn database_row(
    app: &App,
    config: &Config,
    db: &Database,
    (servers, clients): (usize, usize),
) -> Vec<String> {
    let g = &config.general;
    let flag = |on: bool| num(u8::from(on));
    vec![
        db.name.clone(),
        db.host.clone().unwrap_or_default(),
        num(db.port),
        db.dbname.clone(),
        db.user.clone().unwrap_or_default(),
        num(db.effective_pool_size(g)),
        num(db.effective_min_pool_size(g)),
        num(db.effective_reserve_pool(g)),
        num(g.server_lifetime.as_secs()),
        db.pool_mode.unwrap_or(g.pool_mode).to_string(),
        String::new(),
        num(db.effective_max_db_connections(g)),
        num(servers),
        num(0),
        num(clients),
        flag(app.control.is_paused(&db.name)),
        flag(app.control.is_disabled(&db.name)),
        num(db.effective_reserve_pool(g)),
    ]
}

fn users(app: &App) -> Table {
    let config = app.config();
    let g = &config.general;
    let columns = vec![
        ("name", false),
        ("pool_size", true),
        ("reserve_pool_size", true),
        ("pool_mode", false),
        ("max_user_connections", true),
        ("current_connections", true),
        ("max_user_client_connections", true),
        ("current_client_connections", true),
    ];
    let mut names: Vec<String> = config.userlist.users().map(str::to_owned).collect();
    names.extend(config.users.keys().cloned());
    names.extend(app.pools().iter().map(|p| p.key.user.clone()));
    names.sort();
    names.dedup();
    let pools = app.pools();
    let rows = names
        .into_iter()
        .map(|name| {
            let (servers, clients) = pools
                .iter()
                .filter(|p| p.key.user == name)
                .fold((0, 0), |(s, c), p| {
                    (s + p.counts().open, c + p.client_count())
                });
            let settings = config.users.get(&name);
            vec![
                name.clone(),
                num(g.default_pool_size),
                num(g.reserve_pool_size),
                settings
                    .and_then(|u| u.pool_mode)
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                num(config.max_user_connections_for(&name)),
                num(servers),
                num(0),
                num(clients),
            ]
        })
        .collect();
    Table { columns, rows }
}

fn lists(app: &App) -> Table {
    let config = app.config();
    let pools = app.pools();
    let servers: usize = pools.iter().map(|p| p.counts().open).sum();
    let idle: usize = pools.iter().map(|p| p.counts().idle).sum();
    let rows = [
        ("databases", config.databases.len()),
        ("users", config.userlist.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", app.client_count()),
        ("login_clients", 0),
        ("free_servers", idle),
        ("used_servers", servers - idle),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]
    .into_iter()
    .map(|(list, items)| vec![list.to_owned(), num(items)])
    .collect();
    Table {
        columns: vec![("list", false), ("items", true)],
        rows,
    }
}

fn config(app: &App) -> Table {
    let current = app.config().general.entries();
    let defaults = crate::config::General::default().entries();
    let rows = current
        .into_iter()
        .zip(defaults)
        .map(|((key, value), (_, default))| {
            let changeable = if crate::config::changeable(key) {
                "yes"
            } else {
                "no"
            };
            vec![key.to_owned(), value, default, changeable.to_owned()]
        })
        .collect();
    Table {
        columns: vec![
            ("key", false),
            ("value", false),
            ("default", false),
            ("changeable", false),
        ],
        rows,
    }
}

fn state(app: &App) -> Table {
    use crate::pool::PauseMode;
    let running = app.run_state() == crate::app::RunState::Running;
    let global = app.control.global_pause();
    let rows = [
        ("active", running && global.is_none()),
        ("paused", global == Some(PauseMode::Pause)),
        ("suspended", global == Some(PauseMode::Suspend)),
    ]
    .into_iter()
    .map(|(key, yes)| vec![key.to_owned(), if yes { "yes" } else { "no" }.to_owned()])
    .collect();
    Table {
        columns: vec![("key", false), ("value", false)],
        rows,
    }
}
