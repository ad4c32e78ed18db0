//! Named prepared statements in transaction and statement mode.
//!
//! A client's statements live on whichever server connection it had when it prepared them, but
//! in transaction pooling its next Bind may run on another one. pgberth therefore:
//! - interns every named statement by its Parse body (query text and parameter types) into a
//!   process-wide [`Registry`]: identical statements of all clients share one [`Statement`]
//!   with one server-side name, `pgberth_<id>`;
//! - keeps each client's names → statements ([`ClientStatements`]) and each server
//!   connection's prepared set with LRU eviction at `max_prepared_statements`
//!   ([`ServerStatements`]);
//! - rewrites the client's stream ([`Rewriter::client`]): Parse, Bind, Describe and Close get
//!   the server-side name; a statement the server connection lacks is parsed right before its
//!   first use there; a Parse of a statement the server already has, and a client's Close of a
//!   statement, become a Close of a name that never exists — which PostgreSQL answers with
//!   CloseComplete, in order, with no error;
//! - fixes the server's answers ([`Rewriter::server`]): that CloseComplete becomes the
//!   ParseComplete the client expects (same length, one byte changed in place), and the
//!   ParseComplete / CloseComplete of what pgberth injected itself are removed.
//!
//! Answers are matched to requests by counting: every Parse yields one ParseComplete and every
//! Close one CloseComplete, unless an error makes the server skip to the next Sync, which is
//! tracked as an epoch (one per Sync or Query sent).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::protocol::{FrameError, build, frontend};
use crate::sql::Statement as Sql;

/// A statement name PostgreSQL never has: closing it is a no-op answered by CloseComplete.
const NEVER_PREPARED: &[u8] = b"pgberth_never_prepared";

const PARSE_COMPLETE: u8 = b'1';
const CLOSE_COMPLETE: u8 = b'3';
const ERROR_RESPONSE: u8 = b'E';
const READY_FOR_QUERY: u8 = b'Z';
const COMMAND_COMPLETE: u8 = b'C';

/// One distinct statement (query text and parameter types) known to pgberth.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The server-side name, `pgberth_<id>`.
    name: Box<str>,
    /// The complete Parse message that prepares it under its server-side name.
    parse: Box<[u8]>,
    /// For a statement prepared with SQL `PREPARE`: what follows the name (`[(types)] AS
    /// query`), to prepare it again with `PREPARE pgberth_<id><rest>`.
    sql_rest: Option<Box<str>>,
}

impl Statement {
    /// The server-side name, `pgberth_<id>`.
    pub fn server_name(&self) -> &str {
        &self.name
    }
}

/// Process-wide interning of statements by their Parse body after the name.
#[derive(Debug, Default)]
pub struct Registry {
    by_body: Mutex<HashMap<Box<[u8]>, Weak<Statement>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Statements some client still has prepared (SHOW MEM).
    pub fn live(&self) -> usize {
        let map = self.by_body.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// The statement for this Parse body (query, parameter count and types), shared by every
    /// client that prepares the same text.
    pub fn intern(&self, body_after_name: &[u8]) -> Arc<Statement> {
        let mut map = self.by_body.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stmt) = map.get(body_after_name).and_then(Weak::upgrade) {
            return stmt;
        }
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("pgberth_{id}");
        let mut parse = Vec::with_capacity(6 + name.len() + body_after_name.len());
        parse.push(frontend::PARSE);
        parse.extend_from_slice(&[0; 4]);
        parse.extend_from_slice(name.as_bytes());
        parse.push(0);
        parse.extend_from_slice(body_after_name);
        let len = (parse.len() - 1) as u32;
        parse[1..5].copy_from_slice(&len.to_be_bytes());
        let stmt = Arc::new(Statement {
            id,
            name: name.into(),
            parse: parse.into(),
            sql_rest: None,
        });
        map.insert(body_after_name.into(), Arc::downgrade(&stmt));
        stmt
    }
}

impl Registry {
    /// The statement for a SQL `PREPARE name <rest>`, shared by every client that prepares the
    /// same text that way.
    pub fn intern_sql(&self, rest: &str) -> Arc<Statement> {
        let mut key = b"\0SQL ".to_vec();
        key.extend_from_slice(rest.as_bytes());
        let mut map = self.by_body.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stmt) = map.get(key.as_slice()).and_then(Weak::upgrade) {
            return stmt;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let stmt = Arc::new(Statement {
            id,
            name: format!("pgberth_{id}").into(),
            parse: Box::new([]),
            sql_rest: Some(rest.into()),
        });
        map.insert(key.into(), Arc::downgrade(&stmt));
        stmt
    }
}

/// The names one client gave its statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// DEALLOCATE ALL / DISCARD ALL from the client.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

/// The statements prepared on one server connection, least recently used first out. Holding
/// them keeps them interned while the server has them, for other clients to reuse.
#[derive(Debug, Default)]
pub struct ServerStatements {
    last_use: HashMap<u64, (u64, Arc<Statement>)>,
    tick: u64,
    /// Statements whose plan went stale ("cached plan must not change result type"): closed
    /// before they are parsed again here.
    stale: Vec<u64>,
}

impl ServerStatements {
    pub fn contains(&self, id: u64) -> bool {
        self.last_use.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }

    fn touch(&mut self, stmt: &Arc<Statement>) {
        self.tick += 1;
        let tick = self.tick;
        self.last_use
            .entry(stmt.id)
            .and_modify(|e| e.0 = tick)
            .or_insert_with(|| (tick, stmt.clone()));
    }

    fn remove(&mut self, id: u64) {
        self.last_use.remove(&id);
    }

    /// The server forgot everything (DISCARD ALL, DEALLOCATE ALL, a reset query).
    pub fn clear(&mut self) {
        self.last_use.clear();
        self.stale.clear();
    }

    fn least_recently_used(&self) -> Option<u64> {
        self.last_use
            .iter()
            .min_by_key(|(_, (tick, _))| *tick)
            .map(|(id, _)| *id)
    }
}

/// A transaction-mode client's statement state: its names, the rewriter of its stream and the
/// buffer rewritten bytes go to. Boxed in the session and created at first use, so idle
/// clients that never prepare anything pay nothing.
#[derive(Debug)]
pub struct ClientState {
    pub statements: ClientStatements,
    pub rewriter: Rewriter,
    /// Rewritten client bytes; capacity is kept between transactions, up to `STAGE_KEEP`.
    pub stage: Vec<u8>,
    pub registry: Arc<Registry>,
    pub max_prepared: usize,
    /// The client's startup parameters, what RESET and RESET ALL go back to: copied from
    /// the session's parameters just before its first SET or RESET changes them.
    pub startup_params: Option<Vec<(String, crate::pool::ParamValue)>>,
}

impl ClientState {
    pub fn new(registry: Arc<Registry>, max_prepared: usize) -> ClientState {
        ClientState {
            statements: ClientStatements::default(),
            rewriter: Rewriter::default(),
            stage: Vec::new(),
            registry,
            max_prepared,
            startup_params: None,
        }
    }

    /// Starts a stretch on a (possibly different) server connection.
    pub fn start_stretch(&mut self, max_prepared: usize) {
        self.rewriter.reset();
        self.max_prepared = max_prepared;
        if self.stage.capacity() > STAGE_KEEP {
            self.stage = Vec::new();
        }
    }

    /// A client holding no server connection sent only named Parses and a Sync (how libpq's
    /// PQprepare, pgbench -M prepared and others prepare): record them and answer here,
    /// ParseComplete for each and ReadyForQuery, into `stage`. No server connection is taken:
    /// a statement is parsed on one right before its first use there, and a syntax error shows
    /// then. This also keeps a client that prepares while others hold every server connection
    /// in a transaction from waiting on them. `false` (nothing recorded) for anything else.
    pub fn answer_parses_locally(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        let mut parses = Vec::new();
        loop {
            if rest.len() < 5 {
                return false;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
            if len < 5 || rest.len() < len {
                return false;
            }
            let (msg, after) = rest.split_at(len);
            match msg[0] {
                frontend::PARSE => {
                    let Some((name, after_name)) = split_cstr(&msg[5..]) else {
                        return false;
                    };
                    if name.is_empty() || self.statements.by_name.contains_key(name) {
                        return false;
                    }
                    // A Parse holds one statement: its first word is enough.
                    if statement_may_change_session(after_name) {
                        return false;
                    }
                    parses.push((name, after_name));
                }
                frontend::SYNC if after.is_empty() && !parses.is_empty() => break,
                _ => return false,
            }
            rest = after;
        }
        self.stage.clear();
        self.rewriter.counts.client_parses += parses.len() as u64;
        for (name, after_name) in parses {
            let stmt = self.registry.intern(after_name);
            self.statements.by_name.insert(name.into(), stmt);
            self.stage.extend_from_slice(&[PARSE_COMPLETE, 0, 0, 0, 4]);
        }
        self.stage
            .extend_from_slice(&[READY_FOR_QUERY, 0, 0, 0, 5, b'I']);
        true
    }

    /// After a hidden stale-plan error: the client's exchange rewritten again (its statements
    /// are parsed anew first) into `stage`, for the relay to send to the server. `false` when
    /// there is nothing to send.
    pub fn take_replay(&mut self, server: &mut ServerStatements, max_message: usize) -> bool {
        let Some(input) = self.rewriter.take_replay_input() else {
            return false;
        };
        self.stage.clear();
        // The client's Parses go again, but the client sent them once.
        let client_parses = self.rewriter.counts.client_parses;
        let mut out = Output::new(&input, &mut self.stage);
        let rewritten = self.rewriter.client(
            &input,
            &self.registry,
            &mut self.statements,
            server,
            self.max_prepared,
            max_message,
            &mut out,
        );
        out.into_stage();
        self.rewriter.counts.client_parses = client_parses;
        rewritten.is_ok() && !self.stage.is_empty()
    }

    /// Rewrites a chunk from the client into `stage` (see [`Rewriter::client`]).
    pub fn rewrite_client(
        &mut self,
        chunk: &[u8],
        server: &mut ServerStatements,
        max_message: usize,
    ) -> Result<Rewritten, FrameError> {
        self.stage.clear();
        let mut out = Output::new(chunk, &mut self.stage);
        self.rewriter.client(
            chunk,
            &self.registry,
            &mut self.statements,
            server,
            self.max_prepared,
            max_message,
            &mut out,
        )?;
        Ok(out.finish())
    }
}

/// Most client input kept to repeat an exchange after a stale plan.
const RETRY_INPUT_MAX: usize = 64 * 1024;

/// The staging buffer keeps at most this much capacity between transactions.
const STAGE_KEEP: usize = 16 * 1024;

/// What the relay needs to rewrite one stretch: the client's state and the server
/// connection's statements.
#[derive(Debug)]
pub struct Rewriting<'a> {
    pub client: &'a mut ClientState,
    pub server: &'a mut ServerStatements,
}

/// What a chunk from the client became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewritten {
    /// The chunk's first `n` bytes, unchanged: the rest (the start of a message still to be
    /// completed) is held back.
    Unchanged(usize),
    /// Something changed: the bytes to send are in the client state's `stage`.
    Staged,
}

/// Where a rewritten chunk goes. Until something changes, the output is the chunk's own first
/// bytes and nothing is copied; the first change copies those into the staging buffer, and
/// everything after goes there too.
pub struct Output<'a> {
    chunk: &'a [u8],
    stage: &'a mut Vec<u8>,
    /// How many of the chunk's first bytes the output is, while nothing is staged.
    unchanged: usize,
    staged: bool,
}

impl<'a> Output<'a> {
    /// `stage` must be empty.
    pub fn new(chunk: &'a [u8], stage: &'a mut Vec<u8>) -> Output<'a> {
        Output {
            chunk,
            stage,
            unchanged: 0,
            staged: false,
        }
    }

    /// Passes bytes on as they are. Bytes that are the chunk's next ones are not copied.
    #[inline]
    fn forward(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let next = self.chunk[self.unchanged..].as_ptr();
        if !self.staged && std::ptr::eq(bytes.as_ptr(), next) {
            self.unchanged += bytes.len();
        } else {
            self.staged().extend_from_slice(bytes);
        }
    }

    /// The staging buffer, for output that differs from the chunk.
    fn staged(&mut self) -> &mut Vec<u8> {
        if !self.staged {
            self.stage.extend_from_slice(&self.chunk[..self.unchanged]);
            self.staged = true;
        }
        self.stage
    }

    pub fn finish(self) -> Rewritten {
        if self.staged {
            Rewritten::Staged
        } else {
            Rewritten::Unchanged(self.unchanged)
        }
    }

    /// Puts the whole output in the staging buffer.
    pub fn into_stage(mut self) {
        self.staged();
    }
}

/// Process-wide prepared-statement counters (for SHOW STATS and metrics).
#[derive(Debug, Default)]
pub struct Totals {
    pub prepared: AtomicU64,
    pub reused: AtomicU64,
    pub evicted: AtomicU64,
}

impl Totals {
    /// Adds one client's counts since the last call and resets them.
    pub fn absorb(&self, counts: &mut Counts) {
        if *counts == Counts::default() {
            return; // the common case: no shared cache line touched
        }
        let c = std::mem::take(counts);
        self.prepared.fetch_add(c.prepared, Ordering::Relaxed);
        self.reused.fetch_add(c.reused, Ordering::Relaxed);
        self.evicted.fetch_add(c.evicted, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        Counts {
            prepared: self.prepared.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            client_parses: 0,
        }
    }
}

/// Counters for statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Statements parsed on a server connection (client Parse or injected before use).
    pub prepared: u64,
    /// Client Parses answered without parsing, the server connection already had it.
    pub reused: u64,
    /// Statements closed on a server connection to stay within `max_prepared_statements`.
    pub evicted: u64,
    /// Parse messages the client sent (taken by the relay for SHOW STATS, not summed here).
    pub client_parses: u64,
}

/// What to do with one ParseComplete the server will send.
#[derive(Debug, Clone, Copy)]
struct ParseFate {
    epoch: u64,
    /// pgberth injected this Parse: the client must not see its answer.
    swallow: bool,
    /// The statement this Parse adds to the server connection (undone if it never completes).
    adds: Option<u64>,
}

/// What to do with one CloseComplete the server will send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseFate {
    /// The client's own Close (or its Close turned into a no-op): forward.
    Forward,
    /// Stands for the ParseComplete of a Parse the server already had: rewrite the tag.
    AsParseComplete,
    /// pgberth closed an evicted statement: remove.
    Swallow,
}

/// The rewriting state of one client's stretch on one server connection.
#[derive(Debug, Default)]
pub struct Rewriter {
    /// An incomplete Parse/Bind/Describe/Close (or header), held until it is whole.
    carry: Vec<u8>,
    /// Bytes left of a message being passed through unchanged.
    pass_remaining: usize,
    /// Syncs and Queries sent (each ends an epoch on the server with ReadyForQuery).
    epochs_sent: u64,
    /// ReadyForQuery messages received.
    epochs_done: u64,
    parse_fates: VecDeque<ParseFate>,
    close_fates: VecDeque<(u64, CloseFate)>,
    /// Where the server's stream is: at a message start, in its length, or in its body.
    server_at: ServerAt,
    /// The next body byte is a ReadyForQuery's transaction status.
    status_next: bool,
    /// The epoch in which the server last reported an error.
    error_epoch: Option<u64>,
    /// SET / RESET the client ran in simple Queries, waiting for their epoch to succeed.
    pending_changes: Vec<(u64, ParamChange)>,
    /// Parameter changes that took effect on the server, for the session to take over.
    pub confirmed_changes: Vec<ParamChange>,
    /// CommandCompletes to remove, by epoch: the answers to statements pgberth put into a
    /// client's Query (a PREPARE before an EXECUTE, a DEALLOCATE before a PREPARE).
    cc_drops: VecDeque<(u64, Vec<u32>)>,
    /// CommandCompletes seen in the current epoch.
    cc_seen: u32,
    /// Epochs pgberth opened itself (a Parse and Sync before a Query): their ReadyForQuery is
    /// removed.
    hidden_epochs: VecDeque<u64>,
    /// ReadyForQuery messages removed since the relay last asked (it counts what it sent).
    hidden_ready_dropped: u32,
    /// Epochs with a DEALLOCATE ALL: should it fail, what the server has is unknown.
    deallocate_all_epochs: Vec<u64>,
    /// Statements used since the last ReadyForQuery, to re-prepare should one's plan go stale.
    used_in_epoch: Vec<u64>,
    /// The body of an ErrorResponse being received (its start, enough to read its code).
    error_text: Option<Vec<u8>>,
    /// What the client sent since every epoch was last answered, kept (up to
    /// `RETRY_INPUT_MAX`) to send again should a statement's plan go stale.
    epoch_input: Vec<u8>,
    epoch_input_overflow: bool,
    /// Transaction status at the last ReadyForQuery (a stretch starts between transactions).
    last_status: u8,
    /// A stale-plan error was hidden: the failed attempt's ReadyForQuery is to be removed and
    /// `epoch_input` sent again.
    retrying: bool,
    /// The client input to send again, once the failed attempt's ReadyForQuery came.
    replay: Option<Vec<u8>>,
    /// The exchange now in flight is a repetition: it is not repeated again.
    repeated: bool,
    /// The client changed server state pgberth does not carry between server connections
    /// (DISCARD ALL, DEALLOCATE, SQL-level PREPARE, SET inside an extended-protocol statement):
    /// the connection must be closed rather than reused.
    pub server_state_unknown: bool,
    pub counts: Counts,
}

impl Rewriter {
    /// Starts a stretch on a (possibly different) server connection; counters are kept.
    pub fn reset(&mut self) {
        self.carry.clear();
        self.pass_remaining = 0;
        self.epochs_sent = 0;
        self.epochs_done = 0;
        self.parse_fates.clear();
        self.close_fates.clear();
        self.server_at = ServerAt::Start;
        self.status_next = false;
        self.error_epoch = None;
        self.pending_changes.clear();
        self.confirmed_changes.clear();
        self.server_state_unknown = false;
        self.cc_drops.clear();
        self.cc_seen = 0;
        self.hidden_epochs.clear();
        self.hidden_ready_dropped = 0;
        self.deallocate_all_epochs.clear();
        self.used_in_epoch.clear();
        self.error_text = None;
        self.epoch_input.clear();
        self.epoch_input_overflow = false;
        self.last_status = b'I';
        self.retrying = false;
        self.replay = None;
        self.repeated = false;
    }

    /// A stale-plan retry is under way: no new client bytes may go to the server before it.
    pub fn retrying(&self) -> bool {
        self.retrying || self.replay.is_some()
    }

    /// ReadyForQuery messages pgberth removed since the last call: the relay counted the Syncs
    /// that asked for them.
    pub fn take_hidden_ready(&mut self) -> u32 {
        std::mem::take(&mut self.hidden_ready_dropped)
    }

    /// Nothing is in flight that needs fixing on the way back.
    pub fn settled(&self) -> bool {
        self.carry.is_empty()
            && self.pass_remaining == 0
            && self.parse_fates.is_empty()
            && self.close_fates.is_empty()
            && matches!(self.server_at, ServerAt::Start)
            && !self.retrying
            && self.replay.is_none()
    }

    /// Rewrites a chunk the client sent into the bytes to send to the server (`out`).
    #[allow(clippy::too_many_arguments)]
    pub fn client(
        &mut self,
        chunk: &[u8],
        registry: &Registry,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        max_prepared: usize,
        max_message: usize,
        out: &mut Output<'_>,
    ) -> Result<(), FrameError> {
        // Kept only for clients with named statements: nothing else can go stale.
        if !self.epoch_input_overflow && !client.is_empty() {
            if self.epoch_input.len() + chunk.len() <= RETRY_INPUT_MAX {
                self.epoch_input.extend_from_slice(chunk);
            } else {
                self.epoch_input_overflow = true;
                self.epoch_input.clear();
            }
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.pass_remaining > 0 {
                let take = self.pass_remaining.min(rest.len());
                out.forward(&rest[..take]);
                self.pass_remaining -= take;
                rest = &rest[take..];
                continue;
            }
            // Gather at least a header, and the whole message when it is one to rewrite.
            let (tag, total) = if self.carry.is_empty() && rest.len() >= 5 {
                header(rest, max_message)?
            } else {
                let need = if self.carry.len() < 5 {
                    5 - self.carry.len()
                } else {
                    0
                };
                let take = need.min(rest.len());
                self.carry.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.carry.len() < 5 {
                    continue;
                }
                header(&self.carry, max_message)?
            };
            let rewritable = matches!(
                tag,
                frontend::PARSE
                    | frontend::BIND
                    | frontend::DESCRIBE
                    | frontend::CLOSE
                    | frontend::QUERY
            );
            if !rewritable {
                // Pass through: what was carried, then the rest as it comes.
                let carried = std::mem::take(&mut self.carry);
                out.forward(&carried);
                self.pass_remaining = total - carried.len();
                if matches!(tag, frontend::SYNC | frontend::FUNCTION_CALL) {
                    self.epochs_sent += 1;
                }
                continue;
            }
            if self.carry.is_empty() && rest.len() >= total {
                let (msg, after) = rest.split_at(total);
                self.rewrite(tag, msg, registry, client, server, max_prepared, out)?;
                rest = after;
                continue;
            }
            let need = total - self.carry.len();
            let take = need.min(rest.len());
            self.carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.carry.len() == total {
                let msg = std::mem::take(&mut self.carry);
                self.rewrite(tag, &msg, registry, client, server, max_prepared, out)?;
                self.carry = msg;
                self.carry.clear();
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &mut self,
        tag: u8,
        msg: &[u8],
        registry: &Registry,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        max_prepared: usize,
        out: &mut Output<'_>,
    ) -> Result<(), FrameError> {
        let body = &msg[5..];
        match tag {
            frontend::QUERY => {
                let (text, _) = split_cstr(body).ok_or(FrameError::Malformed("Query"))?;
                let rewritten = if mentions_session_state(text) {
                    let text = String::from_utf8_lossy(text);
                    self.query(&text, registry, client, server, max_prepared, out)
                } else {
                    None
                };
                match rewritten {
                    Some(rewritten) => {
                        let out = out.staged();
                        let start = build::begin(out, frontend::QUERY);
                        build::cstr(out, &rewritten);
                        build::patch_len(out, start);
                    }
                    None => out.forward(msg),
                }
                self.epochs_sent += 1;
            }
            frontend::PARSE => {
                self.counts.client_parses += 1;
                let (name, after_name) = split_cstr(body).ok_or(FrameError::Malformed("Parse"))?;
                // A Parse holds one statement: its first word is enough.
                if statement_may_change_session(after_name)
                    && let Some((text, _)) = split_cstr(after_name)
                {
                    self.inspect_parsed(&String::from_utf8_lossy(text), client);
                }
                if name.is_empty() {
                    self.expect_parse(false, None);
                    out.forward(msg);
                    return Ok(());
                }
                let out = out.staged();
                if let Some(existing) = client.by_name.get(name).cloned() {
                    // The name is in use: PostgreSQL refuses with 42P05 and skips to the next
                    // Sync. Have it do exactly that, by parsing under the existing statement's
                    // server-side name where it exists.
                    if !server.contains(existing.id) && existing.sql_rest.is_none() {
                        self.make_room(server, max_prepared, out);
                        self.expect_parse(true, Some(existing.id));
                        self.parse_on_server(&existing, server, out);
                        server.touch(&existing);
                    }
                    if server.contains(existing.id) {
                        self.expect_parse(false, None);
                        let start = build::begin(out, frontend::PARSE);
                        build::cbytes(out, existing.server_name().as_bytes());
                        out.extend_from_slice(after_name);
                        build::patch_len(out, start);
                        return Ok(());
                    }
                }
                let stmt = registry.intern(after_name);
                client.by_name.insert(name.into(), stmt.clone());
                if server.contains(stmt.id) {
                    server.touch(&stmt);
                    self.counts.reused += 1;
                    self.close_fates
                        .push_back((self.epochs_sent, CloseFate::AsParseComplete));
                    build::close(out, b'S', NEVER_PREPARED);
                } else {
                    self.make_room(server, max_prepared, out);
                    server.touch(&stmt);
                    self.counts.prepared += 1;
                    self.expect_parse(false, Some(stmt.id));
                    self.parse_on_server(&stmt, server, out);
                }
            }
            frontend::BIND => {
                let (portal, after_portal) =
                    split_cstr(body).ok_or(FrameError::Malformed("Bind"))?;
                let (name, after_name) =
                    split_cstr(after_portal).ok_or(FrameError::Malformed("Bind"))?;
                let Some(stmt) = self.statement_for_use(name, client, server, max_prepared, out)
                else {
                    out.forward(msg);
                    return Ok(());
                };
                let out = out.staged();
                let start = build::begin(out, frontend::BIND);
                build::cbytes(out, portal);
                build::cbytes(out, stmt.server_name().as_bytes());
                out.extend_from_slice(after_name);
                build::patch_len(out, start);
            }
            frontend::DESCRIBE => {
                let (&kind, name_part) = body
                    .split_first()
                    .ok_or(FrameError::Malformed("Describe"))?;
                let (name, _) = split_cstr(name_part).ok_or(FrameError::Malformed("Describe"))?;
                if kind != b'S' {
                    out.forward(msg);
                    return Ok(());
                }
                match self.statement_for_use(name, client, server, max_prepared, out) {
                    Some(stmt) => {
                        build::describe(out.staged(), b'S', stmt.server_name().as_bytes())
                    }
                    None => out.forward(msg),
                }
            }
            frontend::CLOSE => {
                let (&kind, name_part) =
                    body.split_first().ok_or(FrameError::Malformed("Close"))?;
                let (name, _) = split_cstr(name_part).ok_or(FrameError::Malformed("Close"))?;
                self.close_fates
                    .push_back((self.epochs_sent, CloseFate::Forward));
                if kind == b'S' && !name.is_empty() {
                    // Other clients may share the statement: forget the client's name only.
                    client.by_name.remove(name);
                    build::close(out.staged(), b'S', NEVER_PREPARED);
                } else {
                    out.forward(msg);
                }
            }
            _ => unreachable!("only rewritable messages get here"),
        }
        Ok(())
    }

    /// Looks at a simple Query for session state: SET and RESET are tracked (confirmed when the
    /// Query's ReadyForQuery shows success outside a transaction); SQL PREPARE, EXECUTE and
    /// DEALLOCATE get the shared server-side names, with the statement prepared first where
    /// the server connection lacks it; what cannot be carried to another server connection
    /// marks this one for closing. Returns the rewritten text, if it changed; messages to send
    /// before the Query go to `out`.
    fn query(
        &mut self,
        query: &str,
        registry: &Registry,
        client: &mut ClientStatements,
        server: &mut ServerStatements,
        max_prepared: usize,
        out: &mut Output<'_>,
    ) -> Option<String> {
        let mut edit = QueryEdit::default();
        let mut changes = Vec::new();
        let mut deallocate_all = false;
        for statement in crate::sql::statements(query) {
            let range = statement.text();
            match statement {
                Sql::Set { name, value, .. } if value.eq_ignore_ascii_case("default") => {
                    changes.push(ParamChange::Reset(name))
                }
                Sql::Set { name, value, .. } => changes.push(ParamChange::Set(name, value)),
                Sql::Reset {
                    name: Some(name), ..
                } => changes.push(ParamChange::Reset(name)),
                Sql::Reset { name: None, .. } => changes.push(ParamChange::ResetAll),
                Sql::DiscardAll { .. } => {
                    client.clear();
                    self.server_state_unknown = true;
                    changes.push(ParamChange::ResetAll);
                }
                Sql::Deallocate { name: None, .. } => {
                    client.clear();
                    server.clear();
                    deallocate_all = true;
                }
                Sql::Prepare {
                    name, name_range, ..
                } => {
                    let rest = &query[name_range.end..range.end];
                    let stmt = registry.intern_sql(rest);
                    client.by_name.insert(name.as_bytes().into(), stmt.clone());
                    let server_name = stmt.server_name();
                    if server.contains(stmt.id) {
                        // Another client prepared the same text here: recreate it, quietly.
                        let text = format!("DEALLOCATE {server_name}; PREPARE {server_name}{rest}");
                        edit.replace(query, range, &text, 1);
                        self.counts.reused += 1;
                    } else {
                        self.make_room(server, max_prepared, out.staged());
                        edit.replace(query, range, &format!("PREPARE {server_name}{rest}"), 0);
                        self.counts.prepared += 1;
                    }
                    server.touch(&stmt);
                }
                Sql::Execute {
                    name, name_range, ..
                } => {
                    if let Some(stmt) = client.by_name.get(name.as_bytes()).cloned() {
                        let args = &query[name_range.end..range.end];
                        let call = format!("EXECUTE {}{args}", stmt.server_name());
                        match self.ensure_for_query(&stmt, server, max_prepared, out.staged()) {
                            Some(prepare) => {
                                edit.replace(query, range, &format!("{prepare}; {call}"), 1)
                            }
                            None => edit.replace(query, range, &call, 0),
                        }
                        server.touch(&stmt);
                    }
                }
                Sql::Deallocate {
                    name: Some(name), ..
                } => {
                    if let Some(stmt) = client.by_name.remove(name.as_bytes()) {
                        let dealloc = format!("DEALLOCATE {}", stmt.server_name());
                        match self.ensure_for_query(&stmt, server, max_prepared, out.staged()) {
                            Some(prepare) => {
                                edit.replace(query, range, &format!("{prepare}; {dealloc}"), 1)
                            }
                            None => edit.replace(query, range, &dealloc, 0),
                        }
                        // Gone from this server connection, for every client sharing it.
                        server.remove(stmt.id);
                    }
                }
                Sql::Transaction { text } => {
                    let word = query[text].split_whitespace().next().unwrap_or("");
                    if word.eq_ignore_ascii_case("rollback") || word.eq_ignore_ascii_case("abort") {
                        // A rolled-back transaction takes its SETs with it, including those
                        // earlier in this Query (BEGIN makes them part of the block).
                        self.pending_changes.clear();
                        changes.clear();
                    }
                }
                Sql::Other { .. } => {}
            }
            edit.index += 1;
        }
        // Injected Parse/Sync pairs opened epochs of their own before this Query's.
        let epoch = self.epochs_sent;
        self.pending_changes
            .extend(changes.into_iter().map(|c| (epoch, c)));
        if deallocate_all {
            self.deallocate_all_epochs.push(epoch);
        }
        if !edit.drops.is_empty() {
            self.cc_drops
                .push_back((epoch, std::mem::take(&mut edit.drops)));
        }
        edit.finish(query)
    }

    /// Makes sure the server connection has `stmt` before a Query uses it. A SQL-prepared
    /// statement is prepared inside the Query: the `PREPARE` text to put before the use comes
    /// back. A protocol-prepared one is parsed with a Parse and a Sync of pgberth's own, sent
    /// before the Query, whose answers the client never sees.
    fn ensure_for_query(
        &mut self,
        stmt: &Arc<Statement>,
        server: &mut ServerStatements,
        max_prepared: usize,
        out: &mut Vec<u8>,
    ) -> Option<String> {
        self.used_in_epoch.push(stmt.id);
        if server.contains(stmt.id) {
            return None;
        }
        self.make_room(server, max_prepared, out);
        self.counts.prepared += 1;
        server.touch(stmt);
        match &stmt.sql_rest {
            Some(rest) => Some(format!("PREPARE {}{rest}", stmt.server_name())),
            None => {
                self.expect_parse(true, Some(stmt.id));
                self.parse_on_server(stmt, server, out);
                out.extend_from_slice(&[frontend::SYNC, 0, 0, 0, 4]);
                self.hidden_epochs.push_back(self.epochs_sent);
                self.epochs_sent += 1;
                None
            }
        }
    }

    /// A statement parsed with the extended protocol that changes session state cannot be
    /// tracked (it runs at Execute, maybe many times): the connection is closed afterwards.
    fn inspect_parsed(&mut self, query: &str, client: &mut ClientStatements) {
        for statement in crate::sql::statements(query) {
            match statement {
                Sql::Set { .. }
                | Sql::Reset { .. }
                | Sql::Prepare { .. }
                | Sql::Deallocate { .. } => self.server_state_unknown = true,
                Sql::DiscardAll { .. } => {
                    client.clear();
                    self.server_state_unknown = true;
                }
                _ => {}
            }
        }
    }

    /// A ReadyForQuery closed `epoch` with this transaction status.
    fn on_ready(&mut self, epoch: u64, status: u8) {
        self.last_status = status;
        if self.error_epoch == Some(epoch) {
            self.pending_changes.retain(|(e, _)| *e != epoch);
        }
        match status {
            b'I' => {
                let done = self
                    .pending_changes
                    .iter()
                    .filter(|(e, _)| *e <= epoch)
                    .count();
                let changes: Vec<_> = self.pending_changes.drain(..done).map(|(_, c)| c).collect();
                self.confirmed_changes.extend(changes);
            }
            b'E' => self.pending_changes.clear(),
            _ => {}
        }
    }

    /// The statement a Bind or Describe names, prepared on this server connection first if
    /// needed. `None` for the unnamed statement or a name the client never prepared (the
    /// message then goes through unchanged and PostgreSQL reports the error).
    fn statement_for_use(
        &mut self,
        name: &[u8],
        client: &ClientStatements,
        server: &mut ServerStatements,
        max_prepared: usize,
        out: &mut Output<'_>,
    ) -> Option<Arc<Statement>> {
        if name.is_empty() {
            return None;
        }
        let stmt = client.by_name.get(name)?.clone();
        self.used_in_epoch.push(stmt.id);
        if !server.contains(stmt.id) && stmt.sql_rest.is_some() {
            // Prepared with SQL PREPARE and not here: PostgreSQL will say it does not exist.
            return None;
        }
        if !server.contains(stmt.id) {
            let out = out.staged();
            self.make_room(server, max_prepared, out);
            self.counts.prepared += 1;
            self.expect_parse(true, Some(stmt.id));
            self.parse_on_server(&stmt, server, out);
        }
        server.touch(&stmt);
        Some(stmt)
    }

    /// Appends the Parse that prepares `stmt` on the server connection, closing it first if
    /// its plan went stale there.
    fn parse_on_server(
        &mut self,
        stmt: &Statement,
        server: &mut ServerStatements,
        out: &mut Vec<u8>,
    ) {
        if let Some(at) = server.stale.iter().position(|id| *id == stmt.id) {
            server.stale.swap_remove(at);
            self.close_fates
                .push_back((self.epochs_sent, CloseFate::Swallow));
            build::close(out, b'S', stmt.server_name().as_bytes());
        }
        self.used_in_epoch.push(stmt.id);
        out.extend_from_slice(&stmt.parse);
    }

    /// Closes the least recently used statement when the server connection is full.
    fn make_room(&mut self, server: &mut ServerStatements, max_prepared: usize, out: &mut Vec<u8>) {
        if max_prepared == 0 || server.len() < max_prepared {
            return;
        }
        if let Some(victim) = server.least_recently_used() {
            server.remove(victim);
            self.counts.evicted += 1;
            self.close_fates
                .push_back((self.epochs_sent, CloseFate::Swallow));
            build::close(out, b'S', format!("pgberth_{victim}").as_bytes());
        }
    }

    fn expect_parse(&mut self, swallow: bool, adds: Option<u64>) {
        let fate = ParseFate {
            epoch: self.epochs_sent,
            swallow,
            adds,
        };
        self.parse_fates.push_back(fate);
    }

    /// Fixes a chunk from the server in place and returns its new length (never longer).
    /// Removes the answers to what pgberth injected, turns stand-in CloseCompletes into
    /// ParseCompletes, and on an error forgets what the server will now skip. A message's fate
    /// depends on its tag alone, so it is decided on the tag's byte, wherever chunks split.
    pub fn server(&mut self, chunk: &mut [u8], server: &mut ServerStatements) -> usize {
        let len = chunk.len();
        let (mut read, mut write) = (0, 0);
        if self.nothing_to_fix_back() {
            read = self.note_unchanged_messages(chunk);
            write = read;
        }
        while read < len {
            match self.server_at {
                ServerAt::Start => {
                    let tag = chunk[read];
                    if tag == ERROR_RESPONSE
                        && let Some(total) = self.stale_plan_to_retry(&chunk[read..], server)
                    {
                        // Hidden: the statement is parsed again and the exchange repeated.
                        read += total;
                        continue;
                    }
                    let drop = match self.on_server_message(tag, server) {
                        Keep::Forward => false,
                        Keep::Rewrite(new) => {
                            chunk[read] = new;
                            false
                        }
                        Keep::Drop => true,
                    };
                    if !drop {
                        chunk[write] = chunk[read];
                        write += 1;
                    }
                    read += 1;
                    if len - read >= 4 {
                        // The whole length field is here (the common case): no byte-wise state.
                        let bytes = [
                            chunk[read],
                            chunk[read + 1],
                            chunk[read + 2],
                            chunk[read + 3],
                        ];
                        if !drop {
                            if write != read {
                                chunk.copy_within(read..read + 4, write);
                            }
                            write += 4;
                        }
                        read += 4;
                        let remaining = (u32::from_be_bytes(bytes) as usize).saturating_sub(4);
                        if remaining <= len - read && self.error_text.is_none() {
                            // The whole body is here too, and no error text is being kept:
                            // the message is done in this step.
                            if remaining > 0 && std::mem::take(&mut self.status_next) {
                                self.on_ready(self.epochs_done - 1, chunk[read]);
                            }
                            if !drop {
                                if write != read {
                                    chunk.copy_within(read..read + remaining, write);
                                }
                                write += remaining;
                            }
                            read += remaining;
                            self.server_at = ServerAt::Start;
                            continue;
                        }
                        self.server_at = if remaining == 0 {
                            ServerAt::Start
                        } else {
                            ServerAt::Body { drop, remaining }
                        };
                        continue;
                    }
                    self.server_at = ServerAt::Length {
                        drop,
                        have: 0,
                        bytes: [0; 4],
                    };
                }
                ServerAt::Length {
                    drop,
                    mut have,
                    mut bytes,
                } => {
                    let take = (4 - have as usize).min(len - read);
                    bytes[have as usize..have as usize + take]
                        .copy_from_slice(&chunk[read..read + take]);
                    if !drop {
                        // Nothing dropped so far (the common case): the bytes are in place.
                        if write != read {
                            chunk.copy_within(read..read + take, write);
                        }
                        write += take;
                    }
                    read += take;
                    have += take as u8;
                    self.server_at = if have < 4 {
                        ServerAt::Length { drop, have, bytes }
                    } else {
                        let remaining = (u32::from_be_bytes(bytes) as usize).saturating_sub(4);
                        if remaining == 0 {
                            ServerAt::Start
                        } else {
                            ServerAt::Body { drop, remaining }
                        }
                    };
                }
                ServerAt::Body { drop, remaining } => {
                    if std::mem::take(&mut self.status_next) {
                        self.on_ready(self.epochs_done - 1, chunk[read]);
                    }
                    let take = remaining.min(len - read);
                    if let Some(text) = self.error_text.as_mut() {
                        let room = 512usize.saturating_sub(text.len()).min(take);
                        text.extend_from_slice(&chunk[read..read + room]);
                        if remaining == take {
                            let text = self.error_text.take().unwrap_or_default();
                            if is_stale_plan_error(&text) {
                                self.plan_went_stale(server);
                            }
                        }
                    }
                    if !drop {
                        if write != read {
                            chunk.copy_within(read..read + take, write);
                        }
                        write += take;
                    }
                    read += take;
                    self.server_at = if remaining == take {
                        ServerAt::Start
                    } else {
                        ServerAt::Body {
                            drop,
                            remaining: remaining - take,
                        }
                    };
                }
            }
        }
        write
    }

    /// No answer on the way back needs changing or remembering: nothing pgberth injected or
    /// renamed is in flight, no SET waits for its outcome, no statement of the client's could go
    /// stale, and the server's stream is at a message start.
    fn nothing_to_fix_back(&self) -> bool {
        matches!(self.server_at, ServerAt::Start)
            && !self.status_next
            && self.error_text.is_none()
            && self.parse_fates.is_empty()
            && self.close_fates.is_empty()
            && self.cc_drops.is_empty()
            && self.hidden_epochs.is_empty()
            && self.pending_changes.is_empty()
            && self.deallocate_all_epochs.is_empty()
            && self.used_in_epoch.is_empty()
            && self.epoch_input.is_empty()
            && !self.retrying
            && self.replay.is_none()
    }

    /// [`Rewriter::server`] when [`Rewriter::nothing_to_fix_back`]: walks the whole messages at
    /// the chunk's start, which all pass unchanged, keeping only the count of epochs, the last
    /// transaction status and where an error was. Returns where it stopped: at the chunk's end,
    /// or at a message it does not hold whole (or an odd one) for the general loop to take.
    fn note_unchanged_messages(&mut self, chunk: &[u8]) -> usize {
        let mut at = 0;
        while let Some(header) = chunk.get(at..at + 5) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len < 4 || len >= chunk.len() - at {
                break;
            }
            match header[0] {
                READY_FOR_QUERY if len == 5 => {
                    self.epochs_done += 1;
                    self.cc_seen = 0;
                    self.last_status = chunk[at + 5];
                    if self.epochs_done == self.epochs_sent {
                        self.epoch_input_overflow = false;
                        self.repeated = false;
                    }
                }
                READY_FOR_QUERY => break,
                ERROR_RESPONSE => self.error_epoch = Some(self.epochs_done),
                COMMAND_COMPLETE => self.cc_seen += 1,
                _ => {}
            }
            at += len + 1;
        }
        at
    }

    /// "cached plan must not change result type": the schema changed under statements used
    /// in this epoch. They are closed and parsed again at their next use on this server
    /// connection, so the client's next attempt works (with PostgreSQL alone, or PgBouncer,
    /// it keeps failing until the connection is dropped).
    fn plan_went_stale(&mut self, server: &mut ServerStatements) {
        for id in std::mem::take(&mut self.used_in_epoch) {
            if server.contains(id) {
                server.remove(id);
                server.stale.push(id);
            }
        }
    }

    /// An ErrorResponse starting `rest` that reports a stale plan, when the exchange can simply
    /// be repeated: outside a transaction, nothing sent after it, all of it kept, not tried
    /// already, and the whole error in this chunk. Then the error is counted as the server
    /// sees it, the statements re-prepared, and its length returned for the caller to drop it.
    fn stale_plan_to_retry(&mut self, rest: &[u8], server: &mut ServerStatements) -> Option<usize> {
        let epoch = self.epochs_done;
        let eligible = self.last_status == b'I'
            && self.epochs_sent == epoch + 1
            && self.carry.is_empty()
            && self.pass_remaining == 0
            && !self.epoch_input_overflow
            && !self.epoch_input.is_empty()
            && !self.repeated;
        if !eligible || rest.len() < 5 {
            return None;
        }
        let total = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
        if rest.len() < total || !is_stale_plan_error(&rest[5..total]) {
            return None;
        }
        let _ = self.on_server_message(ERROR_RESPONSE, server);
        self.error_text = None;
        self.plan_went_stale(server);
        self.retrying = true;
        Some(total)
    }

    /// The client input to send again after a hidden stale-plan error, once its failed
    /// attempt is over (see [`ClientState::take_replay`]).
    fn take_replay_input(&mut self) -> Option<Vec<u8>> {
        let input = self.replay.take()?;
        self.repeated = true;
        Some(input)
    }

    fn on_server_message(&mut self, tag: u8, server: &mut ServerStatements) -> Keep {
        match tag {
            PARSE_COMPLETE => match self.parse_fates.pop_front() {
                Some(fate) if fate.swallow => Keep::Drop,
                _ => Keep::Forward,
            },
            CLOSE_COMPLETE => match self.close_fates.pop_front() {
                Some((_, CloseFate::AsParseComplete)) => Keep::Rewrite(PARSE_COMPLETE),
                Some((_, CloseFate::Swallow)) => Keep::Drop,
                _ => Keep::Forward,
            },
            ERROR_RESPONSE => {
                // The server skips to the next Sync: what was sent in this epoch and not yet
                // answered will never be.
                let epoch = self.epochs_done;
                self.error_epoch = Some(epoch);
                self.error_text = Some(Vec::new());
                if self.deallocate_all_epochs.contains(&epoch) {
                    self.server_state_unknown = true;
                }
                while let Some(fate) = self.parse_fates.front() {
                    if fate.epoch != epoch {
                        break;
                    }
                    if let Some(id) = fate.adds {
                        server.remove(id);
                    }
                    self.parse_fates.pop_front();
                }
                while self.close_fates.front().is_some_and(|(e, _)| *e == epoch) {
                    self.close_fates.pop_front();
                }
                Keep::Forward
            }
            READY_FOR_QUERY => {
                let epoch = self.epochs_done;
                self.epochs_done += 1;
                self.cc_seen = 0;
                self.used_in_epoch.clear();
                if self.cc_drops.front().is_some_and(|(e, _)| *e == epoch) {
                    self.cc_drops.pop_front();
                }
                if self.hidden_epochs.front() == Some(&epoch) {
                    self.hidden_epochs.pop_front();
                    self.hidden_ready_dropped += 1;
                    return Keep::Drop;
                }
                if std::mem::take(&mut self.retrying) {
                    // The failed attempt is over: what the client sent goes again. It was
                    // counted once by the relay and is answered once.
                    self.replay = Some(std::mem::take(&mut self.epoch_input));
                    self.error_epoch = None;
                    return Keep::Drop;
                }
                if self.epochs_done == self.epochs_sent {
                    self.epoch_input.clear();
                    self.epoch_input_overflow = false;
                    self.repeated = false;
                }
                self.status_next = true;
                Keep::Forward
            }
            COMMAND_COMPLETE => {
                let index = self.cc_seen;
                self.cc_seen += 1;
                match self.cc_drops.front() {
                    Some((e, drops)) if *e == self.epochs_done && drops.contains(&index) => {
                        Keep::Drop
                    }
                    _ => Keep::Forward,
                }
            }
            _ => Keep::Forward,
        }
    }
}

/// A Query's text being rewritten statement by statement, and the CommandCompletes of the
/// statements pgberth adds, which the client must not see.
#[derive(Debug, Default)]
struct QueryEdit {
    text: String,
    copied: usize,
    changed: bool,
    /// Index of the CommandComplete the current statement will produce.
    index: u32,
    drops: Vec<u32>,
}

impl QueryEdit {
    /// Replaces the statement at `range` by `text`, whose first `added` statements are
    /// pgberth's own.
    fn replace(&mut self, query: &str, range: std::ops::Range<usize>, text: &str, added: u32) {
        self.text.push_str(&query[self.copied..range.start]);
        self.text.push_str(text);
        self.copied = range.end;
        self.changed = true;
        self.drops.extend(self.index..self.index + added);
        self.index += added;
    }

    fn finish(mut self, query: &str) -> Option<String> {
        if !self.changed {
            return None;
        }
        self.text.push_str(&query[self.copied..]);
        Some(self.text)
    }
}

/// A session parameter change a client made with SET or RESET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamChange {
    /// `SET name TO value`, with the value as SQL text.
    Set(String, String),
    Reset(String),
    ResetAll,
}

/// An ErrorResponse body saying a prepared statement's result type changed (SQLSTATE 0A000).
fn is_stale_plan_error(body: &[u8]) -> bool {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    has(b"C0A000\0") && has(b"cached plan must not change result type")
}

/// A cheap test before lexing a query: could it change session state? The lexer
/// (`sql.rs`) classifies statements by their first word, so only the first word of each
/// statement matters: at the start and after every `;` (a `;` inside a string or comment only
/// adds a needless check). A statement that begins with a comment or a parenthesis is handed
/// to the lexer. The first (up to) eight bytes, lower-cased, are compared with the keywords'
/// in one go (`deallocate` matches any word starting `dealloca`: the lexer then decides).
fn mentions_session_state(text: &[u8]) -> bool {
    let mut rest = text;
    loop {
        let statement = rest.trim_ascii_start();
        // Nothing after the last `;` (the usual end of a script's statement).
        if statement.is_empty() {
            return false;
        }
        if statement_may_change_session(statement) {
            return true;
        }
        match memchr::memchr(b';', statement) {
            Some(semicolon) => rest = &statement[semicolon + 1..],
            None => return false,
        }
    }
}

/// [`mentions_session_state`] for one statement's start.
fn statement_may_change_session(statement: &[u8]) -> bool {
    /// A keyword's first `len` (at most 8) bytes as a little-endian number, and its mask.
    const fn key(word: &[u8]) -> (u64, u64) {
        let mut value = 0u64;
        let mut i = 0;
        while i < word.len() && i < 8 {
            value |= (word[i] as u64) << (8 * i);
            i += 1;
        }
        let mask = if i == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * i)) - 1
        };
        (value, mask)
    }
    const KEYS: [(u64, u64); 8] = [
        key(b"set"),
        key(b"reset"),
        key(b"discard"),
        key(b"deallocate"),
        key(b"prepare"),
        key(b"execute"),
        key(b"rollback"),
        key(b"abort"),
    ];
    let statement = statement.trim_ascii_start();
    if statement.starts_with(b"/*") || statement.starts_with(b"--") || statement.starts_with(b"(") {
        return true;
    }
    let head = match statement.first_chunk::<8>() {
        Some(head) => *head,
        None => {
            let mut head = [0u8; 8];
            head[..statement.len()].copy_from_slice(statement);
            head
        }
    };
    // Setting bit 5 lower-cases ASCII letters and turns no other byte into one.
    let word = u64::from_le_bytes(head) | 0x2020_2020_2020_2020;
    KEYS.iter().any(|&(key, mask)| word & mask == key)
}

enum Keep {
    Forward,
    Rewrite(u8),
    Drop,
}

/// Position in the server's stream, for [`Rewriter::server`].
#[derive(Debug, Clone, Copy, Default)]
enum ServerAt {
    #[default]
    Start,
    Length {
        drop: bool,
        have: u8,
        bytes: [u8; 4],
    },
    Body {
        drop: bool,
        remaining: usize,
    },
}

fn header(buf: &[u8], max_message: usize) -> Result<(u8, usize), FrameError> {
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    if len >= max_message {
        return Err(FrameError::TooLong {
            len: len + 1,
            max: max_message,
        });
    }
    Ok((buf[0], len + 1))
}

fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests;
