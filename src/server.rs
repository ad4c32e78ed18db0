//! One server connection: connect to PostgreSQL (TCP or unix socket), log in with the
//! configured credentials, and run the few queries pgberth itself sends (reset, health check).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{ScramClient, ScramCredential, md5_response, md5_response_from_password};
use crate::config::SslMode;
use crate::protocol::error::{ServerError, parse_error_fields};
use crate::protocol::{TxStatus, backend, build};
use crate::stream::{ReadError, Stream, read_message};

/// Largest message accepted from a server during login and pgberth's own queries.
const MAX_SERVER_LOGIN_MESSAGE: usize = 1 << 20;

/// Where and as whom to log in to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTarget {
    /// Host name or address; a value starting with `/` is a unix socket directory.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// Extra startup parameters (application_name, client_encoding, DateStyle, TimeZone).
    pub params: Vec<(String, String)>,
}

impl ServerTarget {
    pub fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The secret pgberth logs in to the server with.
#[derive(Clone)]
pub enum ServerPassword {
    None,
    Plain(String),
    /// A stored `md5…` secret: usable for md5 authentication only.
    Md5(String),
    /// SCRAM keys taken from a client's SCRAM exchange (pass-through).
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl std::fmt::Debug for ServerPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerPassword::None => "None",
            ServerPassword::Plain(_) => "Plain(<redacted>)",
            ServerPassword::Md5(_) => "Md5(<redacted>)",
            ServerPassword::ScramKeys { .. } => "ScramKeys(<redacted>)",
        })
    }
}

/// Why a server connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerConnectError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to {addr} after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("server refused login: {0}")]
    Refused(ServerError),
    #[error("server asked for a password for user \"{0}\" but none is configured")]
    NoPassword(String),
    #[error("server authentication failed: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("unsupported authentication request {0} from server")]
    UnsupportedAuth(u32),
    #[error("{0}")]
    Tls(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error("server connection lost: {0}")]
    Read(#[from] ReadError),
    #[error("server connection lost: {0}")]
    Io(#[from] io::Error),
}

/// The result of a successful login: the socket and what the server told about itself.
#[derive(Debug)]
pub struct LoggedIn {
    pub stream: Stream,
    pub backend_pid: u32,
    pub backend_secret: u32,
    pub params: Vec<(String, String)>,
}

/// Opens a socket to the target, within `timeout`.
pub async fn open(target: &ServerTarget, timeout: Duration) -> Result<Stream, ServerConnectError> {
    let addr = target.describe();
    let connect = async {
        if target.host.starts_with('/') {
            UnixStream::connect(&addr).await.map(Stream::Unix)
        } else {
            let s = TcpStream::connect((target.host.as_str(), target.port)).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
    };
    let connect = async {
        connect.await.map_err(|source| ServerConnectError::Connect {
            addr: addr.clone(),
            source,
        })
    };
    bounded(timeout, &addr, connect).await
}

/// Runs `work` within `timeout` (zero: without a limit); running out is a timeout at `addr`.
async fn bounded<T>(
    timeout: Duration,
    addr: &str,
    work: impl Future<Output = Result<T, ServerConnectError>>,
) -> Result<T, ServerConnectError> {
    if timeout.is_zero() {
        return work.await;
    }
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ServerConnectError::Timeout {
            addr: addr.to_owned(),
            after: timeout,
        })?
}

/// How to use TLS towards the server (`server_tls_sslmode` and its rustls config).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub mode: SslMode,
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// Where handshakes are counted (metrics).
    pub events: Arc<crate::metrics::Events>,
}

impl PartialEq for ServerTls {
    /// Same mode: a reload that only re-read certificates does not retire connections.
    fn eq(&self, other: &ServerTls) -> bool {
        self.mode == other.mode
    }
}

impl ServerTls {
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: SslMode::Disable,
            config: None,
            events: Arc::default(),
        }
    }
}

/// Asks the server for TLS (SSLRequest) and, if it agrees, wraps the socket. A server that
/// refuses is acceptable below `require`; a certificate that fails verification never is.
async fn negotiate_tls(
    stream: Stream,
    target: &ServerTarget,
    tls: &ServerTls,
) -> Result<Stream, ServerConnectError> {
    let (Stream::Tcp(mut tcp), Some(config)) = (stream, &tls.config) else {
        unreachable!("negotiate_tls is called for TCP targets with a TLS config")
    };
    let mut request = Vec::with_capacity(8);
    request.extend_from_slice(&8u32.to_be_bytes());
    request.extend_from_slice(&crate::protocol::startup::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
        .await
        .map_err(ReadError::from)?;
    match answer[0] {
        b'S' => {
            let name = crate::tls::server_name(&target.host)
                .map_err(|e| ServerConnectError::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = connector.connect(name, tcp).await;
            tls.events
                .tls_handshake(crate::metrics::Side::Server, &stream);
            let stream = stream.map_err(|e| {
                ServerConnectError::Tls(format!(
                    "TLS handshake with {} failed (server_tls_sslmode = {}): {e}",
                    target.describe(),
                    tls.mode
                ))
            })?;
            Ok(Stream::TlsToServer(Box::new(stream)))
        }
        b'N' if tls.mode >= SslMode::Require => Err(ServerConnectError::Tls(format!(
            "{} does not accept TLS, and server_tls_sslmode = {} requires it",
            target.describe(),
            tls.mode
        ))),
        b'N' => Ok(Stream::Tcp(tcp)),
        other => Err(ServerConnectError::Protocol(format!(
            "unexpected answer '{}' to SSLRequest",
            other as char
        ))),
    }
}

/// Connects (with TLS as `tls` asks) and logs in; each step is bounded by `timeout` (zero:
/// unbounded). With `allow`, TLS is tried only when the server refuses a plaintext login.
pub async fn connect(
    target: &ServerTarget,
    password: &ServerPassword,
    timeout: Duration,
    tls: &ServerTls,
) -> Result<LoggedIn, ServerConnectError> {
    let unix = target.host.starts_with('/');
    let first_try_tls = !unix && tls.config.is_some() && tls.mode != SslMode::Allow;
    match connect_once(target, password, timeout, tls, first_try_tls).await {
        Err(ServerConnectError::Refused(e))
            if !unix && tls.mode == SslMode::Allow && tls.config.is_some() && e.code == "28000" =>
        {
            connect_once(target, password, timeout, tls, true).await
        }
        other => other,
    }
}

async fn connect_once(
    target: &ServerTarget,
    password: &ServerPassword,
    timeout: Duration,
    tls: &ServerTls,
    use_tls: bool,
) -> Result<LoggedIn, ServerConnectError> {
    let mut stream = open(target, timeout).await?;
    if use_tls {
        stream = bounded(
            timeout,
            &target.describe(),
            negotiate_tls(stream, target, tls),
        )
        .await?;
    }
    let login = login(&mut stream, target, password);
    let (backend_pid, backend_secret, params) = bounded(timeout, &target.describe(), login).await?;
    Ok(LoggedIn {
        stream,
        backend_pid,
        backend_secret,
        params,
    })
}

type LoginResult = Result<(u32, u32, Vec<(String, String)>), ServerConnectError>;

async fn login(
    stream: &mut Stream,
    target: &ServerTarget,
    password: &ServerPassword,
) -> LoginResult {
    let mut out = Vec::with_capacity(256);
    let mut params: Vec<(&str, &str)> = vec![("user", &target.user), ("database", &target.dbname)];
    params.extend(target.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    build::startup_message(&mut out, &params);
    stream.send(&out).await?;

    let mut buf = Vec::with_capacity(512);
    let mut scram: Option<ScramClient> = None;
    let mut key = (0, 0);
    let mut server_params = Vec::new();
    loop {
        let tag = read_message(stream, &mut buf, MAX_SERVER_LOGIN_MESSAGE).await?;
        let body = &buf[5..];
        match tag {
            backend::AUTHENTICATION => {
                let code = read_u32(body)?;
                out.clear();
                match code {
                    0 => continue,
                    3 => build::password(&mut out, plain(password, &target.user)?),
                    5 => {
                        let salt: [u8; 4] = body
                            .get(4..8)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| {
                                ServerConnectError::Protocol("short md5 request".into())
                            })?;
                        let response = match password {
                            ServerPassword::Plain(p) => {
                                md5_response_from_password(&target.user, p, salt)
                            }
                            ServerPassword::Md5(secret) => md5_response(secret, salt),
                            _ => return Err(ServerConnectError::NoPassword(target.user.clone())),
                        };
                        build::password(&mut out, &response);
                    }
                    10 => {
                        let credential = match password {
                            ServerPassword::Plain(p) => ScramCredential::Password(p.clone()),
                            ServerPassword::ScramKeys {
                                client_key,
                                server_key,
                            } => ScramCredential::Keys {
                                client_key: *client_key,
                                server_key: *server_key,
                            },
                            _ => return Err(ServerConnectError::NoPassword(target.user.clone())),
                        };
                        if !sasl_mechanisms(&body[4..]).any(|m| m == "SCRAM-SHA-256") {
                            return Err(ServerConnectError::Protocol(
                                "server offers no SCRAM-SHA-256 mechanism".into(),
                            ));
                        }
                        let mut client = ScramClient::new(credential);
                        let first = client.client_first();
                        build::sasl_initial_response(&mut out, "SCRAM-SHA-256", &first);
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                        let reply = client.server_first(&body[4..])?;
                        build::sasl_response(&mut out, &reply);
                    }
                    12 => {
                        let client = scram.as_mut().ok_or_else(|| unexpected("SASLFinal"))?;
                        client.server_final(&body[4..])?;
                        continue;
                    }
                    other => return Err(ServerConnectError::UnsupportedAuth(other)),
                }
                stream.send(&out).await?;
            }
            backend::PARAMETER_STATUS => {
                let mut parts = body.split(|&b| b == 0);
                if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                    server_params.push((
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
            }
            backend::BACKEND_KEY_DATA => {
                let pid = read_u32(body)?;
                let secret = read_u32(body.get(4..).unwrap_or_default())?;
                key = (pid, secret);
            }
            backend::READY_FOR_QUERY => return Ok((key.0, key.1, server_params)),
            backend::ERROR_RESPONSE => {
                return Err(ServerConnectError::Refused(parse_error_fields(body)));
            }
            backend::NOTICE_RESPONSE => {}
            other => {
                return Err(ServerConnectError::Protocol(format!(
                    "unexpected message '{}' during login",
                    other as char
                )));
            }
        }
    }
}

fn unexpected(what: &str) -> ServerConnectError {
    ServerConnectError::Protocol(format!("unexpected {what}"))
}

fn plain<'a>(password: &'a ServerPassword, user: &str) -> Result<&'a str, ServerConnectError> {
    match password {
        ServerPassword::Plain(p) => Ok(p),
        _ => Err(ServerConnectError::NoPassword(user.to_owned())),
    }
}

fn read_u32(body: &[u8]) -> Result<u32, ServerConnectError> {
    body.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| ServerConnectError::Protocol("short message".into()))
}

fn sasl_mechanisms(body: &[u8]) -> impl Iterator<Item = &str> {
    body.split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .filter_map(|m| std::str::from_utf8(m).ok())
}

/// Runs a simple query pgberth sends for itself (reset, health check) and waits for
/// ReadyForQuery. Any error, or a status other than idle afterwards, is a failure.
pub async fn run_internal_query(
    stream: &mut Stream,
    sql: &str,
    timeout: Duration,
) -> Result<(), ServerConnectError> {
    let work = async {
        let mut out = Vec::with_capacity(sql.len() + 6);
        build::query(&mut out, sql);
        stream.send(&out).await?;
        let mut buf = Vec::with_capacity(256);
        let mut failed = None;
        loop {
            let tag = read_message(stream, &mut buf, MAX_SERVER_LOGIN_MESSAGE).await?;
            match tag {
                backend::ERROR_RESPONSE => failed = Some(parse_error_fields(&buf[5..])),
                backend::READY_FOR_QUERY => {
                    if let Some(err) = failed {
                        return Err(ServerConnectError::Refused(err));
                    }
                    return match TxStatus::from_byte(buf[5]) {
                        Some(TxStatus::Idle) => Ok(()),
                        _ => Err(ServerConnectError::Protocol(format!(
                            "\"{sql}\" left a transaction open"
                        ))),
                    };
                }
                _ => {}
            }
        }
    };
    bounded(timeout, "server", work).await
}

/// Sends a CancelRequest for a backend over a fresh connection.
pub async fn send_cancel(
    target: &ServerTarget,
    pid: u32,
    secret: u32,
    timeout: Duration,
) -> Result<(), ServerConnectError> {
    let mut stream = open(target, timeout).await?;
    let mut out = Vec::with_capacity(16);
    build::cancel_request(&mut out, pid, secret);
    stream.send(&out).await?;
    // PostgreSQL closes the connection once it has read the request.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
    )
    .await;
    Ok(())
}
