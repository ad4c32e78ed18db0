//! Builders for the messages pgberth writes itself, to clients (authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery) and to servers (startup, password, SASL,
//! Query, Terminate, CancelRequest). Each appends to a caller-owned buffer.

use super::TxStatus;

/// Writes the big-endian length of the message that starts at `start` (tag byte included
/// when `out[start]` is a tag) into its length field.
pub(crate) fn patch_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Starts a tagged message: the tag and a length to patch with [`patch_len`].
pub(crate) fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    start
}

/// Appends a NUL-terminated string.
pub(crate) fn cstr(out: &mut Vec<u8>, s: &str) {
    cbytes(out, s.as_bytes());
}

/// Appends NUL-terminated bytes (names taken from a client's message).
pub(crate) fn cbytes(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// A Close (`kind` `S` statement or `P` portal).
pub fn close(out: &mut Vec<u8>, kind: u8, name: &[u8]) {
    let start = begin(out, b'C');
    out.push(kind);
    cbytes(out, name);
    patch_len(out, start);
}

/// A Describe (`kind` `S` statement or `P` portal).
pub fn describe(out: &mut Vec<u8>, kind: u8, name: &[u8]) {
    let start = begin(out, b'D');
    out.push(kind);
    cbytes(out, name);
    patch_len(out, start);
}

/// `AuthenticationOk` and the other `R` messages, by code.
fn auth(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    let start = begin(out, b'R');
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(data);
    patch_len(out, start);
}

pub fn auth_ok(out: &mut Vec<u8>) {
    auth(out, 0, &[]);
}

pub fn auth_cleartext(out: &mut Vec<u8>) {
    auth(out, 3, &[]);
}

pub fn auth_md5(out: &mut Vec<u8>, salt: [u8; 4]) {
    auth(out, 5, &salt);
}

pub fn auth_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    let start = begin(out, b'R');
    out.extend_from_slice(&10u32.to_be_bytes());
    for m in mechanisms {
        cstr(out, m);
    }
    out.push(0);
    patch_len(out, start);
}

pub fn auth_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    auth(out, 11, data);
}

pub fn auth_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    auth(out, 12, data);
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    let start = begin(out, b'S');
    cstr(out, name);
    cstr(out, value);
    patch_len(out, start);
}

pub fn backend_key_data(out: &mut Vec<u8>, pid: u32, secret: u32) {
    let start = begin(out, b'K');
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    patch_len(out, start);
}

pub fn ready_for_query(out: &mut Vec<u8>, status: TxStatus) {
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, status.as_byte()]);
}

/// A v3 StartupMessage with the given parameters (untagged: the length comes first).
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&super::startup::PROTOCOL_V3.to_be_bytes());
    for (k, v) in params {
        cstr(out, k);
        cstr(out, v);
    }
    out.push(0);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(out: &mut Vec<u8>, pid: u32, secret: u32) {
    out.extend_from_slice(&16u32.to_be_bytes());
    out.extend_from_slice(&super::startup::CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
}

/// A PasswordMessage carrying a NUL-terminated password or md5 response.
pub fn password(out: &mut Vec<u8>, password: &str) {
    let start = begin(out, b'p');
    cstr(out, password);
    patch_len(out, start);
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let start = begin(out, b'p');
    cstr(out, mechanism);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    patch_len(out, start);
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    let start = begin(out, b'p');
    out.extend_from_slice(data);
    patch_len(out, start);
}

pub fn query(out: &mut Vec<u8>, sql: &str) {
    let start = begin(out, b'Q');
    cstr(out, sql);
    patch_len(out, start);
}

pub fn terminate(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_has_length_version_and_terminator() {
        let mut out = Vec::new();
        startup_message(&mut out, &[("user", "bob")]);
        assert_eq!(&out[..4], &(out.len() as u32).to_be_bytes());
        assert_eq!(&out[4..8], &[0, 3, 0, 0]);
        assert_eq!(&out[8..], b"user\0bob\0\0");
    }

    #[test]
    fn auth_md5_carries_the_salt() {
        let mut out = Vec::new();
        auth_md5(&mut out, [1, 2, 3, 4]);
        assert_eq!(out, [b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4]);
    }

    #[test]
    fn query_is_nul_terminated() {
        let mut out = Vec::new();
        query(&mut out, "select 1");
        assert_eq!(out, b"Q\0\0\0\x0dselect 1\0");
    }
}
