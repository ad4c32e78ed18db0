//! Authentication exchanges as pure, I/O-free state machines: SCRAM-SHA-256 (both as the
//! server verifying a client and as the client logging in to PostgreSQL, including SCRAM
//! pass-through with a recovered ClientKey) and PostgreSQL's md5 scheme. Callers feed in the
//! bytes of SASL / password messages and send out the bytes these functions return.
//! `hba` reads pg_hba.conf-style rules from a file.
//! `auth_query` is the exception: it looks secrets up on the server, over a pooled connection.

pub mod auth_query;
pub mod hba;
mod md5;
mod scram;

pub use self::md5::{md5_response, md5_response_from_password, md5_secret, verify_md5_response};
pub use self::scram::{
    MAX_ITERATIONS, SCRAM_SHA_256, ScramClient, ScramCredential, ScramSecret, ScramServer,
    ScramVerifier,
};

/// Everything that can go wrong in an authentication exchange.
///
/// Messages never contain secrets, and `Protocol` carries a fixed description rather than
/// echoing client-supplied bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The proof did not match (or the user is unknown: the two are deliberately identical).
    #[error("password authentication failed")]
    WrongPassword,
    /// A message was malformed, out of order, or used an unsupported SCRAM feature.
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    /// The server's signature did not verify: it does not know the password (or is an impostor).
    #[error("SCRAM server signature does not match")]
    ServerSignatureMismatch,
    /// The server ended the exchange with `e=...`; carries its (sanitized) error value.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerError(String),
    /// The client asked for channel binding (`p=` gs2 flag), which pgberth does not offer.
    #[error("SCRAM channel binding is not supported")]
    UnsupportedChannelBinding,
}

/// Constant-time equality of two byte strings (the length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(ct_eq(b"", b""));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
