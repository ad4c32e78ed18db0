//! `pgberth passwd` and `pgberth certs`, run as the built binary and checked against the real
//! PostgreSQL and the real tools: a printed verifier logs in to PostgreSQL, the certificates
//! pass `openssl verify` and carry the SANs asked for, and PostgreSQL serves TLS with them to
//! a `sslmode=verify-full` psql that logs in with the client certificate.

mod support;

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use pgberth::cluster::{ClusterOptions, TempCluster, quote_literal};
use pgberth::tools::certs::{self, CertOptions, CertificateAuthority, LeafOptions, LeafUsage};
use support::{MD5_USER, cluster, direct_conn_str};
use tokio_postgres::error::SqlState;

/// Runs the built pgberth with `args`, feeding `stdin` (or nothing).
fn pgberth(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgberth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgberth");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait for pgberth")
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
    assert!(out.status.success(), "pgberth failed: {}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The secret of the single `"user" "secret"` line `pgberth passwd` prints for `password`.
fn passwd_secret(user: &str, password: &str, flags: &[&str]) -> String {
    let mut args = vec!["passwd", user];
    args.extend_from_slice(flags);
    let out = stdout(&pgberth(&args, Some(&format!("{password}\n"))));
    let line = out.trim_end_matches('\n');
    assert_eq!(line.lines().count(), 1, "one line: {out:?}");
    let quoted_user = format!("\"{}\" ", user.replace('"', "\"\""));
    let secret = line
        .strip_prefix(&quoted_user)
        .and_then(|rest| rest.strip_prefix('"'))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a userlist line for {user}: {line:?}"));
    secret.to_owned()
}

/// Logs in to the test cluster over TCP; `Ok` when PostgreSQL accepts the password.
async fn login(user: &str, password: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &direct_conn_str(user, password, "postgres"),
        tokio_postgres::NoTls,
    )
    .await?;
    let task = tokio::spawn(connection);
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(who, user);
    drop(client);
    let _ = task.await;
    Ok(())
}

async fn assert_rejected_28p01(user: &str, password: &str) {
    let err = login(user, password)
        .await
        .expect_err("a wrong password was accepted");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

#[tokio::test]
async fn passwd_scram_line_verifies_against_postgresql() {
    let (role, password) = ("passwd_scram_role", "correct horse battery staple");
    let secret = passwd_secret(role, password, &[]);
    assert!(secret.starts_with("SCRAM-SHA-256$4096:"), "{secret}");
    cluster()
        .psql(
            "postgres",
            &format!(
                "CREATE ROLE {role} LOGIN PASSWORD {}",
                quote_literal(&secret)
            ),
        )
        .unwrap();
    // PostgreSQL stores a pre-hashed verifier as it is.
    assert_eq!(cluster().scram_verifier(role).unwrap(), secret);
    login(role, password)
        .await
        .expect("SCRAM login with the password");
    assert_rejected_28p01(role, "correct horse battery stapler").await;
}

#[tokio::test]
async fn passwd_scram_is_the_default_and_explicit_flag_gives_the_same_kind() {
    let secret = passwd_secret("someone", "pw", &["--scram"]);
    assert!(secret.starts_with("SCRAM-SHA-256$4096:"), "{secret}");
    // A random salt: the same password twice gives two different verifiers.
    assert_ne!(secret, passwd_secret("someone", "pw", &[]));
}

/// Puts `md5_user`'s stored password back when the test ends, even on panic.
struct RestorePassword {
    role: &'static str,
    stored: String,
}

impl Drop for RestorePassword {
    fn drop(&mut self) {
        let sql = format!(
            "ALTER ROLE {} PASSWORD {}",
            self.role,
            quote_literal(&self.stored)
        );
        cluster().psql("postgres", &sql).unwrap();
    }
}

#[tokio::test]
async fn passwd_md5_line_verifies_against_postgresql() {
    // md5_user is the role whose pg_hba line says md5.
    let _restore = RestorePassword {
        role: MD5_USER,
        stored: cluster().scram_verifier(MD5_USER).unwrap(),
    };
    let password = "new md5 password";
    let secret = passwd_secret(MD5_USER, password, &["--md5"]);
    assert_eq!(secret, pgberth::auth::md5_secret(MD5_USER, password));
    cluster()
        .psql(
            "postgres",
            &format!("ALTER ROLE {MD5_USER} PASSWORD {}", quote_literal(&secret)),
        )
        .unwrap();
    assert_eq!(cluster().scram_verifier(MD5_USER).unwrap(), secret);
    login(MD5_USER, password)
        .await
        .expect("md5 login with the password");
    assert_rejected_28p01(MD5_USER, "old md5 password").await;
}

#[test]
fn passwd_refuses_an_empty_password() {
    for stdin in ["\n", ""] {
        let out = pgberth(&["passwd", "someone"], Some(stdin));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        assert!(text(&out).contains("empty password"), "{}", text(&out));
    }
}

#[test]
fn passwd_keeps_spaces_and_strips_only_the_newline() {
    let secret = passwd_secret("u", " padded ", &["--md5"]);
    assert_eq!(secret, pgberth::auth::md5_secret("u", " padded "));
}

#[test]
fn help_describes_passwd_and_certs() {
    let top = stdout(&pgberth(&["--help"], None));
    assert!(top.contains("passwd") && top.contains("certs"), "{top}");
    let certs = stdout(&pgberth(&["certs", "--help"], None));
    for word in [
        "--out",
        "--host",
        "--days",
        "--client-cn",
        "--force",
        "server-combined.pem",
    ] {
        assert!(certs.contains(word), "certs --help lacks {word}:\n{certs}");
    }
    let passwd = stdout(&pgberth(&["passwd", "--help"], None));
    assert!(
        passwd.contains("--md5") && passwd.contains("--scram"),
        "{passwd}"
    );
}

// ---------------------------------------------------------------------------------------------
// certs

const FILES: [(&str, u32); 7] = [
    ("ca.crt", 0o644),
    ("ca.key", 0o600),
    ("server.crt", 0o644),
    ("server.key", 0o600),
    ("client.crt", 0o644),
    ("client.key", 0o600),
    ("server-combined.pem", 0o644),
];

fn run_certs(dir: &Path, hosts: &str, extra: &[&str]) -> Output {
    let dir = dir.to_str().expect("utf-8 temp path");
    let mut args = vec!["certs", "--out", dir, "--host", hosts];
    args.extend_from_slice(extra);
    pgberth(&args, None)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn have_openssl() -> bool {
    Command::new("which")
        .arg("openssl")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl")
}

#[test]
fn certs_writes_files_with_modes_and_a_valid_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let out = stdout(&run_certs(&dir, "localhost,127.0.0.1", &[]));
    assert_eq!(mode(&dir), 0o700);
    for (name, want) in FILES {
        assert_eq!(mode(&dir.join(name)), want, "mode of {name}");
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        read("server-combined.pem"),
        format!("{}{}", read("server.crt"), read("ca.crt"))
    );
    // The printed config names the files by absolute path.
    let abs = dir.canonicalize().unwrap();
    for line in [
        format!("client_tls_key_file = {}/server.key", abs.display()),
        format!("client_tls_cert_file = {}/server.crt", abs.display()),
        format!("client_tls_ca_file = {}/ca.crt", abs.display()),
        format!("ssl_key_file = '{}/server.key'", abs.display()),
        format!("sslrootcert={}/ca.crt", abs.display()),
        "host=localhost port=6432".to_owned(),
    ] {
        assert!(out.contains(&line), "output lacks {line:?}:\n{out}");
    }

    if !have_openssl() {
        eprintln!("openssl not installed: chain and SAN checks skipped");
        return;
    }
    let verify = openssl(
        &dir,
        &["verify", "-CAfile", "ca.crt", "server.crt", "client.crt"],
    );
    assert!(verify.status.success(), "{}", text(&verify));
    let sans = openssl(
        &dir,
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "server.crt",
        ],
    );
    let sans = stdout(&sans);
    assert!(
        sans.contains("DNS:localhost") && sans.contains("IP Address:127.0.0.1"),
        "{sans}"
    );
    let subject = stdout(&openssl(
        &dir,
        &["x509", "-noout", "-subject", "-in", "client.crt"],
    ));
    assert!(subject.contains("CN = pgberth"), "{subject}");
    let dates = stdout(&openssl(
        &dir,
        &[
            "x509",
            "-noout",
            "-checkend",
            &(824 * 86400).to_string(),
            "-in",
            "server.crt",
        ],
    ));
    assert!(dates.contains("will not expire"), "{dates}");
}

#[test]
fn certs_refuses_to_overwrite_existing_files_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    stdout(&run_certs(dir, "localhost", &[]));
    let before = std::fs::read_to_string(dir.join("ca.key")).unwrap();

    let again = run_certs(dir, "localhost", &[]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(dir.join("ca.key")).unwrap(), before);

    // Even one existing file stops it.
    let lone = tempfile::tempdir().unwrap();
    std::fs::write(lone.path().join("client.key"), "mine").unwrap();
    assert!(!run_certs(lone.path(), "localhost", &[]).status.success());
    assert_eq!(
        std::fs::read_to_string(lone.path().join("client.key")).unwrap(),
        "mine"
    );
    assert!(!lone.path().join("ca.crt").exists());

    stdout(&run_certs(dir, "localhost", &["--force"]));
    assert_ne!(std::fs::read_to_string(dir.join("ca.key")).unwrap(), before);
    for (name, want) in FILES {
        assert_eq!(mode(&dir.join(name)), want, "mode of {name} after --force");
    }
}

#[test]
fn certs_library_issues_expired_and_foreign_ca_leaves_that_openssl_rejects() {
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let expired = certs::generate(&CertOptions {
        not_before: Some(now - day * 10),
        not_after: Some(now - day),
        ..CertOptions::default()
    })
    .unwrap();
    let other_ca = CertificateAuthority::new("some other CA", 1).unwrap();
    let foreign = other_ca
        .issue_leaf(&LeafOptions::valid_for_days(
            "pgberth",
            &[],
            LeafUsage::Client,
            1,
        ))
        .unwrap();
    if !have_openssl() {
        eprintln!("openssl not installed: verification skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(tmp.path().join(name), text).unwrap();
    write("ca.crt", expired.ca.cert_pem());
    write("expired.crt", &expired.client.cert_pem);
    write("foreign.crt", &foreign.cert_pem);
    write("other-ca.crt", other_ca.cert_pem());
    let verify = |ca: &str, cert: &str| openssl(tmp.path(), &["verify", "-CAfile", ca, cert]);
    let out = verify("ca.crt", "expired.crt");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    let out = verify("ca.crt", "foreign.crt");
    assert!(!out.status.success(), "{}", text(&out));
    let out = verify("other-ca.crt", "foreign.crt");
    assert!(out.status.success(), "{}", text(&out));
}

/// pg_hba.conf of the TLS cluster: the superuser logs in with its client certificate over TLS.
const SSL_HBA: &str = "\
local   all all                   trust
hostssl all postgres 127.0.0.1/32 cert
host    all all      127.0.0.1/32 scram-sha-256
";

/// Copies `name` from `from` into the cluster's data dir, owned by the server's OS user.
fn install(from: &Path, name: &str, data_dir: &Path, mode: u32) {
    let target = data_dir.join(name);
    std::fs::copy(from.join(name), &target).unwrap();
    let owner = std::fs::metadata(data_dir).unwrap();
    std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn psql_path(cluster: &TempCluster) -> PathBuf {
    let ours = cluster.bin_dir().join("psql");
    if ours.is_file() {
        ours
    } else {
        PathBuf::from("psql")
    }
}

/// psql with `conninfo` running `sql` (no PG* variables from the environment).
fn psql(cluster: &TempCluster, conninfo: &str, sql: &str) -> Output {
    let mut cmd = Command::new(psql_path(cluster));
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    cmd.args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run psql")
}

#[test]
fn certs_work_for_postgresql_ssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    // The client certificate's CN is the role `cert` auth logs in as.
    stdout(&run_certs(
        &dir,
        "localhost,127.0.0.1",
        &["--client-cn", "postgres"],
    ));

    let pg = TempCluster::start(ClusterOptions::default()).unwrap();
    let data = pg.data_dir();
    install(&dir, "server.crt", &data, 0o644);
    install(&dir, "server.key", &data, 0o600);
    install(&dir, "ca.crt", &data, 0o644);
    std::fs::write(data.join("pg_hba.conf"), SSL_HBA).unwrap();
    pg.append_conf(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
         ssl_ca_file = 'ca.crt'\n",
    )
    .unwrap();
    pg.stop_server().unwrap();
    pg.start_server()
        .unwrap_or_else(|e| panic!("PostgreSQL with ssl = on: {e}"));

    let file = |name: &str| dir.join(name).display().to_string();
    let conninfo = |host: &str, rootcert: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} dbname=postgres user=postgres \
             sslmode=verify-full sslrootcert={rootcert} sslcert={} sslkey={} connect_timeout=10",
            pg.port(),
            file("client.crt"),
            file("client.key")
        )
    };
    let sql = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // Both SANs verify: the DNS name and the IP address.
    for host in ["localhost", "127.0.0.1"] {
        let out = psql(&pg, &conninfo(host, &file("ca.crt")), sql);
        assert!(
            out.status.success(),
            "verify-full to {host}: {}\nserver log:\n{}",
            text(&out),
            pg.log_tail()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "t|/CN=postgres"
        );
    }

    // A client trusting another CA refuses the server.
    let other = CertificateAuthority::new("some other CA", 1).unwrap();
    let other_ca = tmp.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.cert_pem()).unwrap();
    let out = psql(&pg, &conninfo("localhost", other_ca.to_str().unwrap()), sql);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("certificate verify failed"),
        "{}",
        text(&out)
    );
    pg.stop().unwrap();
}
