//! The relay: moves bytes between a client and the server connection it holds, in one task,
//! and decides when a transaction (or statement) is over so the connection can go back to its
//! pool. Only message headers are read; bytes are forwarded as they arrive, with one read and
//! one write per chunk in each direction. An idle client holds no buffer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::app::App;
use crate::buffer::Buffer;
use crate::config::PoolMode;
use crate::pool::{ParamValue, Pool, ServerConn};
use crate::prepared::{ClientState, ParamChange, Rewriting, Rewritten};
use crate::protocol::scan::Scanner;
use crate::protocol::{ErrorResponse, FrameError, SqlState, TxStatus, backend, frontend};
use crate::registry::{ClientInfo, ClientState as Activity};
use crate::stats::{Stat, now_us};
use crate::stream::Stream;

/// A logged-in client.
#[derive(Debug)]
pub struct Session {
    app: Arc<App>,
    client: Stream,
    pool: Arc<Pool>,
    server: Option<Box<ServerConn>>,
    /// The client's registry entry: names, pool mode, state and statistics counters.
    info: Arc<ClientInfo>,
    /// Startup parameters the client asked for, applied to every server connection it gets.
    wanted_params: Box<[(String, ParamValue)]>,
    /// Named prepared statements, in transaction and statement mode (created at first use).
    statements: Option<Box<ClientState>>,
    /// Bytes the client sent right behind its last login message, read with it: the first
    /// stretch starts with them. A thin pointer: every byte of an idle client's task counts.
    #[allow(clippy::box_collection)]
    early: Option<Box<Vec<u8>>>,
}

/// What follows a stretch of relaying.
enum Next {
    /// The client is idle again (it may still hold its server connection in session mode).
    Idle,
    /// The wake-up had no bytes behind it (readiness left over from an earlier read).
    NothingRead,
    /// The session ends; `Some` is the error to send the client first.
    Close(Option<ErrorResponse>),
    /// The client stayed quiet and was asked to park (`fresh.rs`, `App::maintenance`).
    Park,
    /// The client is idle and its worker hands it over to this one (`workers.rs`).
    Move(u16),
}

/// How a session's `run` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The client is gone.
    Closed,
    /// The client is idle and may park (`parking.rs`): its socket is still on the runtime.
    Park,
    /// The client is idle and moves to this worker (`workers.rs`); its sockets are still
    /// registered here.
    Move(u16),
}

impl Next {
    fn close(error: ErrorResponse) -> Next {
        Next::Close(Some(error))
    }
}

/// How a stretch of relaying ended.
#[derive(Debug)]
enum Outcome {
    /// The transaction (statement, in statement mode) is over and nothing is in flight.
    Done,
    /// The client closed or sent Terminate. `clean`: the server is between transactions with
    /// nothing in flight.
    ClientLeft {
        clean: bool,
    },
    ServerLost(io::Error),
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
    /// Statement mode, and the client opened a transaction block.
    TransactionInStatementMode,
    QueryTimeout,
    IdleTransactionTimeout,
}

impl Drop for Session {
    // Also runs when KILL or KILL_CLIENT aborts the client's task mid-way.
    fn drop(&mut self) {
        self.pool.count_client(false);
    }
}

impl Session {
    /// The pool mode is the one recorded in the client's login (`ClientLogin::mode`).
    pub fn new(
        app: Arc<App>,
        client: Stream,
        early: Vec<u8>,
        pool: Arc<Pool>,
        server: Option<Box<ServerConn>>,
        info: Arc<ClientInfo>,
        wanted_params: Vec<(String, String)>,
    ) -> Session {
        pool.count_client(true);
        let session = Session {
            app,
            client,
            pool,
            server: None,
            info,
            wanted_params: wanted_params
                .into_iter()
                .map(|(k, v)| (k, ParamValue::Plain(v)))
                .collect(),
            statements: None,
            early: (!early.is_empty()).then(|| Box::new(early)),
        };
        let mut session = session;
        if let Some(conn) = server {
            session.info.counters.bump(Stat::ServerAssignmentCount, 1);
            session.hold(conn);
        }
        session
    }

    fn database(&self) -> &str {
        self.info.names().0
    }

    fn mode(&self) -> PoolMode {
        self.info
            .login()
            .map_or(PoolMode::Session, |login| login.mode)
    }

    fn user(&self) -> &str {
        self.info.names().1
    }

    fn hold(&mut self, conn: Box<ServerConn>) {
        self.info
            .hold_backend(Some((conn.backend_pid, conn.backend_secret)));
        conn.info.held_by(self.info.id);
        self.server = Some(conn);
    }

    /// The client holds no server connection any more: cancels are dropped from now on.
    fn let_go(&self) {
        self.info.hold_backend(None);
    }

    /// Gives the server connection back to the pool; its state must be known idle. Returns it
    /// instead when `server_reset_query_always` wants it reset first (`finish_clean`).
    fn release(&mut self) -> Option<Box<ServerConn>> {
        self.let_go();
        let conn = self.server.take()?;
        let reset_first = {
            let settings = self.pool.settings_now();
            settings.server_reset_query_always && !settings.server_reset_query.is_empty()
        };
        if reset_first {
            return Some(conn);
        }
        self.pool.checkin(conn);
        None
    }

    /// Closes the server connection: its state is unknown or broken.
    fn discard_server(&mut self) {
        self.let_go();
        self.server = None;
    }

    /// A server connection from the pool, with the client's startup parameters applied. The
    /// common case (an idle connection with matching parameters) awaits nothing; the rest is
    /// boxed so that it does not enlarge every client's task.
    async fn checkout(&self) -> Result<Box<ServerConn>, crate::pool::CheckoutError> {
        self.info.counters.bump(Stat::ServerAssignmentCount, 1);
        let idle = self.pool.try_checkout_idle();
        if let Some(conn) = &idle
            && conn.params_match(&self.wanted_params)
        {
            return Ok(idle.expect("just matched"));
        }
        Box::pin(self.checkout_slow(idle)).await
    }

    /// `checkout` when parameters must be set or the pool has no idle connection at hand.
    async fn checkout_slow(
        &self,
        mut idle: Option<Box<ServerConn>>,
    ) -> Result<Box<ServerConn>, crate::pool::CheckoutError> {
        loop {
            let mut conn = match idle.take() {
                Some(conn) => conn,
                None => self.wait_for_server().await?,
            };
            let timeout = self.pool.settings().server_connect_timeout;
            match conn.apply_params(&self.wanted_params, timeout).await {
                Ok(()) => return Ok(conn),
                Err(crate::server::ServerConnectError::Refused(e)) => {
                    // The server rejected a value the client asked for: the client must hear it.
                    return Err(crate::pool::CheckoutError::Connect(
                        crate::server::ServerConnectError::Refused(e),
                    ));
                }
                Err(e) => {
                    tracing::info!(database = %self.database(), "closing server connection: setting parameters failed: {e}")
                }
            }
        }
    }

    /// Checks out from the pool, waiting if need be, with the client shown as waiting and the
    /// time it waited counted.
    async fn wait_for_server(&self) -> Result<Box<ServerConn>, crate::pool::CheckoutError> {
        let since = now_us();
        self.info.wait_since_us.store(since, Ordering::Relaxed);
        self.info.set_state(Activity::Waiting);
        let result = self.pool.checkout().await;
        self.info.set_state(Activity::Active);
        self.info
            .counters
            .bump(Stat::WaitTime, now_us().saturating_sub(since));
        result
    }

    /// Creates the client's statement state at its first transaction in a mode that tracks
    /// statements and parameters.
    fn ensure_client_state(&mut self, max_prepared: usize) {
        if self.statements.is_none() {
            let state = ClientState::new(self.app.statements.clone(), max_prepared);
            self.statements = Some(Box::new(state));
        }
    }

    /// Takes over the SETs and RESETs the client ran on its server connection during the last
    /// stretch (transaction and statement mode): they become part of what the client's next
    /// server connections get. True when the connection's state can no longer be carried.
    fn take_param_changes(&mut self) -> bool {
        let Some(state) = self.statements.as_deref_mut() else {
            return false;
        };
        self.info
            .prepared
            .store(state.statements.len() as u64, Ordering::Relaxed);
        let client_parses = std::mem::take(&mut state.rewriter.counts.client_parses);
        if client_parses > 0 {
            self.info
                .counters
                .bump(Stat::ClientParseCount, client_parses);
        }
        self.app.statement_totals.absorb(&mut state.rewriter.counts);
        let changes = std::mem::take(&mut state.rewriter.confirmed_changes);
        let unknown = std::mem::take(&mut state.rewriter.server_state_unknown);
        if changes.is_empty() {
            return unknown;
        }
        // Only SETs and RESETs change the session's parameters, and this is the first: what
        // the client wants now is what it started with.
        let startup = state
            .startup_params
            .get_or_insert_with(|| self.wanted_params.to_vec());
        let mut wanted = self.wanted_params.to_vec();
        for change in changes {
            let (name, value) = match change {
                ParamChange::Set(name, value) => {
                    let value = ParamValue::Sql(value);
                    if let Some(conn) = self.server.as_mut() {
                        conn.params_changed(&name, Some(&value));
                    }
                    (name, Some(value))
                }
                ParamChange::Reset(name) => {
                    if let Some(conn) = self.server.as_mut() {
                        conn.params_changed(&name, None);
                    }
                    let value = startup
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                        .map(|(_, v)| v.clone());
                    (name, value)
                }
                ParamChange::ResetAll => {
                    if let Some(conn) = self.server.as_mut() {
                        conn.params_all_reset();
                    }
                    wanted.clone_from(startup);
                    continue;
                }
            };
            wanted.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
            if let Some(value) = value {
                wanted.push((name, value));
            }
        }
        self.wanted_params = wanted.into();
        unknown
    }

    /// Relays until the client leaves, then cleans up; or until it has been quiet long
    /// enough to park, or moves to another worker.
    pub async fn run(&mut self) -> RunEnd {
        let reason = match self.relay_until_done().await {
            Next::Park => return RunEnd::Park,
            Next::Move(worker) => return RunEnd::Move(worker),
            Next::Close(reason) => reason,
            Next::Idle | Next::NothingRead => None,
        };
        // Boxed: the goodbye is rare and must not enlarge every client's task.
        Box::pin(self.close(reason)).await;
        RunEnd::Closed
    }

    /// A client may park when it holds no server connection and its socket is plaintext.
    pub fn may_park(&self) -> bool {
        self.server.is_none()
            && matches!(self.client, Stream::Tcp(_) | Stream::Unix(_))
            && self.app.parking().is_some()
    }

    /// Closes a parked client that stayed idle past `client_idle_timeout` (its socket back on
    /// the runtime), with the error a client waiting idle in its task gets.
    pub async fn close_idle_timeout(&mut self) {
        Box::pin(self.close(Some(idle_timeout_error()))).await;
    }

    /// Moves the client's socket, and the server connection's when it holds one, to the
    /// calling worker's runtime (`workers.rs`).
    pub fn move_to_this_worker(&mut self) -> io::Result<()> {
        self.client.move_to_this_worker()?;
        if let Some(conn) = self.server.as_deref_mut()
            && !conn.move_to_this_worker()
        {
            return Err(io::Error::other("its server connection could not move"));
        }
        Ok(())
    }

    /// Takes the client's socket off the runtime, to park.
    pub fn take_client_off_runtime(&mut self) -> io::Result<std::os::fd::RawFd> {
        self.client.take_off_runtime()
    }

    /// Puts a resumed client's socket back on the runtime.
    pub fn put_client_back_on_runtime(&mut self) -> io::Result<()> {
        self.client.put_back_on_runtime()
    }

    /// The socket of a parked client.
    pub fn parked_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.client {
            Stream::Parked(Some(off)) => Some(off.as_raw_fd()),
            _ => None,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Returns or closes the server connection and says goodbye to the client.
    async fn close(&mut self, reason: Option<ErrorResponse>) {
        self.let_go();
        match self.server.take() {
            Some(conn) if reason.is_none() && conn.tx_status == TxStatus::Idle => {
                Box::pin(self.finish_clean(conn)).await;
            }
            other => drop(other),
        }
        let config = self.app.config();
        match reason {
            Some(err) => {
                self.app.events.client_error(err.code);
                if config.general.log_pooler_errors {
                    tracing::warn!(database = %self.database(), user = %self.user(), "closing client: {}", err.message);
                }
                let _ = self.client.send(&err.to_bytes()).await;
            }
            None if config.general.log_disconnections => {
                tracing::info!(database = %self.database(), user = %self.user(), "client closed the connection");
            }
            None => {}
        }
        // TLS ends with close_notify; a plaintext socket sends its FIN when it is dropped.
        if self.client.is_tls() {
            let _ = self.client.shutdown().await;
        }
    }

    /// A server connection leaves this client idle: reset it when the client leaves a
    /// session-mode pool, or at every release with `server_reset_query_always`; check it in.
    async fn finish_clean(&mut self, mut conn: Box<ServerConn>) {
        let settings = self.pool.settings();
        let reset = self.mode() == PoolMode::Session || settings.server_reset_query_always;
        if reset && !settings.server_reset_query.is_empty() {
            let result = crate::server::run_internal_query(
                &mut conn.stream,
                &settings.server_reset_query,
                settings.server_connect_timeout,
            )
            .await;
            if let Err(e) = result {
                tracing::info!(database = %self.database(), user = %self.user(), "closing server connection: server_reset_query failed: {e}");
                return;
            }
            conn.params_were_reset();
        }
        self.pool.checkin(conn);
    }

    /// Relays stretch after stretch, waiting idle in between; ends with `Next::Close` (`None`
    /// when the client left normally, or the error to send it) or `Next::Park`.
    async fn relay_until_done(&mut self) -> Next {
        let timers = Timers::new(&self.app.config().general);
        loop {
            // Idle: no bytes in flight, no buffer held. No timer is armed for parking: clients
            // silent since login are asked to park by `fresh.rs`, those idle a while by the
            // upkeep (`App::maintenance`).
            let parks = self.may_park().then_some(&*self.info);
            let close_after = (timers.client_idle_ms != 0).then(|| timers.client_idle_timeout());
            let server = self.server.as_deref();
            if self.early.is_none() {
                match wait_idle(&self.client, server, close_after, parks).await {
                    Ok(Idle::Readable) => {}
                    Ok(Idle::Quiet) => return Next::Park,
                    Err(e) => return Next::Close(e),
                }
            }
            match self.stretch(timers).await {
                Next::NothingRead => {}
                Next::Idle => {
                    if let Some(worker) = crate::workers::take_hand_over() {
                        return Next::Move(worker);
                    }
                }
                next => return next,
            }
        }
    }

    /// One stretch of relaying, from the client's first bytes to the end of the transaction
    /// (statement, in statement mode; the next idle moment, in session mode).
    async fn stretch(&mut self, timers: Timers) -> Next {
        let max_prepared = self.app.config_now().general.max_prepared_statements;
        let mode = self.mode();
        let rewrite = mode != PoolMode::Session && max_prepared > 0;
        let status = self.server.as_ref().map_or(TxStatus::Idle, |c| c.tx_status);
        let mut pump = Pump::new(status, timers.max_packet_size, rewrite, timers.enabled());
        let first = match self.early.take() {
            Some(early) => Some(pump.early_client_bytes(&early, &self.info)),
            None if self.server.is_none() => {
                Some(pump.read_client_now(&mut self.client, &self.info))
            }
            // Session mode: the server connection is held, and `probe` looks at both sides.
            None => None,
        };
        let read_first = first.is_some();
        if let Some(first) = first {
            match first {
                Ok(true) => {}
                Ok(false) => return Next::NothingRead,
                Err(Outcome::ClientLeft { .. }) => return Next::Close(None),
                Err(Outcome::ClientProtocol(e)) => return Next::close(protocol_error(e)),
                Err(_) => return Next::Close(None),
            }
            if pump.client_done && pump.clen == 0 {
                return Next::Close(None);
            }
            // Only now, with bytes to process: a wake-up without data costs nothing.
            if rewrite {
                self.ensure_client_state(max_prepared);
            }
            if let Some(state) = self.statements.as_deref_mut()
                && pump.unprocessed > 0
                && state.answer_parses_locally(&pump.cbuf[..pump.unprocessed as usize])
            {
                if self.client.send(&state.stage).await.is_err() {
                    return Next::Close(None);
                }
                return Next::Idle;
            }
            // Held already when the first bytes came with the login, in session mode.
            if self.server.is_none() {
                match self.checkout().await {
                    Ok(conn) => self.hold(conn),
                    Err(e) => {
                        let config = self.app.config();
                        let db = config.database(self.database());
                        return Next::close(match db {
                            Some(db) => crate::client::checkout_error(&db, e),
                            None => ErrorResponse::fatal(
                                SqlState::UNKNOWN_DATABASE,
                                format!("database \"{}\" was removed", self.database()),
                            ),
                        });
                    }
                }
            }
        }
        let outcome = {
            let server = self.server.as_mut().expect("server held");
            let mut rewriting = match self.statements.as_deref_mut() {
                Some(client) if rewrite => {
                    client.start_stretch(max_prepared);
                    Some(Rewriting {
                        client,
                        server: &mut server.prepared,
                    })
                }
                _ => None,
            };
            if let Err(outcome) = pump.process_first_chunk(rewriting.as_mut(), &self.info) {
                outcome
            } else if !read_first
                && let Some(found) = pump.probe(
                    &mut self.client,
                    &mut server.stream,
                    mode,
                    &mut rewriting,
                    &self.info,
                )
            {
                match found {
                    Some(outcome) => outcome,
                    // Nothing to read on either side: back to the idle wait, where
                    // client_idle_timeout applies.
                    None => return Next::NothingRead,
                }
            } else {
                pump.run(
                    &mut self.client,
                    &mut server.stream,
                    mode,
                    timers,
                    rewriting,
                    &self.info,
                )
                .await
            }
        };
        if let Some(conn) = self.server.as_mut() {
            conn.tx_status = pump.status;
        }
        if self.take_param_changes() {
            // The client changed what pgberth cannot carry to another server connection.
            self.discard_server();
        }
        match outcome {
            Outcome::Done => {
                if mode != PoolMode::Session
                    && let Some(conn) = self.release()
                {
                    Box::pin(self.finish_clean(conn)).await;
                }
            }
            Outcome::ClientLeft { clean } => {
                if !clean {
                    self.discard_server();
                }
                return Next::Close(None);
            }
            Outcome::ServerLost(e) => {
                self.discard_server();
                return Next::close(ErrorResponse::fatal(
                    SqlState::CONNECTION_FAILURE,
                    format!(
                        "server connection for database \"{}\" was lost: {e}",
                        self.database()
                    ),
                ));
            }
            Outcome::ClientProtocol(e) => {
                self.discard_server();
                return Next::close(protocol_error(e));
            }
            Outcome::ServerProtocol(e) => {
                self.discard_server();
                return Next::close(ErrorResponse::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    format!("server sent an invalid message: {e}"),
                ));
            }
            Outcome::TransactionInStatementMode => {
                self.discard_server();
                return Next::close(ErrorResponse::fatal(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "transaction blocks are not allowed in statement pooling mode",
                ));
            }
            Outcome::QueryTimeout => {
                self.discard_server();
                return Next::close(ErrorResponse::fatal(
                    SqlState::QUERY_CANCELED,
                    "query_timeout: the query ran too long; connection closed",
                ));
            }
            Outcome::IdleTransactionTimeout => {
                self.discard_server();
                return Next::close(ErrorResponse::fatal(
                    SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                    "idle_transaction_timeout: the transaction was idle too long; connection closed",
                ));
            }
        }
        Next::Idle
    }
}

/// What a client idle longer than `client_idle_timeout` is told before it is closed.
fn idle_timeout_error() -> ErrorResponse {
    ErrorResponse::fatal(
        SqlState::IDLE_SESSION_TIMEOUT,
        "client_idle_timeout: the client was idle too long; connection closed",
    )
}

fn protocol_error(e: FrameError) -> ErrorResponse {
    ErrorResponse::fatal(
        SqlState::PROTOCOL_VIOLATION,
        format!("invalid message from client: {e}"),
    )
}

/// How an idle wait ended.
enum Idle {
    /// The client (or the held server) has bytes, or closed.
    Readable,
    /// The client was asked to park (`fresh.rs`, `App::maintenance`).
    Quiet,
}

/// Waits, holding no buffer, until the client (or the held server, in session mode) has bytes.
/// `Err(None)` when the client is gone, `Err(Some(_))` on client_idle_timeout (`close_after`).
///
/// Polls readiness directly, so the future keeps four words: an idle client's task stays
/// small.
///
/// `parks`: the client may park when asked to (`fresh.rs`, `App::maintenance`).
fn wait_idle<'a>(
    client: &'a Stream,
    server: Option<&'a ServerConn>,
    close_after: Option<Duration>,
    parks: Option<&'a ClientInfo>,
) -> impl Future<Output = Result<Idle, Option<ErrorResponse>>> + 'a {
    let mut deadline = close_after.map(|after| Box::pin(tokio::time::sleep(after)));
    poll_fn(move |cx| {
        let ready = match client.poll_read_ready(cx) {
            Poll::Pending => server.map_or(Poll::Pending, |conn| conn.stream.poll_read_ready(cx)),
            ready => ready,
        };
        if let Poll::Ready(result) = ready {
            return Poll::Ready(result.map(|()| Idle::Readable).map_err(|_| None));
        }
        if let Some(info) = parks {
            if info.take_park_request() {
                return Poll::Ready(Ok(Idle::Quiet));
            }
            info.arm_idle_waker(cx.waker());
        }
        match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Some(idle_timeout_error()))),
            _ => Poll::Pending,
        }
    })
}

/// The timeouts and limits of a session, copied from the config at login. Milliseconds in
/// u32: an idle client's task keeps these, and every byte of it counts.
#[derive(Debug, Clone, Copy)]
struct Timers {
    client_idle_ms: u32,
    query_ms: u32,
    idle_transaction_ms: u32,
    max_packet_size: u32,
}

/// A timeout in whole milliseconds, rounded up so that a tiny timeout does not turn into none.
fn millis(timeout: Duration) -> u32 {
    let ms = timeout.as_micros().div_ceil(1000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Timers {
    fn new(general: &crate::config::General) -> Timers {
        Timers {
            client_idle_ms: millis(general.client_idle_timeout),
            query_ms: millis(general.query_timeout),
            idle_transaction_ms: millis(general.idle_transaction_timeout),
            max_packet_size: general.max_packet_size,
        }
    }

    fn client_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.client_idle_ms.into())
    }

    fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_ms.into())
    }

    fn idle_transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_transaction_ms.into())
    }

    fn enabled(&self) -> bool {
        self.query_ms != 0 || self.idle_transaction_ms != 0
    }

    /// The shortest of the enabled relay timeouts.
    fn shortest(&self) -> Duration {
        [self.query_ms, self.idle_transaction_ms]
            .into_iter()
            .filter(|&t| t != 0)
            .min()
            .map_or(Duration::from_secs(1), |t| Duration::from_millis(t.into()))
    }
}

const MAX_SERVER_MESSAGE: usize = i32::MAX as usize;

/// Which socket directions returned Pending in this call of `Pump::poll`.
#[derive(Default)]
struct Waits {
    client_read: bool,
    client_write: bool,
    server_read: bool,
    server_write: bool,
}

/// The two buffers and the protocol bookkeeping of one stretch of relaying.
struct Pump {
    /// Offsets and lengths in the buffers are u32: a buffer is 16 KiB, and every byte of an
    /// idle client's task counts.
    cbuf: Buffer,
    clen: u32,
    coff: u32,
    sbuf: Buffer,
    slen: u32,
    soff: u32,
    /// `max_packet_size`: the largest message a client may send after login.
    max_client_message: u32,
    /// Client bytes were rewritten (prepared statements): send the client state's `stage`
    /// instead of `cbuf`.
    staged: bool,
    /// Prepared statements are tracked in this stretch.
    rewrite: bool,
    /// Bytes read from the client before a server connection was checked out, not yet
    /// processed (rewriting depends on the server connection).
    unprocessed: u32,
    cscan: Scanner,
    sscan: Scanner,
    /// Query, Sync and FunctionCall messages forwarded whose ReadyForQuery has not come back.
    pending: u32,
    /// Extended-protocol messages forwarded since the last Sync.
    unsynced: bool,
    /// Syncs forwarded since the last Execute or Query. If that command turns out to be a
    /// COPY FROM STDIN, the server ignores them (and any Sync until CopyDone/CopyFail).
    syncs_since_execute: u16,
    /// The server is in copy-in mode: it ignores Sync until the client's CopyDone/CopyFail.
    copy_in: bool,
    /// The client sent Terminate (stripped, never forwarded).
    client_done: bool,
    /// Bytes written to a TLS stream that still wait for a flush.
    server_unflushed: bool,
    client_unflushed: bool,
    /// A Terminate that began in an earlier chunk was partly forwarded: the server is unusable.
    torn_terminate: bool,
    status: TxStatus,
    /// When bytes last moved (kept only when timers are enabled).
    client_active: Instant,
    server_active: Instant,
}

impl Pump {
    fn new(status: TxStatus, max_client_message: u32, rewrite: bool, timed: bool) -> Pump {
        // The activity times are kept only for the relay timeouts: no clock read without them.
        let now = if timed {
            Instant::now()
        } else {
            crate::stats::clock_start()
        };
        Pump {
            cbuf: Buffer::take(),
            clen: 0,
            coff: 0,
            sbuf: Buffer::take(),
            slen: 0,
            soff: 0,
            max_client_message,
            staged: false,
            rewrite,
            unprocessed: 0,
            cscan: Scanner::new(),
            sscan: Scanner::new(),
            pending: 0,
            unsynced: false,
            syncs_since_execute: 0,
            copy_in: false,
            client_done: false,
            server_unflushed: false,
            client_unflushed: false,
            torn_terminate: false,
            status,
            client_active: now,
            server_active: now,
        }
    }

    /// Reads what the client has sent without waiting; `Ok(false)` when nothing was there.
    fn read_client_now(&mut self, client: &mut Stream, info: &ClientInfo) -> Result<bool, Outcome> {
        let read = client.read_now(&mut self.cbuf);
        self.took_client_bytes(read, info)
    }

    /// Takes the bytes the client sent behind its last login message (fewer than a buffer
    /// holds: they came in one read during login) as if just read.
    fn early_client_bytes(&mut self, early: &[u8], info: &ClientInfo) -> Result<bool, Outcome> {
        self.cbuf[..early.len()].copy_from_slice(early);
        self.took_client_bytes(Ok(Some(early.len())), info)
    }

    fn took_client_bytes(
        &mut self,
        read: io::Result<Option<usize>>,
        info: &ClientInfo,
    ) -> Result<bool, Outcome> {
        if let Ok(Some(n)) = read {
            info.counters.bump(Stat::Received, n as u64);
        }
        match read {
            Ok(Some(0)) => Err(Outcome::ClientLeft { clean: true }),
            Ok(Some(n)) if self.rewrite => {
                // Processed once a server connection is held; a lone Terminate needs none.
                if self.cbuf[..n] == [frontend::TERMINATE, 0, 0, 0, 4] {
                    return Err(Outcome::ClientLeft { clean: true });
                }
                self.unprocessed = n as u32;
                Ok(true)
            }
            Ok(Some(n)) => {
                self.client_bytes(n, None, info)?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(_) => Err(Outcome::ClientLeft { clean: true }),
        }
    }

    /// Processes what `read_client_now` read before the server connection was checked out.
    fn process_first_chunk(
        &mut self,
        rw: Option<&mut Rewriting<'_>>,
        info: &ClientInfo,
    ) -> Result<(), Outcome> {
        let n = std::mem::take(&mut self.unprocessed) as usize;
        if n > 0 {
            self.client_bytes(n, rw, info)
        } else {
            Ok(())
        }
    }

    /// Takes `n` bytes the client sent into `cbuf`: rewrites them when prepared statements are
    /// tracked (into `stage`, when anything changes), then counts what needs an answer and
    /// cuts off a Terminate.
    fn client_bytes(
        &mut self,
        mut n: usize,
        rw: Option<&mut Rewriting<'_>>,
        info: &ClientInfo,
    ) -> Result<(), Outcome> {
        self.staged = false;
        let rewriting = rw.is_some();
        let mut stage: &[u8] = &[];
        if let Some(rw) = rw {
            let rewritten = rw
                .client
                .rewrite_client(&self.cbuf[..n], rw.server, self.max_client_message as usize)
                .map_err(Outcome::ClientProtocol)?;
            match rewritten {
                Rewritten::Unchanged(len) => n = len,
                Rewritten::Staged => {
                    self.staged = true;
                    stage = &rw.client.stage;
                }
            }
        }
        let data: &[u8] = if self.staged { stage } else { &self.cbuf[..n] };
        let n = data.len();
        let mut cut = None;
        let (pending, unsynced, torn) = (
            &mut self.pending,
            &mut self.unsynced,
            &mut self.torn_terminate,
        );
        let (syncs, copy_in) = (&mut self.syncs_since_execute, &mut self.copy_in);
        let pending_before = *pending;
        let (mut parses, mut binds) = (0u64, 0u64);
        self.cscan
            .feed(data, self.max_client_message as usize, |m| match m.tag {
                frontend::QUERY | frontend::FUNCTION_CALL => {
                    *pending += 1;
                    *syncs = 0;
                }
                // PostgreSQL ignores Sync in copy-in mode: no ReadyForQuery will answer it.
                frontend::SYNC if *copy_in => {}
                frontend::SYNC => {
                    *pending += 1;
                    *syncs = syncs.saturating_add(1);
                    *unsynced = false;
                }
                frontend::COPY_DONE | frontend::COPY_FAIL => *copy_in = false,
                frontend::EXECUTE => {
                    *unsynced = true;
                    *syncs = 0;
                }
                frontend::TERMINATE if cut.is_none() => match m.start {
                    Some(start) => cut = Some(start),
                    None => {
                        *torn = true;
                        cut = Some(0);
                    }
                },
                frontend::PARSE => {
                    parses += 1;
                    *unsynced = true;
                }
                frontend::BIND => {
                    binds += 1;
                    *unsynced = true;
                }
                frontend::DESCRIBE | frontend::CLOSE | frontend::FLUSH => *unsynced = true,
                _ => {}
            })
            .map_err(Outcome::ClientProtocol)?;
        if pending_before == 0 && self.pending > 0 {
            // A request starts: the query (and, outside one, the transaction) clock runs.
            let now = now_us();
            info.request_us.store(now, Ordering::Relaxed);
            if info.xact_start_us.load(Ordering::Relaxed) == 0 {
                info.xact_start_us.store(now, Ordering::Relaxed);
            }
        }
        if parses > 0 {
            info.counters.bump(Stat::ServerParseCount, parses);
            if !rewriting {
                info.counters.bump(Stat::ClientParseCount, parses);
            }
        }
        if binds > 0 {
            info.counters.bump(Stat::BindCount, binds);
        }
        self.coff = 0;
        self.clen = n as u32;
        if let Some(cut) = cut {
            self.clen = cut as u32;
            self.client_done = true;
        }
        Ok(())
    }

    fn server_bytes(&mut self, n: usize, info: &ClientInfo) -> Result<(), Outcome> {
        let (pending, status) = (&mut self.pending, &mut self.status);
        let (mut answers, mut xacts_ended) = (0u64, 0u64);
        let (unsynced, syncs, copy_in) = (
            &mut self.unsynced,
            &mut self.syncs_since_execute,
            &mut self.copy_in,
        );
        self.sscan
            .feed(&self.sbuf[..n], MAX_SERVER_MESSAGE, |m| match m.tag {
                backend::READY_FOR_QUERY => {
                    *pending = pending.saturating_sub(1);
                    *status = TxStatus::from_byte(m.first_byte).unwrap_or(TxStatus::Failed);
                    answers += 1;
                    xacts_ended += u64::from(*status == TxStatus::Idle);
                }
                backend::COPY_IN_RESPONSE => {
                    // Syncs the client pipelined after the Execute that started this COPY
                    // are ignored by the server: they get no ReadyForQuery.
                    if *syncs > 0 {
                        *pending = pending.saturating_sub(u32::from(*syncs));
                        *unsynced = true;
                        *syncs = 0;
                    }
                    *copy_in = true;
                }
                _ => {}
            })
            .map_err(Outcome::ServerProtocol)?;
        if answers > 0 {
            self.count_answers(info, answers, xacts_ended);
        }
        self.soff = 0;
        self.slen = n as u32;
        Ok(())
    }

    /// Counts ReadyForQuery answers as queries, and those that end a transaction as
    /// transactions, with their times (PgBouncer's definitions).
    fn count_answers(&self, info: &ClientInfo, answers: u64, xacts_ended: u64) {
        let now = now_us();
        let counters = &info.counters;
        counters.bump(Stat::QueryCount, answers);
        if self.pending == 0 {
            let started = info.request_us.load(Ordering::Relaxed);
            counters.bump(Stat::QueryTime, now.saturating_sub(started));
        }
        if xacts_ended > 0 {
            counters.bump(Stat::XactCount, xacts_ended);
            let started = info.xact_start_us.load(Ordering::Relaxed);
            if started != 0 {
                counters.bump(Stat::XactTime, now.saturating_sub(started));
            }
            // A transaction still open after the last answer started with its request.
            let open = self.status != TxStatus::Idle;
            info.xact_start_us
                .store(if open { now } else { 0 }, Ordering::Relaxed);
        }
    }

    /// Nothing in flight in either direction and the server between transactions.
    fn quiet(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && !self.server_unflushed
            && !self.client_unflushed
            && self.coff == self.clen
            && self.soff == self.slen
            && self.cscan.at_boundary()
            && self.sscan.at_boundary()
    }

    fn client_left(&self) -> Outcome {
        Outcome::ClientLeft {
            clean: !self.torn_terminate && self.quiet() && self.status == TxStatus::Idle,
        }
    }

    /// Relays until something ends the stretch. (A plain fn returning a future: an async fn
    /// would store its arguments twice in every client's task.)
    #[allow(clippy::manual_async_fn)]
    fn run<'a>(
        &'a mut self,
        client: &'a mut Stream,
        server: &'a mut Stream,
        mode: PoolMode,
        timers: Timers,
        mut rw: Option<Rewriting<'a>>,
        info: &'a ClientInfo,
    ) -> impl Future<Output = Outcome> + Send + 'a {
        async move {
            if !timers.enabled() {
                return poll_fn(|cx| self.poll(cx, client, server, mode, false, &mut rw, info))
                    .await;
            }
            Box::pin(self.run_timed(client, server, mode, timers, rw, info)).await
        }
    }

    /// `run` with query_timeout / idle_transaction_timeout armed (boxed: the timer is large).
    async fn run_timed(
        &mut self,
        client: &mut Stream,
        server: &mut Stream,
        mode: PoolMode,
        timers: Timers,
        mut rw: Option<Rewriting<'_>>,
        info: &ClientInfo,
    ) -> Outcome {
        loop {
            // With no timeout running now (a query in flight with only
            // idle_transaction_timeout set, say), one may start as the relay goes on: look
            // again after the shortest configured timeout.
            let at = match self.deadline(timers) {
                Some((at, _)) => at,
                None => Instant::now() + timers.shortest(),
            };
            let relay = poll_fn(|cx| self.poll(cx, client, server, mode, true, &mut rw, info));
            if let Ok(outcome) = tokio::time::timeout_at(at.into(), relay).await {
                return outcome;
            }
            if let Some((at, outcome)) = self.deadline(timers)
                && at <= Instant::now()
            {
                return outcome;
            }
        }
    }

    /// The next timeout that could end this stretch, and what it would mean.
    fn deadline(&self, timers: Timers) -> Option<(Instant, Outcome)> {
        if self.pending > 0 && !timers.query_timeout().is_zero() {
            return Some((
                self.server_active + timers.query_timeout(),
                Outcome::QueryTimeout,
            ));
        }
        if self.pending == 0
            && self.status != TxStatus::Idle
            && !timers.idle_transaction_timeout().is_zero()
        {
            return Some((
                self.client_active + timers.idle_transaction_timeout(),
                Outcome::IdleTransactionTimeout,
            ));
        }
        None
    }

    /// With a server connection held from before (session mode), whether the wake-up that
    /// started this stretch had bytes behind it: one pass over both sockets without waiting.
    /// `Some(None)`: nothing to read on either side. `Some(Some(_))`: the stretch already
    /// ended. `None`: bytes are moving, relay on.
    fn probe(
        &mut self,
        client: &mut Stream,
        server: &mut Stream,
        mode: PoolMode,
        rw: &mut Option<Rewriting<'_>>,
        info: &ClientInfo,
    ) -> Option<Option<Outcome>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll(&mut cx, client, server, mode, false, rw, info) {
            Poll::Ready(outcome) => Some(Some(outcome)),
            Poll::Pending if self.clen == 0 && self.slen == 0 => Some(None),
            Poll::Pending => None,
        }
    }

    /// Moves bytes both ways until something ends the stretch. Every step is a single
    /// non-blocking read or write, so this is safe to drop and poll again at any time.
    // Every argument is a borrow the relay loop needs; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        server: &mut Stream,
        mode: PoolMode,
        timed: bool,
        rw: &mut Option<Rewriting<'_>>,
        info: &ClientInfo,
    ) -> Poll<Outcome> {
        // A read or write that returned Pending stays Pending until this call returns: its
        // readiness changes only when the runtime's I/O driver runs, between calls. Those are
        // not tried again in later rounds of the loop, each try being a readiness check.
        let mut waits = Waits::default();
        loop {
            let mut progress = false;
            // Client → server.
            if self.coff == self.clen
                && !self.server_unflushed
                && !self.client_done
                && !waits.client_read
                && !rw.as_ref().is_some_and(|r| r.client.rewriter.retrying())
            {
                let mut rb = ReadBuf::new(&mut self.cbuf);
                match Pin::new(&mut *client).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(self.client_left());
                        }
                        info.counters.bump(Stat::Received, n as u64);
                        if let Err(outcome) = self.client_bytes(n, rw.as_mut(), info) {
                            return Poll::Ready(outcome);
                        }
                        if timed {
                            self.client_active = Instant::now();
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientLeft { clean: false });
                    }
                    Poll::Pending => waits.client_read = true,
                }
            }
            if self.coff < self.clen && !waits.server_write {
                let src: &[u8] = match rw {
                    Some(rw) if self.staged => &rw.client.stage,
                    _ => &self.cbuf,
                };
                match Pin::new(&mut *server)
                    .poll_write(cx, &src[self.coff as usize..self.clen as usize])
                {
                    Poll::Ready(Ok(n)) => {
                        self.coff += n as u32;
                        progress = true;
                        // TLS holds records until flushed.
                        self.server_unflushed = self.coff == self.clen && server.is_tls();
                        if timed && self.pending > 0 && self.coff == self.clen {
                            self.server_active = Instant::now();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerLost(e)),
                    Poll::Pending => waits.server_write = true,
                }
            }
            if self.server_unflushed {
                match Pin::new(&mut *server).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.server_unflushed = false;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerLost(e)),
                    Poll::Pending => {}
                }
            }
            // After Terminate, the answers to what was sent before it drain first.
            if self.client_done
                && self.coff == self.clen
                && !self.server_unflushed
                && (self.pending == 0 || self.torn_terminate)
            {
                return Poll::Ready(self.client_left());
            }
            // Server → client.
            if self.soff == self.slen && !self.client_unflushed && !waits.server_read {
                let mut rb = ReadBuf::new(&mut self.sbuf);
                match Pin::new(&mut *server).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Outcome::ServerLost(
                                io::ErrorKind::UnexpectedEof.into(),
                            ));
                        }
                        // Answers to what pgberth injected are taken out, in place.
                        let n = match rw {
                            Some(rw) => {
                                let n = rw.client.rewriter.server(&mut self.sbuf[..n], rw.server);
                                // The Syncs pgberth added were counted when sent; their
                                // ReadyForQuery never reaches the client.
                                let hidden = rw.client.rewriter.take_hidden_ready();
                                self.pending = self.pending.saturating_sub(hidden);
                                // A hidden stale-plan error: the exchange goes to the server
                                // again, with its statements parsed anew.
                                if self.coff == self.clen
                                    && rw
                                        .client
                                        .take_replay(rw.server, self.max_client_message as usize)
                                {
                                    self.staged = true;
                                    self.coff = 0;
                                    self.clen = rw.client.stage.len() as u32;
                                }
                                n
                            }
                            None => n,
                        };
                        info.counters.bump(Stat::Sent, n as u64);
                        if let Err(outcome) = self.server_bytes(n, info) {
                            return Poll::Ready(outcome);
                        }
                        if timed {
                            self.server_active = Instant::now();
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ServerLost(e)),
                    Poll::Pending => waits.server_read = true,
                }
            }
            let mut delivered = false;
            if self.soff < self.slen && !waits.client_write {
                match Pin::new(&mut *client)
                    .poll_write(cx, &self.sbuf[self.soff as usize..self.slen as usize])
                {
                    Poll::Ready(Ok(n)) => {
                        self.soff += n as u32;
                        progress = true;
                        if self.soff == self.slen {
                            self.client_unflushed = client.is_tls();
                            delivered = !self.client_unflushed;
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientLeft { clean: false });
                    }
                    Poll::Pending => waits.client_write = true,
                }
            }
            if self.client_unflushed {
                match Pin::new(&mut *client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.client_unflushed = false;
                        delivered = true;
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Outcome::ClientLeft { clean: false });
                    }
                    Poll::Pending => {}
                }
            }
            // A server chunk has reached the client: is the transaction (or statement) over?
            if delivered && self.quiet() && rw.as_ref().is_none_or(|r| r.client.rewriter.settled())
            {
                if self.client_done {
                    return Poll::Ready(self.client_left());
                }
                match (mode, self.status) {
                    (PoolMode::Statement, TxStatus::InTransaction | TxStatus::Failed) => {
                        return Poll::Ready(Outcome::TransactionInStatementMode);
                    }
                    (PoolMode::Session, _) | (_, TxStatus::Idle) => {
                        return Poll::Ready(Outcome::Done);
                    }
                    _ => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}
