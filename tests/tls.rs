//! TLS on both sides of the real pgberth binary, with real PostgreSQL and real psql.
//!
//! Client side (`client_tls_*`): psql with libpq's sslmodes, sslrootcert and client
//! certificates connects to pgberth; `\conninfo` shows whether the connection is encrypted.
//! Server side (`server_tls_*`): the test cluster serves TLS with a certificate for
//! `localhost` only (so `127.0.0.1` fails host name verification), and
//! `pg_stat_ssl` queried *through* pgberth shows whether pgberth→PostgreSQL is encrypted and
//! which client certificate pgberth presented. Certificates come from
//! `pgberth::tools::certs`, each test with its own CA in its own temp dir.

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use pgberth::tools::certs::{CertPem, CertificateAuthority, LeafOptions, LeafUsage};
use support::{APP_DB, Pgberth, SCRAM_PASS, SCRAM_USER, cluster, install_in_data_dir, turn_ssl_on};
use tokio_postgres::error::{DbError, SqlState};

/// Shows whether the pgberth→PostgreSQL connection is encrypted, and with which certificate.
const SSL_SQL: &str = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
/// Common name of the certificate pgberth presents to PostgreSQL.
const PGBERTH_CLIENT_CN: &str = "pgberth-to-postgres";
/// A role PostgreSQL refuses over plaintext TCP (`hostnossl … reject`): TLS or nothing.
const TLS_USER: &str = "tls_user";
const TLS_PASS: &str = "tls_pass";
/// How long to wait for something that is not a timing assertion (PostgreSQL's reload, a file).
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA and the files it issued, in a temp dir of their own.
struct Pki {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca = CertificateAuthority::new(name, 30).expect("create a CA");
        let dir = tempfile::Builder::new()
            .prefix("pgberth-tls-")
            .tempdir()
            .expect("temp dir for certificates");
        let pki = Pki { ca, dir };
        let ca_pem = pki.ca.cert_pem().to_owned();
        pki.write("ca.crt", &ca_pem, 0o644);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Issues a leaf and writes `<name>.crt` and `<name>.key`; returns their paths.
    fn issue(&self, name: &str, options: &LeafOptions) -> (PathBuf, PathBuf) {
        let CertPem { cert_pem, key_pem } = self.ca.issue_leaf(options).expect("issue a leaf");
        (
            self.write(&format!("{name}.crt"), &cert_pem, 0o644),
            self.write(&format!("{name}.key"), &key_pem, 0o600),
        )
    }

    /// A server certificate for `localhost` only.
    fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue(
            name,
            &LeafOptions::valid_for_days("localhost", &["localhost".into()], LeafUsage::Server, 2),
        )
    }

    fn client(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        self.issue(
            name,
            &LeafOptions::valid_for_days(cn, &[], LeafUsage::Client, 2),
        )
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// The test cluster with ssl = on
// ---------------------------------------------------------------------------------------------

/// Files for talking to the TLS-enabled cluster, kept in its data dir (removed at exit).
struct ClusterTls {
    /// The CA that signed the cluster's certificate and that it trusts for client certificates.
    ca_file: PathBuf,
    /// A client certificate (CN [`PGBERTH_CLIENT_CN`]) signed by that CA, for pgberth.
    client_cert: PathBuf,
    client_key: PathBuf,
}

static CLUSTER_TLS: OnceLock<ClusterTls> = OnceLock::new();

/// The shared cluster, with `ssl = on` (certificate for `localhost` only) from the first call.
fn cluster_tls() -> &'static ClusterTls {
    CLUSTER_TLS.get_or_init(|| {
        let pg = cluster();
        let ca = CertificateAuthority::new("test cluster CA", 30).unwrap();
        let server = ca
            .issue_leaf(&LeafOptions::valid_for_days(
                "localhost",
                &["localhost".into()],
                LeafUsage::Server,
                30,
            ))
            .unwrap();
        let client = ca
            .issue_leaf(&LeafOptions::valid_for_days(
                PGBERTH_CLIENT_CN,
                &[],
                LeafUsage::Client,
                30,
            ))
            .unwrap();
        // The server's files belong to the postgres OS user (its key 0600); the ones pgberth
        // reads stay root's, as pgberth runs as the test's user.
        let cert = install_in_data_dir("tls-server.crt", &server.cert_pem, 0o644, true);
        let key = install_in_data_dir("tls-server.key", &server.key_pem, 0o600, true);
        let ca_file = install_in_data_dir("tls-ca.crt", ca.cert_pem(), 0o644, true);
        let client_cert = install_in_data_dir("pgberth-client.crt", &client.cert_pem, 0o644, false);
        let client_key = install_in_data_dir("pgberth-client.key", &client.key_pem, 0o600, false);
        pg.create_role(
            TLS_USER,
            TLS_PASS,
            pgberth::cluster::PasswordEncryption::Scram,
        )
        .unwrap();
        // `host` lines match TLS and plaintext; this one makes plaintext fail for TLS_USER.
        let hba = pg.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostnossl all {TLS_USER} 127.0.0.1/32 reject\n{rules}"),
        )
        .unwrap();
        turn_ssl_on(&[
            ("ssl_cert_file", &cert),
            ("ssl_key_file", &key),
            ("ssl_ca_file", &ca_file),
        ]);
        ClusterTls {
            ca_file,
            client_cert,
            client_key,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// pgberth and psql
// ---------------------------------------------------------------------------------------------

/// pgberth.ini: TCP on 127.0.0.1, a unix socket in its dir, SCRAM for clients with the
/// userlist's plain password (also used to log in to PostgreSQL), `general` appended.
fn ini(general: &str, databases: &str) -> String {
    format!(
        "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\n\
         unix_socket_dir = @DIR@\nauth_type = scram-sha-256\nauth_file = @DIR@/userlist.txt\n\
         pool_mode = transaction\n{general}\n"
    )
}

/// The app database over TCP, with the address given (`127.0.0.1` or `localhost`).
fn app_line(host: &str) -> String {
    format!("app = host={host} port=@PGPORT@ dbname=app")
}

fn userlist() -> String {
    format!("\"{SCRAM_USER}\" \"{SCRAM_PASS}\"\n\"{TLS_USER}\" \"{TLS_PASS}\"\n")
}

/// A pgberth whose client side is `client_tls` and whose server side is plaintext.
fn start_client_side(client_tls: &str) -> Pgberth {
    Pgberth::start(
        &ini(
            &format!("{client_tls}\nserver_tls_sslmode = disable"),
            &app_line("127.0.0.1"),
        ),
        &userlist(),
    )
}

/// A pgberth without client TLS whose server side is `server_tls`, to the database `line`.
fn start_server_side(server_tls: &str, line: &str) -> Pgberth {
    cluster_tls();
    Pgberth::start(&ini(server_tls, line), &userlist())
}

fn client_tls_ini(sslmode: &str, certs: &Pki, ca: bool) -> String {
    let mut out = format!(
        "client_tls_sslmode = {sslmode}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        certs.path("server.crt").display(),
        certs.path("server.key").display()
    );
    if ca {
        out.push_str(&format!(
            "client_tls_ca_file = {}\n",
            certs.ca_file().display()
        ));
    }
    out
}

/// How psql connects to pgberth.
struct Conn {
    host: &'static str,
    sslmode: &'static str,
    rootcert: Option<PathBuf>,
    cert: Option<(PathBuf, PathBuf)>,
    /// More conninfo keywords.
    extra: &'static str,
}

impl Conn {
    fn new(sslmode: &'static str) -> Conn {
        Conn {
            host: "localhost",
            sslmode,
            rootcert: None,
            cert: None,
            extra: "",
        }
    }

    fn host(mut self, host: &'static str) -> Conn {
        self.host = host;
        self
    }

    fn rootcert(mut self, path: PathBuf) -> Conn {
        self.rootcert = Some(path);
        self
    }

    fn cert(mut self, cert: (PathBuf, PathBuf)) -> Conn {
        self.cert = Some(cert);
        self
    }

    fn extra(mut self, extra: &'static str) -> Conn {
        self.extra = extra;
        self
    }

    /// `hostaddr=127.0.0.1` always (pgberth listens there), `host` is the name verified.
    fn conninfo(&self, port: u16) -> String {
        // Files that do not exist: no client certificate, whatever ~/.postgresql holds.
        let none = PathBuf::from("/nonexistent/pgberth-test");
        let (cert, key) = self
            .cert
            .clone()
            .unwrap_or_else(|| (none.join("client.crt"), none.join("client.key")));
        let rootcert = self.rootcert.clone().unwrap_or_else(|| none.join("ca.crt"));
        format!(
            "host={} hostaddr=127.0.0.1 port={port} user={SCRAM_USER} dbname={APP_DB} \
             sslmode={} sslrootcert={} sslcert={} sslkey={} connect_timeout=10 {}",
            self.host,
            self.sslmode,
            rootcert.display(),
            cert.display(),
            key.display(),
            self.extra
        )
    }
}

fn psql_command() -> Command {
    let mut cmd = Command::new("/usr/bin/psql");
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    cmd.env("PGPASSWORD", SCRAM_PASS);
    cmd
}

/// psql with `conninfo`, running each of `commands` with `-c` (`-A -t`, stop on error).
fn psql(conninfo: &str, commands: &[&str]) -> Output {
    let mut cmd = psql_command();
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.stdin(Stdio::null()).output().expect("run psql")
}

/// psql through pgberth as `conn` says: `\conninfo` then `SELECT 1`. Returns the output.
fn psql_tls(pgberth: &Pgberth, conn: &Conn) -> Output {
    psql(
        &conn.conninfo(pgberth.port()),
        &["\\conninfo", "SELECT 41 + 1"],
    )
}

/// Asserts that psql got through to PostgreSQL over TLS.
fn assert_tls_ok(pgberth: &Pgberth, out: &Output) {
    assert!(
        out.status.success() && stdout(out).ends_with("42"),
        "psql through pgberth failed: {}\npgberth log:\n{}",
        text(out),
        pgberth.log_contents()
    );
    assert!(
        stdout(out).contains("SSL connection"),
        "psql's connection to pgberth is not encrypted: {}",
        text(out)
    );
}

/// Asserts that psql could not log in (and so ran nothing).
fn assert_refused(pgberth: &Pgberth, out: &Output) -> String {
    assert!(
        !out.status.success() && !stdout(out).contains("42"),
        "psql was served: {}\npgberth log:\n{}",
        text(out),
        pgberth.log_contents()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `SSL_SQL` through pgberth over plaintext: `t|/CN=…`, `t|` or `f|`.
fn server_ssl(pgberth: &Pgberth) -> String {
    server_ssl_as(pgberth, SCRAM_USER, SCRAM_PASS)
}

fn server_ssl_as(pgberth: &Pgberth, user: &str, password: &str) -> String {
    let out = pgberth.psql_as(user, password, APP_DB, SSL_SQL);
    assert!(
        out.status.success(),
        "query through pgberth: {}\npgberth log:\n{}",
        text(&out),
        pgberth.log_contents()
    );
    stdout(&out)
}

/// The ErrorResponse a tokio-postgres client gets at login or at its first query.
async fn first_error(pgberth: &Pgberth) -> DbError {
    first_error_as(pgberth, SCRAM_USER, SCRAM_PASS).await
}

async fn first_error_as(pgberth: &Pgberth, user: &str, password: &str) -> DbError {
    let err = match pgberth.try_connect(user, password, APP_DB).await {
        Err(err) => err,
        Ok(client) => match client.simple_query("SELECT 1").await {
            Err(err) => err,
            Ok(_) => panic!(
                "the query was served; pgberth log:\n{}",
                pgberth.log_contents()
            ),
        },
    };
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"))
        .clone()
}

/// Runs the pgberth binary on `ini_body` expecting it to refuse to start; returns its output.
fn start_failure(ini_body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = pgberth::cluster::free_port().unwrap();
    let body = ini_body
        .replace("@PORT@", &port.to_string())
        .replace("@PGPORT@", &cluster().port().to_string())
        .replace("@DIR@", &dir.path().display().to_string());
    let ini = dir.path().join("pgberth.ini");
    std::fs::write(&ini, body).unwrap();
    std::fs::write(dir.path().join("userlist.txt"), userlist()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgberth"))
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("pgberth started with a broken TLS config: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    text(&out)
}

/// Certificates for pgberth's client side: a CA, `server` (pgberth's, for `localhost`) and
/// `client` (CN pgberth) signed by it.
fn client_side_pki() -> Pki {
    let pki = Pki::new("pgberth test CA");
    pki.server("server");
    pki.client("client", "pgberth");
    pki
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

#[test]
fn client_tls_disable_answers_no_so_sslmode_require_clients_fail() {
    let pgberth = start_client_side("client_tls_sslmode = disable");
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &Conn::new("require")));
    assert!(
        err.contains("server does not support SSL"),
        "psql's message: {err}"
    );
    // sslmode=prefer falls back to plaintext.
    let out = psql_tls(&pgberth, &Conn::new("prefer"));
    assert!(
        out.status.success() && !stdout(&out).contains("SSL connection"),
        "{}",
        text(&out)
    );
}

#[test]
fn client_tls_prefer_serves_plaintext_and_tls_clients() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("prefer", &certs, false));
    let out = psql_tls(&pgberth, &Conn::new("disable"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).ends_with("42"), "{}", text(&out));
    assert!(!stdout(&out).contains("SSL connection"), "{}", text(&out));
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &Conn::new("require")));
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &Conn::new("prefer")));
}

#[tokio::test]
async fn client_tls_require_refuses_plaintext_tcp_with_28000_and_a_clear_message() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("require", &certs, false));
    let err = match pgberth.try_connect(SCRAM_USER, SCRAM_PASS, APP_DB).await {
        Ok(_) => panic!("a plaintext TCP client was served"),
        Err(err) => err.as_db_error().cloned().expect("an ErrorResponse"),
    };
    assert_eq!(err.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(
        err.message().contains("TLS required") && err.message().contains("client_tls_sslmode"),
        "{err:?}"
    );
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &Conn::new("disable")));
    assert!(err.contains("TLS required"), "psql's message: {err}");
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &Conn::new("require")));

    // A unix socket client cannot use TLS and is still served.
    let unix = format!(
        "host={} port={} user={SCRAM_USER} dbname={APP_DB} sslmode=disable",
        pgberth.dir().display(),
        pgberth.port()
    );
    let out = psql(&unix, &["SELECT 41 + 1"]);
    assert!(
        out.status.success() && stdout(&out) == "42",
        "unix socket client: {}\npgberth log:\n{}",
        text(&out),
        pgberth.log_contents()
    );
}

#[test]
fn psql_verify_full_through_pgberth_connects() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("require", &certs, false));
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &conn));
    // The certificate names localhost only.
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &conn.host("127.0.0.1")));
    assert!(err.contains("does not match host name"), "psql: {err}");
}

#[test]
fn client_verify_ca_refuses_a_client_without_certificate() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("verify-ca", &certs, true));
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    assert_refused(&pgberth, &psql_tls(&pgberth, &conn));
    // pgberth logs after the client has seen the alert.
    pgberth.wait_for_log("TLS handshake with the client failed", WAIT);
}

#[test]
fn client_verify_ca_refuses_a_client_with_a_certificate_from_another_ca() {
    let certs = client_side_pki();
    let other = Pki::new("another CA");
    let foreign = other.client("client", "pgberth");
    let pgberth = start_client_side(&client_tls_ini("verify-ca", &certs, true));
    let conn = Conn::new("verify-full")
        .rootcert(certs.ca_file())
        .cert(foreign);
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &conn));
    assert!(err.contains("unknown ca"), "psql: {err}");
}

#[test]
fn client_verify_ca_refuses_a_client_with_an_expired_certificate() {
    let certs = client_side_pki();
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let expired = certs.issue(
        "expired",
        &LeafOptions {
            not_before: now - day * 10,
            not_after: now - day,
            ..LeafOptions::valid_for_days("pgberth", &[], LeafUsage::Client, 1)
        },
    );
    let pgberth = start_client_side(&client_tls_ini("verify-ca", &certs, true));
    let conn = Conn::new("verify-full")
        .rootcert(certs.ca_file())
        .cert(expired);
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &conn));
    assert!(err.contains("expired"), "psql: {err}");
}

#[test]
fn client_verify_ca_accepts_a_certificate_signed_by_the_ca() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("verify-ca", &certs, true));
    let conn = Conn::new("verify-full")
        .rootcert(certs.ca_file())
        .cert((certs.path("client.crt"), certs.path("client.key")));
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &conn));
}

#[test]
fn client_tls_protocols_tlsv1_3_refuses_a_tls_1_2_only_client() {
    let certs = client_side_pki();
    let general = format!(
        "{}client_tls_protocols = tlsv1.3",
        client_tls_ini("require", &certs, false)
    );
    let pgberth = start_client_side(&general);
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    let out = psql_tls(&pgberth, &conn);
    assert_tls_ok(&pgberth, &out);
    assert!(stdout(&out).contains("TLSv1.3"), "{}", text(&out));
    let tls12 = Conn::new("verify-full")
        .rootcert(certs.ca_file())
        .extra("ssl_max_protocol_version=TLSv1.2");
    assert_refused(&pgberth, &psql_tls(&pgberth, &tls12));
}

/// CVE-2021-23214: bytes a client sends after SSLRequest, before the `S`, must not be read as
/// plaintext once TLS starts. Sent in one write, they arrive with the SSLRequest, and pgberth
/// refuses the connection as PostgreSQL does.
#[test]
fn client_plaintext_sent_after_ssl_request_is_not_served() {
    use std::io::Read as _;
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("prefer", &certs, false));
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", pgberth.port())).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let params = format!("user\0{SCRAM_USER}\0database\0{APP_DB}\0\0");
    bytes.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    bytes.extend_from_slice(&196608u32.to_be_bytes());
    bytes.extend_from_slice(params.as_bytes());
    socket.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    // An ErrorResponse, 08P01, and nothing after it: no `S`, no `R` auth request.
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("C08P01"), "{text}");
    assert!(
        text.contains("received unencrypted data after SSL request"),
        "{text}"
    );
    let len = u32::from_be_bytes(answer[1..5].try_into().unwrap()) as usize;
    assert_eq!(answer.len(), 1 + len, "bytes after the error: {answer:?}");
}

#[test]
fn client_tls_config_with_a_missing_key_file_refuses_to_start_naming_the_file() {
    let certs = client_side_pki();
    let missing = certs.path("missing.key");
    let general = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        certs.path("server.crt").display(),
        missing.display()
    );
    let out = start_failure(&ini(&general, &app_line("127.0.0.1")));
    assert!(
        out.contains("client_tls_key_file") && out.contains(&missing.display().to_string()),
        "{out}"
    );
}

#[test]
fn client_tls_config_with_a_key_of_another_certificate_refuses_to_start_naming_the_file() {
    let certs = client_side_pki();
    let general = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
        certs.path("server.crt").display(),
        certs.path("client.key").display()
    );
    let out = start_failure(&ini(&general, &app_line("127.0.0.1")));
    assert!(
        out.contains(&certs.path("client.key").display().to_string())
            && out.contains("does not match"),
        "{out}"
    );
}

#[test]
fn server_tls_config_with_a_missing_ca_file_refuses_to_start_naming_the_file() {
    let certs = client_side_pki();
    let missing = certs.path("missing-ca.crt");
    let general = format!(
        "server_tls_sslmode = verify-full\nserver_tls_ca_file = {}\n",
        missing.display()
    );
    let out = start_failure(&ini(&general, &app_line("localhost")));
    assert!(
        out.contains("server_tls_ca_file") && out.contains(&missing.display().to_string()),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

#[test]
fn server_tls_disable_connects_in_plaintext() {
    let pgberth = start_server_side("server_tls_sslmode = disable", &app_line("127.0.0.1"));
    assert_eq!(server_ssl(&pgberth), "f|");
}

#[test]
fn server_tls_prefer_and_require_encrypt() {
    for mode in ["prefer", "require"] {
        let pgberth = start_server_side(
            &format!("server_tls_sslmode = {mode}"),
            &app_line("127.0.0.1"),
        );
        assert_eq!(server_ssl(&pgberth), "t|", "server_tls_sslmode = {mode}");
    }
}

fn server_verify(mode: &str, ca_file: &Path) -> String {
    format!(
        "server_tls_sslmode = {mode}\nserver_tls_ca_file = {}",
        ca_file.display()
    )
}

#[test]
fn server_tls_verify_full_accepts_the_matching_host_name() {
    let tls = cluster_tls();
    let pgberth = start_server_side(
        &server_verify("verify-full", &tls.ca_file),
        &app_line("localhost"),
    );
    assert_eq!(server_ssl(&pgberth), "t|");
}

#[tokio::test]
async fn server_tls_verify_full_refuses_a_host_name_not_in_the_certificate() {
    let tls = cluster_tls();
    let pgberth = start_server_side(
        &server_verify("verify-full", &tls.ca_file),
        &app_line("127.0.0.1"),
    );
    let err = first_error(&pgberth).await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    let message = err.message();
    assert!(
        message.contains("certificate") && message.contains("verify-full"),
        "the message should say why: {message}"
    );
    assert!(
        message.contains("not valid for name \"127.0.0.1\""),
        "the message should name the host name mismatch: {message}"
    );
    // pgberth logs after the client has seen the error.
    pgberth.wait_for_log("TLS handshake with 127.0.0.1", WAIT);
    let log = pgberth.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake with 127.0.0.1") && l.contains("certificate")),
        "no log line about the failed handshake:\n{log}"
    );
}

#[test]
fn server_tls_verify_ca_ignores_the_host_name_but_checks_the_chain() {
    let tls = cluster_tls();
    let pgberth = start_server_side(
        &server_verify("verify-ca", &tls.ca_file),
        &app_line("127.0.0.1"),
    );
    assert_eq!(server_ssl(&pgberth), "t|");
}

#[tokio::test]
async fn server_tls_verify_full_without_ca_file_uses_the_system_bundle() {
    cluster_tls();
    let pgberth = start_server_side("server_tls_sslmode = verify-full", &app_line("localhost"));
    let err = first_error(&pgberth).await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    assert!(err.message().contains("UnknownIssuer"), "{err:?}");
}

#[tokio::test]
async fn server_tls_verify_ca_refuses_a_server_certificate_from_another_ca() {
    cluster_tls();
    let other = Pki::new("another CA");
    let pgberth = start_server_side(
        &server_verify("verify-ca", &other.ca_file()),
        &app_line("127.0.0.1"),
    );
    let err = first_error(&pgberth).await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    assert!(
        err.message().contains("UnknownIssuer") && err.message().contains("verify-ca"),
        "{err:?}"
    );
}

#[test]
fn server_tls_client_certificate_is_presented_to_postgresql() {
    let tls = cluster_tls();
    let general = format!(
        "{}\nserver_tls_cert_file = {}\nserver_tls_key_file = {}",
        server_verify("verify-full", &tls.ca_file),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let pgberth = start_server_side(&general, &app_line("localhost"));
    assert_eq!(server_ssl(&pgberth), format!("t|/CN={PGBERTH_CLIENT_CN}"));
}

#[tokio::test]
async fn server_tls_disable_passes_on_postgresql_refusing_plaintext() {
    let pgberth = start_server_side("server_tls_sslmode = disable", &app_line("127.0.0.1"));
    let err = first_error_as(&pgberth, TLS_USER, TLS_PASS).await;
    assert_eq!(
        err.code(),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "{err:?}"
    );
    assert!(err.message().contains("pg_hba.conf"), "{err:?}");
}

#[test]
fn server_tls_allow_starts_in_plaintext_and_retries_with_tls_when_postgresql_refuses() {
    let pgberth = start_server_side("server_tls_sslmode = allow", &app_line("127.0.0.1"));
    assert_eq!(server_ssl(&pgberth), "f|");
    assert_eq!(server_ssl_as(&pgberth, TLS_USER, TLS_PASS), "t|");
}

#[test]
fn server_tls_is_not_used_over_a_unix_socket() {
    let tls = cluster_tls();
    let pgberth = start_server_side(
        &server_verify("verify-full", &tls.ca_file),
        "app = host=@PGSOCKET@ port=@PGPORT@ dbname=app",
    );
    assert_eq!(server_ssl(&pgberth), "f|");
}

/// A TCP front for the cluster that answers `N` to SSLRequest (a server without TLS) and
/// relays everything else. Returns its port.
fn front_without_tls() -> u16 {
    use std::io::Read as _;
    use std::net::{Shutdown, TcpListener, TcpStream};
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pg_port = cluster().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            std::thread::spawn(move || {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).is_err() {
                    return;
                }
                let mut server = TcpStream::connect(("127.0.0.1", pg_port)).unwrap();
                if first == SSL_REQUEST {
                    client.write_all(b"N").unwrap();
                } else {
                    server.write_all(&first).unwrap();
                }
                let (mut c, mut s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

#[tokio::test]
async fn server_tls_require_refuses_a_server_without_tls() {
    let port = front_without_tls();
    let pgberth = start_server_side(
        "server_tls_sslmode = require",
        &format!("app = host=127.0.0.1 port={port} dbname=app"),
    );
    let err = first_error(&pgberth).await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    assert!(
        err.message().contains("does not accept TLS") && err.message().contains("require"),
        "{err:?}"
    );
}

#[test]
fn server_tls_prefer_falls_back_to_plaintext_with_a_server_without_tls() {
    let port = front_without_tls();
    let pgberth = start_server_side(
        "server_tls_sslmode = prefer",
        &format!("app = host=127.0.0.1 port={port} dbname=app"),
    );
    assert_eq!(server_ssl(&pgberth), "f|");
}

#[test]
fn large_queries_and_results_cross_tls_on_both_sides() {
    let tls = cluster_tls();
    let certs = client_side_pki();
    let general = format!(
        "{}{}",
        client_tls_ini("require", &certs, false),
        server_verify("verify-full", &tls.ca_file)
    );
    let pgberth = start_server_side(&general, &app_line("localhost"));
    // A 1 MB query towards PostgreSQL, about 5 MB of COPY rows back.
    let script = format!(
        "\\conninfo\nSELECT length('{}');\n\
         COPY (SELECT i, repeat('y', 1000) FROM generate_series(1, 5000) i) TO STDOUT;\n\
         {SSL_SQL};\n",
        "x".repeat(1_000_000)
    );
    let file = certs.write("script.sql", &script, 0o644);
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    let mut cmd = psql_command();
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(conn.conninfo(pgberth.port()))
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\npgberth log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        pgberth.log_contents()
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        printed.contains("SSL connection"),
        "{}",
        lines[..2].join("\n")
    );
    assert!(
        lines.contains(&"1000000"),
        "the 1 MB query's answer is missing"
    );
    let rows = lines
        .iter()
        .filter(|l| l.split_once('\t').is_some_and(|(_, y)| y.len() == 1000))
        .count();
    assert_eq!(rows, 5000);
    assert_eq!(lines.last().copied(), Some("t|"));
}

#[test]
fn client_tls_require_still_forwards_plaintext_cancel_requests() {
    let certs = client_side_pki();
    let pgberth = start_client_side(&client_tls_ini("require", &certs, false));
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    let sql = "SELECT pg_sleep(61.5)";
    let running = psql_command()
        .args(["-X", "-d"])
        .arg(conn.conninfo(pgberth.port()))
        .args(["-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let active =
        format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}' AND state = 'active'");
    let deadline = Instant::now() + WAIT;
    while cluster().psql("postgres", &active).unwrap() != "1" {
        assert!(Instant::now() < deadline, "{sql} never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // psql sends a CancelRequest (libpq sends it without TLS) on SIGINT.
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(running.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = running.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("canceling statement due to user request"),
        "{}\npgberth log:\n{}",
        text(&out),
        pgberth.log_contents()
    );
}

// ---------------------------------------------------------------------------------------------
// Reload and logs
// ---------------------------------------------------------------------------------------------

/// Waits until `path` exists (written by a psql `\!` once its previous query completed).
fn wait_for_file(path: &Path, pgberth: &Pgberth) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear; pgberth log:\n{}",
            path.display(),
            pgberth.log_contents()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_clients() {
    let old = client_side_pki();
    // pgberth reads its certificate from files that are replaced in place.
    let live = tempfile::tempdir().unwrap();
    let cert = live.path().join("pgberth.crt");
    let key = live.path().join("pgberth.key");
    std::fs::copy(old.path("server.crt"), &cert).unwrap();
    std::fs::copy(old.path("server.key"), &key).unwrap();
    let general = format!(
        "client_tls_sslmode = prefer\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n\
         server_tls_sslmode = disable",
        cert.display(),
        key.display()
    );
    let pgberth = Pgberth::start(&ini(&general, &app_line("127.0.0.1")), &userlist());

    // A plaintext client and a TLS client (psql reading its script from a pipe) connect.
    let plain = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    plain.simple_query("SELECT 1").await.unwrap();
    let marker = live.path().join("psql-connected");
    let conn = Conn::new("verify-full").rootcert(old.ca_file());
    let mut held = psql_command()
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(conn.conninfo(pgberth.port()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut script = held.stdin.take().unwrap();
    writeln!(
        script,
        "\\conninfo\nSELECT 'before reload';\n\\! touch {}",
        marker.display()
    )
    .unwrap();
    script.flush().unwrap();
    wait_for_file(&marker, &pgberth);

    // New certificates from a new CA, then SIGHUP.
    let new = client_side_pki();
    std::fs::copy(new.path("server.crt"), &cert).unwrap();
    std::fs::copy(new.path("server.key"), &key).unwrap();
    pgberth.signal(libc::SIGHUP);
    pgberth.wait_for_log("configuration reloaded", WAIT);

    let with_new_ca = Conn::new("verify-full").rootcert(new.ca_file());
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &with_new_ca));
    let with_old_ca = Conn::new("verify-full").rootcert(old.ca_file());
    let err = assert_refused(&pgberth, &psql_tls(&pgberth, &with_old_ca));
    assert!(err.contains("certificate verify failed"), "psql: {err}");

    // Both clients connected before the reload are still served.
    let rows = plain.simple_query("SELECT 'after reload'").await;
    assert!(rows.is_ok(), "plaintext client after reload: {rows:?}");
    writeln!(script, "SELECT 'after reload';").unwrap();
    drop(script);
    let out = held.wait_with_output().unwrap();
    let printed = stdout(&out);
    assert!(
        out.status.success()
            && printed.contains("SSL connection")
            && printed.contains("before reload")
            && printed.contains("after reload"),
        "TLS client across the reload: {}\npgberth log:\n{}",
        text(&out),
        pgberth.log_contents()
    );
}

#[test]
fn sighup_switching_server_tls_sslmode_applies_to_new_server_connections() {
    cluster_tls();
    let ini_for = |mode: &str| {
        ini(
            &format!("server_tls_sslmode = {mode}"),
            &app_line("127.0.0.1"),
        )
    };
    let pgberth = Pgberth::start(&ini_for("disable"), &userlist());
    assert_eq!(server_ssl(&pgberth), "f|");
    pgberth.rewrite_ini(&ini_for("require"));
    pgberth.signal(libc::SIGHUP);
    pgberth.wait_for_log("configuration reloaded", WAIT);
    assert_eq!(server_ssl(&pgberth), "t|");
}

#[test]
fn sighup_with_a_broken_key_file_keeps_the_running_certificates() {
    let certs = client_side_pki();
    let live = tempfile::tempdir().unwrap();
    let cert = live.path().join("pgberth.crt");
    let key = live.path().join("pgberth.key");
    std::fs::copy(certs.path("server.crt"), &cert).unwrap();
    std::fs::copy(certs.path("server.key"), &key).unwrap();
    let general = format!(
        "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n\
         server_tls_sslmode = disable",
        cert.display(),
        key.display()
    );
    let pgberth = Pgberth::start(&ini(&general, &app_line("127.0.0.1")), &userlist());
    let conn = Conn::new("verify-full").rootcert(certs.ca_file());
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &conn));

    std::fs::write(&key, "not a key\n").unwrap();
    pgberth.signal(libc::SIGHUP);
    pgberth.wait_for_log("reload failed", WAIT);
    let log = pgberth.log_contents();
    let line = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("client_tls_key_file") && line.contains(&key.display().to_string()),
        "{line}"
    );
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &conn));
}

#[tokio::test]
async fn the_log_holds_no_key_material_or_password() {
    let tls = cluster_tls();
    let certs = client_side_pki();
    let general = format!(
        "{}{}\nserver_tls_cert_file = {}\nserver_tls_key_file = {}",
        client_tls_ini("verify-ca", &certs, true),
        server_verify("verify-full", &tls.ca_file),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let pgberth = Pgberth::start_with_args(
        &["-v", "-v"],
        &ini(&general, &app_line("localhost")),
        &userlist(),
    );
    // A good login, a refused certificate, a wrong password, a plaintext client and a reload.
    let good = Conn::new("verify-full")
        .rootcert(certs.ca_file())
        .cert((certs.path("client.crt"), certs.path("client.key")));
    assert_tls_ok(&pgberth, &psql_tls(&pgberth, &good));
    assert_refused(
        &pgberth,
        &psql_tls(&pgberth, &Conn::new("require").rootcert(certs.ca_file())),
    );
    let out = psql_command()
        .env("PGPASSWORD", "wrong-password")
        .args(["-X", "-d", &good.conninfo(pgberth.port()), "-c", "SELECT 1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let _ = pgberth.try_connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    pgberth.signal(libc::SIGHUP);
    pgberth.wait_for_log("configuration reloaded", WAIT);

    let log = pgberth.log_contents();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(!log.contains(SCRAM_PASS), "{log}");
    assert!(!log.contains("wrong-password"), "{log}");
    for key in [certs.path("server.key"), tls.client_key.clone()] {
        let pem = std::fs::read_to_string(key).unwrap();
        let body = pem.lines().nth(1).expect("a PEM body line");
        assert!(!log.contains(body), "key material in the log:\n{log}");
    }
}
