//! `auth_file` (userlist.txt): `"user" "secret"` lines and secret classification.
//!
//! Inside quotes `""` is a literal `"`. Blank lines and lines starting with `;`
//! or `#` are ignored, as is anything after the second quoted string. Secrets
//! never appear in `Debug` output or in error messages.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::error::ConfigError;
use crate::auth::ScramVerifier;

/// A stored password: plaintext, an md5 hash or a SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// The whole `md5<32 hex digits>` string.
    Md5(String),
    /// A SCRAM-SHA-256 verifier, parsed once when the secret is read rather than at every
    /// login. Boxed: the other variants are a `String` each.
    Scram(Box<StoredScram>),
}

/// A stored `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredScram {
    /// The whole string, as stored.
    pub text: String,
    /// Its parts; `None` when the string does not parse, and then every login as the user
    /// fails as an unknown user's would.
    pub verifier: Option<ScramVerifier>,
}

impl Secret {
    /// Classifies a secret the way PgBouncer does.
    pub fn classify(secret: &str) -> Secret {
        let is_md5 = secret.len() == 35
            && secret.starts_with("md5")
            && secret[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if is_md5 {
            Secret::Md5(secret.to_string())
        } else if secret.starts_with("SCRAM-SHA-256$") {
            Secret::Scram(Box::new(StoredScram {
                text: secret.to_string(),
                verifier: ScramVerifier::parse(secret),
            }))
        } else {
            Secret::Plain(secret.to_string())
        }
    }

    /// The secret as stored. Never log this.
    pub fn as_str(&self) -> &str {
        match self {
            Secret::Plain(s) | Secret::Md5(s) => s,
            Secret::Scram(scram) => &scram.text,
        }
    }

    /// "plain", "md5" or "scram-sha-256": safe to log.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram-sha-256",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            Secret::Plain(_) => "Plain",
            Secret::Md5(_) => "Md5",
            Secret::Scram(_) => "Scram",
        };
        write!(f, "Secret::{variant}(<redacted>)")
    }
}

/// The users and secrets of an `auth_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Userlist {
    entries: HashMap<String, Secret>,
}

impl Userlist {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Userlist, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
        Userlist::parse(path, &text)
    }

    /// Parses userlist text; `path` is only used in error messages.
    /// A user listed twice keeps the last secret, as in PgBouncer.
    pub fn parse(path: &Path, text: &str) -> Result<Userlist, ConfigError> {
        let mut entries = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let (user, secret) = parse_line(line)
                .ok_or_else(|| ConfigError::invalid(path, index + 1, LINE_EXPECTED))?;
            entries.insert(user, Secret::classify(&secret));
        }
        Ok(Userlist { entries })
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.entries.get(user)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// User names, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

impl FromIterator<(String, Secret)> for Userlist {
    fn from_iter<I: IntoIterator<Item = (String, Secret)>>(iter: I) -> Userlist {
        Userlist {
            entries: iter.into_iter().collect(),
        }
    }
}

const LINE_EXPECTED: &str =
    "malformed userlist line (expected \"user\" \"secret\", with \"\" for a literal quote)";

/// `"user" "secret" [ignored…]` → (user, secret).
fn parse_line(line: &str) -> Option<(String, String)> {
    let (user, rest) = quoted(line)?;
    let (secret, _ignored) = quoted(rest.trim_start())?;
    Some((user, secret))
}

/// Reads one `"…"` string at the start of `s`; returns it and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
        } else if body[i + 1..].starts_with('"') {
            out.push('"');
            chars.next();
        } else {
            return Some((out, &body[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &str = "md5a3556571e93b0d20722ba62be61e8c2d";
    const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy";

    #[test]
    fn parses_quoting_comments_and_trailing_text() {
        let text = format!(
            "; comment\n# comment\n\n\"alice\" \"{MD5}\"\n\"bob\"\"s\" \"pa\"\"ss word\" trailing junk\n  \"carol\"   \"{SCRAM}\"\n\"dave\" \"\"\n"
        );
        let list = Userlist::parse(Path::new("u.txt"), &text).unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list.get("alice"), Some(&Secret::Md5(MD5.to_string())));
        assert_eq!(
            list.get("bob\"s"),
            Some(&Secret::Plain("pa\"ss word".to_string()))
        );
        assert_eq!(list.get("carol"), Some(&Secret::classify(SCRAM)));
        assert_eq!(list.get("carol").map(Secret::as_str), Some(SCRAM));
        assert_eq!(list.get("dave"), Some(&Secret::Plain(String::new())));
        assert_eq!(list.get("eve"), None);
    }

    #[test]
    fn classification_follows_pgbouncer() {
        assert_eq!(Secret::classify(MD5).kind(), "md5");
        // Wrong length or non-hex: plaintext that happens to start with md5.
        assert_eq!(Secret::classify("md5abc").kind(), "plain");
        assert_eq!(
            Secret::classify("md5zz556571e93b0d20722ba62be61e8c2d").kind(),
            "plain"
        );
        assert_eq!(Secret::classify(SCRAM).kind(), "scram-sha-256");
        assert_eq!(Secret::classify("scram-sha-256$x").kind(), "plain");
    }

    #[test]
    fn a_scram_secret_is_parsed_once_when_read() {
        let verifier = ScramVerifier::generate("pw");
        let Secret::Scram(stored) = Secret::classify(&verifier.to_secret_string()) else {
            panic!("a SCRAM verifier classifies as scram-sha-256");
        };
        assert_eq!(stored.verifier, Some(verifier));
        // Keys that are not 32 bytes: kept as text, with no verifier to log in with.
        let Secret::Scram(bad) = Secret::classify(SCRAM) else {
            panic!("the prefix decides the kind");
        };
        assert_eq!((bad.text.as_str(), bad.verifier), (SCRAM, None));
    }

    #[test]
    fn malformed_lines_are_errors_with_file_and_line_but_no_secret() {
        for bad in [
            "alice \"pw\"",
            "\"alice\" pw",
            "\"alice\"",
            "\"alice\" \"unterminated-secret",
        ] {
            let text = format!("\"ok\" \"x\"\n{bad}\n");
            let err = Userlist::parse(Path::new("/etc/userlist.txt"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/etc/userlist.txt:2: malformed"), "{err}");
            assert!(!err.contains("unterminated-secret"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::Plain("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret::Plain(<redacted>)");
        let list: Userlist = [("u".to_string(), Secret::classify(MD5))]
            .into_iter()
            .collect();
        let debug = format!("{list:?}");
        assert!(!debug.contains(&MD5[3..]), "{debug}");
        assert!(debug.contains("Secret::Md5(<redacted>)"), "{debug}");
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"u\" \"p\"\n").unwrap();
        assert_eq!(Userlist::load(&path).unwrap().len(), 1);
        let err = Userlist::load(&dir.path().join("missing.txt")).unwrap_err();
        assert!(
            err.to_string().contains("missing.txt: cannot read: "),
            "{err}"
        );
    }
}
