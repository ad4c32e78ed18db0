//! `ScramClient`: pgberth logging in to PostgreSQL with SCRAM-SHA-256, either from a
//! plaintext password or, for pass-through, from a ClientKey/ServerKey pair.

use std::fmt;

use super::{
    MAX_ITERATIONS, attr, b64, hmac, is_extension, is_printable, keys_from_password, random_nonce,
    sha256, unb64, utf8, xor,
};
use crate::auth::{AuthError, ct_eq};

/// What pgberth logs in to PostgreSQL with.
#[derive(Clone)]
pub enum ScramCredential {
    /// A plaintext password (PBKDF2 is computed with the server's salt and iterations).
    Password(String),
    /// SCRAM pass-through: keys recovered from a client's exchange against the same verifier
    /// PostgreSQL stores. ClientProof = ClientKey XOR HMAC(H(ClientKey), AuthMessage); the
    /// server's signature is checked with `server_key`.
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
}

/// Never prints the secret.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredential::Password(_) => f.write_str("Password(<redacted>)"),
            ScramCredential::Keys { .. } => f.write_str("Keys(<redacted>)"),
        }
    }
}

/// Longest server error text kept from an `e=` server-final-message.
const MAX_SERVER_ERROR_LEN: usize = 200;

enum State {
    Initial,
    SentClientFirst { client_first_bare: String },
    SentClientFinal { server_signature: [u8; 32] },
    Done,
    Failed,
}

/// Client side of one SCRAM-SHA-256 exchange (no channel binding).
///
/// [`ScramClient::server_first`] runs PBKDF2 with the server's iteration count when the
/// credential is a password; callers on an async runtime may want `spawn_blocking`.
pub struct ScramClient {
    credential: ScramCredential,
    user: String,
    nonce: String,
    state: State,
}

impl ScramClient {
    /// Starts an exchange with a fresh random nonce.
    pub fn new(credential: ScramCredential) -> ScramClient {
        ScramClient::with_nonce(credential, "", random_nonce())
    }

    /// As [`ScramClient::new`] with a given user name and nonce (tests use RFC vectors).
    pub(crate) fn with_nonce(
        credential: ScramCredential,
        user: &str,
        nonce: String,
    ) -> ScramClient {
        ScramClient {
            credential,
            user: user.to_owned(),
            nonce,
            state: State::Initial,
        }
    }

    /// The client-first-message `n,,n=,r=<nonce>` (PostgreSQL takes the user name from the
    /// startup packet, so it is left empty), for SASLInitialResponse.
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!("n={},r={}", self.user, self.nonce);
        let out = format!("n,,{client_first_bare}").into_bytes();
        self.state = State::SentClientFirst { client_first_bare };
        out
    }

    /// Handles the server-first-message (AuthenticationSASLContinue) and returns the
    /// client-final-message (SASLResponse).
    pub fn server_first(&mut self, server_first_message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentClientFirst { client_first_bare } = state else {
            return Err(AuthError::Protocol("unexpected server-first-message"));
        };
        let message = utf8(server_first_message)?;
        if message.starts_with("m=") {
            return Err(AuthError::Protocol(
                "mandatory extensions are not supported",
            ));
        }
        let mut parts = message.split(',');
        let nonce = attr(parts.next(), 'r', "expected nonce attribute r=")?;
        if !nonce.starts_with(self.nonce.as_str())
            || nonce.len() <= self.nonce.len()
            || !is_printable(nonce)
        {
            return Err(AuthError::Protocol(
                "server nonce does not extend the client nonce",
            ));
        }
        let salt = attr(parts.next(), 's', "expected salt attribute s=")?;
        let salt = unb64(salt).ok_or(AuthError::Protocol("salt is not valid base64"))?;
        let iterations = attr(parts.next(), 'i', "expected iteration count attribute i=")?;
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|i| {
                (1..=MAX_ITERATIONS).contains(i)
                    && iterations.starts_with(|c: char| c.is_ascii_digit())
            })
            .ok_or(AuthError::Protocol(
                "iteration count is invalid or out of range",
            ))?;
        if !parts.all(is_extension) {
            return Err(AuthError::Protocol(
                "malformed attribute after iteration count",
            ));
        }

        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(password) => keys_from_password(password, &salt, iterations),
            ScramCredential::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let stored_key = sha256(&client_key);
        // c=biws is base64("n,,"): no channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{message},{without_proof}");
        let proof = xor(&client_key, &hmac(&stored_key, &[auth_message.as_bytes()]));
        let server_signature = hmac(&server_key, &[auth_message.as_bytes()]);
        self.state = State::SentClientFinal { server_signature };
        Ok(format!("{without_proof},p={}", b64(&proof)).into_bytes())
    }

    /// Handles the server-final-message (AuthenticationSASLFinal): verifies the server's
    /// signature, or reports the server's `e=` error.
    pub fn server_final(&mut self, server_final_message: &[u8]) -> Result<(), AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentClientFinal { server_signature } = state else {
            return Err(AuthError::Protocol("unexpected server-final-message"));
        };
        let message = utf8(server_final_message)?;
        if let Some(error) = message.strip_prefix("e=") {
            let error: String = error
                .split(',')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .take(MAX_SERVER_ERROR_LEN)
                .collect();
            return Err(AuthError::ServerError(error));
        }
        let mut parts = message.split(',');
        let verifier = attr(parts.next(), 'v', "expected verifier attribute v=")?;
        if !parts.all(is_extension) {
            return Err(AuthError::Protocol("malformed attribute after verifier"));
        }
        let verifier =
            unb64(verifier).ok_or(AuthError::Protocol("server signature is not valid base64"))?;
        if !ct_eq(&verifier, &server_signature) {
            return Err(AuthError::ServerSignatureMismatch);
        }
        self.state = State::Done;
        Ok(())
    }
}

/// Never prints the credential or keys.
impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentClientFirst { .. } => "sent client-first",
            State::SentClientFinal { .. } => "sent client-final",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
