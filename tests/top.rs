//! `pgberth top --once`, the built binary, against a real pgberth in front of the test
//! PostgreSQL: the pool table and the per-database statistics after real traffic, over plain
//! TCP, over TLS (verify-full with a CA from `pgberth::tools::certs`) and over the unix socket;
//! one snapshot when stdout is not a terminal; and the one-line errors for a refused
//! connection, a wrong password, a certificate from another CA and a bad conninfo.

mod support;

use std::process::{Command, Output, Stdio};

use pgberth::tools::certs::{self, CertOptions};
use support::{Pgberth, SCRAM_PASS, SCRAM_USER};

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"admin\" \"admin_pass\"\n";

/// Queries the traffic test runs, each its own transaction.
const QUERIES: u64 = 25;

fn ini(extra: &str) -> String {
    format!(
        "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=2

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
admin_users = admin
server_tls_sslmode = disable
{extra}
"
    )
}

/// `pgberth top --once ARGS...` with a clean libpq environment.
fn top(args: &[&str], password_env: Option<&str>) -> Output {
    let mut once = vec!["--once"];
    once.extend_from_slice(args);
    top_command(&once, password_env)
}

/// `pgberth top ARGS...` with a clean libpq environment; stdout is a pipe, not a terminal.
fn top_command(args: &[&str], password_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgberth"));
    for var in ["PGPASSWORD", "PGSSLMODE", "PGUSER", "PGHOST", "PGPORT"] {
        cmd.env_remove(var);
    }
    if let Some(password) = password_env {
        cmd.env("PGPASSWORD", password);
    }
    cmd.arg("top")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pgberth top")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One row of a table in top's output: (column, cell) pairs.
type Cells = Vec<(String, String)>;

/// The rows of the table that follows the line `title` in top's output, as maps from the
/// header's column names to cells.
fn table(stdout: &str, title: &str) -> Vec<Cells> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(title)).skip(1);
    let header: Vec<String> = match lines.next() {
        Some(h) => h.split_whitespace().map(str::to_owned).collect(),
        None => panic!("no table after {title:?} in:\n{stdout}"),
    };
    lines
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("clients waiting"))
        .map(|l| {
            // Cells are separated by two spaces; times like "12 µs" hold one.
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(cells.len(), header.len(), "row {l:?} vs header {header:?}");
            header
                .iter()
                .cloned()
                .zip(cells.into_iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

fn cell<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

fn number(row: &[(String, String)], name: &str) -> f64 {
    let value = cell(row, name);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} = {value:?} is not a number in {row:?}"))
}

/// The pool row of app/scram_user and the stats row of app, from top's output.
fn app_rows(stdout: &str) -> (Cells, Cells) {
    let pool = table(stdout, "pools")
        .into_iter()
        .find(|r| cell(r, "database") == "app" && cell(r, "user") == SCRAM_USER)
        .unwrap_or_else(|| panic!("no pool app/{SCRAM_USER} in:\n{stdout}"));
    let stats = table(stdout, "stats")
        .into_iter()
        .find(|r| cell(r, "database") == "app")
        .unwrap_or_else(|| panic!("no stats line for app in:\n{stdout}"));
    (pool, stats)
}

/// One connected client that ran [`QUERIES`] transactions, and stays connected (idle).
async fn traffic(pgberth: &Pgberth) -> tokio_postgres::Client {
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    for i in 0..QUERIES {
        let rows = client
            .simple_query(&format!("SELECT {i}"))
            .await
            .expect("query through pgberth");
        assert!(!rows.is_empty());
    }
    client
}

#[tokio::test]
async fn top_once_shows_the_pool_and_the_stats_of_real_traffic() {
    let pgberth = Pgberth::start(&ini(""), USERLIST);
    let _client = traffic(&pgberth).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin password=admin_pass sslmode=disable",
        pgberth.port()
    );
    let out = top(&["--interval", "0.2", &conninfo], None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("pgberth top: 127.0.0.1:"), "{stdout}");
    let (pool, stats) = app_rows(&stdout);
    assert_eq!(cell(&pool, "cl_active"), "1", "one client connected");
    assert_eq!(cell(&pool, "cl_waiting"), "0");
    assert_eq!(
        number(&pool, "sv_active") + number(&pool, "sv_idle"),
        1.0,
        "one client ran one query at a time: one server connection"
    );
    assert_eq!(cell(&pool, "pool_mode"), "transaction");
    assert!(stdout.contains("clients waiting: 0"), "{stdout}");
    assert!(stdout.contains("stats (rates over "), "{stdout}");
    assert_eq!(number(&stats, "xacts"), QUERIES as f64, "{stdout}");
    assert_eq!(number(&stats, "queries"), QUERIES as f64, "{stdout}");
    // The traffic ended before the first sample: nothing happened between the two.
    assert_eq!(number(&stats, "tps"), 0.0, "{stdout}");
    assert_eq!(number(&stats, "qps"), 0.0, "{stdout}");
    assert_eq!(cell(&stats, "avg_xact"), "-", "no transaction to average");
}

/// Queries run from before top starts until after it exits, so both of its samples and
/// everything between them see traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_rates_and_averages_come_from_traffic_between_the_two_samples() {
    let pgberth = Pgberth::start(&ini(""), USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ran = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.simple_query("SELECT 1").await.unwrap();
                ran += 1;
            }
            ran
        })
    };
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin password=admin_pass sslmode=disable",
        pgberth.port()
    );
    let out = tokio::task::spawn_blocking(move || top(&["--interval", "1", &conninfo], None))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ran = traffic.await.unwrap() as f64;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (_, stats) = app_rows(&stdout);
    let xacts = number(&stats, "xacts");
    assert!(xacts > 0.0 && xacts <= ran, "{ran} ran:\n{stdout}");
    assert!(number(&stats, "tps") > 0.0, "{stdout}");
    assert_eq!(
        number(&stats, "tps"),
        number(&stats, "qps"),
        "one query per transaction:\n{stdout}"
    );
    for average in ["avg_xact", "avg_query", "avg_wait"] {
        let value = cell(&stats, average);
        assert!(
            value.ends_with(" µs") || value.ends_with(" ms") || value.ends_with(" s"),
            "{average} = {value:?} is a time:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn top_once_over_tls_with_verify_full_and_pgpassword() {
    let dir = tempfile::Builder::new()
        .prefix("pgberth-top-tls-")
        .tempdir()
        .expect("temp dir");
    let generated = certs::generate(&CertOptions {
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        ..CertOptions::default()
    })
    .expect("generate certificates");
    let certs_dir =
        certs::write_files(&dir.path().join("tls"), &generated, false).expect("write certificates");
    let file = |name: &str| certs_dir.join(name).display().to_string();
    // Plaintext clients are refused, so a working console connection is an encrypted one.
    let pgberth = Pgberth::start(
        &ini(&format!(
            "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            file("server.crt"),
            file("server.key")
        )),
        USERLIST,
    );
    let plain = top(
        &[&format!(
            "host=127.0.0.1 port={} user=admin sslmode=disable",
            pgberth.port()
        )],
        Some("admin_pass"),
    );
    assert!(!plain.status.success(), "{}", text(&plain));

    let url = format!(
        "postgresql://admin@127.0.0.1:{}/pgbouncer?sslmode=verify-full&sslrootcert={}",
        pgberth.port(),
        file("ca.crt")
    );
    let out = top(&["--interval", "0", &url], Some("admin_pass"));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .contains("TLS, CA and host verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stats (totals; rates need two samples)"),
        "--interval 0 takes one sample:\n{stdout}"
    );
    let pools = table(&stdout, "pools");
    assert!(
        pools.is_empty(),
        "no client has logged in to app yet: {pools:?}"
    );
}

#[test]
fn top_without_a_terminal_prints_one_snapshot_and_exits() {
    let pgberth = Pgberth::start(&ini(""), USERLIST);
    let conninfo = format!(
        "postgresql://admin:admin_pass@127.0.0.1:{}?sslmode=disable",
        pgberth.port()
    );
    let out = top_command(&["--interval", "0", &conninfo], None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("pgberth top: ").count(),
        1,
        "one snapshot:\n{stdout}"
    );
    assert!(
        stdout.contains("db=pgbouncer user=admin (no TLS)"),
        "{stdout}"
    );
    assert!(stdout.contains("\npools\n"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no terminal escapes: {stdout:?}"
    );
}

/// The default user `pgbouncer` needs no password over the unix socket as pgberth's OS user.
#[test]
fn top_once_over_the_unix_socket_as_user_pgbouncer() {
    let pgberth = Pgberth::start(&ini(""), USERLIST);
    let conninfo = format!(
        "host={} port={} user=pgbouncer",
        pgberth.dir().display(),
        pgberth.port()
    );
    let out = top(&["--interval", "0", &conninfo], None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let socket = format!(
        "{}/.s.PGSQL.{} db=pgbouncer user=pgbouncer (unix socket)",
        pgberth.dir().display(),
        pgberth.port()
    );
    assert!(stdout.lines().next().unwrap().contains(&socket), "{stdout}");
}

#[test]
fn top_once_refuses_a_certificate_from_another_ca_with_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("pgberth-top-ca-")
        .tempdir()
        .expect("temp dir");
    let options = CertOptions {
        hosts: vec!["127.0.0.1".into()],
        ..CertOptions::default()
    };
    let served = certs::write_files(
        &dir.path().join("served"),
        &certs::generate(&options).unwrap(),
        false,
    )
    .unwrap();
    let other = certs::write_files(
        &dir.path().join("other"),
        &certs::generate(&options).unwrap(),
        false,
    )
    .unwrap();
    let pgberth = Pgberth::start(
        &ini(&format!(
            "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
            served.join("server.crt").display(),
            served.join("server.key").display()
        )),
        USERLIST,
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin password=admin_pass sslmode=verify-ca sslrootcert={}",
        pgberth.port(),
        other.join("ca.crt").display()
    );
    let out = top(&[&conninfo], None);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(&out, &format!("127.0.0.1:{}", pgberth.port()));
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

fn assert_one_line_error(out: &Output, address: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout.is_empty(), "{}", text(out));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", text(out));
    assert!(
        stderr.starts_with(&format!("pgberth top: cannot connect to {address}: ")),
        "{}",
        text(out)
    );
}

#[test]
fn top_once_against_a_port_nobody_listens_on_exits_non_zero_with_one_line() {
    let (_held, port) = support::closed_port();
    let out = top(
        &[&format!("host=127.0.0.1 port={port} sslmode=disable")],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert_one_line_error(&out, &format!("127.0.0.1:{port}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn top_once_with_a_wrong_password_shows_the_servers_message() {
    let pgberth = Pgberth::start(&ini(""), USERLIST);
    let out = top(
        &[&format!(
            "host=127.0.0.1 port={} user=admin password=wrong sslmode=disable",
            pgberth.port()
        )],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert_one_line_error(&out, &format!("127.0.0.1:{}", pgberth.port()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("28P01"), "{stderr}");
}

#[test]
fn top_rejects_an_invalid_conninfo_naming_the_keyword() {
    let out = top(&["host=127.0.0.1 prot=6432"], None);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid conninfo: unknown conninfo keyword \"prot\""),
        "{stderr}"
    );
}
