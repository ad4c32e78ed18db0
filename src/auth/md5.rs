//! PostgreSQL's md5 password scheme: the stored `md5<hex>` secret, the salted response a
//! client sends, and its constant-time verification.

use ::md5::{Digest, Md5};

use super::ct_eq;

/// Lowercase hex of an MD5 digest of the concatenation of `parts`.
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(32);
    for byte in digest.iter() {
        out.push(char::from_digit(u32::from(byte >> 4), 16).expect("nibble"));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).expect("nibble"));
    }
    out
}

/// The stored form of an md5 password, as in `pg_authid` and `userlist.txt`:
/// `"md5" + hex(md5(password + user))`.
pub fn md5_secret(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The response a client sends to an md5 challenge, from the stored secret:
/// `"md5" + hex(md5(hex_part_of_secret + salt))`.
///
/// A secret without the `md5` prefix is taken to be the bare hex part.
pub fn md5_response(md5_secret: &str, salt: [u8; 4]) -> String {
    let hex_part = md5_secret.strip_prefix("md5").unwrap_or(md5_secret);
    format!("md5{}", md5_hex(&[hex_part.as_bytes(), &salt]))
}

/// The response a client sends to an md5 challenge, from the plaintext password.
pub fn md5_response_from_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    md5_response(&md5_secret(user, password), salt)
}

/// Checks a client's md5 response against the stored secret, in constant time.
///
/// A secret that is not of the form `md5` + 32 hex digits never verifies.
pub fn verify_md5_response(md5_secret: &str, salt: [u8; 4], response: &str) -> bool {
    let well_formed = md5_secret.len() == 35
        && md5_secret.starts_with("md5")
        && md5_secret[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return false;
    }
    let expected = md5_response(md5_secret, salt);
    ct_eq(expected.as_bytes(), response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_secret_matches_postgresql() {
        // echo -n secretpostgres | md5sum
        assert_eq!(
            md5_secret("postgres", "secret"),
            "md553f48b7c4b76a86ce72276c5755f217d"
        );
        // CREATE ROLE postgres2 PASSWORD 'secret' with password_encryption = md5 (PostgreSQL 15)
        assert_eq!(
            md5_secret("postgres2", "secret"),
            "md5a99489f2ba8d41137689bf5947f835e0"
        );
    }

    #[test]
    fn md5_response_matches_known_vector() {
        // python: hashlib.md5(b'53f48b7c...217d' + bytes([1,2,3,4])).hexdigest()
        let secret = md5_secret("postgres", "secret");
        assert_eq!(
            md5_response(&secret, [1, 2, 3, 4]),
            "md5bb41a296aab6baccb36ff243a562abff"
        );
    }

    #[test]
    fn md5_response_round_trip() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let secret = md5_secret("alice", "s3cret");
        let response = md5_response_from_password("alice", "s3cret", salt);
        assert_eq!(response, md5_response(&secret, salt));
        assert!(verify_md5_response(&secret, salt, &response));
    }

    #[test]
    fn md5_wrong_response_is_rejected() {
        let salt = [1, 2, 3, 4];
        let secret = md5_secret("alice", "s3cret");
        let wrong_password = md5_response_from_password("alice", "nope", salt);
        let wrong_salt = md5_response_from_password("alice", "s3cret", [4, 3, 2, 1]);
        let wrong_user = md5_response_from_password("bob", "s3cret", salt);
        assert!(!verify_md5_response(&secret, salt, &wrong_password));
        assert!(!verify_md5_response(&secret, salt, &wrong_salt));
        assert!(!verify_md5_response(&secret, salt, &wrong_user));
        assert!(!verify_md5_response(&secret, salt, ""));
        assert!(!verify_md5_response(&secret, salt, "md5"));
    }

    #[test]
    fn md5_malformed_secret_never_verifies() {
        let salt = [1, 2, 3, 4];
        for secret in [
            "",
            "md5",
            "plaintext",
            "md5zz99489f2ba8d41137689bf5947f835e0",
        ] {
            let response = md5_response(secret, salt);
            assert!(!verify_md5_response(secret, salt, &response), "{secret}");
        }
    }
}
