//! `ScramServer`: pgberth verifying a connecting client with SCRAM-SHA-256 (no channel
//! binding), including the fake exchange for unknown users and recovery of the client's
//! ClientKey for SCRAM pass-through.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{
    DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, NONCE_LEN, ScramVerifier, attr, hmac, is_extension,
    is_printable, sha256, unb64_key, utf8, xor,
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
        /// The channel-binding attribute the client-final-message must carry: the base64 of
        /// the gs2 header, `n,,` or `y,,`.
        binding: &'static str,
        /// `client-first-message-bare "," server-first-message`: the start of the
        /// AuthMessage, whose end the client-final-message gives.
        transcript: String,
        /// Where the server-first-message starts in `transcript`.
        server_first_at: usize,
        /// Where the combined nonce is in `transcript`.
        nonce: Range<usize>,
    },
    Done,
    Failed,
}

/// The server's half of the nonce: fresh random bytes, printed in base64 when the
/// server-first-message is written; or a given text (tests use RFC vectors).
enum ServerNonce {
    Random([u8; NONCE_LEN]),
    #[cfg(test)]
    Given(String),
}

/// Server side of one SCRAM-SHA-256 exchange. Feed it the client's SASL messages in order;
/// after any error the exchange is dead and every later call fails.
pub struct ScramServer<'a> {
    verifier: Cow<'a, ScramVerifier>,
    /// `false` for an unknown user: the exchange runs normally but always fails at the end.
    known: bool,
    server_nonce: ServerNonce,
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
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        ScramServer::starting(user, secret, ServerNonce::Random(nonce))
    }

    /// As [`ScramServer::new`] with a given server nonce (tests use RFC vectors).
    #[cfg(test)]
    pub(crate) fn with_nonce(
        user: &str,
        secret: Option<ScramSecret<'a>>,
        server_nonce: String,
    ) -> ScramServer<'a> {
        ScramServer::starting(user, secret, ServerNonce::Given(server_nonce))
    }

    fn starting(
        user: &str,
        secret: Option<ScramSecret<'a>>,
        server_nonce: ServerNonce,
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
    pub fn client_first(&mut self, client_first_message: &[u8]) -> Result<&[u8], AuthError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(AuthError::Protocol("unexpected client-first-message"));
        }
        match self.handle_client_first(client_first_message) {
            Ok(state) => self.state = state,
            Err(e) => {
                self.state = State::Failed;
                return Err(e);
            }
        }
        let State::SentServerFirst {
            transcript,
            server_first_at,
            ..
        } = &self.state
        else {
            unreachable!("just set");
        };
        Ok(&transcript.as_bytes()[*server_first_at..])
    }

    fn handle_client_first(&self, message: &[u8]) -> Result<State, AuthError> {
        let message = utf8(message)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(AuthError::Protocol("client-first-message is truncated"))?;
        let binding = match flag {
            // base64("n,,") and base64("y,,").
            "n" => "biws",
            "y" => "eSws",
            _ if flag.starts_with("p=") => return Err(AuthError::UnsupportedChannelBinding),
            _ => return Err(AuthError::Protocol("invalid channel-binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Protocol("client-first-message is truncated"))?;
        if !authzid.is_empty() {
            return Err(AuthError::Protocol(
                "authorization identity is not supported",
            ));
        }
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

        // One string, written once, holds everything later steps need: it is made at every
        // login. 96 bytes cover the server-first-message's nonce, salt and iteration count.
        let mut transcript = String::with_capacity(bare.len() + client_nonce.len() + 96);
        transcript.push_str(bare);
        transcript.push(',');
        let server_first_at = transcript.len();
        transcript.push_str("r=");
        let nonce_start = transcript.len();
        transcript.push_str(client_nonce);
        match &self.server_nonce {
            ServerNonce::Random(bytes) => STANDARD.encode_string(bytes, &mut transcript),
            #[cfg(test)]
            ServerNonce::Given(text) => transcript.push_str(text),
        }
        let nonce = nonce_start..transcript.len();
        transcript.push_str(",s=");
        STANDARD.encode_string(&self.verifier.salt, &mut transcript);
        // Writing to a String cannot fail.
        let _ = write!(transcript, ",i={}", self.verifier.iterations);
        Ok(State::SentServerFirst {
            binding,
            transcript,
            server_first_at,
            nonce,
        })
    }

    /// Handles the client-final-message (the data of SASLResponse): verifies the proof and
    /// returns the server-final-message `v=...` (to send in AuthenticationSASLFinal).
    pub fn client_final(&mut self, client_final_message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentServerFirst {
            binding,
            transcript,
            nonce,
            ..
        } = state
        else {
            return Err(AuthError::Protocol("unexpected client-final-message"));
        };
        let message = utf8(client_final_message)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(AuthError::Protocol("client-final-message has no proof"))?;
        let mut parts = without_proof.split(',');
        let client_binding = attr(parts.next(), 'c', "expected channel binding attribute c=")?;
        // As PostgreSQL does: the text is compared with the expected header's encoding.
        if client_binding != binding {
            return Err(AuthError::Protocol(
                "channel binding does not match the gs2 header",
            ));
        }
        let client_nonce = attr(parts.next(), 'r', "expected nonce attribute r=")?;
        if client_nonce != &transcript[nonce] {
            return Err(AuthError::Protocol("nonce does not match"));
        }
        if !parts.all(is_extension) {
            return Err(AuthError::Protocol("malformed attribute before proof"));
        }
        let proof =
            unb64_key(proof).ok_or(AuthError::Protocol("proof is not 32 bytes of base64"))?;

        let auth_message: [&[u8]; 3] = [transcript.as_bytes(), b",", without_proof.as_bytes()];
        let client_signature = hmac(&self.verifier.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        let matches = ct_eq(&sha256(&client_key), &self.verifier.stored_key);
        if !(matches && self.known) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &auth_message);
        self.client_key = Some(client_key);
        self.state = State::Done;
        let mut server_final = String::with_capacity(46);
        server_final.push_str("v=");
        STANDARD.encode_string(server_signature, &mut server_final);
        Ok(server_final.into_bytes())
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
