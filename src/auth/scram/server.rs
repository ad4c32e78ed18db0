//! `ScramServer`: pgberth verifying a connecting client with SCRAM-SHA-256 (no channel
//! binding), including the fake exchange for unknown users and recovery of the client's
//! ClientKey for SCRAM pass-through.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use super::{
    DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, ScramVerifier, attr, b64, hmac, is_extension,
    is_printable, random_nonce, sha256, unb64, utf8, xor,
};
use crate::auth::{AuthError, ct_eq};

/// What pgberth knows about a user's password, borrowed from where it is kept.
#[derive(Clone, Copy)]
pub enum ScramSecret<'a> {
    /// A stored SCRAM verifier (from `auth_file` or `auth_query`).
    Verifier(&'a ScramVerifier),
    /// A plaintext password; a verifier is computed from it for the exchange.
    Password(&'a str),
}

/// Never prints the secret.
impl fmt::Debug for ScramSecret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramSecret::Verifier(v) => f.debug_tuple("Verifier").field(v).finish(),
            ScramSecret::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// A process-wide random key: salts of the fake exchange are HMAC(key, user), so they are
/// stable per user for the life of the process and unpredictable from outside.
fn fake_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::fill(&mut key[..]);
        key
    })
}

/// The deterministic per-user salt used for unknown users and for plaintext secrets, so an
/// observer sees the same salt on every attempt whether or not the user exists.
fn per_user_salt(user: &str) -> Vec<u8> {
    hmac(fake_key(), &[b"salt\0", user.as_bytes()])[..DEFAULT_SALT_LEN].to_vec()
}

enum State {
    Initial,
    SentServerFirst {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
    Failed,
}

/// Server side of one SCRAM-SHA-256 exchange. Feed it the client's SASL messages in order;
/// after any error the exchange is dead and every later call fails.
pub struct ScramServer<'a> {
    verifier: Cow<'a, ScramVerifier>,
    /// `false` for an unknown user: the exchange runs normally but always fails at the end.
    known: bool,
    server_nonce: String,
    state: State,
    client_key: Option<[u8; 32]>,
}

impl<'a> ScramServer<'a> {
    /// Starts an exchange for `user`. `secret: None` means the user is unknown: a complete,
    /// realistic-looking exchange still runs (per-user stable fake salt, 4096 iterations) and
    /// the final step fails with [`AuthError::WrongPassword`].
    ///
    /// With [`ScramSecret::Password`] this computes PBKDF2 (4096 rounds), a few milliseconds.
    pub fn new(user: &str, secret: Option<ScramSecret<'a>>) -> ScramServer<'a> {
        ScramServer::with_nonce(user, secret, random_nonce())
    }

    /// As [`ScramServer::new`] with a given server nonce (tests use RFC vectors).
    pub(crate) fn with_nonce(
        user: &str,
        secret: Option<ScramSecret<'a>>,
        server_nonce: String,
    ) -> ScramServer<'a> {
        let (verifier, known) = match secret {
            Some(ScramSecret::Verifier(v)) => (Cow::Borrowed(v), true),
            Some(ScramSecret::Password(password)) => (
                Cow::Owned(ScramVerifier::from_password(
                    password,
                    &per_user_salt(user),
                    DEFAULT_ITERATIONS,
                )),
                true,
            ),
            None => {
                let key = fake_key();
                let fake = ScramVerifier {
                    iterations: DEFAULT_ITERATIONS,
                    salt: per_user_salt(user),
                    stored_key: hmac(key, &[b"stored\0", user.as_bytes()]),
                    server_key: hmac(key, &[b"server\0", user.as_bytes()]),
                };
                (Cow::Owned(fake), false)
            }
        };
        ScramServer {
            verifier,
            known,
            server_nonce,
            state: State::Initial,
            client_key: None,
        }
    }

    /// Handles the client-first-message (the data of SASLInitialResponse) and returns the
    /// server-first-message (to send in AuthenticationSASLContinue).
    pub fn client_first(&mut self, client_first_message: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(AuthError::Protocol("unexpected client-first-message"));
        }
        let result = self.handle_client_first(client_first_message);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn handle_client_first(&mut self, message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let message = utf8(message)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(AuthError::Protocol("client-first-message is truncated"))?;
        match flag {
            "n" | "y" => {}
            _ if flag.starts_with("p=") => return Err(AuthError::UnsupportedChannelBinding),
            _ => return Err(AuthError::Protocol("invalid channel-binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Protocol("client-first-message is truncated"))?;
        if !authzid.is_empty() {
            return Err(AuthError::Protocol(
                "authorization identity is not supported",
            ));
        }
        // Built with `concat` rather than `format!`: these run at every login.
        let gs2_header = [flag, ",,"].concat();

        if bare.starts_with("m=") {
            return Err(AuthError::Protocol(
                "mandatory extensions are not supported",
            ));
        }
        let mut parts = bare.split(',');
        // The user name is ignored, as PostgreSQL does: the startup packet names the user.
        attr(parts.next(), 'n', "expected user name attribute n=")?;
        let client_nonce = attr(parts.next(), 'r', "expected nonce attribute r=")?;
        if !is_printable(client_nonce) {
            return Err(AuthError::Protocol(
                "client nonce is empty or not printable",
            ));
        }
        if !parts.all(is_extension) {
            return Err(AuthError::Protocol("malformed attribute after nonce"));
        }

        let nonce = [client_nonce, &self.server_nonce].concat();
        let server_first = [
            "r=",
            &nonce,
            ",s=",
            &b64(&self.verifier.salt),
            ",i=",
            &self.verifier.iterations.to_string(),
        ]
        .concat();
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst {
            gs2_header,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(out)
    }

    /// Handles the client-final-message (the data of SASLResponse): verifies the proof and
    /// returns the server-final-message `v=...` (to send in AuthenticationSASLFinal).
    pub fn client_final(&mut self, client_final_message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentServerFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = state
        else {
            return Err(AuthError::Protocol("unexpected client-final-message"));
        };
        let message = utf8(client_final_message)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(AuthError::Protocol("client-final-message has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = attr(parts.next(), 'c', "expected channel binding attribute c=")?;
        // As PostgreSQL does: the text is compared with the expected header's encoding.
        if binding != b64(gs2_header.as_bytes()) {
            return Err(AuthError::Protocol(
                "channel binding does not match the gs2 header",
            ));
        }
        let client_nonce = attr(parts.next(), 'r', "expected nonce attribute r=")?;
        if client_nonce != nonce {
            return Err(AuthError::Protocol("nonce does not match"));
        }
        if !parts.all(is_extension) {
            return Err(AuthError::Protocol("malformed attribute before proof"));
        }
        let proof: [u8; 32] = unb64(proof)
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Protocol("proof is not 32 bytes of base64"))?;

        let auth_message = [&client_first_bare, ",", &server_first, ",", without_proof].concat();
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        let matches = ct_eq(&sha256(&client_key), &self.verifier.stored_key);
        if !(matches && self.known) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        self.client_key = Some(client_key);
        self.state = State::Done;
        Ok(["v=", &b64(&server_signature)].concat().into_bytes())
    }

    /// After a successful [`ScramServer::client_final`]: the client's ClientKey, recovered
    /// from its proof, for SCRAM pass-through to PostgreSQL (with [`ScramVerifier::server_key`]).
    pub fn client_key(&self) -> Option<[u8; 32]> {
        self.client_key
    }

    /// The verifier checked against (computed from the password for a plaintext secret);
    /// `None` for an unknown user.
    pub fn verifier(&self) -> Option<&ScramVerifier> {
        self.known.then_some(self.verifier.as_ref())
    }
}

/// Never prints keys.
impl fmt::Debug for ScramServer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentServerFirst { .. } => "sent server-first",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
