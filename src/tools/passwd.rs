//! `pgberth passwd`: read a password (without echo on a terminal, one line from a pipe) and
//! print the `userlist.txt` line for it, as a SCRAM-SHA-256 verifier or an md5 secret.

use std::io::{self, BufRead, IsTerminal};

use crate::auth::{ScramVerifier, md5_secret};

/// How the password is stored in the printed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretFormat {
    /// `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`, random 16-byte salt.
    #[default]
    Scram,
    /// `md5` + md5(password + user).
    Md5,
}

/// Errors from reading the password.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("empty password")]
    Empty,
    #[error("passwords do not match")]
    Mismatch,
    #[error("could not read the password")]
    Read(#[from] io::Error),
}

/// `"user" "secret"` for userlist.txt, with PgBouncer's quoting (`"` doubled inside quotes).
pub fn userlist_line(user: &str, password: &str, format: SecretFormat) -> String {
    let secret = match format {
        SecretFormat::Scram => ScramVerifier::generate(password).to_secret_string(),
        SecretFormat::Md5 => md5_secret(user, password),
    };
    format!("{} {}", quote(user), quote(&secret))
}

/// `"text"` with embedded `"` doubled, as userlist.txt reads it.
pub fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// Reads the password: from the terminal twice without echo when stdin is a TTY (refusing a
/// mismatch), else one line from stdin with its line ending removed. Empty is an error.
pub fn read_password() -> Result<String, PasswdError> {
    let stdin = io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        if first != second {
            return Err(PasswdError::Mismatch);
        }
        first
    } else {
        read_line(&mut stdin.lock())?
    };
    if password.is_empty() {
        return Err(PasswdError::Empty);
    }
    Ok(password)
}

/// One line from `input` without its `\n` (or `\r\n`); nothing else is trimmed.
fn read_line(input: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Userlist;

    #[test]
    fn quote_doubles_embedded_quotes() {
        assert_eq!(quote(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote("plain"), r#""plain""#);
    }

    #[test]
    fn md5_line_holds_the_md5_secret() {
        assert_eq!(
            userlist_line("bob", "secret", SecretFormat::Md5),
            r#""bob" "md521f3163f8f86fa10bdefbfbd502a8f06""#
        );
    }

    #[test]
    fn scram_line_holds_a_verifier_of_the_password() {
        let line = userlist_line(r#"we"ird"#, "secret", SecretFormat::Scram);
        let list = Userlist::parse(Path::new("userlist.txt"), &line).unwrap();
        let secret = list.get(r#"we"ird"#).expect("user parsed back").as_str();
        let verifier = ScramVerifier::parse(secret).expect("a SCRAM verifier");
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt.len(), 16);
        assert!(verifier == ScramVerifier::from_password("secret", &verifier.salt, 4096));
    }

    #[test]
    fn read_line_strips_only_the_line_ending() {
        let mut input = io::Cursor::new(" pass word \nnext\n");
        assert_eq!(read_line(&mut input).unwrap(), " pass word ");
        let mut input = io::Cursor::new("crlf\r\n");
        assert_eq!(read_line(&mut input).unwrap(), "crlf");
        let mut input = io::Cursor::new("no newline");
        assert_eq!(read_line(&mut input).unwrap(), "no newline");
        let mut input = io::Cursor::new("");
        assert_eq!(read_line(&mut input).unwrap(), "");
    }
}
