//! Debian's `prometheus-pgbouncer-exporter` scraping pgberth's admin console: the exporter
//! runs with a config file as it would be deployed, against a real pgberth that served real
//! traffic, and its `/metrics` page must carry pgberth's per-pool, per-database and list
//! values. The exporter is required (`.ci/run` installs it); without it the test fails.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Pgberth, SCRAM_PASS, SCRAM_USER};

/// Where the Debian package puts the exporter.
const EXPORTER: &str = "/usr/bin/prometheus-pgbouncer-exporter";
/// How long the exporter may take to listen; only detects hangs.
const START_TIMEOUT: Duration = Duration::from_secs(30);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"watcher\" \"watcher_pass\"\n";

const INI: &str = "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app pool_size=4 reserve_pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = transaction
stats_users = watcher
server_tls_sslmode = disable
";

/// Queries the test runs through pgberth before the scrape, each its own transaction.
const QUERIES: u64 = 30;

/// The exporter's path, or a failure that says how to install it.
fn exporter_binary() -> PathBuf {
    let path = Path::new(EXPORTER);
    assert!(
        path.exists(),
        "{EXPORTER} not found: this test needs Debian's exporter \
         (apt-get install -y prometheus-pgbouncer-exporter; .ci/run installs it)"
    );
    path.to_owned()
}

/// The running exporter; killed on drop.
struct Exporter {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Exporter {
    /// Starts the exporter with a config file in `dir`, scraping pgberth as `watcher`, and
    /// waits until its HTTP port accepts connections.
    fn start(pgberth: &Pgberth, dir: &Path) -> Exporter {
        let binary = exporter_binary();
        let port = pgberth::cluster::free_port().expect("a free port for the exporter");
        let config = dir.join("exporter.conf");
        std::fs::write(
            &config,
            format!(
                "host = 127.0.0.1\nport = {port}\npgbouncer-host = 127.0.0.1\n\
                 pgbouncer-port = {}\npgbouncer-user = watcher\n",
                pgberth.port()
            ),
        )
        .expect("write the exporter's config");
        let log = dir.join("exporter.log");
        let log_file = std::fs::File::create(&log).expect("create the exporter's log");
        let mut cmd = Command::new(binary);
        for var in ["PGUSER", "PGDATABASE", "PGHOST", "PGPORT", "PGSERVICE"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--licence-location")
            .arg("/usr/share/doc/prometheus-pgbouncer-exporter/copyright")
            // The exporter has no password setting; libpq reads it from the environment.
            .env("PGPASSWORD", "watcher_pass")
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file)
            .spawn()
            .expect("spawn prometheus-pgbouncer-exporter");
        let mut exporter = Exporter { child, port, log };
        exporter.wait_listening(pgberth);
        exporter
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self, pgberth: &Pgberth) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the exporter") {
                panic!(
                    "the exporter exited ({status}) before serving metrics; its log:\n{}\n\
                     pgberth's log:\n{}",
                    self.log(),
                    pgberth.log_contents()
                );
            }
            let addr = (Ipv4Addr::LOCALHOST, self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the exporter did not listen on port {} within {START_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path`: the status line and the body.
    fn get(&self, path: &str) -> (String, String) {
        let mut stream =
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect to the exporter");
        stream
            .set_read_timeout(Some(START_TIMEOUT))
            .expect("set a read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name{labels}` (labels as the exposition writes them, e.g.
/// `database="app",user="scram_user"`; empty for none).
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("no sample {key:?} in the metrics:\n{metrics}"));
    line[key.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{line:?} has no number"))
}

#[tokio::test]
async fn debian_pgbouncer_exporter_scrapes_pools_databases_stats_and_lists_from_pgberth() {
    let pgberth = Pgberth::start(INI, USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    for i in 0..QUERIES {
        client
            .simple_query(&format!("SELECT {i}"))
            .await
            .expect("query through pgberth");
    }
    let exporter = Exporter::start(&pgberth, pgberth.dir());
    let (status, metrics) = exporter.get("/metrics");
    assert!(
        status.contains(" 200 "),
        "scrape failed: {status}\n{metrics}\nexporter log:\n{}",
        exporter.log()
    );

    // SHOW POOLS: the one connected client, nobody waiting.
    let pool = format!("database=\"app\",user=\"{SCRAM_USER}\"");
    assert_eq!(sample(&metrics, "pgbouncer_active_clients", &pool), 1.0);
    assert_eq!(sample(&metrics, "pgbouncer_waiting_clients", &pool), 0.0);
    // SHOW DATABASES: the database line's settings.
    assert_eq!(
        sample(&metrics, "pgbouncer_pool_size", "database=\"app\""),
        4.0
    );
    assert_eq!(
        sample(&metrics, "pgbouncer_reserve_pool", "database=\"app\""),
        1.0
    );
    // SHOW STATS: the traffic's queries.
    assert_eq!(
        sample(&metrics, "pgbouncer_requests_total", "database=\"app\""),
        QUERIES as f64
    );
    assert!(
        sample(
            &metrics,
            "pgbouncer_received_bytes_total",
            "database=\"app\""
        ) > 0.0
    );
    assert!(sample(&metrics, "pgbouncer_sent_bytes_total", "database=\"app\"") > 0.0);
    // SHOW LISTS: one pool, the app client plus the exporter's own connection.
    assert_eq!(sample(&metrics, "pgbouncer_pools", ""), 1.0);
    assert!(sample(&metrics, "pgbouncer_used_clients", "") >= 1.0);

    // A second scrape works too (the exporter keeps one console connection).
    let (status, _) = exporter.get("/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let log = exporter.log();
    assert!(
        !log.contains("Traceback") && !log.contains("Error"),
        "the exporter logged an error:\n{log}"
    );
}
