//! Byte-level tests of statement rewriting: client messages in, server messages out.

use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, query: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(query.as_bytes());
    body.push(0);
    body.extend_from_slice(&0u16.to_be_bytes());
    msg(b'P', &body)
}

fn bind(stmt: &str) -> Vec<u8> {
    let mut body = vec![0u8]; // unnamed portal
    body.extend_from_slice(stmt.as_bytes());
    body.push(0);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no params, no result formats
    msg(b'B', &body)
}

fn close_stmt(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    msg(b'C', &body)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

/// The tags of a server stream.
fn tags(stream: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize + 1;
        out.push((rest[0] as char).to_string());
        rest = &rest[len..];
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

/// Tags and the names they carry, to compare client streams readably.
fn summary(stream: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize + 1;
        let (m, after) = rest.split_at(len);
        let body = &m[5..];
        let text = match m[0] {
            b'P' => format!("P {}", String::from_utf8_lossy(split_cstr(body).unwrap().0)),
            b'B' => {
                let (_, after_portal) = split_cstr(body).unwrap();
                format!(
                    "B {}",
                    String::from_utf8_lossy(split_cstr(after_portal).unwrap().0)
                )
            }
            b'C' | b'D' => format!(
                "{} {}",
                m[0] as char,
                String::from_utf8_lossy(split_cstr(&body[1..]).unwrap().0)
            ),
            t => (t as char).to_string(),
        };
        out.push(text);
        rest = after;
    }
    assert!(rest.is_empty(), "trailing bytes");
    out
}

struct Harness {
    registry: Registry,
    client: ClientStatements,
    server: ServerStatements,
    rw: Rewriter,
    max: usize,
}

impl Harness {
    fn new(max: usize) -> Harness {
        Harness {
            registry: Registry::default(),
            client: ClientStatements::default(),
            server: ServerStatements::default(),
            rw: Rewriter::default(),
            max,
        }
    }

    /// A client that prepared `s1` ("select 1") on the server connection, answers received.
    fn with_s1_prepared() -> Harness {
        let mut h = Harness::new(10);
        h.send(&[&cat(&[parse("s1", "select 1"), sync()])]);
        h.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
        h
    }

    fn send(&mut self, chunks: &[&[u8]]) -> Vec<u8> {
        let mut sent = Vec::new();
        for c in chunks {
            let (rewritten, stage) = self.send_one(c);
            match rewritten {
                Rewritten::Unchanged(n) => sent.extend_from_slice(&c[..n]),
                Rewritten::Staged => sent.extend_from_slice(&stage),
            }
        }
        sent
    }

    /// One chunk through the rewriter: what it became, and the staging buffer.
    fn send_one(&mut self, chunk: &[u8]) -> (Rewritten, Vec<u8>) {
        let mut stage = Vec::new();
        let mut out = Output::new(chunk, &mut stage);
        self.rw
            .client(
                chunk,
                &self.registry,
                &mut self.client,
                &mut self.server,
                self.max,
                1 << 20,
                &mut out,
            )
            .unwrap();
        (out.finish(), stage)
    }

    fn receive(&mut self, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            let mut buf = c.to_vec();
            let n = self.rw.server(&mut buf, &mut self.server);
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn a_named_parse_is_renamed_and_its_answer_passes() {
    let mut h = Harness::new(10);
    let out = h.send(&[&cat(&[parse("s1", "select 1"), sync()])]);
    assert_eq!(summary(&out), ["P pgberth_1", "S"]);
    let back = h.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
    assert_eq!(summary(&back), ["1", "Z"]);
    assert!(h.rw.settled());
    assert_eq!(h.rw.counts.prepared, 1);
}

#[test]
fn parsing_a_statement_the_server_has_is_answered_by_a_renamed_close_complete() {
    let mut h = Harness::with_s1_prepared();
    // Another client, same text, on the same server connection.
    h.client = ClientStatements::default();
    let out = h.send(&[&cat(&[parse("other", "select 1"), bind("other"), sync()])]);
    assert_eq!(
        summary(&out),
        ["C pgberth_never_prepared", "B pgberth_1", "S"]
    );
    let back = h.receive(&[&cat(&[msg(b'3', &[]), msg(b'2', &[]), msg(b'Z', b"I")])]);
    assert_eq!(
        summary(&back),
        ["1", "2", "Z"],
        "CloseComplete stands in for ParseComplete"
    );
    assert_eq!(h.rw.counts.reused, 1);
}

#[test]
fn binding_on_a_server_without_the_statement_parses_it_first_and_hides_that_answer() {
    let mut h = Harness::with_s1_prepared();
    // The next transaction runs on a fresh server connection.
    h.server = ServerStatements::default();
    let out = h.send(&[&cat(&[bind("s1"), msg(b'E', &[0, 0, 0, 0, 0]), sync()])]);
    assert_eq!(summary(&out), ["P pgberth_1", "B pgberth_1", "E", "S"]);
    let back = h.receive(&[&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(tags(&back), ["2", "C", "Z"]);
    assert!(h.server.contains(1));
}

#[test]
fn a_client_close_forgets_only_its_name_and_gets_close_complete() {
    let mut h = Harness::with_s1_prepared();
    let out = h.send(&[&cat(&[close_stmt("s1"), sync()])]);
    assert_eq!(summary(&out), ["C pgberth_never_prepared", "S"]);
    assert!(
        h.server.contains(1),
        "the server keeps it for other clients"
    );
    assert!(h.client.is_empty());
    let back = h.receive(&[&cat(&[msg(b'3', &[]), msg(b'Z', b"I")])]);
    assert_eq!(summary(&back), ["3", "Z"]);
    // The name is unknown now: a Bind goes through unchanged, for PostgreSQL to refuse.
    let out = h.send(&[&cat(&[bind("s1"), sync()])]);
    assert_eq!(summary(&out), ["B s1", "S"]);
}

#[test]
fn the_least_recently_used_statement_is_closed_when_the_server_is_full() {
    let mut h = Harness::new(1);
    h.send(&[&cat(&[parse("a", "select 1"), sync()])]);
    h.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
    let out = h.send(&[&cat(&[parse("b", "select 2"), sync()])]);
    assert_eq!(summary(&out), ["C pgberth_1", "P pgberth_2", "S"]);
    let back = h.receive(&[&cat(&[msg(b'3', &[]), msg(b'1', &[]), msg(b'Z', b"I")])]);
    assert_eq!(
        summary(&back),
        ["1", "Z"],
        "the eviction's CloseComplete is hidden"
    );
    assert_eq!(h.rw.counts.evicted, 1);
    // "a" is used again: prepared again, evicting "b".
    let out = h.send(&[&cat(&[bind("a"), sync()])]);
    assert_eq!(
        summary(&out),
        ["C pgberth_2", "P pgberth_1", "B pgberth_1", "S"]
    );
    let back = h.receive(&[&cat(&[
        msg(b'3', &[]),
        msg(b'1', &[]),
        msg(b'2', &[]),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(summary(&back), ["2", "Z"]);
}

#[test]
fn an_error_forgets_statements_the_server_skipped() {
    let mut h = Harness::with_s1_prepared();
    h.server = ServerStatements::default();
    // The injected Parse fails (say the table is gone): the server skips Bind too.
    h.send(&[&cat(&[bind("s1"), sync()])]);
    let back = h.receive(&[&cat(&[
        msg(b'E', b"SERROR\0C42P01\0Mno\0\0"),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(summary(&back), ["E", "Z"]);
    assert!(!h.server.contains(1), "not prepared after all");
    assert!(h.rw.settled());
}

#[test]
fn splitting_either_stream_anywhere_changes_nothing() {
    let mut whole = Harness::new(10);
    let client_stream = cat(&[
        parse("s1", "select 1"),
        bind("s1"),
        sync(),
        close_stmt("s1"),
        sync(),
    ]);
    let expected_out = whole.send(&[&client_stream]);
    let server_stream = cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        msg(b'Z', b"I"),
        msg(b'3', &[]),
        msg(b'Z', b"I"),
    ]);
    let expected_back = whole.receive(&[&server_stream]);
    for split in 1..client_stream.len() {
        let mut h = Harness::new(10);
        let out = h.send(&[&client_stream[..split], &client_stream[split..]]);
        assert_eq!(out, expected_out, "client split at {split}");
    }
    for split in 1..server_stream.len() {
        let mut h = Harness::new(10);
        h.send(&[&client_stream]);
        let back = h.receive(&[&server_stream[..split], &server_stream[split..]]);
        assert_eq!(back, expected_back, "server split at {split}");
    }
    // With a hidden answer in the stream too.
    let mut h = Harness::with_s1_prepared();
    h.server = ServerStatements::default();
    h.send(&[&cat(&[bind("s1"), sync()])]);
    let stream = cat(&[msg(b'1', &[]), msg(b'2', &[]), msg(b'Z', b"I")]);
    for split in 1..stream.len() {
        let mut h2 = Harness::new(10);
        h2.send(&[&cat(&[parse("s1", "select 1"), sync()])]);
        h2.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
        h2.server = ServerStatements::default();
        h2.send(&[&cat(&[bind("s1"), sync()])]);
        let back = h2.receive(&[&stream[..split], &stream[split..]]);
        assert_eq!(summary(&back), ["2", "Z"], "split at {split}");
    }
}

#[test]
fn unnamed_statements_and_other_messages_pass_unchanged() {
    let mut h = Harness::new(10);
    let stream = cat(&[
        parse("", "select 1"),
        bind(""),
        msg(b'E', &[0, 0, 0, 0, 0]),
        sync(),
        msg(b'Q', b"select 2\0"),
    ]);
    let (rewritten, stage) = h.send_one(&stream);
    assert_eq!(
        rewritten,
        Rewritten::Unchanged(stream.len()),
        "sent as read, not copied"
    );
    assert!(stage.is_empty());
    assert!(h.client.is_empty());
}

#[test]
fn an_unchanged_chunk_holds_back_an_unfinished_message_it_may_rewrite() {
    let bind_named = bind("s1");
    let mut h = Harness::with_s1_prepared();
    let first = query("select 2");
    // A Query and the first bytes of a Bind that names a statement: the Bind is held back
    // until it is whole, the Query goes on as read.
    let chunk = cat(&[first.clone(), bind_named[..7].to_vec()]);
    let (rewritten, stage) = h.send_one(&chunk);
    assert_eq!(rewritten, Rewritten::Unchanged(first.len()));
    assert!(stage.is_empty());
    // The rest of the Bind completes it; it is renamed, so this chunk is staged.
    let (rewritten, stage) = h.send_one(&cat(&[bind_named[7..].to_vec(), sync()]));
    assert_eq!(rewritten, Rewritten::Staged);
    assert_eq!(summary(&stage), ["B pgberth_1", "S"]);
}

#[test]
fn a_change_after_unchanged_messages_stages_the_whole_chunk_in_order() {
    let mut h = Harness::with_s1_prepared();
    let chunk = cat(&[query("select 2"), bind("s1"), sync()]);
    let (rewritten, stage) = h.send_one(&chunk);
    assert_eq!(rewritten, Rewritten::Staged);
    assert_eq!(summary(&stage), ["Q", "B pgberth_1", "S"]);
    assert_eq!(&stage[..query("select 2").len()], &query("select 2")[..]);
}

#[test]
fn identical_text_shares_one_statement() {
    let registry = Registry::default();
    let a = registry.intern(b"select 1\0\0\0");
    let b = registry.intern(b"select 1\0\0\0");
    let c = registry.intern(b"select 2\0\0\0");
    assert_eq!(a.id, b.id);
    assert_ne!(a.id, c.id);
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

fn query_text(stream: &[u8]) -> String {
    let q = stream.windows(1).position(|w| w[0] == b'Q').unwrap();
    let len = u32::from_be_bytes(stream[q + 1..q + 5].try_into().unwrap()) as usize;
    String::from_utf8_lossy(&stream[q + 5..q + len])
        .trim_end_matches('\0')
        .to_owned()
}

#[test]
fn sql_prepare_gets_the_shared_name() {
    let mut h = Harness::new(10);
    let out = h.send(&[&query("PREPARE p (int) AS SELECT $1")]);
    assert_eq!(query_text(&out), "PREPARE pgberth_1 (int) AS SELECT $1");
    assert!(h.server.contains(1));
}

#[test]
fn sql_execute_on_a_server_without_the_statement_prepares_it_first_and_hides_that() {
    let mut h = Harness::new(10);
    h.send(&[&query("PREPARE p AS SELECT 1")]);
    h.receive(&[&cat(&[msg(b'C', b"PREPARE\0"), msg(b'Z', b"I")])]);
    h.server = ServerStatements::default();
    let out = h.send(&[&query("SELECT 0; EXECUTE p")]);
    assert_eq!(
        query_text(&out),
        "SELECT 0; PREPARE pgberth_1 AS SELECT 1; EXECUTE pgberth_1"
    );
    let back = h.receive(&[&cat(&[
        msg(b'C', b"SELECT 1\0"),
        msg(b'C', b"PREPARE\0"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(
        tags(&back),
        ["C", "C", "Z"],
        "the injected PREPARE's CommandComplete is hidden"
    );
}

#[test]
fn sql_deallocate_of_a_protocol_statement_the_server_lacks_parses_it_first_with_a_hidden_sync() {
    let mut h = Harness::new(10);
    h.send(&[&cat(&[parse("a1", "select 1"), sync()])]);
    h.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
    h.server = ServerStatements::default();
    let out = h.send(&[&query("DEALLOCATE a1")]);
    assert_eq!(summary(&out), ["P pgberth_1", "S", "Q"]);
    assert_eq!(query_text(&out), "DEALLOCATE pgberth_1");
    let back = h.receive(&[&cat(&[
        msg(b'1', &[]),
        msg(b'Z', b"I"),
        msg(b'C', b"DEALLOCATE\0"),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(tags(&back), ["C", "Z"]);
    assert_eq!(
        h.rw.take_hidden_ready(),
        1,
        "the relay is told its Sync was answered"
    );
    assert!(!h.server.contains(1));
    assert!(h.client.is_empty());
}

#[test]
fn totals_add_up_clients_counts_and_reset_them() {
    let totals = Totals::default();
    let mut a = Counts {
        prepared: 2,
        reused: 1,
        evicted: 0,
        client_parses: 0,
    };
    let mut b = Counts {
        prepared: 1,
        reused: 0,
        evicted: 3,
        client_parses: 0,
    };
    totals.absorb(&mut a);
    totals.absorb(&mut b);
    assert_eq!(
        totals.snapshot(),
        Counts {
            prepared: 3,
            reused: 1,
            evicted: 3,
            client_parses: 0,
        }
    );
    assert_eq!(a, Counts::default());
}

#[test]
fn a_stale_plan_error_outside_a_transaction_is_hidden_and_the_exchange_kept_for_replay() {
    let mut h = Harness::new(10);
    h.send(&[&cat(&[parse("s1", "select * from t"), sync()])]);
    h.receive(&[&cat(&[msg(b'1', &[]), msg(b'Z', b"I")])]);
    let exchange = cat(&[bind("s1"), msg(b'E', &[0, 0, 0, 0, 0]), sync()]);
    h.send(&[&exchange]);
    let stale = msg(
        b'E',
        b"SERROR\0C0A000\0Mcached plan must not change result type\0\0",
    );
    let back = h.receive(&[&cat(&[stale.clone(), msg(b'Z', b"I")])]);
    assert!(
        back.is_empty(),
        "neither the error nor its ReadyForQuery reach the client"
    );
    assert_eq!(h.rw.take_replay_input(), Some(exchange.clone()));
    assert!(
        !h.server.contains(1),
        "to be parsed again (after a Close) at its next use"
    );
    // Sent again, it starts with closing and parsing the statement anew.
    let out = h.send(&[&exchange]);
    assert_eq!(
        summary(&out),
        ["C pgberth_1", "P pgberth_1", "B pgberth_1", "E", "S"]
    );
    // A second stale error in a row is the client's to see.
    let back = h.receive(&[&cat(&[
        msg(b'3', &[]),
        msg(b'1', &[]),
        stale.clone(),
        msg(b'Z', b"I"),
    ])]);
    assert_eq!(tags(&back), ["E", "Z"]);
}

#[test]
fn session_state_keywords_are_looked_for_at_statement_starts() {
    for text in [
        "SET search_path = x",
        "  \n\tSET x TO 1",
        "select 1;set x = 1",
        "select ';set';select 2",
        "/* c */SET x TO 1",
        "-- c\nSET x TO 1",
        "DISCARD ALL",
        "ROLLBACK",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "DEALLOCATE p",
        "abort",
        "sEt",
        "RESET statement_timeout",
        "reset all",
        "x;Deallocate all",
    ] {
        assert!(mentions_session_state(text.as_bytes()), "{text:?}");
    }
    for text in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
        "UPDATE t SET a = 1",
        "SELECT recount, dataset, upset FROM t",
        "INSERT INTO assets VALUES (1)",
        "SELECT $1::int4",
        "se",
        "",
        "SELECT 1; COMMIT",
    ] {
        assert!(!mentions_session_state(text.as_bytes()), "{text:?}");
    }
}

#[test]
fn answers_with_nothing_to_fix_leave_the_same_state_whole_or_split_anywhere() {
    let error = msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0");
    let server_stream = cat(&[
        msg(b'C', b"BEGIN\0"),
        msg(b'Z', b"T"),
        msg(b'T', &[0, 0]),
        msg(b'D', &[0, 0]),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"T"),
        error,
        msg(b'Z', b"E"),
    ]);
    let client_stream = cat(&[query("begin"), query("select 1"), query("selec 2")]);
    let mut whole = Harness::new(10);
    whole.send(&[&client_stream]);
    assert!(whole.rw.nothing_to_fix_back());
    let back = whole.receive(&[&server_stream]);
    assert_eq!(back, server_stream);
    assert_eq!(whole.rw.epochs_done, 3);
    assert_eq!(whole.rw.error_epoch, Some(2));
    assert_eq!(whole.rw.last_status, b'E');
    for split in 1..server_stream.len() {
        let mut h = Harness::new(10);
        h.send(&[&client_stream]);
        let back = h.receive(&[&server_stream[..split], &server_stream[split..]]);
        assert_eq!(back, server_stream, "split at {split}");
        assert_eq!(
            format!("{:?}", h.rw),
            format!("{:?}", whole.rw),
            "split at {split}"
        );
    }
}
