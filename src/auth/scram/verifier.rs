//! `ScramVerifier`: the stored SCRAM-SHA-256 secret (salt, iterations, StoredKey, ServerKey),
//! parsed from and printed to PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.

use std::fmt;

use super::{
    DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, SCRAM_SHA_256, b64, keys_from_password, sha256, unb64,
    unb64_key,
};
use crate::auth::ct_eq;

/// A stored SCRAM-SHA-256 secret, as in `pg_authid.rolpassword`.
#[derive(Clone)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    pub fn parse(s: &str) -> Option<ScramVerifier> {
        let rest = s.strip_prefix(SCRAM_SHA_256)?.strip_prefix('$')?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        if !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok().filter(|&i| i >= 1)?;
        Some(ScramVerifier {
            iterations,
            salt: unb64(salt)?,
            stored_key: unb64_key(stored_key)?,
            server_key: unb64_key(server_key)?,
        })
    }

    /// Computes the verifier PostgreSQL would store for `password` with this salt and
    /// iteration count (the password is SASLprep'd the way PostgreSQL does it).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let (client_key, server_key) = keys_from_password(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        }
    }

    /// A new verifier for `password` with a random 16-byte salt and 4096 iterations.
    pub fn generate(password: &str) -> ScramVerifier {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::fill(&mut salt[..]);
        ScramVerifier::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    /// The `SCRAM-SHA-256$...` form, byte-identical to what PostgreSQL stores.
    pub fn to_secret_string(&self) -> String {
        format!(
            "{SCRAM_SHA_256}${}:{}${}:{}",
            self.iterations,
            b64(&self.salt),
            b64(&self.stored_key),
            b64(&self.server_key)
        )
    }
}

/// Compares keys in constant time.
impl PartialEq for ScramVerifier {
    fn eq(&self, other: &Self) -> bool {
        let keys_equal =
            ct_eq(&self.stored_key, &other.stored_key) & ct_eq(&self.server_key, &other.server_key);
        keys_equal && self.iterations == other.iterations && self.salt == other.salt
    }
}

impl Eq for ScramVerifier {}

/// Never prints the keys.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &b64(&self.salt))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced by PostgreSQL 15: CREATE ROLE u1 PASSWORD 'pencil' (password_encryption = scram-sha-256).
    const PG_PENCIL: &str = "SCRAM-SHA-256$4096:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=";
    // PASSWORD E'\u2168\u00ADx p\u00E4ss': SASLprep maps the soft hyphen to nothing and NFKC-folds U+2168.
    const PG_SASLPREP: &str = "SCRAM-SHA-256$4096:vLk547CjkcMhbwb0AsRG8g==$80/Qx84FjxhQhzoa/NltA1KaSJ3DSabtcAUxiS5iXsw=:TgjmETh+2MEDbI5rZZWKtvy+d9nUK9AtdJRYup7HRaM=";
    // PASSWORD E'a\uFFFDb': U+FFFD is prohibited by SASLprep, so PostgreSQL uses the raw bytes.
    const PG_PROHIBITED: &str = "SCRAM-SHA-256$4096:XJwAonSpE8JkXLwelB/2cg==$KQY6yIz8M9ODf0+JNQwSfSxtQoS0RKDHnkCtdPZ8rdQ=:4GTXe6bW7OSTa3sgUuMiu4JUo5mKgy5BK3X6TaxdxYI=";

    #[test]
    fn parse_and_print_round_trip_a_postgresql_verifier() {
        let v = ScramVerifier::parse(PG_PENCIL).expect("parses");
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert_eq!(v.to_secret_string(), PG_PENCIL);
    }

    #[test]
    fn from_password_reproduces_postgresql_verifiers() {
        for (password, stored) in [
            ("pencil", PG_PENCIL),
            ("\u{2168}\u{00AD}x p\u{00E4}ss", PG_SASLPREP),
            ("a\u{FFFD}b", PG_PROHIBITED),
        ] {
            let parsed = ScramVerifier::parse(stored).expect("parses");
            let computed = ScramVerifier::from_password(password, &parsed.salt, parsed.iterations);
            assert_eq!(computed, parsed, "{password:?}");
            assert_eq!(computed.to_secret_string(), stored);
        }
    }

    #[test]
    fn from_password_matches_rfc7677_salt() {
        // RFC 7677 keys for "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        let salt = unb64("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::from_password("pencil", &salt, 4096);
        assert_eq!(
            v.to_secret_string(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn generate_uses_random_salt_and_default_iterations() {
        let a = ScramVerifier::generate("pw");
        let b = ScramVerifier::generate("pw");
        assert_eq!(a.iterations, 4096);
        assert_eq!(a.salt.len(), 16);
        assert_ne!(a.salt, b.salt);
        assert_eq!(ScramVerifier::parse(&a.to_secret_string()), Some(a));
    }

    #[test]
    fn parse_rejects_malformed_verifiers() {
        let bad = [
            "",
            "SCRAM-SHA-256",
            "SCRAM-SHA-256$",
            "md5a99489f2ba8d41137689bf5947f835e0",
            "SCRAM-SHA-1$4096:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$0:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$+4096:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$99999999999:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$4096:!!!$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$4096:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$4096:3wrkcdnytO8R9aij7mMjbg==$3wrkcdnytO8R9aij7mMjbg==:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
            "SCRAM-SHA-256$4096:3wrkcdnytO8R9aij7mMjbg==$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=",
            "SCRAM-SHA-256$4096$2e6AQK9fDjp/aHziZQJcI7hBpgkk6J0rBDD8plKDGj0=:XHDRu8BdnuJ0kFCRMWtNmVH+reJXT83RAZbRInl2glg=",
        ];
        for s in bad {
            assert!(ScramVerifier::parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn debug_does_not_print_keys() {
        let v = ScramVerifier::parse(PG_PENCIL).unwrap();
        let shown = format!("{v:?}");
        assert!(shown.contains("4096"));
        assert!(!shown.contains("2e6AQK9f"));
        assert!(!shown.contains("XHDRu8Bd"));
        assert!(!shown.contains("stored_key"));
    }
}
