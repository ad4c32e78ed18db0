//! `auth_type = hba` (pg_hba.conf rules in `auth_hba_file`, first match wins) and
//! `auth_type = cert` (the client certificate's CN is the user), through the real pgberth
//! binary to a real PostgreSQL.

mod support;

use std::process::Command;

use pgberth::tools::certs::{CertOptions, generate};
use support::{Pgberth, SCRAM_PASS, SCRAM_USER};
use tokio_postgres::error::SqlState;

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"md5_user\" \"md5_pass\"\n";

/// pgberth with `auth_type = hba` and these rules (the directory holding them comes back too).
fn start_hba(hba: &str) -> (Pgberth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hba_file = dir.path().join("hba.conf");
    std::fs::write(&hba_file, hba).unwrap();
    let pgberth = Pgberth::start(
        &format!(
            "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app
forced = host=127.0.0.1 port=@PGPORT@ dbname=app user=scram_user

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir = @DIR@
auth_type = hba
auth_hba_file = {}
auth_file = @DIR@/userlist.txt
pool_mode = transaction
",
            hba_file.display()
        ),
        USERLIST,
    );
    (pgberth, dir)
}

async fn code_of(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> SqlState {
    let err = result.expect_err("the login must be refused");
    err.code()
        .cloned()
        .unwrap_or_else(|| panic!("no SQLSTATE: {err:?}"))
}

#[tokio::test]
async fn hba_first_matching_line_decides_the_method() {
    // trust for md5_user comes first: no password needed; scram for the rest.
    let (pgberth, _hba) = start_hba(
        "host all md5_user 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    let trusted = pgberth
        .try_connect("md5_user", "not the password", "app")
        .await;
    let client = trusted.expect("trust line: any password is accepted");
    client.simple_query("SELECT 1").await.unwrap();

    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    let wrong = pgberth.try_connect(SCRAM_USER, "wrong", "app").await;
    assert_eq!(code_of(wrong).await, SqlState::INVALID_PASSWORD);
}

#[tokio::test]
async fn hba_reject_line_refuses_with_28000() {
    let (pgberth, _hba) = start_hba(
        "host app scram_user 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    let refused = pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "app").await;
    assert_eq!(
        code_of(refused).await,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    );
    // The reject line names database app only: another database name is not refused.
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "forced").await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn hba_without_a_matching_line_refuses_with_28000_naming_the_connection() {
    let (pgberth, _hba) = start_hba("host forced all 127.0.0.1/32 scram-sha-256\n");
    let refused = pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let err = refused.expect_err("no line matches database app");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert!(
        db.message().contains("no auth_hba_file entry") && db.message().contains("app"),
        "{db:?}"
    );
}

#[tokio::test]
async fn hba_hostssl_line_does_not_match_a_plaintext_client() {
    // The trust line is for TLS clients only; this plaintext client falls through to md5.
    let (pgberth, _hba) = start_hba(
        "hostssl all all 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 md5\n",
    );
    let wrong = pgberth.try_connect(SCRAM_USER, "wrong", "app").await;
    assert_eq!(code_of(wrong).await, SqlState::INVALID_PASSWORD);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn hba_peer_on_the_unix_socket_admits_the_os_user_of_the_same_name() {
    // The test runs as some OS user; peer lets exactly that user name in over the socket.
    let os_user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let (pgberth, _hba) = start_hba("local all all peer\n");
    let socket = format!(
        "host={} port={} user={os_user} dbname=forced",
        pgberth.dir().display(),
        pgberth.port()
    );
    let (client, conn) = tokio_postgres::connect(&socket, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("peer login as {os_user}: {e:?}\n{}", pgberth.log_contents()));
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();

    let other = format!(
        "host={} port={} user=somebody_else dbname=forced",
        pgberth.dir().display(),
        pgberth.port()
    );
    let Err(err) = tokio_postgres::connect(&other, tokio_postgres::NoTls).await else {
        panic!("another user name must be refused");
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
}

#[tokio::test]
async fn hba_file_with_an_error_refuses_to_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("hba.conf");
    std::fs::write(
        &hba,
        "host all all 127.0.0.1/32 trust\nhost all all 10.0.0.0/8 kerberos\n",
    )
    .unwrap();
    let ini = dir.path().join("pgberth.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = hba\nauth_hba_file = {}\n",
            hba.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgberth"))
        .args(["check", ini.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("{}:2", hba.display())), "{text}");
    assert!(text.contains("kerberos"), "{text}");
}

/// `auth_type = cert`: psql presents a client certificate; its CN must be the user name.
#[tokio::test]
async fn cert_auth_logs_in_the_user_named_by_the_certificate_cn() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = generate(&CertOptions {
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        client_cn: SCRAM_USER.into(),
        ..CertOptions::default()
    })
    .unwrap();
    let path = |name: &str| certs_dir.path().join(name);
    let write = |name: &str, body: &str, mode: u32| {
        std::fs::write(path(name), body).unwrap();
        std::fs::set_permissions(
            path(name),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
    };
    write("ca.crt", certs.ca.cert_pem(), 0o644);
    write("server.crt", &certs.server.cert_pem, 0o644);
    write("server.key", &certs.server.key_pem, 0o600);
    write("client.crt", &certs.client.cert_pem, 0o644);
    write("client.key", &certs.client.key_pem, 0o600);
    let pgberth = Pgberth::start(
        &format!(
            "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = cert
auth_file = @DIR@/userlist.txt
client_tls_sslmode = verify-ca
client_tls_key_file = {key}
client_tls_cert_file = {cert}
client_tls_ca_file = {ca}
",
            key = path("server.key").display(),
            cert = path("server.crt").display(),
            ca = path("ca.crt").display(),
        ),
        USERLIST,
    );
    let psql = |user: &str| {
        let conninfo = format!(
            "host=localhost port={} user={user} dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            pgberth.port(),
            path("ca.crt").display(),
            path("client.crt").display(),
            path("client.key").display()
        );
        Command::new("/usr/bin/psql")
            .env_remove("PGPASSWORD")
            .args([
                "-X",
                "-A",
                "-t",
                "-w",
                &conninfo,
                "-c",
                "SELECT current_user",
            ])
            .output()
            .unwrap()
    };
    let ok = psql(SCRAM_USER);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        pgberth.log_contents()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), SCRAM_USER);

    let other = psql("md5_user");
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("certificate authentication failed"),
        "{stderr}"
    );
}
