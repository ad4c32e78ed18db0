//! What clients get when something is wrong: hand-made bad packets on raw sockets, unknown
//! databases and startup parameters, and an unreachable server. Every error must be an
//! ErrorResponse with the right SQLSTATE, and pgberth must keep serving everyone else. Also on
//! raw sockets: unusual but valid logins (an SSLRequest answered `N`, a query pipelined behind
//! the startup packet).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, TRUST_USER};
use tokio_postgres::error::SqlState;

/// Generous bound for a reply; only detects hangs.
const HANG: Duration = Duration::from_secs(30);

const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n\"trust_user\" \"\"\n";

fn ini(auth_type: &str, extra: &str) -> String {
    format!(
        "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = {auth_type}
auth_file = @DIR@/userlist.txt
{extra}
"
    )
}

// --- raw protocol helpers ---------------------------------------------------------------------

/// One backend message: its tag and body.
#[derive(Debug)]
struct Message {
    tag: u8,
    body: Vec<u8>,
}

/// The fields of an ErrorResponse that the tests look at.
#[derive(Debug)]
struct PgError {
    severity: String,
    code: String,
    message: String,
}

impl Message {
    fn error(&self) -> PgError {
        assert_eq!(
            self.tag,
            b'E',
            "expected ErrorResponse, got {:?} {:?}",
            self.tag as char,
            String::from_utf8_lossy(&self.body)
        );
        let mut err = PgError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
        };
        let mut rest = &self.body[..];
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .expect("NUL-terminated field");
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                b'S' => err.severity = value,
                b'C' => err.code = value,
                b'M' => err.message = value,
                _ => {}
            }
            rest = &tail[end + 1..];
        }
        err
    }

    /// For 'R' messages: the authentication request code.
    fn auth_code(&self) -> u32 {
        assert_eq!(self.tag, b'R', "expected Authentication, got {self:?}");
        u32::from_be_bytes(self.body[..4].try_into().unwrap())
    }
}

fn raw_connect(pgberth: &Pgberth) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", pgberth.port())).expect("connect to pgberth");
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.set_write_timeout(Some(HANG)).unwrap();
    stream
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn read_message(stream: &mut TcpStream) -> Message {
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .unwrap_or_else(|e| panic!("reading a message from pgberth: {e}"));
    let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
    assert!((4..1 << 20).contains(&len), "bad length {len} from pgberth");
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).expect("message body");
    Message {
        tag: header[0],
        body,
    }
}

/// Asserts that pgberth closed the connection (EOF or reset, not a timeout).
fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("expected the connection to close: {e}"),
        }
    }
}

/// Reads the login reply up to ReadyForQuery; panics on an ErrorResponse.
fn read_until_ready(stream: &mut TcpStream) -> Vec<Message> {
    let mut seen = Vec::new();
    loop {
        let m = read_message(stream);
        if m.tag == b'E' {
            panic!("login failed: {:?}", m.error());
        }
        let done = m.tag == b'Z';
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// A trust login (auth_type = trust) as trust_user on app, up to ReadyForQuery.
fn trust_login(pgberth: &Pgberth) -> TcpStream {
    let mut stream = raw_connect(pgberth);
    stream
        .write_all(&startup_packet(&[
            ("user", TRUST_USER),
            ("database", "app"),
        ]))
        .unwrap();
    let reply = read_until_ready(&mut stream);
    assert_eq!(reply[0].auth_code(), 0, "AuthenticationOk first");
    stream
}

/// Runs a simple query on a raw logged-in connection; returns the first DataRow's first column.
fn raw_query(stream: &mut TcpStream, sql: &str) -> Option<String> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    stream.write_all(&message(b'Q', &body)).unwrap();
    let mut first = None;
    loop {
        let m = read_message(stream);
        match m.tag {
            b'E' => panic!("query failed: {:?}", m.error()),
            b'D' if first.is_none() => {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap());
                first = Some(String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned());
            }
            b'Z' => return first,
            _ => {}
        }
    }
}

/// A normal client through tokio-postgres still gets served.
async fn assert_still_serving(pgberth: &Pgberth) {
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Sends `bytes` on a fresh connection and returns the error pgberth answers with, after
/// checking that it then closed the connection.
fn error_for_raw_bytes(pgberth: &Pgberth, bytes: &[u8]) -> PgError {
    let mut stream = raw_connect(pgberth);
    stream.write_all(bytes).unwrap();
    let err = read_message(&mut stream).error();
    assert_closed(&mut stream);
    err
}

// --- startup packet ---------------------------------------------------------------------------

#[tokio::test]
async fn startup_length_0x7fffffff_gets_08p01_and_close() {
    let pgberth = Pgberth::start(&ini("scram-sha-256", ""), USERLIST);
    // Only the length is sent: pgberth must refuse on the length alone, without waiting for
    // (or allocating) two gigabytes.
    let err = error_for_raw_bytes(&pgberth, &0x7fff_ffffu32.to_be_bytes());
    assert_eq!(err.code, "08P01", "{err:?}");
    assert_eq!(err.severity, "FATAL", "{err:?}");
    assert_still_serving(&pgberth).await;
}

#[tokio::test]
async fn startup_length_below_8_gets_08p01_and_close() {
    let pgberth = Pgberth::start(&ini("scram-sha-256", ""), USERLIST);
    for len in [0u32, 4, 7] {
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        let err = error_for_raw_bytes(&pgberth, &packet);
        assert_eq!(err.code, "08P01", "length {len}: {err:?}");
    }
    assert_still_serving(&pgberth).await;
}

#[tokio::test]
async fn unsupported_protocol_version_gets_0a000() {
    let pgberth = Pgberth::start(&ini("scram-sha-256", ""), USERLIST);
    for version in [2u32 << 16, 4 << 16] {
        let mut packet = startup_packet(&[("user", SCRAM_USER), ("database", "app")]);
        packet[4..8].copy_from_slice(&version.to_be_bytes());
        let err = error_for_raw_bytes(&pgberth, &packet);
        assert_eq!(err.code, "0A000", "version {version:#x}: {err:?}");
        assert!(err.message.contains("protocol"), "{err:?}");
    }
    assert_still_serving(&pgberth).await;
}

#[tokio::test]
async fn ssl_request_is_answered_n_and_login_proceeds_in_plaintext() {
    let pgberth = Pgberth::start(&ini("trust", ""), USERLIST);
    let mut stream = raw_connect(&pgberth);
    let mut ssl = 8u32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    stream.write_all(&ssl).unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'N');

    stream
        .write_all(&startup_packet(&[
            ("user", TRUST_USER),
            ("database", "app"),
        ]))
        .unwrap();
    let reply = read_until_ready(&mut stream);
    assert_eq!(reply[0].auth_code(), 0);
    assert_eq!(
        raw_query(&mut stream, "SELECT current_user").as_deref(),
        Some(TRUST_USER)
    );
}

/// Logs in as trust_user with a simple query sent in the same write as the startup packet, as a
/// pipelining client may; returns the query's first value.
fn query_sent_with_the_startup_packet(pgberth: &Pgberth, database: &str, sql: &str) -> String {
    let mut stream = raw_connect(pgberth);
    let mut bytes = startup_packet(&[("user", TRUST_USER), ("database", database)]);
    let mut query = sql.as_bytes().to_vec();
    query.push(0);
    bytes.extend_from_slice(&message(b'Q', &query));
    stream.write_all(&bytes).unwrap();
    let reply = read_until_ready(&mut stream);
    assert_eq!(reply[0].auth_code(), 0, "AuthenticationOk first");
    let mut first = None;
    loop {
        let m = read_message(&mut stream);
        match m.tag {
            b'E' => panic!("the pipelined query failed: {:?}", m.error()),
            b'D' if first.is_none() => {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap());
                first = Some(String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned());
            }
            b'Z' => break,
            _ => {}
        }
    }
    // The connection serves on as usual.
    assert_eq!(raw_query(&mut stream, sql), first);
    first.expect("a row")
}

#[tokio::test]
async fn query_sent_with_the_startup_packet_is_answered_after_login() {
    for mode in ["session", "transaction"] {
        let extra = format!("pool_mode = {mode}");
        let pgberth = Pgberth::start(&ini("trust", &extra), USERLIST);
        let value = query_sent_with_the_startup_packet(&pgberth, "app", "SELECT 40 + 2");
        assert_eq!(value, "42", "pool_mode = {mode}");
    }
}

#[tokio::test]
async fn console_query_sent_with_the_startup_packet_is_answered_after_login() {
    let extra = format!("admin_users = {TRUST_USER}");
    let pgberth = Pgberth::start(&ini("trust", &extra), USERLIST);
    let value = query_sent_with_the_startup_packet(&pgberth, "pgbouncer", "SHOW VERSION");
    assert!(value.starts_with("pgberth"), "{value}");
}

// --- authentication ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_password_message_during_scram_gets_08p01() {
    let pgberth = Pgberth::start(&ini("scram-sha-256", ""), USERLIST);
    let mut stream = raw_connect(&pgberth);
    stream
        .write_all(&startup_packet(&[
            ("user", SCRAM_USER),
            ("database", "app"),
        ]))
        .unwrap();
    let sasl = read_message(&mut stream);
    assert_eq!(sasl.auth_code(), 10, "AuthenticationSASL expected");
    // A SASLInitialResponse header claiming almost 2 GiB, and no body.
    let mut header = vec![b'p'];
    header.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
    stream.write_all(&header).unwrap();
    let err = read_message(&mut stream).error();
    assert_eq!(err.code, "08P01", "{err:?}");
    assert_closed(&mut stream);
    assert_still_serving(&pgberth).await;
}

// --- after login ------------------------------------------------------------------------------

#[tokio::test]
async fn message_with_length_2_after_login_gets_08p01_and_close_others_unaffected() {
    for mode in ["session", "transaction"] {
        let pgberth = Pgberth::start(&ini("trust", &format!("pool_mode = {mode}")), USERLIST);
        let mut other = trust_login(&pgberth);
        assert_eq!(raw_query(&mut other, "SELECT 1").as_deref(), Some("1"));

        let mut bad = trust_login(&pgberth);
        bad.write_all(&[b'Q', 0, 0, 0, 2]).unwrap();
        let err = read_message(&mut bad).error();
        assert_eq!(err.code, "08P01", "{mode}: {err:?}");
        assert_closed(&mut bad);

        assert_eq!(
            raw_query(&mut other, "SELECT 2").as_deref(),
            Some("2"),
            "{mode}"
        );
        assert_still_serving(&pgberth).await;
    }
}

#[tokio::test]
async fn message_with_huge_length_after_login_gets_08p01_and_close() {
    let pgberth = Pgberth::start(&ini("trust", "pool_mode = transaction"), USERLIST);
    let mut bad = trust_login(&pgberth);
    bad.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xf0]).unwrap();
    let err = read_message(&mut bad).error();
    assert_eq!(err.code, "08P01", "{err:?}");
    assert_closed(&mut bad);
    assert_still_serving(&pgberth).await;
}

// --- lookups ----------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_database_gets_3d000() {
    let pgberth = Pgberth::start(&ini("scram-sha-256", ""), USERLIST);
    let err = pgberth
        .try_connect(SCRAM_USER, SCRAM_PASS, "nope")
        .await
        .expect_err("an unknown database must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");
    let message = err.as_db_error().expect("an ErrorResponse").message();
    assert!(message.contains("nope"), "{message}");
}

#[tokio::test]
async fn unknown_startup_parameter_gets_08p01() {
    let pgberth = Pgberth::start(&ini("trust", ""), USERLIST);
    let packet = startup_packet(&[
        ("user", TRUST_USER),
        ("database", "app"),
        ("search_path", "public"),
    ]);
    let err = error_for_raw_bytes(&pgberth, &packet);
    assert_eq!(err.code, "08P01", "{err:?}");
    assert!(err.message.contains("search_path"), "{err:?}");
}

#[tokio::test]
async fn startup_parameter_in_ignore_startup_parameters_is_accepted() {
    let pgberth = Pgberth::start(
        &ini(
            "trust",
            "ignore_startup_parameters = extra_float_digits, search_path",
        ),
        USERLIST,
    );
    let mut stream = raw_connect(&pgberth);
    stream
        .write_all(&startup_packet(&[
            ("user", TRUST_USER),
            ("database", "app"),
            ("search_path", "public"),
        ]))
        .unwrap();
    read_until_ready(&mut stream);
    assert_eq!(raw_query(&mut stream, "SELECT 3").as_deref(), Some("3"));
}

#[tokio::test]
async fn startup_parameter_in_track_extra_parameters_is_carried_to_the_server() {
    let pgberth = Pgberth::start(
        &ini("trust", "track_extra_parameters = search_path"),
        USERLIST,
    );
    let mut stream = raw_connect(&pgberth);
    stream
        .write_all(&startup_packet(&[
            ("user", TRUST_USER),
            ("database", "app"),
            ("search_path", "pg_catalog"),
        ]))
        .unwrap();
    read_until_ready(&mut stream);
    assert_eq!(
        raw_query(&mut stream, "SHOW search_path").as_deref(),
        Some("pg_catalog")
    );
}

// --- server side ------------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_server_gets_08006_naming_the_cause_and_a_log_line() {
    let (_held, closed) = support::closed_port();
    for mode in ["session", "transaction"] {
        let pgberth = Pgberth::start(
            &format!(
                "\
[databases]
down = host=127.0.0.1 port={closed} dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
pool_mode = {mode}
"
            ),
            USERLIST,
        );
        let result = match pgberth.try_connect(SCRAM_USER, SCRAM_PASS, "down").await {
            Err(e) => Err(e),
            // Allowed: login without a server, and the error at the first query.
            Ok(client) => client.simple_query("SELECT 1").await.map(|_| ()),
        };
        let err = result.expect_err("the server is unreachable");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{mode}: expected an ErrorResponse, got {err:?}"));
        assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{mode}: {db:?}");
        let message = db.message().to_lowercase();
        assert!(
            message.contains("refused") && message.contains("down"),
            "{mode}: the message must name the database and the cause: {message}"
        );
        pgberth.wait_for_log(&format!("127.0.0.1:{closed}"), HANG);
        let log = pgberth.log_contents();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{closed}")))
            .unwrap();
        assert!(
            line.contains("\"down\"") && line.to_lowercase().contains("refused"),
            "{mode}: the log line must name the database and the cause: {line}"
        );
    }
}

#[tokio::test]
async fn idle_transaction_timeout_closes_a_client_idle_in_a_transaction_with_25p03() {
    let pgberth = Pgberth::start(
        &ini(
            "scram-sha-256",
            "pool_mode = transaction\nidle_transaction_timeout = 0.3",
        ),
        USERLIST,
    );
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("BEGIN").await.unwrap();
    // Idle in the transaction well past the timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("the client was closed");
    // The 25P03 error arrived while the client was not waiting for an answer: tokio-postgres
    // reports the closed connection; the log has the cause.
    assert!(err.is_closed(), "{err}");
    pgberth.wait_for_log("idle_transaction_timeout", HANG);
    // Others are served.
    let other = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    other.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn query_timeout_closes_a_client_whose_query_runs_too_long_with_57014() {
    let pgberth = Pgberth::start(
        &ini(
            "scram-sha-256",
            "pool_mode = transaction\nquery_timeout = 0.3",
        ),
        USERLIST,
    );
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    let err = client
        .simple_query("SELECT pg_sleep(3)")
        .await
        .expect_err("the query was cut off");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let other = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    other.simple_query("SELECT 1").await.unwrap();
}
