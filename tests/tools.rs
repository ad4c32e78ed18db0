//! The real PostgreSQL tools through pgberth: psql (queries and `\copy`) and pgbench
//! (initialisation, then concurrent runs in transaction mode with the simple and the extended
//! query protocol).

mod support;

use std::process::{Command, Output, Stdio};

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, cluster};

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

/// pgberth in front of the cluster's databases `names` (each mapped to the same name).
fn start(names: &[&str], extra: &str) -> Pgberth {
    let databases: String = names
        .iter()
        .map(|n| format!("{n} = host=127.0.0.1 port=@PGPORT@ dbname={n}\n"))
        .collect();
    Pgberth::start(
        &format!(
            "\
[databases]
{databases}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
{extra}
"
        ),
        USERLIST,
    )
}

fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(what: &str, out: &Output, pgberth: &Pgberth) {
    assert!(
        out.status.success(),
        "{what} failed: {}\npgberth log:\n{}",
        output_text(out),
        pgberth.log_contents()
    );
}

/// A pgbench command against pgberth as scram_user (PGHOST, PGPORT, PGPASSWORD set).
fn pgbench(pgberth: &Pgberth, args: &[&str]) -> Output {
    let mut cmd = Command::new("/usr/bin/pgbench");
    for var in ["PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"] {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", pgberth.port().to_string())
        .env("PGPASSWORD", SCRAM_PASS)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-U", SCRAM_USER])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench")
}

#[test]
fn psql_runs_select_1_through_pgberth() {
    let pgberth = start(&["app"], "");
    let out = pgberth.psql_as(SCRAM_USER, SCRAM_PASS, "app", "select 1");
    assert_ok("psql -c 'select 1'", &out, &pgberth);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

#[test]
fn psql_copy_in_and_out_through_pgberth_in_transaction_mode() {
    let pgberth = start(&["app"], "pool_mode = transaction");
    let dir = pgberth.dir().to_owned();
    let input = dir.join("in.csv");
    let output = dir.join("out.csv");
    let rows: String = (1..=1000).map(|i| format!("{i},row {i}\n")).collect();
    std::fs::write(&input, &rows).unwrap();

    let conninfo = format!("dbname=app user={SCRAM_USER} password={SCRAM_PASS}");
    let out = pgberth.psql(&[
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &conninfo,
        "-c",
        "DROP TABLE IF EXISTS copy_through_pgberth",
        "-c",
        "CREATE TABLE copy_through_pgberth (id int PRIMARY KEY, label text)",
        "-c",
        &format!(
            "\\copy copy_through_pgberth FROM '{}' WITH (FORMAT csv)",
            input.display()
        ),
        "-c",
        &format!(
            "\\copy (SELECT * FROM copy_through_pgberth ORDER BY id) TO '{}' WITH (FORMAT csv)",
            output.display()
        ),
        "-c",
        "DROP TABLE copy_through_pgberth",
    ]);
    assert_ok("psql \\copy", &out, &pgberth);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("COPY 1000"), "{}", output_text(&out));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), rows);
}

/// `pgbench -i` then `pgbench -c 10 -j 2 -t 200 -M <mode>` in transaction mode with
/// pool_size = 3, on a database of its own.
fn pgbench_run(database: &str, protocol: &str) {
    cluster()
        .create_database(database, SCRAM_USER)
        .expect("create the pgbench database");
    let pgberth = start(
        &[database],
        "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 100",
    );

    let init = pgbench(&pgberth, &["-i", "-s", "1", "-q", database]);
    assert_ok("pgbench -i", &init, &pgberth);

    let run = pgbench(
        &pgberth,
        &[
            "-c", "10", "-j", "2", "-t", "200", "-M", protocol, "-n", database,
        ],
    );
    assert_ok(&format!("pgbench -M {protocol}"), &run, &pgberth);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("number of transactions actually processed: 2000/2000"),
        "{}",
        output_text(&run)
    );
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{}",
        output_text(&run)
    );

    // The pool really was limited: PostgreSQL never saw more than 3 connections from it.
    let servers = cluster()
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"),
        )
        .unwrap();
    let servers: u32 = servers.trim().parse().unwrap();
    assert!(servers <= 3, "{servers} server connections for pool_size 3");
}

#[test]
fn pgbench_simple_protocol_through_transaction_pool_of_3_has_no_failures() {
    pgbench_run("bench_simple", "simple");
}

#[test]
fn pgbench_extended_protocol_through_transaction_pool_of_3_has_no_failures() {
    pgbench_run("bench_extended", "extended");
}
