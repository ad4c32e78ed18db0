//! Authentication through the real pgberth binary against the real PostgreSQL: clients logging
//! in to pgberth (`auth_type` trust / plain / md5 / scram-sha-256 against plaintext, md5 and
//! SCRAM userlist secrets), and pgberth logging in to PostgreSQL (SCRAM, md5, trust, passwords
//! from the userlist or the `[databases]` line, SCRAM pass-through).

mod support;

use pgberth::auth::md5_secret;
use pgberth::cluster::PasswordEncryption;
use support::{APP_DB, MD5_PASS, MD5_USER, Pgberth, SCRAM_PASS, SCRAM_USER, TRUST_USER, cluster};
use tokio_postgres::error::SqlState;

/// A pgberth.ini with the usual listener, `general` appended to `[pgbouncer]` and `databases`
/// as the `[databases]` section.
fn ini(general: &str, databases: &str) -> String {
    format!(
        "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\n\
         unix_socket_dir =\nauth_file = @DIR@/userlist.txt\npool_mode = transaction\n{general}\n"
    )
}

/// `app = host=127.0.0.1 port=@PGPORT@ dbname=app`.
const APP_LINE: &str = "app = host=127.0.0.1 port=@PGPORT@ dbname=app";

fn start(auth_type: &str, userlist: &str) -> Pgberth {
    Pgberth::start(
        &ini(&format!("auth_type = {auth_type}"), APP_LINE),
        userlist,
    )
}

/// A userlist line, quoting the way PgBouncer does (`"` doubled inside quotes).
fn entry(user: &str, secret: &str) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        user.replace('"', "\"\""),
        secret.replace('"', "\"\"")
    )
}

async fn whoami(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("SELECT current_user through pgberth")
        .get(0)
}

/// Logs in through pgberth and checks the session really reaches PostgreSQL as `server_user`.
async fn assert_login(pgberth: &Pgberth, user: &str, password: &str, server_user: &str) {
    let client = pgberth.connect(user, password, APP_DB).await;
    assert_eq!(whoami(&client).await, server_user);
}

/// Logs in through pgberth expecting a refusal; returns the server's error.
async fn refused(pgberth: &Pgberth, user: &str, password: &str) -> tokio_postgres::error::DbError {
    match pgberth.try_connect(user, password, APP_DB).await {
        Ok(_) => panic!("login as {user} with password {password:?} was accepted"),
        Err(err) => err
            .as_db_error()
            .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"))
            .clone(),
    }
}

async fn assert_rejected_28p01(pgberth: &Pgberth, user: &str, password: &str) {
    let err = refused(pgberth, user, password).await;
    assert_eq!(
        err.code(),
        &SqlState::INVALID_PASSWORD,
        "login as {user}: {err:?}"
    );
}

fn scram_verifier() -> String {
    let verifier = cluster().scram_verifier(SCRAM_USER).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    verifier
}

// ---------------------------------------------------------------------------------------------
// Client side: auth_type × userlist secret kinds.

#[tokio::test]
async fn trust_accepts_any_password_for_a_listed_user() {
    let pgberth = start("trust", &entry(SCRAM_USER, SCRAM_PASS));
    assert_login(&pgberth, SCRAM_USER, "not the password", SCRAM_USER).await;
    assert_login(&pgberth, SCRAM_USER, "", SCRAM_USER).await;
}

#[tokio::test]
async fn trust_refuses_a_user_missing_from_the_userlist() {
    let pgberth = start("trust", &entry(SCRAM_USER, SCRAM_PASS));
    let err = refused(&pgberth, "nobody_here", "x").await;
    assert_eq!(err.severity(), "FATAL", "{err:?}");
}

#[tokio::test]
async fn plain_accepts_the_plaintext_userlist_password() {
    let pgberth = start("plain", &entry(SCRAM_USER, SCRAM_PASS));
    assert_login(&pgberth, SCRAM_USER, SCRAM_PASS, SCRAM_USER).await;
}

#[tokio::test]
async fn plain_checks_the_password_against_md5_and_scram_userlist_secrets() {
    let userlist =
        entry(MD5_USER, &md5_secret(MD5_USER, MD5_PASS)) + &entry(SCRAM_USER, &scram_verifier());
    // The server side needs plaintext for md5_user (md5 secret works for md5 auth) and the
    // SCRAM keys of a client exchange for scram_user, which plain auth cannot give: give the
    // server password on the database line instead.
    let databases = "app = host=127.0.0.1 port=@PGPORT@ dbname=app\n\
         app_scram = host=127.0.0.1 port=@PGPORT@ dbname=app user=scram_user password=scram_pass";
    let pgberth = Pgberth::start(&ini("auth_type = plain", databases), &userlist);
    assert_login(&pgberth, MD5_USER, MD5_PASS, MD5_USER).await;
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app_scram").await;
    assert_eq!(whoami(&client).await, SCRAM_USER);
    assert_rejected_28p01(&pgberth, MD5_USER, "wrong").await;
    let err = pgberth
        .try_connect(SCRAM_USER, "wrong", "app_scram")
        .await
        .expect_err("a wrong password must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

#[tokio::test]
async fn plain_wrong_password_is_rejected_with_28p01() {
    let pgberth = start("plain", &entry(SCRAM_USER, SCRAM_PASS));
    assert_rejected_28p01(&pgberth, SCRAM_USER, "scram_pas").await;
    assert_rejected_28p01(&pgberth, SCRAM_USER, "").await;
}

#[tokio::test]
async fn md5_accepts_a_plaintext_userlist_password() {
    let pgberth = start("md5", &entry(SCRAM_USER, SCRAM_PASS));
    assert_login(&pgberth, SCRAM_USER, SCRAM_PASS, SCRAM_USER).await;
}

#[tokio::test]
async fn md5_accepts_an_md5_userlist_secret() {
    let pgberth = start("md5", &entry(MD5_USER, &md5_secret(MD5_USER, MD5_PASS)));
    assert_login(&pgberth, MD5_USER, MD5_PASS, MD5_USER).await;
}

#[tokio::test]
async fn md5_wrong_password_is_rejected_with_28p01() {
    let pgberth = start(
        "md5",
        &(entry(MD5_USER, &md5_secret(MD5_USER, MD5_PASS)) + &entry(SCRAM_USER, SCRAM_PASS)),
    );
    assert_rejected_28p01(&pgberth, MD5_USER, "md5_passs").await;
    assert_rejected_28p01(&pgberth, SCRAM_USER, "wrong").await;
}

#[tokio::test]
async fn md5_with_a_scram_userlist_secret_uses_scram() {
    // PgBouncer: auth_type md5 with a SCRAM verifier stored does SCRAM with the client.
    let pgberth = start("md5", &entry(SCRAM_USER, &scram_verifier()));
    assert_login(&pgberth, SCRAM_USER, SCRAM_PASS, SCRAM_USER).await;
    assert_rejected_28p01(&pgberth, SCRAM_USER, "wrong").await;
}

#[tokio::test]
async fn scram_accepts_a_plaintext_userlist_password() {
    let pgberth = start("scram-sha-256", &entry(SCRAM_USER, SCRAM_PASS));
    assert_login(&pgberth, SCRAM_USER, SCRAM_PASS, SCRAM_USER).await;
}

#[tokio::test]
async fn scram_accepts_a_scram_userlist_verifier() {
    let pgberth = start("scram-sha-256", &entry(SCRAM_USER, &scram_verifier()));
    assert_login(&pgberth, SCRAM_USER, SCRAM_PASS, SCRAM_USER).await;
}

#[tokio::test]
async fn scram_wrong_password_is_rejected_with_28p01() {
    let pgberth = start(
        "scram-sha-256",
        &(entry(SCRAM_USER, SCRAM_PASS) + &entry(MD5_USER, &scram_verifier())),
    );
    assert_rejected_28p01(&pgberth, SCRAM_USER, "wrong").await;
    assert_rejected_28p01(&pgberth, SCRAM_USER, "").await;
    assert_rejected_28p01(&pgberth, MD5_USER, "wrong").await;
}

#[tokio::test]
async fn scram_with_an_md5_userlist_secret_cannot_log_in() {
    // An md5 hash is not enough to verify a SCRAM proof; the client is refused like a wrong
    // password, never let in.
    let pgberth = start(
        "scram-sha-256",
        &entry(MD5_USER, &md5_secret(MD5_USER, MD5_PASS)),
    );
    assert_rejected_28p01(&pgberth, MD5_USER, MD5_PASS).await;
}

#[tokio::test]
async fn unknown_user_gets_the_same_28p01_as_a_wrong_password() {
    for auth_type in ["plain", "md5", "scram-sha-256"] {
        let pgberth = start(auth_type, &entry(SCRAM_USER, SCRAM_PASS));
        let wrong = refused(&pgberth, SCRAM_USER, "wrong").await;
        let unknown = refused(&pgberth, "no_such_user", "wrong").await;
        assert_eq!(wrong.code(), &SqlState::INVALID_PASSWORD, "{auth_type}");
        assert_eq!(unknown.code(), &SqlState::INVALID_PASSWORD, "{auth_type}");
        assert_eq!(unknown.severity(), wrong.severity(), "{auth_type}");
        assert_eq!(
            unknown.message().replace("no_such_user", "USER"),
            wrong.message().replace(SCRAM_USER, "USER"),
            "{auth_type}: an unknown user must look like a wrong password"
        );
        assert_eq!(unknown.detail(), wrong.detail(), "{auth_type}");
        assert_eq!(unknown.hint(), wrong.hint(), "{auth_type}");
    }
}

#[tokio::test]
async fn userlist_doubled_quotes_are_literal_quotes_in_names_and_passwords() {
    let role = "quo\"ted_user";
    let password = "pa\"ss \"\" word";
    cluster()
        .create_role(role, password, PasswordEncryption::Scram)
        .unwrap();
    let userlist = format!(
        "; a comment\n\"quo\"\"ted_user\" \"pa\"\"ss \"\"\"\" word\"\n{}",
        entry(SCRAM_USER, SCRAM_PASS)
    );
    assert_eq!(
        userlist.lines().nth(1).unwrap(),
        entry(role, password).trim_end()
    );
    for auth_type in ["plain", "md5", "scram-sha-256"] {
        let pgberth = start(auth_type, &userlist);
        assert_login(&pgberth, role, password, role).await;
        assert_rejected_28p01(&pgberth, role, "pa\"ss \" word").await;
    }
}

// ---------------------------------------------------------------------------------------------
// Server side: how pgberth logs in to PostgreSQL.

#[tokio::test]
async fn server_login_with_scram_uses_the_userlist_password() {
    let pgberth = start("trust", &entry(SCRAM_USER, SCRAM_PASS));
    assert_login(&pgberth, SCRAM_USER, "", SCRAM_USER).await;
}

#[tokio::test]
async fn server_login_with_md5_uses_the_userlist_password() {
    let pgberth = start("trust", &entry(MD5_USER, MD5_PASS));
    assert_login(&pgberth, MD5_USER, "", MD5_USER).await;
}

#[tokio::test]
async fn server_login_with_md5_uses_an_md5_userlist_secret() {
    let pgberth = start("md5", &entry(MD5_USER, &md5_secret(MD5_USER, MD5_PASS)));
    assert_login(&pgberth, MD5_USER, MD5_PASS, MD5_USER).await;
}

#[tokio::test]
async fn server_login_with_trust_needs_no_password() {
    let pgberth = start("md5", &entry(TRUST_USER, "client_side_only"));
    assert_login(&pgberth, TRUST_USER, "client_side_only", TRUST_USER).await;
}

#[tokio::test]
async fn server_login_uses_the_password_from_the_database_line() {
    // The userlist passwords are for clients only; the server passwords come from the
    // [databases] lines with a forced user.
    let databases = "app = host=127.0.0.1 port=@PGPORT@ dbname=app user=scram_user password=scram_pass\n\
         app_md5 = host=127.0.0.1 port=@PGPORT@ dbname=app user=md5_user password=md5_pass";
    let userlist = entry("alice", "alice_pw") + &entry("bob", "bob_pw");
    let pgberth = Pgberth::start(&ini("auth_type = scram-sha-256", databases), &userlist);
    let client = pgberth.connect("alice", "alice_pw", "app").await;
    assert_eq!(whoami(&client).await, SCRAM_USER);
    let client = pgberth.connect("bob", "bob_pw", "app_md5").await;
    assert_eq!(whoami(&client).await, MD5_USER);
}

#[tokio::test]
async fn server_login_failure_is_reported_to_the_client_as_an_error() {
    // The userlist lets the client in, but the server refuses the (wrong) password.
    let pgberth = start("trust", &entry(SCRAM_USER, "not_the_server_password"));
    let err = pgberth
        .try_connect(SCRAM_USER, "", APP_DB)
        .await
        .expect_err("the server refuses the login");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");
}

#[tokio::test]
async fn scram_pass_through_logs_in_with_only_the_verifier() {
    // No plaintext anywhere: pgberth logs in to PostgreSQL with the keys from the client's
    // own SCRAM exchange.
    let verifier = scram_verifier();
    let pgberth = Pgberth::start(
        &ini("auth_type = scram-sha-256", APP_LINE),
        &entry(SCRAM_USER, &verifier),
    );
    assert!(
        !std::fs::read_to_string(pgberth.dir().join("userlist.txt"))
            .unwrap()
            .contains(SCRAM_PASS)
    );
    assert!(
        !std::fs::read_to_string(pgberth.ini_path())
            .unwrap()
            .contains(SCRAM_PASS)
    );
    let first = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&first).await, SCRAM_USER);
    // Further clients (and server connections opened for them) work as well.
    let second = pgberth.connect(SCRAM_USER, SCRAM_PASS, APP_DB).await;
    let tx_pid: i32 = {
        first.batch_execute("BEGIN").await.unwrap();
        first
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    // `first` holds its server inside BEGIN, so `second` needs a second server connection.
    let other_pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(tx_pid, other_pid);
    first.batch_execute("COMMIT").await.unwrap();
    assert_rejected_28p01(&pgberth, SCRAM_USER, "wrong").await;
}
