//! Prometheus metrics and health probes on `metrics_listen`, against the real pgberth binary
//! and a real PostgreSQL: pool gauges after real traffic, error and TLS handshake counters,
//! `promtool check metrics` on the output, `/health`, `/ready` and unknown paths, and the
//! Grafana dashboard in `contrib/grafana/` querying only metrics that pgberth exports.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgberth::cluster::free_port;
use pgberth::tools::certs::{CertPem, CertificateAuthority, LeafOptions, LeafUsage};
use support::{APP_DB, Pgberth, SCRAM_PASS, SCRAM_USER};
use tokio_postgres::error::SqlState;

/// How long to wait for a counter that pgberth updates just after the client saw the outcome.
/// Not a timing assertion: the value is polled until it shows up.
const WAIT: Duration = Duration::from_secs(20);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

/// A running pgberth and the port of its `metrics_listen`.
struct Instance {
    pgberth: Pgberth,
    metrics_port: u16,
}

/// pgberth with `metrics_listen` on a free port; `databases` goes into `[databases]`,
/// `extra` into `[pgbouncer]`.
fn start(databases: &str, extra: &str) -> Instance {
    // Port 0: the kernel picks a free port, and pgberth logs which.
    let ini = format!(
        "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\n\
         unix_socket_dir = @DIR@\nauth_type = scram-sha-256\nauth_file = @DIR@/userlist.txt\n\
         pool_mode = transaction\nmetrics_listen = 127.0.0.1:0\n{extra}\n"
    );
    let pgberth = Pgberth::start(&ini, USERLIST);
    let marker = "metrics and health probes on http://127.0.0.1:";
    pgberth.wait_for_log(marker, WAIT);
    let log = pgberth.log_contents();
    let after = &log[log.find(marker).unwrap() + marker.len()..];
    let metrics_port = after[..after.find('/').unwrap()]
        .parse()
        .unwrap_or_else(|e| panic!("no metrics port in the log ({e}):\n{log}"));
    Instance {
        pgberth,
        metrics_port,
    }
}

const APP_LINE: &str = "app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=3";

/// pgberth with a query run and a wrong-password login refused, so that the labelled metric
/// families have samples; the client stays connected while the caller holds it.
async fn start_with_traffic_and_an_error() -> (Instance, tokio_postgres::Client) {
    let instance = start(APP_LINE, "");
    let client = instance
        .pgberth
        .connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await;
    client.simple_query("SELECT 1").await.unwrap();
    let _ = instance
        .pgberth
        .try_connect(SCRAM_USER, "wrong password", APP_DB)
        .await;
    instance
        .wait_for_sample("pgberth_client_errors_total{sqlstate=\"28P01\"}", 1.0)
        .await;
    (instance, client)
}

/// An HTTP/1.1 response: status code, headers (lower-cased names) and body.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `METHOD path` with `Connection: close`, read to the end.
fn http(port: u16, method: &str, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to metrics_listen on port {port}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer to {method} {path}: {e}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 HTTP answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn get(port: u16, path: &str) -> HttpResponse {
    http(port, "GET", path)
}

impl Instance {
    fn scrape(&self) -> String {
        let response = get(self.metrics_port, "/metrics");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// The value of the sample `series` (name with labels exactly as exposed), if present.
    fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.scrape(), series)
    }

    /// Polls `/metrics` until `series` has `value`; panics with the last scrape otherwise.
    /// Sleeps on the runtime between polls, so the test's client connections keep running.
    async fn wait_for_sample(&self, series: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.scrape();
            if sample(&text, series) == Some(value) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{series} did not become {value} within {WAIT:?}; last scrape:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Instance {
    /// Polls `/metrics` until `series` satisfies `ok`; returns the value.
    async fn wait_until(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.scrape();
            if let Some(v) = sample(&text, series).filter(|v| ok(*v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{series} did not reach the expected value within {WAIT:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn pool_series(name: &str, state: &str) -> String {
    format!("{name}{{database=\"app\",user=\"scram_user\",state=\"{state}\"}}")
}

/// The metric names a scrape declares (`# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn pool_gauges_show_active_and_waiting_clients_and_server_connections_after_traffic() {
    let instance = start(APP_LINE, "");
    let pgberth = &instance.pgberth;
    let inside = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    let other = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    // `inside` holds a server connection in its transaction; `other` needs a second one,
    // which goes back to the pool idle.
    inside.batch_execute("BEGIN; SELECT 1").await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    let text = instance.scrape();
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    assert_eq!(value(&pool_series("pgberth_pool_clients", "active")), 2.0);
    assert_eq!(value(&pool_series("pgberth_pool_clients", "waiting")), 0.0);
    assert_eq!(value(&pool_series("pgberth_pool_servers", "active")), 1.0);
    assert_eq!(value(&pool_series("pgberth_pool_servers", "idle")), 1.0);
    assert_eq!(value(&pool_series("pgberth_pool_servers", "login")), 0.0);
    let pool = "{database=\"app\",user=\"scram_user\"}";
    assert_eq!(value(&format!("pgberth_pool_clients_waiting{pool}")), 0.0);
    assert_eq!(value(&format!("pgberth_pool_max_wait_seconds{pool}")), 0.0);
    assert_eq!(value(&format!("pgberth_pool_size{pool}")), 3.0);
    assert_eq!(value("pgberth_clients"), 2.0);
    assert_eq!(value("pgberth_max_client_conn"), 100.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!("pgberth_build_info{{version=\"{version}\"}}")),
        1.0
    );
    assert!(value("pgberth_process_start_time_seconds") > 1.7e9);

    inside.batch_execute("COMMIT").await.unwrap();
    drop(inside);
    instance
        .wait_for_sample(&pool_series("pgberth_pool_clients", "active"), 1.0)
        .await;
    instance
        .wait_for_sample(&pool_series("pgberth_pool_servers", "idle"), 2.0)
        .await;
    instance
        .wait_for_sample(&pool_series("pgberth_pool_servers", "active"), 0.0)
        .await;
}

#[tokio::test]
async fn parked_clients_counts_a_quiet_client_until_it_leaves() {
    let instance = start(APP_LINE, "");
    let pgberth = &instance.pgberth;
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    instance
        .wait_for_sample("pgberth_parked_clients", 1.0)
        .await;
    assert_eq!(
        instance.sample("pgberth_clients"),
        Some(1.0),
        "still a client"
    );
    drop(client);
    instance
        .wait_for_sample("pgberth_parked_clients", 0.0)
        .await;
}

#[tokio::test]
async fn pool_gauges_count_a_client_waiting_for_a_full_pool() {
    let instance = start(
        "app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=1",
        "",
    );
    let pgberth = &instance.pgberth;
    let holder = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    let query = tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| ()) });
    instance
        .wait_for_sample(&pool_series("pgberth_pool_clients", "waiting"), 1.0)
        .await;
    instance
        .wait_for_sample(
            "pgberth_pool_clients_waiting{database=\"app\",user=\"scram_user\"}",
            1.0,
        )
        .await;
    instance
        .wait_until(
            "pgberth_pool_max_wait_seconds{database=\"app\",user=\"scram_user\"}",
            |v| v > 0.0,
        )
        .await;
    holder.batch_execute("COMMIT").await.unwrap();
    query
        .await
        .unwrap()
        .expect("the waiting client gets the connection");
    instance
        .wait_for_sample(&pool_series("pgberth_pool_clients", "waiting"), 0.0)
        .await;
}

#[tokio::test]
async fn prepared_statement_counters_follow_a_named_statement() {
    let instance = start(APP_LINE, "");
    let client = instance
        .pgberth
        .connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await;
    assert_eq!(
        instance.sample("pgberth_prepared_statements_prepared_total"),
        Some(0.0)
    );
    let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
    let row = client.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let prepared = instance
        .sample("pgberth_prepared_statements_prepared_total")
        .expect("a prepared-statement counter");
    assert!(prepared >= 1.0, "prepared_total = {prepared}");
    assert!(
        instance
            .sample("pgberth_prepared_statements_reused_total")
            .is_some()
    );
    assert_eq!(
        instance.sample("pgberth_prepared_statements_evicted_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn database_counters_follow_logins_transactions_queries_parses_binds_and_bytes() {
    let instance = start(APP_LINE, "");
    let db = "{database=\"app\"}";
    let series = |name: &str| format!("pgberth_database_{name}{db}");
    assert_eq!(instance.sample(&series("transactions_total")), Some(0.0));
    let client = instance
        .pgberth
        .connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await;
    for _ in 0..3 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    client
        .batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT")
        .await
        .unwrap();
    let statement = client.prepare("SELECT $1::int").await.unwrap();
    client.query_one(&statement, &[&7i32]).await.unwrap();
    drop(client);
    // The client has left: its counters are in the pool's totals.
    instance
        .wait_for_sample(&series("client_logins_total"), 1.0)
        .await;
    let value = |name: &str| {
        instance
            .sample(&series(name))
            .unwrap_or_else(|| panic!("no {}", series(name)))
    };
    // 3 single statements, one BEGIN…COMMIT block, the prepare (Parse, Describe, Sync) and
    // the execution (Bind, Execute, Sync).
    assert_eq!(value("transactions_total"), 6.0);
    assert_eq!(value("queries_total"), 6.0);
    assert_eq!(value("client_parses_total"), 1.0);
    assert_eq!(value("server_parses_total"), 1.0);
    assert_eq!(value("binds_total"), 1.0);
    assert!(value("server_assignments_total") >= 1.0);
    assert!(value("received_bytes_total") > 0.0);
    assert!(value("sent_bytes_total") > value("received_bytes_total"));
    assert!(
        value("transaction_seconds_total") >= 0.01,
        "pg_sleep(0.01) ran in a transaction"
    );
    assert!(value("query_seconds_total") >= 0.01);
    assert!(value("wait_seconds_total") >= 0.0);
}

#[tokio::test]
async fn client_errors_total_counts_a_wrong_password_login_as_28p01() {
    let instance = start(APP_LINE, "");
    let series = "pgberth_client_errors_total{sqlstate=\"28P01\"}";
    assert_eq!(instance.sample(series), None, "no error yet");
    let err = instance
        .pgberth
        .try_connect(SCRAM_USER, "wrong password", APP_DB)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    instance.wait_for_sample(series, 1.0).await;
    let err = instance
        .pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "no_such_db")
        .await
        .expect_err("an unknown database is refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
    instance
        .wait_for_sample("pgberth_client_errors_total{sqlstate=\"3D000\"}", 1.0)
        .await;
    assert_eq!(instance.sample(series), Some(1.0));
}

#[tokio::test]
async fn client_errors_total_counts_an_error_that_ends_a_session() {
    let instance = start(
        "app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=1",
        "query_wait_timeout = 0.2",
    );
    let pgberth = &instance.pgberth;
    let holder = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The pool's only connection stays taken: the second client's query gets 53300 once
    // query_wait_timeout has passed, and its session ends.
    let waiter = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    let err = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("no server connection becomes free");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    instance
        .wait_for_sample("pgberth_client_errors_total{sqlstate=\"53300\"}", 1.0)
        .await;
}

/// A CA-signed certificate for pgberth's client side, in `dir`; returns the ini lines.
fn client_tls_lines(dir: &std::path::Path) -> String {
    let ca = CertificateAuthority::new("metrics test CA", 30).expect("create a CA");
    let CertPem { cert_pem, key_pem } = ca
        .issue_leaf(&LeafOptions::valid_for_days(
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
            LeafUsage::Server,
            2,
        ))
        .expect("issue a server certificate");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "client_tls_sslmode = allow\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn tls_handshakes_total_counts_a_tls_client_and_a_failed_handshake() {
    let certs = tempfile::tempdir().unwrap();
    let general = format!(
        "{}server_tls_sslmode = disable\n",
        client_tls_lines(certs.path())
    );
    let instance = start(APP_LINE, &general);
    let ok = "pgberth_tls_handshakes_total{side=\"client\",result=\"ok\"}";
    let failed = "pgberth_tls_handshakes_total{side=\"client\",result=\"failed\"}";
    assert_eq!(instance.sample(ok), Some(0.0));
    assert_eq!(instance.sample(failed), Some(0.0));

    let out = Command::new("/usr/bin/psql")
        .env_clear()
        .env("PGPASSWORD", SCRAM_PASS)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 1",
            &format!(
                "host=127.0.0.1 port={} user={SCRAM_USER} dbname={APP_DB} sslmode=require",
                instance.pgberth.port()
            ),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(instance.sample(ok), Some(1.0));

    // SSLRequest, then bytes that are not a TLS ClientHello.
    let mut raw = TcpStream::connect(("127.0.0.1", instance.pgberth.port())).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    raw.write_all(b"this is not a TLS handshake\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    instance.wait_for_sample(failed, 1.0).await;
    assert_eq!(instance.sample(ok), Some(1.0));
    assert_eq!(
        instance.sample("pgberth_tls_handshakes_total{side=\"server\",result=\"ok\"}"),
        Some(0.0),
        "server_tls_sslmode = disable"
    );
}

#[tokio::test]
async fn tls_handshakes_total_counts_server_handshakes_that_succeed_and_fail() {
    support::cluster_ssl_on();
    let ok = "pgberth_tls_handshakes_total{side=\"server\",result=\"ok\"}";
    let failed = "pgberth_tls_handshakes_total{side=\"server\",result=\"failed\"}";

    // require: encrypted, the certificate is not checked.
    let instance = start(APP_LINE, "server_tls_sslmode = require");
    let client = instance
        .pgberth
        .connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await;
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(instance.sample(ok), Some(1.0));
    assert_eq!(instance.sample(failed), Some(0.0));

    // verify-ca with a CA that did not sign the server's certificate: the handshake fails.
    let other_ca = tempfile::tempdir().unwrap();
    let ca_file = other_ca.path().join("ca.crt");
    std::fs::write(
        &ca_file,
        CertificateAuthority::new("unrelated CA", 30)
            .unwrap()
            .cert_pem(),
    )
    .unwrap();
    let instance = start(
        APP_LINE,
        &format!(
            "server_tls_sslmode = verify-ca\nserver_tls_ca_file = {}",
            ca_file.display()
        ),
    );
    let err = instance
        .pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await
        .expect_err("the server's certificate is not trusted");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE));
    assert_eq!(instance.sample(failed), Some(1.0));
    assert_eq!(instance.sample(ok), Some(0.0));
}

#[tokio::test]
async fn metrics_output_passes_promtool_check_metrics() {
    let (instance, _client) = start_with_traffic_and_an_error().await;
    let response = get(instance.metrics_port, "/metrics");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the metrics output and could not be run ({e}); \
             install it with `apt-get install -y prometheus` (.ci/run does)"
        ),
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(response.body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\nmetrics:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        response.body
    );
}

#[tokio::test]
async fn health_answers_200_ok() {
    let instance = start(APP_LINE, "");
    let response = get(instance.metrics_port, "/health");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "ok\n");
}

#[tokio::test]
async fn unknown_path_is_404_and_other_methods_are_405() {
    let instance = start(APP_LINE, "");
    assert_eq!(get(instance.metrics_port, "/").status, 404);
    assert_eq!(get(instance.metrics_port, "/metrics/extra").status, 404);
    let post = http(instance.metrics_port, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn ready_is_200_when_every_database_is_reachable() {
    let instance = start(APP_LINE, "");
    // No client yet: no pool exists, so the server is probed.
    let response = get(instance.metrics_port, "/ready");
    assert_eq!(response.status, 200, "{}", response.body);
    // With a server connection open.
    let client = instance
        .pgberth
        .connect(SCRAM_USER, SCRAM_PASS, APP_DB)
        .await;
    client.simple_query("SELECT 1").await.unwrap();
    let response = get(instance.metrics_port, "/ready");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "ok\n");
}

#[tokio::test]
async fn ready_is_503_naming_a_database_whose_server_does_not_listen() {
    let (_held, closed_port) = support::closed_port();
    let databases = format!("{APP_LINE}\ngone = host=127.0.0.1 port={closed_port} dbname=app");
    let instance = start(&databases, "");
    let response = get(instance.metrics_port, "/ready");
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(
        response.body.contains("database \"gone\""),
        "{}",
        response.body
    );
    assert!(
        !response.body.contains("database \"app\""),
        "{}",
        response.body
    );
    // After a failed login to it, the pool's failure is the reason.
    let err = instance
        .pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "gone")
        .await
        .expect_err("the server of gone does not listen");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE));
    let response = get(instance.metrics_port, "/ready");
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(
        response
            .body
            .contains("database \"gone\": last server login failed"),
        "{}",
        response.body
    );
}

#[test]
fn metrics_listen_that_cannot_be_bound_stops_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("pgberth.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\n\
             unix_socket_dir =\nmetrics_listen = 127.0.0.1:{port}\n",
            free_port().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgberth"))
        .arg(&ini)
        .stdin(Stdio::null())
        .output()
        .expect("run pgberth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pgberth started: {stderr}");
    assert!(
        stderr.contains(&format!("metrics_listen = 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// The names of every metric family, from a scrape after traffic and a failed login
/// (families without samples are not exposed).
async fn every_exported_name() -> BTreeSet<String> {
    let (instance, _client) = start_with_traffic_and_an_error().await;
    exported_names(&instance.scrape())
}

#[tokio::test]
async fn readme_lists_exactly_the_metrics_pgberth_exports() {
    let exported = every_exported_name().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `pgberth_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("pgberth_{name}"))
        .collect();
    assert_eq!(
        listed, exported,
        "README's metric table against a real scrape"
    );
}

#[tokio::test]
async fn grafana_dashboard_queries_only_metrics_pgberth_exports() {
    let exported = every_exported_name().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/pgberth.json");
    let text = std::fs::read_to_string(path).expect("read contrib/grafana/pgberth.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS input"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "database"),
        "a database variable"
    );
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} queries", exprs.len());
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{expr:?} uses {name}, which pgberth does not export; it does: {exported:?}"
            );
        }
    }
}

/// Every `expr` (panel targets) and `query` (variables) string in the dashboard.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("pgberth_") => {
                        out.push(s.clone())
                    }
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `pgberth_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("pgberth_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}
