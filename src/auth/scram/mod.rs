//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it: the shared primitives and
//! message-attribute helpers used by the verifier, the server side and the client side.

mod client;
mod server;
mod verifier;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::AuthError;

pub use client::{ScramClient, ScramCredential};
pub use server::{ScramSecret, ScramServer};
pub use verifier::ScramVerifier;

/// The SASL mechanism name pgberth offers and uses.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Largest iteration count pgberth accepts from a server: above this, one login would burn
/// seconds of CPU (PBKDF2), which a hostile or misconfigured server could abuse.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Iteration count for verifiers pgberth creates (PostgreSQL's default).
const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length for verifiers pgberth creates (PostgreSQL's default).
const DEFAULT_SALT_LEN: usize = 16;
/// Raw bytes in a nonce pgberth generates (PostgreSQL uses 18, giving 24 base64 characters).
const NONCE_LEN: usize = 18;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok()
}

/// A 32-byte key from its base64 form, or `None` if it is not exactly 32 bytes.
fn unb64_key(s: &str) -> Option<[u8; 32]> {
    // The 44 characters of a 32-byte key decode to at most 33 bytes; longer text does not fit.
    let mut key = [0u8; 33];
    let len = STANDARD.decode_slice(s, &mut key).ok()?;
    key[..len].try_into().ok()
}

/// A fresh random nonce, base64 of [`NONCE_LEN`] random bytes (printable, no commas).
fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_LEN];
    rand::fill(&mut raw[..]);
    b64(&raw)
}

/// PostgreSQL's password normalization: ASCII passes unchanged; otherwise SASLprep, falling
/// back to the raw string when SASLprep rejects it (prohibited or unassigned characters).
fn pg_saslprep(password: &str) -> Cow<'_, str> {
    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password))
}

/// `ClientKey` and `ServerKey` from a password, salt and iteration count.
fn keys_from_password(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let prepped = pg_saslprep(password);
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(prepped.as_bytes(), salt, iterations);
    (
        hmac(&salted, &[b"Client Key"]),
        hmac(&salted, &[b"Server Key"]),
    )
}

/// The value of attribute `name` in `part` (`"r=abc"` → `"abc"`), or a protocol error.
fn attr<'a>(part: Option<&'a str>, name: char, what: &'static str) -> Result<&'a str, AuthError> {
    part.and_then(|p| p.strip_prefix(name))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(AuthError::Protocol(what))
}

/// Whether `part` has the shape of an (ignored) optional extension attribute: `x=...`.
fn is_extension(part: &str) -> bool {
    let b = part.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E (visible ASCII except comma).
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn utf8(message: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(message).map_err(|_| AuthError::Protocol("message is not valid UTF-8"))
}
