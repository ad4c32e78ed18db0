//! The untagged packets a client may open a connection with: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.

use super::{FrameError, MAX_PRE_AUTH_MESSAGE, read_cstr};

pub const PROTOCOL_V3: u32 = 196_608;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// What the first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupParams),
    SslRequest,
    GssEncRequest,
    Cancel { pid: u32, secret: u32 },
}

/// Parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or(self.user())
    }
}

/// Checks the 4-byte length that opens a startup packet; returns the number of bytes that
/// follow it. Done before anything is allocated for the packet.
pub fn startup_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    if len > MAX_PRE_AUTH_MESSAGE {
        return Err(FrameError::TooLong {
            len,
            max: MAX_PRE_AUTH_MESSAGE,
        });
    }
    Ok(len - 4)
}

/// Parses the body (after the length) of a startup packet.
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Frame(FrameError::Malformed("startup")));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if rest.len() != 8 {
                return Err(StartupError::Frame(FrameError::Malformed("CancelRequest")));
            }
            let pid = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(StartupPacket::Cancel { pid, secret })
        }
        c if c >> 16 == 3 => parse_params(rest).map(StartupPacket::Startup),
        c => Err(StartupError::UnsupportedProtocol {
            major: c >> 16,
            minor: c & 0xffff,
        }),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<StartupParams, StartupError> {
    let malformed = || StartupError::Frame(FrameError::Malformed("startup"));
    let mut params = Vec::new();
    loop {
        match rest {
            [0] => break,
            [] => return Err(malformed()),
            _ => {}
        }
        let (key, after_key) = read_cstr(rest).ok_or_else(malformed)?;
        let (value, after_value) = read_cstr(after_key).ok_or_else(malformed)?;
        params.push((key.to_owned(), value.to_owned()));
        rest = after_value;
    }
    Ok(StartupParams { params })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u32, minor: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn parses_startup_parameters() {
        let pkt = parse_startup(&body(PROTOCOL_V3, b"user\0bob\0database\0app\0\0")).unwrap();
        let StartupPacket::Startup(p) = pkt else {
            panic!("not a startup")
        };
        assert_eq!(p.user(), Some("bob"));
        assert_eq!(p.database(), Some("app"));
    }

    #[test]
    fn database_defaults_to_user() {
        let StartupPacket::Startup(p) =
            parse_startup(&body(PROTOCOL_V3, b"user\0bob\0\0")).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.database(), Some("bob"));
    }

    #[test]
    fn parses_ssl_and_cancel_requests() {
        assert_eq!(
            parse_startup(&body(SSL_REQUEST_CODE, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&body(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 0, 0, 0, 9])),
            Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
    }

    #[test]
    fn rejects_truncated_parameters_and_old_protocols() {
        assert!(parse_startup(&body(PROTOCOL_V3, b"user\0bob")).is_err());
        assert!(parse_startup(&body(PROTOCOL_V3, b"")).is_err());
        assert!(matches!(
            parse_startup(&body(2 << 16, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(parse_startup(&body(CANCEL_REQUEST_CODE, &[0, 0])).is_err());
    }

    #[test]
    fn startup_length_is_bounded_before_allocation() {
        assert!(startup_length(3u32.to_be_bytes()).is_err());
        assert!(startup_length(u32::MAX.to_be_bytes()).is_err());
        assert_eq!(startup_length(16u32.to_be_bytes()), Ok(12));
    }
}
