//! SQLSTATE codes and the ErrorResponse messages pgberth sends to clients, plus reading the
//! fields of an ErrorResponse that a server sent.

use super::read_cstr;

/// A SQLSTATE code, as PostgreSQL itself would use it for the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub [u8; 5]);

impl SqlState {
    /// A code a server sent, if it has the form of a SQLSTATE (five ASCII letters or digits).
    pub fn parse(code: &str) -> Option<SqlState> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(SqlState(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }

    pub const PROTOCOL_VIOLATION: SqlState = SqlState(*b"08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");
    pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState(*b"28000");
    pub const UNKNOWN_DATABASE: SqlState = SqlState(*b"3D000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState(*b"25P03");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState(*b"57P05");
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    pub const SYNTAX_ERROR: SqlState = SqlState(*b"42601");
}

/// Severity of an ErrorResponse: `FATAL` ends the connection, `ERROR` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An error pgberth reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
}

impl ErrorResponse {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            severity: Severity::Fatal,
            code,
            message: message.into(),
        }
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            severity: Severity::Error,
            code,
            message: message.into(),
        }
    }

    /// Appends the wire form (`E` message with S, V, C and M fields) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let sev = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let start = out.len();
        out.push(b'E');
        out.extend_from_slice(&[0; 4]);
        for (field, value) in [
            (b'S', sev),
            (b'V', sev),
            (b'C', self.code.as_str()),
            (b'M', &self.message),
        ] {
            out.push(field);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out.push(0);
        super::build::patch_len(out, start);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.message.len());
        self.encode(&mut out);
        out
    }
}

/// The fields of an ErrorResponse or NoticeResponse body that pgberth reports or logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// Reads an ErrorResponse body (after the 5-byte header).
pub fn parse_error_fields(mut body: &[u8]) -> ServerError {
    let mut err = ServerError::default();
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, rest)) = read_cstr(rest) else {
            break;
        };
        match field {
            b'S' if err.severity.is_empty() => err.severity = value.to_owned(),
            b'V' => err.severity = value.to_owned(),
            b'C' => err.code = value.to_owned(),
            b'M' => err.message = value.to_owned(),
            _ => {}
        }
        body = rest;
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_the_parser() {
        let e = ErrorResponse::fatal(SqlState::INVALID_PASSWORD, "password authentication failed");
        let bytes = e.to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, bytes.len());
        let parsed = parse_error_fields(&bytes[5..]);
        assert_eq!(parsed.severity, "FATAL");
        assert_eq!(parsed.code, "28P01");
        assert_eq!(parsed.message, "password authentication failed");
    }

    #[test]
    fn parse_error_fields_survives_garbage() {
        let parsed = parse_error_fields(b"Sno terminator");
        assert_eq!(parsed, ServerError::default());
    }
}
