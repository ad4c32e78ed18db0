//! Parsers for setting values: booleans, integers, durations, octal modes,
//! comma-separated lists and the `PoolMode` / `AuthType` enums.
//!
//! Each parser returns `Err(expected)` where `expected` describes the allowed
//! values; the caller turns it into a `ConfigError::InvalidValue` with file:line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a value should have looked like, e.g. "one of: session, transaction, statement".
pub(crate) type Expected = String;

/// How a pool lends server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    pub const ALL: [PoolMode; 3] = [
        PoolMode::Session,
        PoolMode::Transaction,
        PoolMode::Statement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolMode {
    type Err = Expected;
    fn from_str(s: &str) -> Result<PoolMode, Expected> {
        parse_enum(s, &PoolMode::ALL, |m| m.as_str())
    }
}

/// How clients authenticate to pgberth (`auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Any,
    Trust,
    Plain,
    Md5,
    ScramSha256,
    Cert,
    Hba,
    Pam,
}

impl AuthType {
    pub const ALL: [AuthType; 8] = [
        AuthType::Any,
        AuthType::Trust,
        AuthType::Plain,
        AuthType::Md5,
        AuthType::ScramSha256,
        AuthType::Cert,
        AuthType::Hba,
        AuthType::Pam,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Any => "any",
            AuthType::Trust => "trust",
            AuthType::Plain => "plain",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Cert => "cert",
            AuthType::Hba => "hba",
            AuthType::Pam => "pam",
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthType {
    type Err = Expected;
    fn from_str(s: &str) -> Result<AuthType, Expected> {
        parse_enum(s, &AuthType::ALL, |m| m.as_str())
    }
}

/// TLS requirement on one side (`client_tls_sslmode`, `server_tls_sslmode`), as in libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Expected;
    fn from_str(s: &str) -> Result<SslMode, Expected> {
        parse_enum(s, &SslMode::ALL, |m| m.as_str())
    }
}

/// Case-insensitive lookup of `s` among `all` by their names.
fn parse_enum<T: Copy>(
    s: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, Expected> {
    all.iter()
        .copied()
        .find(|&v| name(v).eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
            format!("one of: {}", names.join(", "))
        })
}

/// `1/0`, `yes/no`, `on/off`, `true/false`, case-insensitive.
pub(crate) fn parse_bool(s: &str) -> Result<bool, Expected> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err("a boolean: 1/0, yes/no, on/off, true/false".to_string()),
    }
}

/// A decimal integer in `0..=max`.
pub(crate) fn parse_uint(s: &str, max: u64) -> Result<u64, Expected> {
    let expected = || format!("an integer from 0 to {max}");
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(expected()),
    }
}

pub(crate) fn parse_u32(s: &str) -> Result<u32, Expected> {
    parse_uint(s, u32::MAX as u64).map(|n| n as u32)
}

pub(crate) fn parse_u16(s: &str) -> Result<u16, Expected> {
    parse_uint(s, u16::MAX as u64).map(|n| n as u16)
}

/// PgBouncer's signed `int` settings: a non-negative value up to `i32::MAX`.
pub(crate) fn parse_count(s: &str) -> Result<u32, Expected> {
    parse_uint(s, i32::MAX as u64).map(|n| n as u32)
}

/// A file mode in octal, e.g. `0777` or `777` (at most `07777`).
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, Expected> {
    let expected = || "an octal file mode such as 0777".to_string();
    let s = s.trim();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() {
        return Err(expected());
    }
    match u32::from_str_radix(digits, 8) {
        Ok(n) if n <= 0o7777 => Ok(n),
        _ => Err(expected()),
    }
}

const DURATION_EXPECTED: &str =
    "a duration in seconds such as 30 or 0.5, or with a unit: us, ms, s, min, h, d";

/// A PgBouncer time setting: seconds as a (possibly fractional) number, e.g.
/// `3600`, `0.5`; a unit suffix (`us`, `ms`, `s`, `min`, `h`, `d`) is also accepted.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, Expected> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => 1.0,
        "us" => 1e-6,
        "ms" => 1e-3,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(DURATION_EXPECTED.to_string()),
    };
    let value: f64 = number.parse().map_err(|_| DURATION_EXPECTED.to_string())?;
    if !value.is_finite() || value < 0.0 {
        return Err(DURATION_EXPECTED.to_string());
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| DURATION_EXPECTED.to_string())
}

/// A comma-separated list; items are trimmed and empty items dropped.
pub(crate) fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// `None` for an empty value, else the value.
pub(crate) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_pgbouncer_and_common_spellings() {
        for t in ["1", "yes", "ON", "true", " True "] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "no", "off", "FALSE"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert!(parse_bool("2").unwrap_err().contains("yes/no"));
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(parse_u16("6432"), Ok(6432));
        assert_eq!(parse_u16("0"), Ok(0));
        assert!(parse_u16("65536").unwrap_err().contains("0 to 65535"));
        assert!(parse_u32("-1").is_err());
        assert!(parse_u32("12abc").is_err());
        assert!(parse_u32("").is_err());
        assert_eq!(parse_count("2147483647"), Ok(2147483647));
        assert!(parse_count("2147483648").is_err());
    }

    #[test]
    fn durations_take_fractional_seconds_and_units() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3600.0"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2 h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["", "-1", "abc", "5 parsecs", "1e400", "."] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_mode("0777"), Ok(0o777));
        assert_eq!(parse_octal_mode("777"), Ok(0o777));
        assert_eq!(parse_octal_mode("0600"), Ok(0o600));
        assert!(parse_octal_mode("0999").is_err());
        assert!(parse_octal_mode("77777").is_err());
    }

    #[test]
    fn enums_parse_case_insensitively_and_list_allowed_values() {
        assert_eq!("Transaction".parse::<PoolMode>(), Ok(PoolMode::Transaction));
        assert_eq!(
            "sesion".parse::<PoolMode>(),
            Err("one of: session, transaction, statement".to_string())
        );
        assert_eq!(
            "scram-sha-256".parse::<AuthType>(),
            Ok(AuthType::ScramSha256)
        );
        for t in AuthType::ALL {
            assert_eq!(t.to_string().parse::<AuthType>(), Ok(t));
        }
        assert_eq!(PoolMode::Statement.to_string(), "statement");
    }

    #[test]
    fn lists_are_comma_separated_and_trimmed() {
        assert_eq!(parse_list(" a, b ,,c "), vec!["a", "b", "c"]);
        assert!(parse_list("").is_empty());
    }
}
