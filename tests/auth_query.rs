//! `auth_query` / `auth_user` / `auth_dbname` through the real pgberth binary against the real
//! PostgreSQL: users missing from `auth_file` are looked up on the server, authenticated with
//! the secret found there (md5 or SCRAM verifier), and their server connections log in with it
//! (SCRAM pass-through for verifiers), with no plaintext password anywhere.

mod support;

use std::sync::OnceLock;

use pgberth::auth::md5_secret;
use pgberth::cluster::PasswordEncryption;
use support::{APP_DB, MD5_PASS, MD5_USER, Pgberth, cluster};
use tokio_postgres::error::{DbError, SqlState};

/// A role with a SCRAM password that no userlist in this file holds.
const AQ_SCRAM_USER: &str = "aq_scram_user";
const AQ_SCRAM_PASS: &str = "aq_scram_pass";
/// The dedicated lookup role of PgBouncer's documentation: it may only run `pgberth_lookup`.
const AUTH_ROLE: &str = "pgberth_auth";
const AUTH_ROLE_PASS: &str = "pgberth_auth_pass";
/// A database holding `pgberth_lookup`, which `app` does not have.
const AUTH_DB: &str = "aq_authdb";
/// The lookup through the SECURITY DEFINER function.
const FUNCTION_QUERY: &str = "SELECT usename, passwd FROM pgberth_lookup($1)";

/// Creates the roles, the auth database and its lookup function once per test binary.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let c = cluster();
        c.create_role(AQ_SCRAM_USER, AQ_SCRAM_PASS, PasswordEncryption::Scram)
            .unwrap();
        c.create_role(AUTH_ROLE, AUTH_ROLE_PASS, PasswordEncryption::Scram)
            .unwrap();
        c.create_database(AUTH_DB, c.superuser()).unwrap();
        // As in PgBouncer's documentation: a SECURITY DEFINER function owned by a superuser,
        // executable by the auth role only. Not found: one row of NULLs.
        c.psql(
            AUTH_DB,
            "CREATE FUNCTION pgberth_lookup(i_username text, OUT usename text, OUT passwd text)
             RETURNS record AS $$
             BEGIN
                 SELECT s.usename, s.passwd FROM pg_catalog.pg_shadow s
                 WHERE s.usename = i_username INTO usename, passwd;
                 RETURN;
             END;
             $$ LANGUAGE plpgsql SECURITY DEFINER;
             REVOKE ALL ON FUNCTION pgberth_lookup(text) FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION pgberth_lookup(text) TO pgberth_auth;",
        )
        .unwrap();
    });
}

/// A pgberth.ini with the usual listener, `general` appended to `[pgbouncer]` and `databases`
/// as the `[databases]` section.
fn ini(general: &str, databases: &str) -> String {
    format!(
        "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = @PORT@\n\
         unix_socket_dir =\nauth_file = @DIR@/userlist.txt\npool_mode = transaction\n{general}\n"
    )
}

const APP_LINE: &str = "app = host=127.0.0.1 port=@PGPORT@ dbname=app";

/// The userlist holding only the superuser, as the auth_user.
fn superuser_userlist() -> String {
    entry(cluster().superuser(), cluster().superuser_password())
}

fn entry(user: &str, secret: &str) -> String {
    format!("\"{user}\" \"{secret}\"\n")
}

/// pgberth with `auth_type` and the superuser as global `auth_user`, default `auth_query`.
fn start_with_superuser_lookup(auth_type: &str) -> Pgberth {
    setup();
    let general = format!(
        "auth_type = {auth_type}\nauth_user = {}",
        cluster().superuser()
    );
    Pgberth::start(&ini(&general, APP_LINE), &superuser_userlist())
}

async fn whoami(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("SELECT current_user through pgberth")
        .get(0)
}

async fn refused(pgberth: &Pgberth, user: &str, password: &str, db: &str) -> DbError {
    match pgberth.try_connect(user, password, db).await {
        Ok(_) => panic!("login as {user} to {db} was accepted"),
        Err(err) => err
            .as_db_error()
            .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"))
            .clone(),
    }
}

fn assert_not_logged(pgberth: &Pgberth, secrets: &[&str]) {
    let log = pgberth.log_contents();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "pgberth's log shows a secret ({secret}):\n{log}"
        );
    }
}

#[tokio::test]
async fn auth_query_md5_user_logs_in() {
    // md5_user is md5 in the server's pg_hba, so the server login uses the md5 hash found by
    // auth_query as well.
    let pgberth = start_with_superuser_lookup("md5");
    let client = pgberth.connect(MD5_USER, MD5_PASS, APP_DB).await;
    assert_eq!(whoami(&client).await, MD5_USER);
    // Again, from the cache, with a second server connection opened meanwhile.
    client.batch_execute("BEGIN").await.unwrap();
    let second = pgberth.connect(MD5_USER, MD5_PASS, APP_DB).await;
    assert_eq!(whoami(&second).await, MD5_USER);
    client.batch_execute("COMMIT").await.unwrap();
    assert_not_logged(&pgberth, &[&md5_secret(MD5_USER, MD5_PASS), MD5_PASS]);
}

#[tokio::test]
async fn auth_query_scram_user_logs_in_with_no_plaintext_anywhere() {
    let pgberth = start_with_superuser_lookup("scram-sha-256");
    for file in [
        pgberth.dir().join("userlist.txt"),
        pgberth.ini_path().into(),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains(AQ_SCRAM_PASS) && !text.contains(AQ_SCRAM_USER));
    }
    let first = pgberth.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&first).await, AQ_SCRAM_USER);
    // `first` holds its server connection inside BEGIN: the second client needs a new one,
    // logged in with the keys of a client's SCRAM exchange (pass-through).
    first.batch_execute("BEGIN").await.unwrap();
    let first_pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let second = pgberth.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    let second_pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(first_pid, second_pid);
    assert_eq!(whoami(&second).await, AQ_SCRAM_USER);
    first.batch_execute("COMMIT").await.unwrap();
    let verifier = cluster().scram_verifier(AQ_SCRAM_USER).unwrap();
    assert_not_logged(&pgberth, &[&verifier, AQ_SCRAM_PASS]);
}

#[tokio::test]
async fn auth_query_wrong_password_is_28p01() {
    let md5 = start_with_superuser_lookup("md5");
    let err = refused(&md5, MD5_USER, "md5_passs", APP_DB).await;
    assert_eq!(err.code(), &SqlState::INVALID_PASSWORD, "{err:?}");
    let scram = start_with_superuser_lookup("scram-sha-256");
    for password in ["wrong", ""] {
        let err = refused(&scram, AQ_SCRAM_USER, password, APP_DB).await;
        assert_eq!(err.code(), &SqlState::INVALID_PASSWORD, "{err:?}");
    }
    // The right password still works after the failures (the cached secret was dropped and
    // looked up again).
    let client = scram.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&client).await, AQ_SCRAM_USER);
}

#[tokio::test]
async fn auth_query_unknown_user_is_28p01_like_a_wrong_password() {
    for (auth_type, user) in [("md5", MD5_USER), ("scram-sha-256", AQ_SCRAM_USER)] {
        let pgberth = start_with_superuser_lookup(auth_type);
        let wrong = refused(&pgberth, user, "wrong", APP_DB).await;
        let unknown = refused(&pgberth, "no_such_role", "wrong", APP_DB).await;
        assert_eq!(unknown.code(), &SqlState::INVALID_PASSWORD, "{auth_type}");
        assert_eq!(unknown.severity(), wrong.severity(), "{auth_type}");
        assert_eq!(
            unknown.message().replace("no_such_role", "USER"),
            wrong.message().replace(user, "USER"),
            "{auth_type}: an unknown user must look like a wrong password"
        );
    }
}

#[tokio::test]
async fn auth_query_through_a_security_definer_function_treats_a_null_row_as_unknown() {
    setup();
    let general = format!(
        "auth_type = scram-sha-256\nauth_user = {AUTH_ROLE}\nauth_dbname = authdb\n\
         auth_query = {FUNCTION_QUERY}"
    );
    let databases = format!("{APP_LINE}\nauthdb = host=127.0.0.1 port=@PGPORT@ dbname={AUTH_DB}");
    let pgberth = Pgberth::start(
        &ini(&general, &databases),
        &entry(AUTH_ROLE, AUTH_ROLE_PASS),
    );
    let client = pgberth.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&client).await, AQ_SCRAM_USER);
    // The function returns one row of NULLs for a role that does not exist.
    let err = refused(&pgberth, "no_such_role", "x", APP_DB).await;
    assert_eq!(err.code(), &SqlState::INVALID_PASSWORD, "{err:?}");
}

#[tokio::test]
async fn auth_dbname_is_used_for_the_lookup() {
    setup();
    // pgberth_lookup exists only in the auth database, not in `app`.
    let databases = format!("{APP_LINE}\nauthdb = host=127.0.0.1 port=@PGPORT@ dbname={AUTH_DB}");
    let lookup = format!(
        "auth_type = scram-sha-256\nauth_user = {AUTH_ROLE}\nauth_query = {FUNCTION_QUERY}"
    );
    let userlist = entry(AUTH_ROLE, AUTH_ROLE_PASS);

    let with = Pgberth::start(
        &ini(&format!("{lookup}\nauth_dbname = authdb"), &databases),
        &userlist,
    );
    let client = with.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&client).await, AQ_SCRAM_USER);

    // Without auth_dbname the query runs in `app`, where the function does not exist: the
    // client gets the server's SQLSTATE and a message naming auth_query.
    let without = Pgberth::start(&ini(&lookup, &databases), &userlist);
    let err = refused(&without, AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(err.code(), &SqlState::UNDEFINED_FUNCTION, "{err:?}");
    assert!(err.message().contains("auth_query"), "{err:?}");
}

#[tokio::test]
async fn database_line_auth_user_overrides_the_global_one() {
    setup();
    // The global auth_user is not in the userlist and cannot log in; `app` names one that can.
    let general = "auth_type = scram-sha-256\nauth_user = nobody_can_look_up";
    let databases = format!(
        "app = host=127.0.0.1 port=@PGPORT@ dbname=app auth_user={}\n\
         app_global = host=127.0.0.1 port=@PGPORT@ dbname=app",
        cluster().superuser()
    );
    let pgberth = Pgberth::start(&ini(general, &databases), &superuser_userlist());
    let client = pgberth.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    assert_eq!(whoami(&client).await, AQ_SCRAM_USER);
    let err = refused(&pgberth, AQ_SCRAM_USER, AQ_SCRAM_PASS, "app_global").await;
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    assert!(err.message().contains("nobody_can_look_up"), "{err:?}");
}

#[tokio::test]
async fn failing_auth_user_login_gives_a_clear_error() {
    setup();
    let general = format!(
        "auth_type = scram-sha-256\nauth_user = {}",
        cluster().superuser()
    );
    let userlist = entry(cluster().superuser(), "not_the_superuser_password");
    let pgberth = Pgberth::start(&ini(&general, APP_LINE), &userlist);
    let err = refused(&pgberth, AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    // Not 28P01: the client's own password was never checked.
    assert_eq!(err.code(), &SqlState::CONNECTION_FAILURE, "{err:?}");
    assert!(
        err.message().contains("auth_query") && err.message().contains("auth_user"),
        "{err:?}"
    );
    pgberth.wait_for_log("auth_query failed", std::time::Duration::from_secs(5));
    let log = pgberth.log_contents();
    assert_eq!(
        log.matches("auth_query failed").count(),
        1,
        "one log line per failed lookup:\n{log}"
    );
    assert_not_logged(&pgberth, &["not_the_superuser_password"]);
}

#[tokio::test]
async fn secrets_from_auth_query_never_appear_in_the_log() {
    let pgberth = start_with_superuser_lookup("scram-sha-256");
    pgberth.connect(AQ_SCRAM_USER, AQ_SCRAM_PASS, APP_DB).await;
    refused(&pgberth, AQ_SCRAM_USER, "wrong", APP_DB).await;
    refused(&pgberth, "no_such_role", "wrong", APP_DB).await;
    let md5 = start_with_superuser_lookup("md5");
    md5.connect(MD5_USER, MD5_PASS, APP_DB).await;
    refused(&md5, MD5_USER, "wrong", APP_DB).await;
    let verifier = cluster().scram_verifier(AQ_SCRAM_USER).unwrap();
    // The stored parts of a verifier (salt, StoredKey, ServerKey) are checked one by one.
    let parts: Vec<&str> = verifier
        .split(['$', ':'])
        .filter(|p| p.len() > 16)
        .collect();
    assert_eq!(parts.len(), 3, "{verifier}");
    for pgberth in [&pgberth, &md5] {
        assert_not_logged(pgberth, &parts);
        assert_not_logged(
            pgberth,
            &[&md5_secret(MD5_USER, MD5_PASS), AQ_SCRAM_PASS, MD5_PASS],
        );
    }
}
