//! Micro-benchmarks of the relay's per-message work, with no database: message framing
//! (`protocol::scan`), the prepared-statement rewrite in both directions (`prepared`) and the
//! SQL classifier (`sql`). The byte fixtures are what pgbench's select-only transaction sends
//! and receives in the simple, extended and prepared protocols.
//!
//! Run with `cargo bench --bench relay` (add `-- --quick` for a short pass).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pgberth::prepared::{ClientState, Registry, ServerStatements};
use pgberth::protocol::scan::Scanner;

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 123456;";
const SELECT_PARAM: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
const SET: &str = "SET application_name = 'billing-worker'";
const MAX_MESSAGE: usize = 1 << 20;
const MAX_PREPARED: usize = 100;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn query(text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, text);
    msg(b'Q', &body)
}

fn parse(name: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, text);
    body.extend_from_slice(&0u16.to_be_bytes()); // parameter types left to the server
    msg(b'P', &body)
}

/// Bind of the unnamed portal to `stmt`, one text parameter, default result formats.
fn bind(stmt: &str, param: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, stmt);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(param.len() as u32).to_be_bytes());
    body.extend_from_slice(param.as_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    msg(b'B', &body)
}

fn describe_portal() -> Vec<u8> {
    msg(b'D', b"P\0")
}

fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

/// RowDescription, DataRow, CommandComplete and ReadyForQuery of a one-row `abalance` result.
fn select_answer() -> Vec<u8> {
    let mut row_desc = Vec::new();
    row_desc.extend_from_slice(&1u16.to_be_bytes());
    cstr(&mut row_desc, "abalance");
    row_desc.extend_from_slice(&16397u32.to_be_bytes()); // table oid
    row_desc.extend_from_slice(&3u16.to_be_bytes()); // column number
    row_desc.extend_from_slice(&23u32.to_be_bytes()); // int4
    row_desc.extend_from_slice(&4u16.to_be_bytes());
    row_desc.extend_from_slice(&(-1i32).to_be_bytes());
    row_desc.extend_from_slice(&0u16.to_be_bytes());
    let mut data_row = Vec::new();
    data_row.extend_from_slice(&1u16.to_be_bytes());
    data_row.extend_from_slice(&4u32.to_be_bytes());
    data_row.extend_from_slice(b"4242");
    [
        msg(b'T', &row_desc),
        msg(b'D', &data_row),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ]
    .concat()
}

/// `pgbench -M extended`: unnamed statement, Parse/Bind/Describe/Execute/Sync.
fn extended_request() -> Vec<u8> {
    [
        parse("", SELECT_PARAM),
        bind("", "123456"),
        describe_portal(),
        execute(),
        sync(),
    ]
    .concat()
}

/// `pgbench -M prepared` after its first transaction: Bind/Describe/Execute/Sync of `P_0`.
fn prepared_request() -> Vec<u8> {
    [bind("P_0", "123456"), describe_portal(), execute(), sync()].concat()
}

/// The first transaction of a client whose server connection already has the statement.
fn parse_then_prepared_request() -> Vec<u8> {
    [parse("P_0", SELECT_PARAM), prepared_request()].concat()
}

/// ParseComplete, BindComplete, then the select answer.
fn extended_answer() -> Vec<u8> {
    [msg(b'1', &[]), msg(b'2', &[]), select_answer()].concat()
}

fn bind_answer() -> Vec<u8> {
    [msg(b'2', &[]), select_answer()].concat()
}

/// The answer to a Parse that pgberth turned into a Close of a never-prepared name: the
/// CloseComplete stands in for the client's ParseComplete.
fn stand_in_answer() -> Vec<u8> {
    [msg(b'3', &[]), msg(b'2', &[]), select_answer()].concat()
}

fn scan(c: &mut Criterion) {
    let chunks = [
        ("query", query(SELECT)),
        ("select_answer", select_answer()),
        ("extended_request", extended_request()),
        ("extended_answer", extended_answer()),
    ];
    let mut group = c.benchmark_group("scan");
    for (name, chunk) in &chunks {
        group.throughput(Throughput::Bytes(chunk.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut scanner = Scanner::new();
                let mut last = 0u8;
                scanner
                    .feed(black_box(chunk), MAX_MESSAGE, |m| last = m.first_byte)
                    .unwrap();
                black_box(last)
            })
        });
    }
    group.finish();
}

/// A client that prepared `P_0` and a server connection that has it, after one whole
/// exchange: the state every later transaction of `pgbench -M prepared` starts from.
struct Steady {
    client: ClientState,
    server: ServerStatements,
    answer: Vec<u8>,
}

fn steady(registry: &Arc<Registry>) -> Steady {
    let mut client = ClientState::new(registry.clone(), MAX_PREPARED);
    assert!(client.answer_parses_locally(&[parse("P_0", SELECT_PARAM), sync()].concat()));
    let mut server = ServerStatements::default();
    client.start_stretch(MAX_PREPARED);
    // First use on this server connection: the Parse goes first and its answer is hidden.
    client
        .rewrite_client(&prepared_request(), &mut server, MAX_MESSAGE)
        .unwrap();
    let mut answer = extended_answer();
    client.rewriter.server(&mut answer, &mut server);
    client
        .rewrite_client(&prepared_request(), &mut server, MAX_MESSAGE)
        .unwrap();
    let mut answer = bind_answer();
    client.rewriter.server(&mut answer, &mut server);
    assert!(client.rewriter.settled());
    Steady {
        client,
        server,
        answer: bind_answer(),
    }
}

/// A new client on a server connection that already has the statement (prepared there by
/// another client).
fn newcomer(registry: &Arc<Registry>) -> Steady {
    let Steady { server, .. } = steady(registry);
    let mut client = ClientState::new(registry.clone(), MAX_PREPARED);
    client.start_stretch(MAX_PREPARED);
    client.stage.reserve(256);
    Steady {
        client,
        server,
        answer: stand_in_answer(),
    }
}

fn prepared(c: &mut Criterion) {
    let registry = Arc::new(Registry::default());
    let request = prepared_request();
    let parse_request = parse_then_prepared_request();
    let mut group = c.benchmark_group("prepared");

    // Client → server: Bind/Describe/Execute/Sync of a statement the server has.
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("client_bind_execute", |b| {
        b.iter_batched_ref(
            || steady(&registry),
            |s| {
                s.client
                    .rewrite_client(black_box(&request), &mut s.server, MAX_MESSAGE)
                    .unwrap();
                black_box(s.client.stage.len())
            },
            BatchSize::SmallInput,
        )
    });

    // Server → client: the answer to it (BindComplete, rows, ReadyForQuery), passed through.
    let answer_len = bind_answer().len() as u64;
    group.throughput(Throughput::Bytes(answer_len));
    group.bench_function("server_bind_execute", |b| {
        b.iter_batched_ref(
            || {
                let mut s = steady(&registry);
                s.client
                    .rewrite_client(&request, &mut s.server, MAX_MESSAGE)
                    .unwrap();
                s
            },
            |s| black_box(s.client.rewriter.server(&mut s.answer, &mut s.server)),
            BatchSize::SmallInput,
        )
    });

    // Both directions of one steady-state transaction, state carried from one to the next.
    group.throughput(Throughput::Bytes(request.len() as u64 + answer_len));
    group.bench_function("exchange_bind_execute", |b| {
        let mut s = steady(&registry);
        let answer = bind_answer();
        let mut buf = answer.clone();
        b.iter(|| {
            s.client
                .rewrite_client(black_box(&request), &mut s.server, MAX_MESSAGE)
                .unwrap();
            buf.copy_from_slice(&answer);
            black_box(s.client.rewriter.server(&mut buf, &mut s.server))
        })
    });

    // A simple Query with nothing to rewrite and its answer: both pass on as they are, with
    // nothing copied (`Rewritten::Unchanged`) and the answer walked by the quick loop.
    let plain = query(SELECT);
    let plain_answer = select_answer();
    group.throughput(Throughput::Bytes((plain.len() + plain_answer.len()) as u64));
    group.bench_function("exchange_plain_query", |b| {
        let mut client = ClientState::new(registry.clone(), MAX_PREPARED);
        let mut server = ServerStatements::default();
        client.start_stretch(MAX_PREPARED);
        let mut buf = plain_answer.clone();
        b.iter(|| {
            let sent = client
                .rewrite_client(black_box(&plain), &mut server, MAX_MESSAGE)
                .unwrap();
            buf.copy_from_slice(&plain_answer);
            black_box((sent, client.rewriter.server(&mut buf, &mut server)))
        })
    });

    // Client → server: Parse/Bind/Describe/Execute/Sync from a new client, for a statement
    // the server connection already has (the Parse becomes a Close of a never-prepared name).
    group.throughput(Throughput::Bytes(parse_request.len() as u64));
    group.bench_function("client_parse_known", |b| {
        b.iter_batched_ref(
            || newcomer(&registry),
            |s| {
                s.client
                    .rewrite_client(black_box(&parse_request), &mut s.server, MAX_MESSAGE)
                    .unwrap();
                black_box(s.client.stage.len())
            },
            BatchSize::SmallInput,
        )
    });

    // Server → client: its answer, CloseComplete turned into ParseComplete in place.
    group.throughput(Throughput::Bytes(stand_in_answer().len() as u64));
    group.bench_function("server_parse_known", |b| {
        b.iter_batched_ref(
            || {
                let mut s = newcomer(&registry);
                s.client
                    .rewrite_client(&parse_request, &mut s.server, MAX_MESSAGE)
                    .unwrap();
                s
            },
            |s| black_box(s.client.rewriter.server(&mut s.answer, &mut s.server)),
            BatchSize::SmallInput,
        )
    });

    group.finish();
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("sql");
    for (name, text) in [("set", SET), ("select", SELECT)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(pgberth::sql::statements(black_box(text))))
        });
    }
    group.finish();
}

criterion_group!(benches, scan, prepared, classify);
criterion_main!(benches);
