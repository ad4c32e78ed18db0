//! One socket type for every transport (TCP, unix socket, TLS in both directions), and the
//! framed reads used during
//! login, where every length is checked against a maximum before a byte is allocated for it.

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
}

/// Forwards a call to whichever stream type is inside.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::TlsFromClient($s) => $e,
            Stream::TlsToServer($s) => $e,
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
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsFromClient(_) | Stream::TlsToServer(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
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
    let (tag, total) = protocol::peek_header(&header).expect("five bytes");
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
    buf.clear();
    buf.extend_from_slice(&header);
    buf.resize(total, 0);
    stream
        .read_exact(&mut buf[5..])
        .await
        .map_err(ReadError::from_io)?;
    Ok(tag)
}
