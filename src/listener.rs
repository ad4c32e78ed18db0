//! Listening sockets: binding the TCP addresses and the unix socket from the config (before
//! daemonizing and dropping privileges), and the accept loops that start one task per client.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::app::{App, RunState};
use crate::config::General;
use crate::registry::Ends;
use crate::stream::Stream;

/// Sockets bound from the config, not yet attached to a runtime.
#[derive(Debug)]
pub struct Bound {
    pub tcp: Vec<std::net::TcpListener>,
    pub unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot resolve listen_addr \"{addr}\": {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("nothing to listen on: listen_addr is empty and unix_socket_dir is disabled")]
    Nothing,
}

fn bind_tcp(addr: SocketAddr, general: &General) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if general.so_reuseport {
        socket.set_reuse_port(true)?;
    }
    if general.tcp_defer_accept {
        defer_accept(&socket)?;
    }
    // Accepted sockets inherit both (Linux): no setsockopt per client.
    socket.set_tcp_nodelay(true)?;
    // The system's keepalive timings, as PgBouncer leaves them (`tcp_keepidle` = 0).
    socket.set_keepalive(general.tcp_keepalive)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How long the kernel holds a connection whose client has sent nothing yet, as PgBouncer.
#[cfg(target_os = "linux")]
const DEFER_ACCEPT_SECS: libc::c_int = 45;

/// Sets `TCP_DEFER_ACCEPT`: the listener reports a connection once its client's first bytes
/// (an SSLRequest or a StartupMessage) are there, which saves a wake-up and a failed read per
/// client.
#[cfg(target_os = "linux")]
fn defer_accept(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is a live socket owned by `socket`, and the option value is a c_int
    // whose size is passed with it.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&DEFER_ACCEPT_SECS as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the option does not exist, and `tcp_defer_accept` is ignored.
#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &Socket) -> std::io::Result<()> {
    Ok(())
}

/// Binds every `listen_addr` (`*` = all IPv4 and IPv6 addresses) on `listen_port`, and the unix
/// socket `.s.PGSQL.<port>` in `unix_socket_dir`.
pub fn bind(general: &General) -> Result<Bound, ListenError> {
    let mut tcp = Vec::new();
    for addr in &general.listen_addr {
        let addrs: Vec<SocketAddr> = if addr == "*" {
            vec![
                SocketAddr::from(([0, 0, 0, 0], general.listen_port)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, general.listen_port)),
            ]
        } else {
            (addr.as_str(), general.listen_port)
                .to_socket_addrs()
                .map_err(|source| ListenError::Resolve {
                    addr: addr.clone(),
                    source,
                })?
                .collect()
        };
        for a in addrs {
            match bind_tcp(a, general) {
                Ok(l) => tcp.push(l),
                // IPv6 may be unavailable on the machine: "*" then means IPv4 only.
                Err(_) if addr == "*" && a.is_ipv6() => {}
                Err(source) => {
                    return Err(ListenError::Bind {
                        addr: a.to_string(),
                        source,
                    });
                }
            }
        }
    }
    let unix = match &general.unix_socket_dir {
        Some(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", general.listen_port));
            let bind_err = |source| ListenError::Bind {
                addr: path.display().to_string(),
                source,
            };
            // A socket file left behind by a process that is gone is removed; a live one is not.
            if path.exists() && std::os::unix::net::UnixStream::connect(&path).is_err() {
                let _ = std::fs::remove_file(&path);
            }
            let listener = std::os::unix::net::UnixListener::bind(&path).map_err(bind_err)?;
            std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(general.unix_socket_mode),
            )
            .map_err(|source| ListenError::Bind {
                addr: path.display().to_string(),
                source,
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| ListenError::Bind {
                    addr: path.display().to_string(),
                    source,
                })?;
            Some((listener, path))
        }
        None => None,
    };
    if tcp.is_empty() && unix.is_none() {
        return Err(ListenError::Nothing);
    }
    Ok(Bound { tcp, unix })
}

/// What a listening socket's accepted clients share, learnt once per accept loop.
#[derive(Clone, Copy, Default)]
struct Inherited {
    /// The listener's own address when it is a specific one, which is then every accepted
    /// socket's local address; `None` for a wildcard address or a unix socket.
    local: Option<SocketAddr>,
    /// SO_KEEPALIVE as set on the listener, and so on each accepted socket.
    keepalive: bool,
}

/// Sets what an accepted TCP socket did not inherit from its listener: the keepalive, when
/// a reload changed `tcp_keepalive` since the bind; TCP_NODELAY where it is not inherited.
fn tune_client_socket(stream: &tokio::net::TcpStream, keepalive: bool, inherited: Inherited) {
    if !cfg!(target_os = "linux") {
        let _ = stream.set_nodelay(true);
    }
    if keepalive != inherited.keepalive {
        let _ = socket2::SockRef::from(stream).set_keepalive(keepalive);
    }
}

fn start_client(app: &Arc<App>, (stream, ends): (Stream, Ends)) {
    let (slot, admitted) = app.admit_client(ends);
    let info = slot.info.clone();
    let serve =
        crate::client::built_in_box(|| crate::client::serve(app.clone(), stream, admitted, slot));
    let task = tokio::spawn(serve);
    info.set_abort(Some(task.abort_handle()));
}

/// Accepts TCP clients until the process stops accepting; not while SUSPENDed (new
/// connections wait in the kernel's backlog), nor while this worker is not active.
pub async fn accept_tcp(app: Arc<App>, listener: std::net::TcpListener) {
    accept_clients::<TcpListener>(app, listener).await;
}

/// Accepts unix-socket clients as `accept_tcp` does TCP ones; then removes the socket file.
pub async fn accept_unix(app: Arc<App>, listener: std::os::unix::net::UnixListener, path: PathBuf) {
    accept_clients::<UnixListener>(app, listener).await;
    let _ = std::fs::remove_file(&path);
}

/// The accept loop of either kind of listening socket, until the process stops accepting.
async fn accept_clients<L: Listen>(app: Arc<App>, listener: L::Std) {
    let inherited = L::inherited(&listener);
    let mut listener = OnRuntime::<L>::new(listener);
    let mut state = app.watch_state();
    let mut suspended = app.control.watch_suspended();
    let mut turn = Turn::new();
    loop {
        let accepting = !*suspended.borrow_and_update() && turn.is_mine();
        let registered = listener.registered_if(accepting);
        {
            // Made once per period of accepting, not per client: each watch registers a waiter.
            let change = async {
                tokio::select! {
                    _ = suspended.changed() => {}
                    _ = turn.changed() => {}
                    _ = state.changed() => {}
                }
            };
            tokio::pin!(change);
            loop {
                tokio::select! {
                    biased;
                    () = &mut change => break,
                    accepted = accept(registered, &app, inherited) => match accepted {
                        Ok(client) => start_client(&app, client),
                        Err(e) => accept_failed(e).await,
                    },
                }
            }
        }
        if *state.borrow_and_update() != RunState::Running {
            return;
        }
    }
}

/// Accepts a client from `listener` when there is one; else waits forever.
async fn accept<L: Listen>(
    listener: Option<&L>,
    app: &App,
    inherited: Inherited,
) -> std::io::Result<(Stream, Ends)> {
    match listener {
        Some(listener) => listener.accept_client(app, inherited).await,
        None => std::future::pending().await,
    }
}

/// A listening socket registered with the worker's runtime only while the worker accepts
/// from it, so that a worker that does not is not woken by every new connection.
struct OnRuntime<L: Listen> {
    registered: Option<L>,
    unregistered: Option<L::Std>,
}

impl<L: Listen> OnRuntime<L> {
    fn new(listener: L::Std) -> OnRuntime<L> {
        OnRuntime {
            registered: None,
            unregistered: Some(listener),
        }
    }

    /// Registers or unregisters the socket as `accepting` says; the socket when registered.
    /// A socket that fails to move is lost to this worker (logged); the others keep theirs.
    fn registered_if(&mut self, accepting: bool) -> Option<&L> {
        let moved = if accepting {
            self.unregistered
                .take()
                .map(|l| L::from_std(l).map(|l| self.registered = Some(l)))
        } else {
            self.registered
                .take()
                .map(|l| l.into_std().map(|l| self.unregistered = Some(l)))
        };
        if let Some(Err(e)) = moved {
            tracing::warn!(
                worker = crate::workers::current(),
                "a listening socket is lost to this worker: {e}"
            );
        }
        self.registered.as_ref()
    }
}

/// The two kinds of listening socket, on and off the runtime.
trait Listen: Sized + Send + Sync + 'static {
    type Std: Send;
    fn from_std(listener: Self::Std) -> std::io::Result<Self>;
    fn into_std(self) -> std::io::Result<Self::Std>;
    /// What every socket accepted from `listener` has from it.
    fn inherited(listener: &Self::Std) -> Inherited;
    /// Accepts one client, its socket tuned as the config says, with its addresses.
    fn accept_client(
        &self,
        app: &App,
        inherited: Inherited,
    ) -> impl Future<Output = std::io::Result<(Stream, Ends)>> + Send;
}

impl Listen for TcpListener {
    type Std = std::net::TcpListener;
    fn from_std(listener: Self::Std) -> std::io::Result<Self> {
        TcpListener::from_std(listener)
    }
    fn into_std(self) -> std::io::Result<Self::Std> {
        TcpListener::into_std(self)
    }
    fn inherited(listener: &Self::Std) -> Inherited {
        Inherited {
            local: listener
                .local_addr()
                .ok()
                .filter(|addr| !addr.ip().is_unspecified()),
            keepalive: socket2::SockRef::from(listener)
                .keepalive()
                .unwrap_or(false),
        }
    }
    async fn accept_client(
        &self,
        app: &App,
        inherited: Inherited,
    ) -> std::io::Result<(Stream, Ends)> {
        let (stream, remote) = self.accept().await?;
        tune_client_socket(&stream, app.config().general.tcp_keepalive, inherited);
        let ends = Ends {
            remote: Some(remote),
            local: inherited.local.or_else(|| stream.local_addr().ok()),
        };
        Ok((Stream::Tcp(stream), ends))
    }
}

impl Listen for UnixListener {
    type Std = std::os::unix::net::UnixListener;
    fn from_std(listener: Self::Std) -> std::io::Result<Self> {
        UnixListener::from_std(listener)
    }
    fn into_std(self) -> std::io::Result<Self::Std> {
        UnixListener::into_std(self)
    }
    fn inherited(_: &Self::Std) -> Inherited {
        Inherited::default()
    }
    async fn accept_client(
        &self,
        _app: &App,
        _inherited: Inherited,
    ) -> std::io::Result<(Stream, Ends)> {
        let (stream, _) = self.accept().await?;
        Ok((Stream::Unix(stream), Ends::default()))
    }
}

/// Whether this worker takes new clients (`workers.rs`): worker 0 always does, the others
/// while the load has made them active.
struct Turn {
    worker: usize,
    active: Option<tokio::sync::watch::Receiver<usize>>,
}

impl Turn {
    fn new() -> Turn {
        Turn {
            worker: usize::from(crate::workers::current()),
            active: crate::workers::watch_active(),
        }
    }

    fn is_mine(&mut self) -> bool {
        self.active
            .as_mut()
            .is_none_or(|active| self.worker < *active.borrow_and_update())
    }

    async fn changed(&mut self) {
        if let Some(active) = &mut self.active
            && active.changed().await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

/// Out of file descriptors and similar: log, back off briefly, keep accepting.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;

    /// A blocking listener on a free loopback port, bound as `bind` does with `general`.
    fn listener(general: General) -> (std::net::TcpListener, SocketAddr) {
        let listener = bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &general).unwrap();
        listener.set_nonblocking(false).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Connects a client that stays silent, then one that sends a byte; returns which of the
    /// two the listener hands over first.
    fn first_accepted(defer: bool) -> &'static str {
        let (listener, addr) = listener(General {
            tcp_defer_accept: defer,
            ..General::default()
        });
        let silent = TcpStream::connect(addr).unwrap();
        let mut talking = TcpStream::connect(addr).unwrap();
        talking.write_all(&[0]).unwrap();
        let (_, peer) = listener.accept().unwrap();
        if peer == silent.local_addr().unwrap() {
            "silent"
        } else {
            assert_eq!(peer, talking.local_addr().unwrap());
            "talking"
        }
    }

    /// TCP_NODELAY and SO_KEEPALIVE of a socket accepted from a listener bound with
    /// `tcp_keepalive` set as given: set on the listener, not per client.
    fn accepted_options(keepalive: bool) -> (bool, bool) {
        let (listener, addr) = listener(General {
            tcp_keepalive: keepalive,
            ..General::default()
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(&[0]).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let keepalive = socket2::SockRef::from(&accepted).keepalive().unwrap();
        (accepted.nodelay().unwrap(), keepalive)
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_and_the_keepalive_setting_from_the_listener() {
        assert_eq!(accepted_options(true), (true, true));
        assert_eq!(accepted_options(false), (true, false));
    }

    #[test]
    fn with_tcp_defer_accept_a_client_is_accepted_once_it_has_sent_bytes() {
        assert_eq!(first_accepted(true), "talking");
    }

    #[test]
    fn without_tcp_defer_accept_clients_are_accepted_in_connection_order() {
        assert_eq!(first_accepted(false), "silent");
    }
}
