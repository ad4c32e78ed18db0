//! One client connection from accept to login: the startup packet (refusing TLS for now and
//! answering cancel requests), the database lookup, authentication against the userlist, and
//! the greeting (ParameterStatus, BackendKeyData, ReadyForQuery). Then the relay takes over.

use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::app::{App, ClientSlot};
use crate::auth::auth_query;
use crate::auth::hba::{HbaConnection, HbaMethod, Transport};
use crate::auth::{ScramSecret, ScramServer, ScramVerifier, md5_secret, verify_md5_response};
use crate::config::{AuthType, Config, Database, PoolMode, Secret, SslMode};
use crate::parking::Parked;
use crate::pool::{CheckoutError, ParamValue, Pool};
use crate::protocol::startup::{self, StartupPacket, StartupParams};
use crate::protocol::{ErrorResponse, MAX_PRE_AUTH_MESSAGE, SqlState, TxStatus, build, frontend};
use crate::registry::{ClientInfo, ClientLogin, tls_description};
use crate::relay::{RunEnd, Session};
use crate::server::ServerConnectError;
use crate::stream::{MessageReader, ReadError, Stream};

/// Capacity of the buffers an authentication exchange writes and reads: its messages fit, so
/// a login grows no buffer.
const LOGIN_BUFFER: usize = 256;

/// Startup parameters PgBouncer passes on; any other is refused unless listed in
/// `ignore_startup_parameters`.
const TRACKED_PARAMETERS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

/// The client's address as logs and `application_name_add_host` show it: formatted only when
/// used.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unix"),
        }
    }
}

/// Why a login ended without a session; `Reported` errors were already sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{}", .0.message)]
    Reported(ErrorResponse),
    #[error("client went away during login: {0}")]
    Gone(#[from] ReadError),
    #[error("client went away during login: {0}")]
    Io(#[from] std::io::Error),
    #[error("cancel request handled")]
    Cancel,
    #[error("login timed out (client_login_timeout)")]
    Timeout,
    #[error("TLS handshake with the client failed: {0}")]
    Tls(std::io::Error),
}

/// Serves one accepted connection until it closes.
///
/// This is every client's task, so its size is what an idle client costs. What login needs
/// (the socket, the app) goes into the boxed login future before the task is made, so the task
/// keeps none of it; that box is freed before relaying starts. The session is stored once (a
/// plain fn returning an `async move` block, and `run` borrowing the session: async fns store
/// by-value arguments twice).
#[allow(clippy::manual_async_fn)]
pub fn serve(
    app: Arc<App>,
    stream: Stream,
    admitted: bool,
    slot: ClientSlot,
) -> impl Future<Output = ()> + Send {
    let login = built_in_box(|| login_or_console(app, stream, admitted, slot.info.clone()));
    async move {
        let Some(session) = login.await else {
            return;
        };
        relay(session, slot).await;
    }
}

/// A client's future built in its own heap allocation: the allocation is made first and the
/// future written into it, rather than built on the stack and copied there. A client's
/// futures are hundreds of bytes, and spawning one by value copies it several times (the
/// runtime's task then holds a pointer), each copy writing to memory the previous client
/// left cold.
#[inline(always)]
pub fn built_in_box<F: Future>(build: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), build()))
}

/// Logs a client in: its session, or `None` when login failed or the client was the admin
/// console's, which has been served. The console runs inside the login box: it is rare, and
/// its state is large.
///
/// This future is allocated, and moved whole, at every connection: its size is set by the
/// common path of login, the rare ones (TLS, auth_query, the console, checking out a server)
/// being boxed where they start.
#[allow(clippy::manual_async_fn)]
fn login_or_console(
    app: Arc<App>,
    stream: Stream,
    admitted: bool,
    info: Arc<ClientInfo>,
) -> impl Future<Output = Option<Session>> + Send {
    async move {
        match login_with_timeout(app, stream, admitted, info).await {
            Some(Admitted::Session(session)) => Some(session),
            Some(Admitted::Console(mut console)) => {
                console.run().await;
                None
            }
            None => None,
        }
    }
}

/// Relays a logged-in client's session until it ends, parks it when it goes quiet, or hands
/// it to another worker (`workers.rs`).
#[allow(clippy::manual_async_fn)]
fn relay(mut session: Session, slot: ClientSlot) -> impl Future<Output = ()> + Send {
    async move {
        let relaying = crate::workers::Relaying::start();
        let end = session.run().await;
        drop(relaying);
        match end {
            RunEnd::Closed => {}
            RunEnd::Park => park(session, slot),
            RunEnd::Move(worker) => hand_over(session, slot, worker),
        }
    }
}

/// Gives a client a new task on another worker; this one ends.
fn hand_over(session: Session, slot: ClientSlot, worker: u16) {
    slot.info.disarm_idle_waker();
    let info = slot.info.clone();
    let task = match crate::workers::handle(worker) {
        Some(runtime) => runtime.spawn(built_in_box(|| arrive(session, slot))),
        // `workers::hand_over` names existing workers only; should one be missing, the
        // client carries on where it is.
        None => tokio::spawn(built_in_box(|| arrive(session, slot))),
    };
    info.set_abort(Some(task.abort_handle()));
}

/// A client's new task on the worker it was handed to: its sockets move here first.
#[allow(clippy::manual_async_fn)]
fn arrive(mut session: Session, slot: ClientSlot) -> impl Future<Output = ()> + Send {
    async move {
        match session.move_to_this_worker() {
            Ok(()) => relay(session, slot).await,
            Err(e) => {
                tracing::info!(database = %slot.info.names().0, "closing a client that could not move to another worker: {e}");
            }
        }
    }
}

/// Takes an idle client off the runtime (`parking.rs`); its task ends.
fn park(mut session: Session, slot: ClientSlot) {
    let Some(parking) = session.app().parking().cloned() else {
        return;
    };
    match session.take_client_off_runtime() {
        Ok(fd) => parking.park(Parked { session, slot }, fd),
        Err(e) => {
            // The socket is gone with the error: the client sees its connection close.
            tracing::info!(database = %slot.info.names().0, "closing an idle client that could not park: {e}");
        }
    }
}

/// The task that closes a parked client idle past `client_idle_timeout`.
#[allow(clippy::manual_async_fn)]
pub fn close_idle(parked: Parked) -> impl Future<Output = ()> + Send {
    async move {
        let Parked { mut session, slot } = parked;
        if session.put_client_back_on_runtime().is_ok() {
            session.close_idle_timeout().await;
        }
        drop(slot);
    }
}

/// A parked client's new task, started when its socket turns readable.
#[allow(clippy::manual_async_fn)]
pub fn resume(parked: Parked) -> impl Future<Output = ()> + Send {
    async move {
        let Parked { mut session, slot } = parked;
        match session.put_client_back_on_runtime() {
            Ok(()) => relay(session, slot).await,
            Err(e) => {
                tracing::info!(database = %slot.info.names().0, "closing a parked client that could not resume: {e}");
            }
        }
    }
}

/// What a logged-in client gets: a session relaying to its pool, or the admin console.
#[derive(Debug)]
pub enum Admitted {
    Session(Session),
    Console(Box<crate::admin::Console>),
}

/// Logs a client in within `client_login_timeout`; failures are reported and logged here.
async fn login_with_timeout(
    app: Arc<App>,
    stream: Stream,
    admitted: bool,
    info: Arc<ClientInfo>,
) -> Option<Admitted> {
    // From the address read at accept: no second system call.
    let peer = Peer(info.ends.remote);
    let config = app.config();
    let timeout = config.general.client_login_timeout;
    let login = login(&app, &config, stream, admitted, peer, info);
    let result = if timeout.is_zero() {
        login.await
    } else {
        tokio::time::timeout(timeout, login)
            .await
            .unwrap_or(Err(LoginError::Timeout))
    };
    if let Err(LoginError::Reported(e)) = &result {
        app.events.client_error(e.code);
    }
    match result {
        Ok(admitted) => return Some(admitted),
        Err(LoginError::Cancel) => {}
        Err(LoginError::Reported(e)) if config.general.log_pooler_errors => {
            tracing::warn!(peer = %peer, "login refused: {} ({})", e.message, e.code.as_str());
        }
        Err(e @ (LoginError::Timeout | LoginError::Tls(_))) => tracing::info!(peer = %peer, "{e}"),
        Err(e @ (LoginError::Gone(_) | LoginError::Io(_))) => tracing::debug!(peer = %peer, "{e}"),
        Err(_) => {}
    }
    None
}

async fn send_fatal(stream: &mut Stream, err: ErrorResponse) -> LoginError {
    let _ = stream.send(&err.to_bytes()).await;
    let _ = stream.shutdown().await;
    LoginError::Reported(err)
}

/// Reads the startup packet, answering SSL/GSS requests with "no" until a StartupMessage or a
/// CancelRequest arrives.
async fn read_startup(
    app: &App,
    mut stream: Stream,
    incoming: &mut MessageReader,
) -> Result<(Stream, StartupParams), LoginError> {
    let tls = app.tls();
    loop {
        let packet = match incoming.startup_packet(&mut stream).await {
            Ok(body) => startup::parse_startup(body),
            Err(ReadError::Frame(e)) => Err(startup::StartupError::Frame(e)),
            Err(e) => return Err(e.into()),
        };
        match packet {
            Ok(StartupPacket::Startup(params)) => return Ok((stream, params)),
            Ok(StartupPacket::SslRequest) if incoming.buffered() > 0 => {
                // What follows must be a TLS handshake, sent after our answer: bytes sent
                // before it were not encrypted, and must not be taken for the handshake.
                let msg = "received unencrypted data after SSL request".to_owned();
                let err = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, msg);
                return Err(send_fatal(&mut stream, err).await);
            }
            Ok(StartupPacket::SslRequest) => {
                stream = match (stream, &tls.acceptor) {
                    (Stream::Tcp(mut tcp), Some(config)) => {
                        tcp.write_all(b"S").await?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        let tls = Box::pin(acceptor.accept(tcp)).await;
                        app.events.tls_handshake(crate::metrics::Side::Client, &tls);
                        let tls = tls.map_err(LoginError::Tls)?;
                        Stream::TlsFromClient(Box::new(tls))
                    }
                    (mut other, _) => {
                        other.send(b"N").await?;
                        other
                    }
                };
            }
            Ok(StartupPacket::GssEncRequest) => stream.send(b"N").await?,
            Ok(StartupPacket::Cancel { pid, secret }) => {
                Box::pin(forward_cancel(app, pid, secret)).await;
                return Err(LoginError::Cancel);
            }
            Err(startup::StartupError::UnsupportedProtocol { major, minor }) => {
                let msg =
                    format!("unsupported frontend protocol {major}.{minor}: server supports 3.0");
                let err = ErrorResponse::fatal(SqlState::FEATURE_NOT_SUPPORTED, msg);
                return Err(send_fatal(&mut stream, err).await);
            }
            Err(e) => {
                let msg = format!("invalid startup packet: {e}");
                let err = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, msg);
                return Err(send_fatal(&mut stream, err).await);
            }
        }
    }
}

async fn forward_cancel(app: &App, pid: u32, secret: u32) {
    let Some(target) = crate::cancel::lookup(&app.clients_registry, pid, secret) else {
        tracing::debug!("cancel request for an unknown key or a client without a server, ignored");
        return;
    };
    let settings = target.pool.settings();
    let sent = crate::server::send_cancel(
        &settings.target,
        target.backend_pid,
        target.backend_secret,
        settings.server_connect_timeout,
    )
    .await;
    if let Err(e) = sent {
        tracing::warn!(database = %target.pool.key.database, "could not forward cancel request: {e}");
    }
}

async fn login(
    app: &Arc<App>,
    config: &Config,
    stream: Stream,
    admitted: bool,
    peer: Peer,
    info: Arc<ClientInfo>,
) -> Result<Admitted, LoginError> {
    let mut incoming = MessageReader::default();
    let (mut stream, params) = read_startup(app, stream, &mut incoming).await?;
    let fatal = |code, msg: String| ErrorResponse::fatal(code, msg);
    // client_tls_sslmode = require and stricter: TCP clients must have switched to TLS (unix
    // socket clients cannot, and are exempt, as in PgBouncer).
    if app.tls().client_mode >= SslMode::Require && stream.tcp().is_some() && !stream.is_tls() {
        let msg =
            "TLS required: pgberth accepts only encrypted connections here (client_tls_sslmode)";
        return Err(send_fatal(
            &mut stream,
            fatal(SqlState::INVALID_AUTHORIZATION, msg.into()),
        )
        .await);
    }

    if !admitted {
        return Err(send_fatal(
            &mut stream,
            fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                "no more connections allowed (max_client_conn)".into(),
            ),
        )
        .await);
    }
    if app.run_state() != crate::app::RunState::Running {
        return Err(send_fatal(
            &mut stream,
            fatal(SqlState::ADMIN_SHUTDOWN, "pgberth is shutting down".into()),
        )
        .await);
    }
    let Some(user) = params.user().filter(|u| !u.is_empty()).map(str::to_owned) else {
        return Err(send_fatal(
            &mut stream,
            fatal(
                SqlState::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet".into(),
            ),
        )
        .await);
    };
    let dbname = params.database().unwrap_or_default().to_owned();
    for (key, _) in &params.params {
        let allowed = matches!(key.as_str(), "user" | "database")
            || tracked_name(config, key).is_some()
            || config
                .general
                .ignore_startup_parameters
                .iter()
                .any(|p| p.eq_ignore_ascii_case(key));
        if !allowed {
            let msg = format!(
                "unsupported startup parameter: {key} (add it to ignore_startup_parameters to allow it)"
            );
            return Err(send_fatal(&mut stream, fatal(SqlState::PROTOCOL_VIOLATION, msg)).await);
        }
    }
    if crate::config::ADMIN_DATABASES.contains(&dbname.as_str()) {
        // Boxed, as the other rare paths of login are: the login future is allocated and
        // moved whole for every client, so its size is set by its common path.
        return Box::pin(admin_login(
            app, config, stream, incoming, &user, &dbname, peer, info,
        ))
        .await;
    }
    let Some(db) = config.database(&dbname) else {
        return Err(send_fatal(
            &mut stream,
            fatal(
                SqlState::UNKNOWN_DATABASE,
                format!("database \"{dbname}\" does not exist in pgberth's [databases]"),
            ),
        )
        .await);
    };
    if config.general.log_connections {
        tracing::info!(peer = %peer, database = %dbname, user = %user, "login attempt");
    }

    let server_user = match (&db.user, config.general.auth_type) {
        (Some(forced), _) => forced.as_str(),
        (None, AuthType::Any) => {
            let msg = format!("database \"{dbname}\" has no user= and auth_type is \"any\"");
            return Err(send_fatal(&mut stream, fatal(SqlState::INVALID_AUTHORIZATION, msg)).await);
        }
        (None, _) => user.as_str(),
    };
    let pool = app.pool(&db, server_user);
    // The greeting, after whatever the auth exchange's last message was (SASLFinal): one send.
    let mut out = Vec::with_capacity(512);
    let io = LoginIo {
        stream: &mut stream,
        incoming: &mut incoming,
        out: &mut out,
    };
    authenticate(app, config, io, &user, &db, &pool).await?;
    if app.control.is_disabled(&dbname) {
        let msg = format!(
            "database \"{dbname}\" does not allow connections: it is disabled (DISABLE on the admin console)"
        );
        let err = fatal(crate::admin::OBJECT_NOT_IN_PREREQUISITE_STATE, msg);
        return Err(send_fatal(&mut stream, err).await);
    }

    let mode = config.pool_mode_for(&db, &user);
    let wanted = wanted_params(config, &params, peer);
    let (server, server_params) = match greet_params(&pool, mode, &wanted).await {
        Ok(v) => v,
        Err(e) => return Err(send_fatal(&mut stream, checkout_error(&db, e)).await),
    };
    build::auth_ok(&mut out);
    for (name, value) in server_params.iter() {
        let own = wanted
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        build::parameter_status(&mut out, name, own.unwrap_or(value));
    }
    build::backend_key_data(&mut out, info.id as u32, info.cancel_secret);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.send(&out).await?;
    let application_name = wanted
        .iter()
        .find(|(k, _)| k == "application_name")
        .map_or("", |(_, v)| v.as_str());
    info.logged_in(ClientLogin {
        user: user.into(),
        database: dbname.into(),
        pool: Some(pool.clone()),
        mode,
        tls: tls_description(&stream),
        application_name: application_name.into(),
    });
    let session = Session::new(
        app.clone(),
        stream,
        incoming.into_leftover(),
        pool,
        server,
        info.clone(),
        wanted,
    );
    if session.may_park() {
        app.fresh_clients.push(&info);
    }
    Ok(Admitted::Session(session))
}

/// The name pgberth tracks a startup parameter under (PgBouncer's list plus
/// `track_extra_parameters`), if it tracks it.
fn tracked_name<'a>(config: &'a Config, key: &str) -> Option<&'a str> {
    let extra = config
        .general
        .track_extra_parameters
        .iter()
        .map(String::as_str);
    TRACKED_PARAMETERS
        .iter()
        .copied()
        .chain(extra)
        .find(|p| p.eq_ignore_ascii_case(key))
}

/// Logs a client in to the admin console (database `pgbouncer` or `pgberth`): `admin_users`
/// may run every command, `stats_users` only SHOW; anybody else is refused with 28000. As in
/// PgBouncer, user `pgbouncer` connecting over the unix socket as the OS user pgberth runs as
/// needs no password. The console runs in this task; the client never gets a server
/// connection.
#[allow(clippy::too_many_arguments)]
async fn admin_login(
    app: &Arc<App>,
    config: &Config,
    mut stream: Stream,
    mut incoming: MessageReader,
    user: &str,
    dbname: &str,
    peer: Peer,
    info: Arc<ClientInfo>,
) -> Result<Admitted, LoginError> {
    let general = &config.general;
    let listed = |list: &[String]| list.iter().any(|u| u == user);
    let is_admin = listed(&general.admin_users);
    let is_stats = is_admin || listed(&general.stats_users);
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let same_os_user = user == "pgbouncer"
        && matches!(&stream, Stream::Unix(u) if u.peer_cred().is_ok_and(|c| c.uid() == me));
    let mut out = Vec::with_capacity(256);
    if !same_os_user {
        let secret = config.userlist.get(user);
        let io = LoginIo {
            stream: &mut stream,
            incoming: &mut incoming,
            out: &mut out,
        };
        exchange(app, config, io, user, dbname, secret, None).await?;
        if !is_stats {
            let msg = format!(
                "user \"{user}\" is not allowed to use the admin console (admin_users, stats_users)"
            );
            return Err(send_fatal(
                &mut stream,
                ErrorResponse::fatal(SqlState::INVALID_AUTHORIZATION, msg),
            )
            .await);
        }
    }
    if general.log_connections {
        tracing::info!(peer = %peer, user = %user, "admin console login");
    }
    build::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", crate::admin::SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgberth"),
    ] {
        build::parameter_status(&mut out, name, value);
    }
    build::backend_key_data(&mut out, 0, 0);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.send(&out).await?;
    info.logged_in(ClientLogin {
        user: user.into(),
        database: dbname.into(),
        pool: None,
        mode: PoolMode::Session,
        tls: tls_description(&stream),
        application_name: "".into(),
    });
    let may_control = is_admin || same_os_user;
    Ok(Admitted::Console(Box::new(crate::admin::Console::new(
        app.clone(),
        stream,
        incoming,
        may_control,
    ))))
}

/// The startup parameters a client set that pgberth carries to its server connections, with
/// the client's address added to application_name when `application_name_add_host` is on.
fn wanted_params(config: &Config, params: &StartupParams, peer: Peer) -> Vec<(String, String)> {
    let mut wanted: Vec<(String, String)> = params
        .params
        .iter()
        .filter_map(|(k, v)| Some((tracked_name(config, k)?.to_owned(), v.clone())))
        .collect();
    if config.general.application_name_add_host {
        match wanted.iter_mut().find(|(k, _)| k == "application_name") {
            Some((_, v)) => *v = format!("{v} - {peer}"),
            None => wanted.push(("application_name".to_owned(), format!("app - {peer}"))),
        }
    }
    wanted
}

type Greeting = (
    Option<Box<crate::pool::ServerConn>>,
    Arc<[(String, String)]>,
);

/// The ParameterStatus set to greet a client with: the pool's latest server login's. When no
/// server has logged in yet, one is connected now; a session-mode client keeps it.
async fn greet_params(
    pool: &Arc<Pool>,
    mode: PoolMode,
    wanted: &[(String, String)],
) -> Result<Greeting, CheckoutError> {
    if mode != PoolMode::Session
        && let Some(params) = pool.server_params()
    {
        return Ok((None, params));
    }
    // Boxed: checking out can mean waiting for or connecting a server, a large future.
    Box::pin(greet_params_from_server(pool, mode, wanted)).await
}

/// `greet_params` with a server connection checked out for it.
async fn greet_params_from_server(
    pool: &Arc<Pool>,
    mode: PoolMode,
    wanted: &[(String, String)],
) -> Result<Greeting, CheckoutError> {
    let mut conn = pool.checkout().await?;
    let params = pool
        .server_params()
        .unwrap_or_else(|| Arc::from(Vec::new()));
    if mode == PoolMode::Session {
        let timeout = pool.settings().server_connect_timeout;
        let wanted: Vec<_> = wanted
            .iter()
            .map(|(k, v)| (k.clone(), ParamValue::Plain(v.clone())))
            .collect();
        conn.apply_params(&wanted, timeout).await?;
        Ok((Some(conn), params))
    } else {
        pool.checkin(conn);
        Ok((None, params))
    }
}

/// The error a client gets when no server connection could be had for it.
pub fn checkout_error(db: &Database, e: CheckoutError) -> ErrorResponse {
    match e {
        CheckoutError::WaitTimeout(after) => ErrorResponse::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "query_wait_timeout: no server connection for database \"{}\" became free within {}s",
                db.name,
                after.as_secs_f64()
            ),
        ),
        CheckoutError::Closed => {
            ErrorResponse::fatal(SqlState::ADMIN_SHUTDOWN, "pgberth is shutting down")
        }
        CheckoutError::LoginRetry { message, code } => {
            let code = code
                .as_deref()
                .and_then(SqlState::parse)
                .unwrap_or(SqlState::CONNECTION_FAILURE);
            let msg = format!(
                "server login has been failing, try again later (server_login_retry): {message}"
            );
            ErrorResponse::fatal(code, msg)
        }
        CheckoutError::Connect(ServerConnectError::Refused(server)) => {
            let code = SqlState::parse(&server.code).unwrap_or(SqlState::CONNECTION_FAILURE);
            ErrorResponse::fatal(code, format!("server login failed: {}", server.message))
        }
        CheckoutError::Connect(e) => ErrorResponse::fatal(
            SqlState::CONNECTION_FAILURE,
            format!(
                "pgberth cannot connect to server for database \"{}\": {e}",
                db.name
            ),
        ),
    }
}

fn wrong_password(user: &str) -> ErrorResponse {
    ErrorResponse::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Runs the auth exchange `auth_type` asks for, with the user's secret from the userlist or
/// `auth_query`. Unknown users go through the same exchange as known ones and get the same
/// error.
async fn authenticate(
    app: &App,
    config: &Config,
    io: LoginIo<'_>,
    user: &str,
    db: &Database,
    pool: &Pool,
) -> Result<(), LoginError> {
    let listed = config.userlist.get(user);
    let looked_up = match listed {
        None if config.general.auth_type != AuthType::Any => {
            Some(Box::pin(looked_up_secret(app, config, io.stream, user, db, pool)).await?)
        }
        _ => None,
    };
    let secret = listed.or(looked_up.as_ref().and_then(Option::as_ref));
    let result = exchange(app, config, io, user, &db.name, secret, Some(pool)).await;
    if looked_up.is_some() && result.is_err() {
        // The password may have changed on the server: ask again next time.
        app.auth_cache.forget(&db.name, user);
    }
    result
}

/// The secret `auth_query` finds for a user missing from the userlist (`None` without
/// `auth_user`, or for a user the server does not know either). The pool of that user gets
/// it too, for logging in to the server.
async fn looked_up_secret(
    app: &App,
    config: &Config,
    stream: &mut Stream,
    user: &str,
    db: &Database,
    pool: &Pool,
) -> Result<Option<Secret>, LoginError> {
    match auth_query::lookup(app, config, db, user).await {
        Ok(secret) => {
            if let Some(secret) = &secret
                && pool.key.user == user
            {
                pool.set_looked_up_secret(secret);
            }
            Ok(secret)
        }
        Err(e) => Err(send_fatal(stream, e.to_client(&db.name)).await),
    }
}

/// How a client proves who it is, from `auth_type` (or, with `auth_type = hba`, from the first
/// matching line of `auth_hba_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `any`: nothing is asked and the user name does not matter.
    Any,
    /// `trust`: nothing is asked; the user must be in the userlist when `listed` is set.
    Trust {
        listed: bool,
    },
    Plain,
    Md5,
    Scram,
    /// The CN of the client's TLS certificate must be the user name.
    Cert,
    /// The OS user at the other end of the unix socket must be the user name.
    Peer,
    Reject,
    /// `auth_type = hba` and no line matched.
    NoHbaEntry,
}

fn method(app: &App, config: &Config, stream: &Stream, user: &str, database: &str) -> Method {
    match config.general.auth_type {
        AuthType::Any => Method::Any,
        AuthType::Trust => Method::Trust { listed: true },
        AuthType::Plain => Method::Plain,
        AuthType::Md5 => Method::Md5,
        AuthType::ScramSha256 => Method::Scram,
        AuthType::Cert => Method::Cert,
        AuthType::Pam => Method::Reject,
        AuthType::Hba => {
            let Some(rules) = app.hba() else {
                return Method::NoHbaEntry;
            };
            let transport = match stream.tcp() {
                Some(_) => Transport::Tcp {
                    tls: stream.is_tls(),
                },
                None => Transport::Unix,
            };
            let addr = stream
                .tcp()
                .and_then(|t| t.peer_addr().ok())
                .map(|a| a.ip());
            let conn = HbaConnection {
                transport,
                addr,
                database,
                user,
            };
            match rules.method_for(&conn) {
                None => Method::NoHbaEntry,
                Some(HbaMethod::Trust) => Method::Trust { listed: false },
                Some(HbaMethod::Reject) => Method::Reject,
                Some(HbaMethod::Md5) => Method::Md5,
                Some(HbaMethod::ScramSha256) => Method::Scram,
                Some(HbaMethod::Password) => Method::Plain,
                Some(HbaMethod::Cert) => Method::Cert,
                Some(HbaMethod::Peer) => Method::Peer,
            }
        }
    }
}

/// What an auth exchange works with: the client's socket, the reader of its messages, and the
/// greeting its last message (SASLFinal) is sent with.
struct LoginIo<'a> {
    stream: &'a mut Stream,
    incoming: &'a mut MessageReader,
    out: &'a mut Vec<u8>,
}

async fn exchange(
    app: &App,
    config: &Config,
    io: LoginIo<'_>,
    user: &str,
    database: &str,
    secret: Option<&Secret>,
    pool: Option<&Pool>,
) -> Result<(), LoginError> {
    let LoginIo {
        stream,
        incoming,
        out,
    } = io;
    let refuse = |msg: String| ErrorResponse::fatal(SqlState::INVALID_AUTHORIZATION, msg);
    match method(app, config, stream, user, database) {
        Method::Any | Method::Trust { listed: false } => Ok(()),
        Method::Trust { listed: true } => match secret {
            Some(_) => Ok(()),
            None => Err(send_fatal(stream, refuse(format!("no such user: \"{user}\""))).await),
        },
        Method::Plain => plain_auth(stream, incoming, user, secret).await,
        Method::Md5 => match secret {
            Some(Secret::Scram(_)) => scram_auth(stream, incoming, out, user, secret, pool).await,
            _ => md5_auth(stream, incoming, user, secret).await,
        },
        Method::Scram => scram_auth(stream, incoming, out, user, secret, pool).await,
        Method::Cert => match crate::tls::client_certificate_cn(stream) {
            Some(cn) if cn == user => Ok(()),
            Some(_) => {
                let msg = format!("certificate authentication failed for user \"{user}\"");
                Err(send_fatal(stream, refuse(msg)).await)
            }
            None => {
                let msg = format!(
                    "certificate authentication failed for user \"{user}\": the connection has no client certificate"
                );
                Err(send_fatal(stream, refuse(msg)).await)
            }
        },
        Method::Peer => match peer_os_user(stream) {
            Some(os_user) if os_user == user => Ok(()),
            _ => {
                let msg = format!("peer authentication failed for user \"{user}\"");
                Err(send_fatal(stream, refuse(msg)).await)
            }
        },
        Method::Reject => {
            let msg = format!("connection rejected for user \"{user}\", database \"{database}\"");
            Err(send_fatal(stream, refuse(msg)).await)
        }
        Method::NoHbaEntry => {
            let msg = format!(
                "no auth_hba_file entry for host \"{}\", user \"{user}\", database \"{database}\", {}",
                stream
                    .tcp()
                    .and_then(|t| t.peer_addr().ok())
                    .map_or("local".into(), |a| a.ip().to_string()),
                if stream.is_tls() {
                    "TLS"
                } else {
                    "no encryption"
                }
            );
            Err(send_fatal(stream, refuse(msg)).await)
        }
    }
}

/// The OS user at the other end of a unix socket (peer credentials).
fn peer_os_user(stream: &Stream) -> Option<String> {
    let Stream::Unix(unix) = stream else {
        return None;
    };
    let uid = unix.peer_cred().ok()?.uid();
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into the buffers we own and points `result` at `pwd` or null.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_owned)
}

/// Reads the client's PasswordMessage (tag `p`), bounded before allocation; returns it whole.
async fn read_password_message<'a>(
    stream: &mut Stream,
    incoming: &'a mut MessageReader,
) -> Result<&'a [u8], LoginError> {
    let msg = match incoming.message(stream, MAX_PRE_AUTH_MESSAGE).await {
        Ok(msg) if msg[0] == frontend::PASSWORD => return Ok(msg),
        Ok(msg) => format!(
            "expected password response, got message type '{}'",
            msg[0] as char
        ),
        Err(ReadError::Frame(e)) => format!("invalid password packet: {e}"),
        Err(e) => return Err(e.into()),
    };
    let err = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, msg);
    Err(send_fatal(stream, err).await)
}

fn cstr_body(buf: &[u8]) -> &str {
    let body = &buf[5..];
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

async fn plain_auth(
    stream: &mut Stream,
    incoming: &mut MessageReader,
    user: &str,
    secret: Option<&Secret>,
) -> Result<(), LoginError> {
    let mut out = Vec::with_capacity(LOGIN_BUFFER);
    build::auth_cleartext(&mut out);
    stream.send(&out).await?;
    let given = cstr_body(read_password_message(stream, incoming).await?);
    let ok = match secret {
        Some(Secret::Plain(p)) => crate::auth::ct_eq(p.as_bytes(), given.as_bytes()),
        Some(Secret::Md5(m)) => {
            crate::auth::ct_eq(m.as_bytes(), md5_secret(user, given).as_bytes())
        }
        Some(Secret::Scram(stored)) => stored
            .verifier
            .as_ref()
            .is_some_and(|v| ScramVerifier::from_password(given, &v.salt, v.iterations) == *v),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(send_fatal(stream, wrong_password(user)).await)
    }
}

async fn md5_auth(
    stream: &mut Stream,
    incoming: &mut MessageReader,
    user: &str,
    secret: Option<&Secret>,
) -> Result<(), LoginError> {
    let salt: [u8; 4] = rand::random();
    let mut out = Vec::with_capacity(LOGIN_BUFFER);
    build::auth_md5(&mut out, salt);
    stream.send(&out).await?;
    let response = cstr_body(read_password_message(stream, incoming).await?);
    let stored = match secret {
        Some(Secret::Plain(p)) => Some(md5_secret(user, p)),
        Some(Secret::Md5(m)) => Some(m.clone()),
        _ => None,
    };
    match stored {
        Some(stored) if verify_md5_response(&stored, salt, response) => Ok(()),
        _ => Err(send_fatal(stream, wrong_password(user)).await),
    }
}

/// SCRAM-SHA-256. Its last message, SASLFinal, is appended to `greeting` rather than sent: it
/// goes out with AuthenticationOk.
async fn scram_auth(
    stream: &mut Stream,
    incoming: &mut MessageReader,
    greeting: &mut Vec<u8>,
    user: &str,
    secret: Option<&Secret>,
    pool: Option<&Pool>,
) -> Result<(), LoginError> {
    let scram_secret = match secret {
        Some(Secret::Plain(p)) => Some(ScramSecret::Password(p)),
        Some(Secret::Scram(stored)) => stored.verifier.as_ref().map(ScramSecret::Verifier),
        _ => None,
    };
    let from_verifier = matches!(scram_secret, Some(ScramSecret::Verifier(_)));
    let mut server = ScramServer::new(user, scram_secret);
    // The greeting's buffer carries the exchange's first two messages; it is empty until
    // SASLFinal, which goes out with the greeting.
    let out = greeting;
    debug_assert!(out.is_empty());
    build::auth_sasl(out, &["SCRAM-SHA-256"]);
    stream.send(out).await?;
    out.clear();

    let initial = parse_sasl_initial(&read_password_message(stream, incoming).await?[5..]);
    let Some(("SCRAM-SHA-256", data)) = initial else {
        let msg = "expected SASLInitialResponse for mechanism SCRAM-SHA-256".to_owned();
        return Err(send_fatal(
            stream,
            ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, msg),
        )
        .await);
    };
    let server_first = match server.client_first(data) {
        Ok(m) => m,
        Err(e) => return Err(send_fatal(stream, scram_error(user, e)).await),
    };
    build::auth_sasl_continue(out, server_first);
    stream.send(out).await?;
    out.clear();

    let client_final = read_password_message(stream, incoming).await?;
    let server_final = match server.client_final(&client_final[5..]) {
        Ok(m) => m,
        Err(e) => return Err(send_fatal(stream, scram_error(user, e)).await),
    };
    // The keys log in as this user: only a pool whose server user is the client's own may use
    // them (a database line's forced user= is somebody else).
    if from_verifier
        && let Some(pool) = pool.filter(|p| p.key.user == user)
        && let (Some(client_key), Some(verifier)) = (server.client_key(), server.verifier())
    {
        pool.set_scram_keys(client_key, verifier.server_key);
    }
    build::auth_sasl_final(out, &server_final);
    Ok(())
}

fn scram_error(user: &str, e: crate::auth::AuthError) -> ErrorResponse {
    match e {
        crate::auth::AuthError::WrongPassword => wrong_password(user),
        other => ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, other.to_string()),
    }
}

/// SASLInitialResponse body: mechanism name, then a length-prefixed (-1 = none) payload.
fn parse_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let (mechanism, rest) = crate::protocol::read_cstr(body)?;
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if len < 0 {
        return Some((mechanism, &[]));
    }
    (data.len() == len as usize).then_some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_app() -> (Arc<App>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("pgberth.ini");
        std::fs::write(
            &ini,
            "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\n",
        )
        .unwrap();
        (
            App::new(crate::process::Loaded {
                config: Config::load(&ini).unwrap(),
                tls: crate::tls::TlsSettings::disabled(),
                hba: None,
            }),
            dir,
        )
    }

    /// Every client that is not parked is one task, its future allocated whole in a box of
    /// its own (`built_in_box`), the runtime's task (128 bytes) holding the pointer: that is
    /// what a busy client, or one that may not park (TLS, holding a server connection), costs
    /// besides its socket. Rare, large states (login, the console, checkout with waiting or
    /// connecting, reset, the goodbye) are boxed only while they run; a stretch of relaying is
    /// not, because boxing it costs an allocation per transaction. jemalloc's size classes
    /// here are 640, 768 and 896 bytes: up to 768 keeps the future's box at 768.
    #[tokio::test]
    async fn client_task_future_stays_small() {
        let (app, _dir) = test_app();
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let (slot, admitted) = app.admit_client(crate::registry::Ends::default());
        let task = serve(app.clone(), Stream::Unix(a), admitted, slot);
        let size = std::mem::size_of_val(&task);
        eprintln!("client task future: {size} bytes");
        assert!(size <= 768, "client task future is {size} bytes");
    }

    /// The login future is allocated and copied whole at every connection (a `-C` storm makes
    /// one per transaction), so rare paths must not set its size.
    #[tokio::test]
    async fn login_future_stays_small() {
        let (app, _dir) = test_app();
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let (slot, admitted) = app.admit_client(crate::registry::Ends::default());
        let login = login_or_console(app.clone(), Stream::Unix(a), admitted, slot.info.clone());
        let size = std::mem::size_of_val(&login);
        eprintln!("login future: {size} bytes");
        // 5.5 KiB while TLS, auth_query, the console and checking out a server were inline.
        assert!(size <= 2048, "login future is {size} bytes");
    }
}
