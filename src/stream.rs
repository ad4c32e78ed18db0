//! One socket type for every transport (TCP, unix socket, TLS in both directions), and the
//! framed reads used during login and on the console, where every length is checked against a
//! maximum before a byte is allocated for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::protocol::{self, FrameError};

/// A connected socket to a client or a server, in plaintext or TLS. The TLS states are boxed:
/// they are large, and most connections of a pooler are plaintext unix or loopback sockets.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS accepted from a client.
    TlsFromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS pgberth opened to a server.
    TlsToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A parked client's socket, taken off the runtime (`parking.rs`); `None` only for the
    /// moment it is being moved. Every I/O call on it fails.
    Parked(Option<OffRuntime>),
}

/// A plaintext socket outside the runtime, waiting in the parking thread's poll.
#[derive(Debug)]
pub enum OffRuntime {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl OffRuntime {
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            OffRuntime::Tcp(s) => s.as_raw_fd(),
            OffRuntime::Unix(s) => s.as_raw_fd(),
        }
    }
}

fn parked_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket is parked")
}

/// Forwards a call to whichever stream type is inside.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::TlsFromClient($s) => $e,
            Stream::TlsToServer($s) => $e,
            Stream::Parked(_) => Poll::Ready(Err(parked_error())),
        }
    };
}

impl Stream {
    /// Polls for readable bytes (or closure) without reading or holding a buffer. For TLS,
    /// decrypted bytes already buffered count as readable.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::TlsFromClient(s) => {
                let (tcp, tls) = s.get_ref();
                if tls.wants_read() {
                    tcp.poll_read_ready(cx)
                } else {
                    Poll::Ready(Ok(()))
                }
            }
            Stream::TlsToServer(s) => {
                let (tcp, tls) = s.get_ref();
                if tls.wants_read() {
                    tcp.poll_read_ready(cx)
                } else {
                    Poll::Ready(Ok(()))
                }
            }
            Stream::Parked(_) => Poll::Ready(Err(parked_error())),
        }
    }

    /// Takes a plaintext socket off the runtime: it gives up its registration (and with it
    /// the runtime's per-socket state) and becomes `Stream::Parked`. TLS streams stay.
    pub fn take_off_runtime(&mut self) -> io::Result<std::os::fd::RawFd> {
        let off = match std::mem::replace(self, Stream::Parked(None)) {
            Stream::Tcp(s) => s.into_std().map(OffRuntime::Tcp),
            Stream::Unix(s) => s.into_std().map(OffRuntime::Unix),
            other => {
                *self = other;
                return Err(io::Error::other("only plaintext sockets park"));
            }
        };
        let off = off?;
        let fd = off.as_raw_fd();
        *self = Stream::Parked(Some(off));
        Ok(fd)
    }

    /// Puts a parked socket back on the runtime (must be called from within it).
    pub fn put_back_on_runtime(&mut self) -> io::Result<()> {
        let Stream::Parked(off) = self else {
            return Ok(());
        };
        *self = match off.take() {
            Some(OffRuntime::Tcp(s)) => Stream::Tcp(TcpStream::from_std(s)?),
            Some(OffRuntime::Unix(s)) => Stream::Unix(UnixStream::from_std(s)?),
            None => return Err(parked_error()),
        };
        Ok(())
    }

    /// Moves the socket's registration to the calling thread's runtime (`workers.rs`), so
    /// that its readiness wakes tasks of this worker. On failure the stream is unusable.
    pub fn move_to_this_worker(&mut self) -> io::Result<()> {
        /// A TLS stream keeps its TCP socket by value: register a duplicate of the descriptor
        /// here, then drop the old registration with the old descriptor.
        fn move_tcp(tcp: &mut TcpStream) -> io::Result<()> {
            use std::os::fd::AsFd;
            let fd = tcp.as_fd().try_clone_to_owned()?;
            let moved = TcpStream::from_std(std::net::TcpStream::from(fd))?;
            drop(std::mem::replace(tcp, moved));
            Ok(())
        }
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                self.take_off_runtime()?;
                self.put_back_on_runtime()
            }
            Stream::TlsFromClient(s) => move_tcp(s.get_mut().0),
            Stream::TlsToServer(s) => move_tcp(s.get_mut().0),
            Stream::Parked(_) => Err(parked_error()),
        }
    }

    /// Reads what is available without waiting: `Ok(None)` when nothing is.
    pub fn read_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(self).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(Some(rb.filled().len())),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(None),
        }
    }

    /// Writes all of `bytes` and flushes (TLS buffers records until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// The TCP socket under a TCP or TLS stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::TlsFromClient(s) => Some(s.get_ref().0),
            Stream::TlsToServer(s) => Some(s.get_ref().0),
            Stream::Parked(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsFromClient(_) | Stream::TlsToServer(_))
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Failure to read a whole message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ReadError {
    fn from_io(e: io::Error) -> ReadError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Closed
        } else {
            ReadError::Io(e)
        }
    }
}

/// The tag and whole length of the message whose five header bytes these are, the length
/// checked against `max_len`.
fn checked_header(header: &[u8], max_len: usize) -> Result<(u8, usize), ReadError> {
    let (tag, total) = protocol::peek_header(header).expect("five bytes");
    if total < 5 {
        return Err(FrameError::BadLength(total - 1).into());
    }
    if total > max_len {
        return Err(FrameError::TooLong {
            len: total,
            max: max_len,
        }
        .into());
    }
    Ok((tag, total))
}

/// Reads one tagged message into `buf` (replacing its contents) and returns its tag; the body is
/// `buf[5..]`. The length is checked against `max_len` before the body is read.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_len: usize,
) -> Result<u8, ReadError> {
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(ReadError::from_io)?;
    let (tag, total) = checked_header(&header, max_len)?;
    buf.clear();
    buf.extend_from_slice(&header);
    buf.resize(total, 0);
    stream
        .read_exact(&mut buf[5..])
        .await
        .map_err(ReadError::from_io)?;
    Ok(tag)
}

/// What one read of a `MessageReader` asks for at least: the login messages of common
/// clients (a startup packet, a SASL response) fit.
const READ_AT_LEAST: usize = 512;

/// Reads framed messages through a buffer, where messages come one at a time (a client's
/// login, the console). One read takes whatever the peer has sent: a message costs one system
/// call, not one for its header and one for its body, and a read that comes back short tells
/// the runtime the socket is drained, so the next message is awaited without a read that fails
/// with "would block". Bytes read past the last message are handed on (`into_leftover`).
#[derive(Debug, Default)]
pub struct MessageReader {
    buf: Vec<u8>,
    /// The first byte not yet returned.
    start: usize,
}

impl MessageReader {
    /// Makes sure `n` bytes past `start` are buffered, reading as needed.
    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        n: usize,
    ) -> Result<(), ReadError> {
        while self.buf.len() - self.start < n {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = n.max(READ_AT_LEAST);
            if self.buf.capacity() < want {
                self.buf.reserve_exact(want - self.buf.len());
            }
            let read = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::from_io)?;
            if read == 0 {
                return Err(ReadError::Closed);
            }
        }
        Ok(())
    }

    /// Returns the next `n` buffered bytes and moves past them (`fill` first).
    fn consume(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        self.start += n;
        &self.buf[at..at + n]
    }

    /// Reads a startup packet (no tag; a length that counts itself) and returns what follows
    /// its length. The length is checked (`startup_length`) before the body is read.
    pub async fn startup_packet<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<&[u8], ReadError> {
        self.fill(stream, 4).await?;
        let header: [u8; 4] = self.buf[self.start..self.start + 4]
            .try_into()
            .expect("four bytes");
        let len = protocol::startup::startup_length(header)?;
        self.fill(stream, 4 + len).await?;
        Ok(&self.consume(4 + len)[4..])
    }

    /// Reads one tagged message and returns it whole: its tag is `[0]`, its body `[5..]`. The
    /// length is checked against `max_len` before the body is read.
    pub async fn message<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        max_len: usize,
    ) -> Result<&[u8], ReadError> {
        self.fill(stream, 5).await?;
        let (_, total) = checked_header(&self.buf[self.start..self.start + 5], max_len)?;
        self.fill(stream, total).await?;
        Ok(self.consume(total))
    }

    /// Bytes read and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes read and not yet returned, for whoever reads the stream next.
    pub fn into_leftover(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}
