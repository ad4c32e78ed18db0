//! Shared by all integration tests (`mod support;`): one real PostgreSQL per test binary, and a
//! launcher for the built pgberth binary.
//!
//! Roles in [`cluster()`]: `scram_user`/`scram_pass` (SCRAM), `md5_user`/`md5_pass` (md5 stored,
//! md5 in pg_hba), `trust_user` (no password, trust in pg_hba), superuser `postgres`/`postgres`.
//! Database `app` owned by `scram_user`, connectable by everyone.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod drivers;
pub mod launcher;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

#[allow(unused_imports)]
pub use launcher::Pgberth;
use pgberth::cluster::{ClusterOptions, PasswordEncryption, TempCluster};
use pgberth::tools::certs::{CertificateAuthority, LeafOptions, LeafUsage};

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASS: &str = "scram_pass";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASS: &str = "md5_pass";
pub const TRUST_USER: &str = "trust_user";
pub const APP_DB: &str = "app";

/// Generous bound for things that must happen; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds; panics after `PATIENCE` with `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server side pg_hba.conf: trust locally (the helpers need it), md5 and trust for the
/// roles made for them, SCRAM for everyone else over TCP.
const HBA: &str = "\
local all all                    trust
host  all md5_user   127.0.0.1/32 md5
host  all trust_user 127.0.0.1/32 trust
host  all all        127.0.0.1/32 scram-sha-256
";

static CLUSTER: OnceLock<TempCluster> = OnceLock::new();

/// The test binary's PostgreSQL, started on first use and stopped when the process exits.
pub fn cluster() -> &'static TempCluster {
    CLUSTER.get_or_init(|| {
        let cluster = TempCluster::start(ClusterOptions {
            max_connections: 200,
            hba: Some(HBA.to_owned()),
            ..ClusterOptions::default()
        })
        .unwrap_or_else(|err| panic!("could not start PostgreSQL for the tests: {err}"));
        // SAFETY: registering a plain extern "C" fn; it only touches the OnceLock.
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        setup(&cluster).unwrap_or_else(|err| {
            panic!(
                "could not set up the test cluster: {err}\nserver log:\n{}",
                cluster.log_tail()
            )
        });
        cluster
    })
}

fn setup(cluster: &TempCluster) -> Result<(), pgberth::cluster::ClusterError> {
    cluster.create_role(SCRAM_USER, SCRAM_PASS, PasswordEncryption::Scram)?;
    cluster.create_role(MD5_USER, MD5_PASS, PasswordEncryption::Md5)?;
    cluster.psql("postgres", "CREATE ROLE trust_user LOGIN")?;
    cluster.create_database(APP_DB, SCRAM_USER)?;
    cluster.psql("postgres", "GRANT CONNECT ON DATABASE app TO PUBLIC")?;
    Ok(())
}

extern "C" fn stop_cluster_at_exit() {
    if let Some(cluster) = CLUSTER.get() {
        // The static is never dropped; this stops the server and removes its directory.
        cluster.shutdown();
    }
}

/// A tokio-postgres connection string to the cluster itself over TCP (no pooler).
pub fn direct_conn_str(user: &str, password: &str, db: &str) -> String {
    conn_str(cluster().port(), user, password, db)
}

/// `host=127.0.0.1 port=.. user=.. password=.. dbname=.. sslmode=disable connect_timeout=10`,
/// values quoted so that an empty password works.
pub fn conn_str(port: u16, user: &str, password: &str, db: &str) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={} sslmode=disable \
         connect_timeout=10",
        q(user),
        q(password),
        q(db)
    )
}

/// A loopback port where nothing listens, and where nothing else can start listening while the
/// returned socket lives: it is bound but not listening, so connections are refused.
pub fn closed_port() -> (socket2::Socket, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any_port.into()).expect("bind a loopback port");
    let port = socket
        .local_addr()
        .expect("its address")
        .as_socket()
        .expect("an IP address")
        .port();
    (socket, port)
}

/// Column names and rows (as text) of a simple query, e.g. an admin console SHOW.
pub async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> (Vec<String>, Vec<Vec<String>>) {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(desc) => {
                columns = desc.iter().map(|c| c.name().to_owned()).collect();
            }
            tokio_postgres::SimpleQueryMessage::Row(row) => rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => {}
        }
    }
    (columns, rows)
}

/// Turns `ssl = on` in the test cluster (once per test binary), with a certificate from a CA
/// of its own, for the server side of pgberth's TLS.
pub fn cluster_ssl_on() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let ca = CertificateAuthority::new("test cluster CA", 30).unwrap();
        let server = ca
            .issue_leaf(&LeafOptions::valid_for_days(
                "localhost",
                &["localhost".into(), "127.0.0.1".into()],
                LeafUsage::Server,
                30,
            ))
            .unwrap();
        let cert = install_in_data_dir("tls-server.crt", &server.cert_pem, 0o644, true);
        let key = install_in_data_dir("tls-server.key", &server.key_pem, 0o600, true);
        turn_ssl_on(&[("ssl_cert_file", &cert), ("ssl_key_file", &key)]);
    });
}

/// Writes a file into the test cluster's data dir (removed with it) with the given mode;
/// owned by PostgreSQL's OS user when `for_server`, which wants its key that way.
pub fn install_in_data_dir(name: &str, body: &str, mode: u32, for_server: bool) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = cluster().data_dir();
    let path = data.join(name);
    std::fs::write(&path, body).unwrap();
    if for_server {
        let owner = std::fs::metadata(&data).expect("stat the data dir");
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Points the test cluster's `files` settings (`ssl_cert_file` …) at the given paths, turns
/// `ssl` on and waits until the server reports it.
pub fn turn_ssl_on(files: &[(&str, &Path)]) {
    let pg = cluster();
    let mut sql = String::new();
    for (setting, path) in files {
        let value = pgberth::cluster::quote_literal(&path.display().to_string());
        sql.push_str(&format!("ALTER SYSTEM SET {setting} = {value};\n"));
    }
    sql.push_str("ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();\n");
    pg.psql("postgres", &sql)
        .unwrap_or_else(|e| panic!("enable ssl: {e}\n{}", pg.log_tail()));
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let ssl = pg.psql("postgres", "SHOW ssl").unwrap();
        if ssl == "on" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not turn ssl on after pg_reload_conf(): SHOW ssl = {ssl}\n{}",
            pg.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pgberth `App` inside the test process (no listener, no signals), for tests that drive
/// the library directly. `dir` gets `pgberth.ini` (`[databases]` holding `databases`, then
/// `[pgbouncer]` with SCRAM authentication and `settings`) and a `userlist.txt` holding
/// `scram_user`; `@PGPORT@` stands for the test cluster's port.
pub fn in_process_app(
    dir: &Path,
    databases: &str,
    settings: &str,
) -> std::sync::Arc<pgberth::app::App> {
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"{SCRAM_USER}\" \"{SCRAM_PASS}\"\n")).unwrap();
    let ini = dir.join("pgberth.ini");
    let body = format!(
        "[databases]\n{databases}\n\n[pgbouncer]\nauth_type = scram-sha-256\nauth_file = {}\n{settings}\n",
        userlist.display()
    );
    std::fs::write(
        &ini,
        body.replace("@PGPORT@", &cluster().port().to_string()),
    )
    .unwrap();
    pgberth::app::App::new(pgberth::process::load_config(&ini).expect("the test config loads"))
}
