//! The PostgreSQL v3 wire protocol, as far as a pooler needs it: message framing, the startup
//! packet, the handful of messages pgberth builds itself, and SQLSTATE-carrying errors.
//!
//! Nothing here does I/O; every function works on byte slices and is unit-tested with fixtures.

pub mod build;
pub mod error;
pub mod scan;
pub mod startup;

pub use error::{ErrorResponse, SqlState};

/// Largest message pgberth accepts before authentication (startup packet, password, SASL).
/// PostgreSQL itself uses 10,000 bytes for the startup packet.
pub const MAX_PRE_AUTH_MESSAGE: usize = 10_000;

/// Frontend (client → server) message tags pgberth looks at.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// Backend (server → client) message tags pgberth looks at.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_IN_RESPONSE: u8 = b'G';
}

/// Transaction status reported by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Reads the header of the tagged message at the start of `buf`: its tag and its total length
/// including the tag byte. `None` until the five header bytes are there.
pub fn peek_header(buf: &[u8]) -> Option<(u8, usize)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    Some((buf[0], len + 1))
}

/// A length field that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(usize),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Reads a NUL-terminated string from the front of `buf`, returning it and the rest.
pub fn read_cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    let s = std::str::from_utf8(&buf[..nul]).ok()?;
    Some((s, &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_cstr_splits_at_nul() {
        assert_eq!(read_cstr(b"user\0bob\0"), Some(("user", &b"bob\0"[..])));
        assert_eq!(read_cstr(b"no terminator"), None);
    }
}
