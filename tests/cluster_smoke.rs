//! The test harness itself: the per-binary PostgreSQL and `TempCluster`.

mod support;

use pgberth::cluster::{ClusterOptions, TempCluster};
use support::{MD5_PASS, MD5_USER, SCRAM_PASS, SCRAM_USER, TRUST_USER, cluster, direct_conn_str};

async fn connect_direct(user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&direct_conn_str(user, password, db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("connect as {user}: {err:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn cluster_accepts_scram_login_over_tcp() {
    let client = connect_direct(SCRAM_USER, SCRAM_PASS, "app").await;
    assert_eq!(current_user(&client).await, SCRAM_USER);
    assert!(
        cluster()
            .scram_verifier(SCRAM_USER)
            .unwrap()
            .starts_with("SCRAM-SHA-256$4096:")
    );
}

#[tokio::test]
async fn cluster_rejects_wrong_scram_password_with_28p01() {
    let conn = tokio_postgres::connect(
        &direct_conn_str(SCRAM_USER, "wrong", "app"),
        tokio_postgres::NoTls,
    )
    .await;
    let err = conn.err().expect("a wrong password must be rejected");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
}

#[tokio::test]
async fn cluster_md5_user_logs_in_with_md5() {
    let client = connect_direct(MD5_USER, MD5_PASS, "app").await;
    assert_eq!(current_user(&client).await, MD5_USER);
    assert!(
        cluster()
            .scram_verifier(MD5_USER)
            .unwrap()
            .starts_with("md5")
    );
}

#[tokio::test]
async fn cluster_trust_user_logs_in_without_password() {
    let client = connect_direct(TRUST_USER, "", "app").await;
    assert_eq!(current_user(&client).await, TRUST_USER);
}

#[test]
fn psql_helper_runs_sql() {
    let out = cluster().psql("app", "SELECT 1 + 1; SELECT 'x'").unwrap();
    assert_eq!(out, "2\nx");
    let owner = cluster()
        .psql(
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'",
        )
        .unwrap();
    assert_eq!(owner, SCRAM_USER);
    let err = cluster().psql("app", "SELECT nope").unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn temp_cluster_restarts_and_removes_its_directory_on_drop() {
    let cluster = TempCluster::start(ClusterOptions {
        max_connections: 20,
        extra_conf: vec!["application_name = 'smoke'".to_owned()],
        ..ClusterOptions::default()
    })
    .unwrap();
    let data_dir = cluster.data_dir();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert_eq!(
        cluster.psql("postgres", "SHOW max_connections").unwrap(),
        "20"
    );

    cluster.stop_server().unwrap();
    assert!(cluster.psql("postgres", "SELECT 1").is_err());
    cluster.start_server().unwrap();
    assert_eq!(cluster.psql("postgres", "SELECT 1").unwrap(), "1");

    drop(cluster);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
}
