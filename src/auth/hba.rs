//! `auth_hba_file` rules (`auth_type = hba`): a subset of pg_hba.conf, parsed into
//! [`HbaRules`] and evaluated first match wins. Reads the file and its `@file` name lists;
//! no other I/O.
//!
//! What pgberth accepts, and where it differs from PostgreSQL:
//! - Records `local`, `host`, `hostssl`, `hostnossl`. `hostgssenc` and `hostnogssenc`
//!   parse but never match (pgberth has no GSSAPI encryption).
//! - Fields are separated by whitespace; lists by commas (spaces around commas allowed);
//!   `#` starts a comment outside quotes. In quotes, `""` is a literal `"`, and a quoted
//!   token is never a keyword: `"all"` is the database named all. Mixing quoted and
//!   unquoted parts in one token (`a"b c"`) concatenates them and counts as quoted.
//! - Database field: names, `all`, `sameuser`, `replication` (never matches: pgberth
//!   serves no replication connections) and `@file`. `samerole` / `samegroup` are errors
//!   (pgberth does not know role membership).
//! - User field: names, `all`, `@file`. `+group` is an error. `sameuser` there is a
//!   literal user name, as in PostgreSQL.
//! - `@file` lists names separated by whitespace or commas, with `#` comments; keywords
//!   and nested `@file`s work there too. A relative name is resolved against the directory
//!   of the file that mentions it. Errors inside it point at the included file's line.
//! - Unquoted names starting with `/` (PostgreSQL 16 regular expressions) are errors.
//! - Address: `all`, CIDR (`10.0.0.0/8`, `::1/128`) or an IP followed by a netmask field
//!   (contiguous, same family). Bits of the address outside the mask are ignored, as in
//!   PostgreSQL. An IPv4 rule matches an IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`) and an
//!   IPv6 rule matches an IPv4 peer through its mapped form. Host names, `samehost` and
//!   `samenet` are errors.
//! - Methods: `trust`, `reject`, `md5`, `password`, `scram-sha-256`, `cert` (hostssl
//!   records only) and `peer` (local records only), as PostgreSQL enforces. Anything after
//!   the method (`map=…`, `clientcert=…`) is an error: no option is silently ignored.
//! - Keywords are case-sensitive, as in PostgreSQL.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::iter::Peekable;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::Chars;

/// How deep `@file` lists may nest (a file including itself stops here).
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// The parsed rules of an `auth_hba_file`, in file order.
#[derive(Debug, Clone)]
pub struct HbaRules {
    rules: Vec<HbaRule>,
}

/// What a rule is matched against: the client's transport, address and startup names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HbaConnection<'a> {
    pub transport: Transport,
    /// The peer address of a TCP client (`None` for Unix sockets, or when unknown: then
    /// only rules with address `all` match).
    pub addr: Option<IpAddr>,
    pub database: &'a str,
    pub user: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp { tls: bool },
}

/// The authentication method a rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    Password,
    Cert,
    Peer,
}

impl HbaMethod {
    /// The pg_hba.conf keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Reject => "reject",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
            HbaMethod::Password => "password",
            HbaMethod::Cert => "cert",
            HbaMethod::Peer => "peer",
        }
    }

    fn from_keyword(s: &str) -> Option<HbaMethod> {
        Some(match s {
            "trust" => HbaMethod::Trust,
            "reject" => HbaMethod::Reject,
            "md5" => HbaMethod::Md5,
            "scram-sha-256" => HbaMethod::ScramSha256,
            "password" => HbaMethod::Password,
            "cert" => HbaMethod::Cert,
            "peer" => HbaMethod::Peer,
            _ => return None,
        })
    }
}

impl fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an hba file could not be loaded. Displays as `path:line: message`, or
/// `path: cannot read: error` when the file itself cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    /// The hba file could not be read (missing, permissions, not UTF-8).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An `@file` named on `file:line` could not be read.
    #[error("{}:{line}: cannot read @file {}: {source}", file.display(), included.display())]
    Include {
        file: PathBuf,
        line: usize,
        included: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A line that is not valid (or not supported) hba syntax.
    #[error("{}:{line}: {problem}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        problem: HbaProblem,
    },
}

impl HbaError {
    /// The file and line the error points at (line 0 for an unreadable hba file).
    pub fn location(&self) -> (&Path, usize) {
        match self {
            HbaError::Io { path, .. } => (path, 0),
            HbaError::Include { file, line, .. } | HbaError::Syntax { file, line, .. } => {
                (file, *line)
            }
        }
    }
}

/// What is wrong with an hba line. Payloads are the offending tokens from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HbaProblem {
    #[error("unterminated quoted field")]
    UnterminatedQuote,
    #[error("empty entry in a comma-separated list")]
    EmptyListItem,
    #[error(
        "unknown record type \"{0}\" (expected local, host, hostssl, hostnossl, hostgssenc or hostnogssenc)"
    )]
    UnknownRecordType(String),
    #[error("missing {0} field")]
    MissingField(&'static str),
    #[error("the {0} field must be a single value, not a list")]
    NotSingle(&'static str),
    #[error("\"{token}\" is not supported: {reason}")]
    Unsupported { token: String, reason: &'static str },
    #[error("\"@\" must be followed by a file name")]
    EmptyInclude,
    #[error("@file lists nested more than {0} levels deep (include cycle?)")]
    IncludeDepth(usize),
    #[error(
        "\"{0}\" is not an IP address or CIDR range; host names are not supported \
         (write e.g. 10.0.0.0/8, ::1/128 or all)"
    )]
    HostName(String),
    #[error("invalid CIDR prefix length in \"{0}\" (expected 0-32 for IPv4, 0-128 for IPv6)")]
    InvalidPrefix(String),
    #[error("missing netmask after IP address \"{0}\" (or write it in CIDR form, e.g. {0}/32)")]
    MissingNetmask(String),
    #[error("invalid netmask \"{mask}\" after IP address \"{address}\": {reason}")]
    InvalidNetmask {
        address: String,
        mask: String,
        reason: &'static str,
    },
    #[error(
        "unsupported authentication method \"{0}\" (supported: trust, reject, md5, password, \
         scram-sha-256, cert, peer)"
    )]
    UnknownMethod(String),
    #[error("{method} authentication is only supported on {allowed} records")]
    MethodNotAllowed {
        method: HbaMethod,
        allowed: &'static str,
    },
    #[error("authentication option \"{0}\" is not supported (pgberth accepts no options)")]
    UnsupportedOption(String),
    #[error("unexpected field \"{0}\" after the authentication method")]
    UnexpectedField(String),
}

impl HbaRules {
    /// Reads and parses the file at `path` (and the `@file`s it names).
    pub fn load(path: &Path) -> Result<HbaRules, HbaError> {
        let text = std::fs::read_to_string(path).map_err(|source| HbaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        HbaRules::parse(path, &text)
    }

    /// Parses hba text. `path` names the file in errors, and relative `@file`s are read
    /// from its directory.
    pub fn parse(path: &Path, text: &str) -> Result<HbaRules, HbaError> {
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = At {
                file: path,
                line: index + 1,
            };
            let fields = split_line(line).map_err(|p| at.error(p))?;
            if !fields.is_empty() {
                rules.push(parse_rule(at, fields)?);
            }
        }
        Ok(HbaRules { rules })
    }

    /// The method of the first rule matching the connection, or `None` when no rule
    /// matches (the client must be rejected).
    pub fn method_for(&self, conn: &HbaConnection<'_>) -> Option<HbaMethod> {
        self.rules
            .iter()
            .find(|r| r.matches(conn))
            .map(|r| r.method)
    }

    /// The number of rules (blank and comment lines excluded).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Debug, Clone)]
struct HbaRule {
    record: Record,
    databases: NameList,
    users: NameList,
    address: Address,
    method: HbaMethod,
}

impl HbaRule {
    fn matches(&self, conn: &HbaConnection<'_>) -> bool {
        let transport = match (self.record, conn.transport) {
            (Record::Local, Transport::Unix) => true,
            (Record::Host, Transport::Tcp { .. }) => true,
            (Record::HostSsl, Transport::Tcp { tls }) => tls,
            (Record::HostNoSsl, Transport::Tcp { tls }) => !tls,
            _ => false,
        };
        transport
            && (self.record == Record::Local || self.address.matches(conn.addr))
            && (self.databases.contains(conn.database)
                || (self.databases.sameuser && conn.database == conn.user))
            && self.users.contains(conn.user)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
    /// `hostgssenc` / `hostnogssenc`: parsed, never matched.
    NeverMatches,
}

/// The names of a database or user field, with `@file`s expanded.
#[derive(Debug, Clone, Default)]
struct NameList {
    all: bool,
    /// Database field only: the database named like the user.
    sameuser: bool,
    names: BTreeSet<String>,
}

impl NameList {
    fn contains(&self, name: &str) -> bool {
        self.all || self.names.contains(name)
    }
}

/// A rule's address; networks are stored with the bits outside the mask cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    All,
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Address {
    fn matches(self, peer: Option<IpAddr>) -> bool {
        match (self, peer) {
            (Address::All, _) => true,
            (_, None) => false,
            (Address::V4 { net, mask }, Some(ip)) => {
                let v4 = match ip {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(a) => a.to_ipv4_mapped(),
                };
                v4.is_some_and(|a| u32::from(a) & mask == net)
            }
            (Address::V6 { net, mask }, Some(ip)) => {
                let v6 = match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                    IpAddr::V6(a) => a,
                };
                u128::from(v6) & mask == net
            }
        }
    }

    fn new(ip: IpAddr, mask: IpAddr) -> Option<Address> {
        match (ip, mask) {
            (IpAddr::V4(ip), IpAddr::V4(mask)) => {
                let mask = u32::from(mask);
                let net = u32::from(ip) & mask;
                (mask.leading_ones() + mask.trailing_zeros() == 32)
                    .then_some(Address::V4 { net, mask })
            }
            (IpAddr::V6(ip), IpAddr::V6(mask)) => {
                let mask = u128::from(mask);
                let net = u128::from(ip) & mask;
                (mask.leading_ones() + mask.trailing_zeros() == 128)
                    .then_some(Address::V6 { net, mask })
            }
            _ => None,
        }
    }

    fn with_prefix(ip: IpAddr, prefix: u32) -> Option<Address> {
        match ip {
            IpAddr::V4(ip) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                Some(Address::V4 {
                    net: u32::from(ip) & mask,
                    mask,
                })
            }
            IpAddr::V6(ip) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                Some(Address::V6 {
                    net: u128::from(ip) & mask,
                    mask,
                })
            }
            _ => None,
        }
    }
}

/// A file and line, to build errors.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    file: &'a Path,
    line: usize,
}

impl At<'_> {
    fn error(self, problem: HbaProblem) -> HbaError {
        HbaError::Syntax {
            file: self.file.to_path_buf(),
            line: self.line,
            problem,
        }
    }
}

/// One word of a line, unquoted; `quoted` makes keywords literal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    quoted: bool,
}

/// Splits a line into fields, each a comma-separated list of tokens; drops the comment.
fn split_line(line: &str) -> Result<Vec<Vec<Token>>, HbaProblem> {
    let mut fields: Vec<Vec<Token>> = Vec::new();
    let mut chars = line.chars().peekable();
    let mut after_comma = false;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => break,
            Some(',') => {
                if after_comma || fields.is_empty() {
                    return Err(HbaProblem::EmptyListItem);
                }
                chars.next();
                after_comma = true;
            }
            Some(_) => {
                let token = read_token(&mut chars)?;
                match fields.last_mut() {
                    Some(field) if after_comma => field.push(token),
                    _ => fields.push(vec![token]),
                }
                after_comma = false;
            }
        }
    }
    if after_comma {
        return Err(HbaProblem::EmptyListItem);
    }
    Ok(fields)
}

/// Reads one token: up to whitespace, `,` or `#` outside quotes.
fn read_token(chars: &mut Peekable<Chars<'_>>) -> Result<Token, HbaProblem> {
    let mut text = String::new();
    let mut quoted = false;
    let mut in_quote = false;
    while let Some(&c) = chars.peek() {
        if !in_quote && (c.is_whitespace() || c == ',' || c == '#') {
            break;
        }
        chars.next();
        match (c, in_quote) {
            ('"', true) if chars.next_if_eq(&'"').is_some() => text.push('"'),
            ('"', _) => {
                in_quote = !in_quote;
                quoted = true;
            }
            _ => text.push(c),
        }
    }
    if in_quote {
        return Err(HbaProblem::UnterminatedQuote);
    }
    Ok(Token { text, quoted })
}

fn parse_rule(at: At<'_>, fields: Vec<Vec<Token>>) -> Result<HbaRule, HbaError> {
    let mut fields = fields.into_iter();
    let mut next = |name: &'static str| match fields.next() {
        None => Err(at.error(HbaProblem::MissingField(name))),
        Some(field) => Ok(field),
    };

    let record_type = single(at, next("record type")?, "record type")?;
    let record = match record_type.as_str() {
        "local" => Record::Local,
        "host" => Record::Host,
        "hostssl" => Record::HostSsl,
        "hostnossl" => Record::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => Record::NeverMatches,
        _ => return Err(at.error(HbaProblem::UnknownRecordType(record_type))),
    };

    let mut databases = NameList::default();
    parse_names(at, &next("database")?, Field::Database, 0, &mut databases)?;
    let mut users = NameList::default();
    parse_names(at, &next("user")?, Field::User, 0, &mut users)?;

    let address = if record == Record::Local {
        Address::All
    } else {
        let address = single(at, next("address")?, "address")?;
        match parse_address(&address).map_err(|p| at.error(p))? {
            Some(address) => address,
            None => {
                let Ok(field) = next("netmask") else {
                    return Err(at.error(HbaProblem::MissingNetmask(address)));
                };
                let mask = single(at, field, "netmask")?;
                parse_netmask(address, mask).map_err(|p| at.error(p))?
            }
        }
    };

    let method = single(at, next("method")?, "method")?;
    let Some(method) = HbaMethod::from_keyword(&method) else {
        return Err(at.error(HbaProblem::UnknownMethod(method)));
    };
    let allowed = match method {
        HbaMethod::Peer if record != Record::Local => Some("local"),
        HbaMethod::Cert if !matches!(record, Record::HostSsl | Record::NeverMatches) => {
            Some("hostssl")
        }
        _ => None,
    };
    if let Some(allowed) = allowed {
        return Err(at.error(HbaProblem::MethodNotAllowed { method, allowed }));
    }

    if let Some(extra) = fields.next() {
        let text = extra.into_iter().next().map(|t| t.text).unwrap_or_default();
        let problem = if text.contains('=') {
            HbaProblem::UnsupportedOption(text)
        } else {
            HbaProblem::UnexpectedField(text)
        };
        return Err(at.error(problem));
    }

    Ok(HbaRule {
        record,
        databases,
        users,
        address,
        method,
    })
}

/// The text of a field that must not be a list.
fn single(at: At<'_>, field: Vec<Token>, name: &'static str) -> Result<String, HbaError> {
    let mut tokens = field.into_iter();
    match (tokens.next(), tokens.next()) {
        (Some(token), None) => Ok(token.text),
        _ => Err(at.error(HbaProblem::NotSingle(name))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Database,
    User,
}

/// Adds the names of a database or user field (or of an `@file` line) to `out`.
fn parse_names(
    at: At<'_>,
    tokens: &[Token],
    field: Field,
    depth: usize,
    out: &mut NameList,
) -> Result<(), HbaError> {
    for token in tokens {
        let text = token.text.as_str();
        if !token.quoted {
            let unsupported = |reason| {
                at.error(HbaProblem::Unsupported {
                    token: text.to_string(),
                    reason,
                })
            };
            match (field, text) {
                (_, "all") => {
                    out.all = true;
                    continue;
                }
                (Field::Database, "sameuser") => {
                    out.sameuser = true;
                    continue;
                }
                // Never matches: pgberth serves no replication connections.
                (Field::Database, "replication") => continue,
                (Field::Database, "samerole" | "samegroup") => {
                    return Err(unsupported("pgberth does not know role membership"));
                }
                (Field::User, _) if text.starts_with('+') => {
                    return Err(unsupported(
                        "pgberth does not know role membership (list the users, or use @file)",
                    ));
                }
                (_, _) if text.starts_with('/') => {
                    return Err(unsupported(
                        "regular expressions are not supported (quote the name to match it literally)",
                    ));
                }
                (_, _) if text.starts_with('@') => {
                    include_names(at, &text[1..], field, depth, out)?;
                    continue;
                }
                _ => {}
            }
        }
        out.names.insert(token.text.clone());
    }
    Ok(())
}

/// Reads the names of `@name`, relative to the directory of `at.file`.
fn include_names(
    at: At<'_>,
    name: &str,
    field: Field,
    depth: usize,
    out: &mut NameList,
) -> Result<(), HbaError> {
    if name.is_empty() {
        return Err(at.error(HbaProblem::EmptyInclude));
    }
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(at.error(HbaProblem::IncludeDepth(MAX_INCLUDE_DEPTH)));
    }
    let path = at.file.parent().unwrap_or(Path::new("")).join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| HbaError::Include {
        file: at.file.to_path_buf(),
        line: at.line,
        included: path.clone(),
        source,
    })?;
    for (index, line) in text.lines().enumerate() {
        let inner = At {
            file: &path,
            line: index + 1,
        };
        let fields = split_line(line).map_err(|p| inner.error(p))?;
        for tokens in &fields {
            parse_names(inner, tokens, field, depth + 1, out)?;
        }
    }
    Ok(())
}

/// `all` or a CIDR range; `Ok(None)` for a bare IP address (a netmask field follows).
fn parse_address(text: &str) -> Result<Option<Address>, HbaProblem> {
    if text == "all" {
        return Ok(Some(Address::All));
    }
    if text == "samehost" || text == "samenet" {
        return Err(HbaProblem::Unsupported {
            token: text.to_string(),
            reason: "pgberth does not look up its own addresses (write the networks as CIDR ranges)",
        });
    }
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| HbaProblem::HostName(text.to_string()))?;
    let Some(prefix) = prefix else {
        return Ok(None);
    };
    let prefix = match prefix.parse::<u32>() {
        Ok(bits) if prefix.bytes().all(|b| b.is_ascii_digit()) => bits,
        _ => return Err(HbaProblem::InvalidPrefix(text.to_string())),
    };
    Address::with_prefix(ip, prefix)
        .map(Some)
        .ok_or_else(|| HbaProblem::InvalidPrefix(text.to_string()))
}

/// The range of a bare IP address and its netmask field.
fn parse_netmask(address: String, mask: String) -> Result<Address, HbaProblem> {
    let ip: IpAddr = address.parse().expect("checked by parse_address");
    let invalid = |reason| HbaProblem::InvalidNetmask {
        address: address.clone(),
        mask: mask.clone(),
        reason,
    };
    let Ok(mask_ip) = mask.parse::<IpAddr>() else {
        return Err(invalid(
            "expected a netmask such as 255.255.255.255 (or write the address in CIDR form)",
        ));
    };
    if ip.is_ipv4() != mask_ip.is_ipv4() {
        return Err(invalid(
            "the address and the netmask are of different families",
        ));
    }
    Address::new(ip, mask_ip).ok_or_else(|| invalid("the netmask's bits are not contiguous"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TCP: Transport = Transport::Tcp { tls: false };
    const TLS: Transport = Transport::Tcp { tls: true };

    fn rules(text: &str) -> HbaRules {
        HbaRules::parse(Path::new("/etc/pgberth/hba.conf"), text).unwrap()
    }

    fn error(text: &str) -> String {
        HbaRules::parse(Path::new("/etc/pgberth/hba.conf"), text)
            .unwrap_err()
            .to_string()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn conn<'a>(
        transport: Transport,
        addr: &str,
        database: &'a str,
        user: &'a str,
    ) -> HbaConnection<'a> {
        HbaConnection {
            transport,
            addr: if addr.is_empty() { None } else { ip(addr) },
            database,
            user,
        }
    }

    /// The method for a TCP connection from `addr` to `db` as `user`.
    fn tcp(r: &HbaRules, addr: &str, db: &str, user: &str) -> Option<HbaMethod> {
        r.method_for(&conn(TCP, addr, db, user))
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = rules(
            "host app alice 10.0.0.0/8 reject\n\
             host app all 10.0.0.0/8 md5\n\
             host all all all trust\n",
        );
        assert_eq!(tcp(&r, "10.1.1.1", "app", "alice"), Some(HbaMethod::Reject));
        assert_eq!(tcp(&r, "10.1.1.1", "app", "bob"), Some(HbaMethod::Md5));
        assert_eq!(
            tcp(&r, "192.168.0.1", "app", "alice"),
            Some(HbaMethod::Trust)
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn connection_matching_no_rule_gets_none() {
        let r = rules("host app alice 10.0.0.0/8 md5\n");
        assert_eq!(tcp(&r, "10.1.1.1", "other", "alice"), None);
        assert_eq!(tcp(&r, "10.1.1.1", "app", "bob"), None);
        assert_eq!(tcp(&r, "11.1.1.1", "app", "alice"), None);
        assert_eq!(
            r.method_for(&conn(Transport::Unix, "", "app", "alice")),
            None
        );
    }

    #[test]
    fn empty_file_and_comment_only_file_match_nothing() {
        for text in [
            "",
            "\n\n",
            "# only a comment\n   \t\n  # indented comment\n",
        ] {
            let r = rules(text);
            assert!(r.is_empty());
            assert_eq!(tcp(&r, "127.0.0.1", "db", "u"), None);
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_ignored() {
        let r = rules(
            "# header\r\n\r\n   \r\nhost all all 127.0.0.1/32 md5 # trailing\r\n\
             host all all all trust#no space before comment\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(tcp(&r, "127.0.0.1", "db", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "127.0.0.2", "db", "u"), Some(HbaMethod::Trust));
    }

    #[test]
    fn local_matches_only_unix_sockets() {
        let r = rules("local all all peer\n");
        assert_eq!(
            r.method_for(&conn(Transport::Unix, "", "db", "u")),
            Some(HbaMethod::Peer)
        );
        assert_eq!(r.method_for(&conn(TCP, "127.0.0.1", "db", "u")), None);
        assert_eq!(r.method_for(&conn(TLS, "127.0.0.1", "db", "u")), None);
    }

    #[test]
    fn host_matches_tcp_with_and_without_tls_but_not_unix() {
        let r = rules("host all all all md5\n");
        assert_eq!(
            r.method_for(&conn(TCP, "127.0.0.1", "db", "u")),
            Some(HbaMethod::Md5)
        );
        assert_eq!(
            r.method_for(&conn(TLS, "127.0.0.1", "db", "u")),
            Some(HbaMethod::Md5)
        );
        assert_eq!(r.method_for(&conn(Transport::Unix, "", "db", "u")), None);
    }

    #[test]
    fn hostssl_matches_only_tls() {
        let r = rules("hostssl all all all cert\n");
        assert_eq!(
            r.method_for(&conn(TLS, "127.0.0.1", "db", "u")),
            Some(HbaMethod::Cert)
        );
        assert_eq!(r.method_for(&conn(TCP, "127.0.0.1", "db", "u")), None);
        assert_eq!(r.method_for(&conn(Transport::Unix, "", "db", "u")), None);
    }

    #[test]
    fn hostnossl_matches_only_plain_tcp() {
        let r = rules("hostnossl all all all password\n");
        assert_eq!(
            r.method_for(&conn(TCP, "127.0.0.1", "db", "u")),
            Some(HbaMethod::Password)
        );
        assert_eq!(r.method_for(&conn(TLS, "127.0.0.1", "db", "u")), None);
        assert_eq!(r.method_for(&conn(Transport::Unix, "", "db", "u")), None);
    }

    #[test]
    fn hostgssenc_and_hostnogssenc_parse_but_never_match() {
        let r = rules("hostgssenc all all all trust\nhostnogssenc all all all trust\n");
        assert_eq!(r.len(), 2);
        for transport in [TCP, TLS, Transport::Unix] {
            assert_eq!(r.method_for(&conn(transport, "127.0.0.1", "db", "u")), None);
        }
    }

    #[test]
    fn ipv4_cidr_matches_inclusive_boundaries_only() {
        let r = rules("host all all 10.0.0.0/8 md5\nhost all all 192.168.1.7/32 trust\n");
        assert_eq!(tcp(&r, "10.0.0.0", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "10.255.255.255", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "9.255.255.255", "d", "u"), None);
        assert_eq!(tcp(&r, "11.0.0.0", "d", "u"), None);
        assert_eq!(tcp(&r, "192.168.1.7", "d", "u"), Some(HbaMethod::Trust));
        assert_eq!(tcp(&r, "192.168.1.6", "d", "u"), None);
        assert_eq!(tcp(&r, "192.168.1.8", "d", "u"), None);
    }

    #[test]
    fn prefix_zero_matches_every_address_of_its_family() {
        let r = rules("host all all 0.0.0.0/0 md5\nhost all all ::/0 trust\n");
        assert_eq!(tcp(&r, "203.0.113.9", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "2001:db8::1", "d", "u"), Some(HbaMethod::Trust));
    }

    #[test]
    fn ipv6_cidr_matches_inclusive_boundaries_only() {
        let r = rules("host all all ::1/128 trust\nhost all all 2001:db8::/32 md5\n");
        assert_eq!(tcp(&r, "::1", "d", "u"), Some(HbaMethod::Trust));
        assert_eq!(tcp(&r, "::2", "d", "u"), None);
        assert_eq!(tcp(&r, "2001:db8::", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(
            tcp(&r, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "d", "u"),
            Some(HbaMethod::Md5)
        );
        assert_eq!(
            tcp(&r, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "d", "u"),
            None
        );
        assert_eq!(tcp(&r, "2001:db9::", "d", "u"), None);
    }

    #[test]
    fn netmask_field_is_equivalent_to_cidr() {
        let r = rules(
            "host all all 127.0.0.1 255.255.255.255 trust\n\
             host all all 172.16.0.0 255.240.0.0 md5\n\
             host all all fe80:: ffff:ffff:ffff:ffff:: password\n",
        );
        assert_eq!(tcp(&r, "127.0.0.1", "d", "u"), Some(HbaMethod::Trust));
        assert_eq!(tcp(&r, "127.0.0.2", "d", "u"), None);
        assert_eq!(tcp(&r, "172.31.255.255", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "172.32.0.0", "d", "u"), None);
        assert_eq!(tcp(&r, "fe80::1234", "d", "u"), Some(HbaMethod::Password));
        assert_eq!(tcp(&r, "fe81::", "d", "u"), None);
    }

    #[test]
    fn address_bits_outside_the_mask_are_ignored() {
        let r = rules("host all all 10.1.2.3/8 md5\n");
        assert_eq!(tcp(&r, "10.200.0.1", "d", "u"), Some(HbaMethod::Md5));
    }

    #[test]
    fn ipv4_rule_matches_ipv4_mapped_ipv6_peer() {
        let r = rules("host all all 10.0.0.0/8 md5\n");
        assert_eq!(tcp(&r, "::ffff:10.1.2.3", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "::ffff:11.1.2.3", "d", "u"), None);
        // Not mapped: an IPv4-compatible or unrelated IPv6 address is no IPv4 peer.
        assert_eq!(tcp(&r, "::10.1.2.3", "d", "u"), None);
        assert_eq!(tcp(&r, "2001:db8::a01:203", "d", "u"), None);
    }

    #[test]
    fn mapped_ipv6_rule_matches_ipv4_peer() {
        let r = rules("host all all ::ffff:10.0.0.0/104 md5\n");
        assert_eq!(tcp(&r, "10.1.2.3", "d", "u"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "11.1.2.3", "d", "u"), None);
    }

    #[test]
    fn address_all_matches_any_peer_but_cidr_needs_a_known_peer() {
        let r = rules("host all all 127.0.0.1/32 md5\nhost all all all trust\n");
        assert_eq!(tcp(&r, "", "d", "u"), Some(HbaMethod::Trust));
        assert_eq!(tcp(&r, "2001:db8::1", "d", "u"), Some(HbaMethod::Trust));
        let r = rules("host all all 0.0.0.0/0 md5\n");
        assert_eq!(tcp(&r, "", "d", "u"), None);
    }

    #[test]
    fn database_and_user_lists_match_any_member() {
        let r = rules("host app,reports , audit alice,bob all md5\n");
        for db in ["app", "reports", "audit"] {
            for user in ["alice", "bob"] {
                assert_eq!(
                    tcp(&r, "1.2.3.4", db, user),
                    Some(HbaMethod::Md5),
                    "{db} {user}"
                );
            }
        }
        assert_eq!(tcp(&r, "1.2.3.4", "apps", "alice"), None);
        assert_eq!(tcp(&r, "1.2.3.4", "app", "carol"), None);
        assert_eq!(
            tcp(&r, "1.2.3.4", "App", "alice"),
            None,
            "names are case-sensitive"
        );
    }

    #[test]
    fn all_keyword_matches_every_name_even_inside_a_list() {
        let r = rules("host x,all y,all all md5\n");
        assert_eq!(
            tcp(&r, "1.2.3.4", "anything", "anyone"),
            Some(HbaMethod::Md5)
        );
    }

    #[test]
    fn sameuser_matches_the_database_named_like_the_user() {
        let r = rules("host sameuser all all md5\n");
        assert_eq!(tcp(&r, "1.2.3.4", "alice", "alice"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "1.2.3.4", "bob", "alice"), None);
        let r = rules("host sameuser,shared all all md5\n");
        assert_eq!(tcp(&r, "1.2.3.4", "shared", "alice"), Some(HbaMethod::Md5));
    }

    #[test]
    fn sameuser_in_the_user_field_is_a_literal_name() {
        let r = rules("host all sameuser all md5\n");
        assert_eq!(tcp(&r, "1.2.3.4", "alice", "alice"), None);
        assert_eq!(
            tcp(&r, "1.2.3.4", "alice", "sameuser"),
            Some(HbaMethod::Md5)
        );
    }

    #[test]
    fn replication_never_matches() {
        let r = rules("host replication all all trust\nhost replication,app all all md5\n");
        assert_eq!(tcp(&r, "1.2.3.4", "replication", "u"), None);
        assert_eq!(tcp(&r, "1.2.3.4", "app", "u"), Some(HbaMethod::Md5));
    }

    #[test]
    fn quoted_keywords_are_literal_names() {
        let r = rules(
            "host \"all\" \"all\" all md5\n\
             host \"sameuser\" u all password\n\
             host \"replication\" u all trust\n\
             host \"@users\" \"+admins\" all reject\n",
        );
        assert_eq!(tcp(&r, "1.2.3.4", "all", "all"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "1.2.3.4", "all", "u"), None);
        assert_eq!(tcp(&r, "1.2.3.4", "u", "u"), None);
        assert_eq!(
            tcp(&r, "1.2.3.4", "sameuser", "u"),
            Some(HbaMethod::Password)
        );
        assert_eq!(
            tcp(&r, "1.2.3.4", "replication", "u"),
            Some(HbaMethod::Trust)
        );
        assert_eq!(
            tcp(&r, "1.2.3.4", "@users", "+admins"),
            Some(HbaMethod::Reject)
        );
    }

    #[test]
    fn quoted_names_keep_spaces_commas_hashes_and_doubled_quotes() {
        let r = rules("host \"my db\",\"a,b\" \"x#y\",\"say \"\"hi\"\"\" all md5 # c\n");
        assert_eq!(tcp(&r, "1.2.3.4", "my db", "x#y"), Some(HbaMethod::Md5));
        assert_eq!(
            tcp(&r, "1.2.3.4", "a,b", "say \"hi\""),
            Some(HbaMethod::Md5)
        );
        assert_eq!(tcp(&r, "1.2.3.4", "a", "x#y"), None);
    }

    #[test]
    fn every_method_keyword_parses() {
        let cases = [
            ("host", "trust", HbaMethod::Trust),
            ("host", "reject", HbaMethod::Reject),
            ("host", "md5", HbaMethod::Md5),
            ("host", "password", HbaMethod::Password),
            ("host", "scram-sha-256", HbaMethod::ScramSha256),
            ("hostssl", "cert", HbaMethod::Cert),
            ("local", "peer", HbaMethod::Peer),
        ];
        for (record, keyword, method) in cases {
            let address = if record == "local" { "" } else { "all" };
            let r = rules(&format!("{record} all all {address} {keyword}\n"));
            let transport = match record {
                "local" => Transport::Unix,
                _ => TLS,
            };
            assert_eq!(
                r.method_for(&conn(transport, "1.2.3.4", "d", "u")),
                Some(method)
            );
            assert_eq!(method.to_string(), keyword);
        }
    }

    #[test]
    fn at_file_lists_names_relative_to_the_hba_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dbs.txt"),
            "app, reports\n# comment\n\naudit \"all\"\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/users"),
            "alice bob # the team\n@more\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/more"), "carol\n").unwrap();
        let hba = dir.path().join("hba.conf");
        std::fs::write(&hba, "host @dbs.txt @sub/users all md5\n").unwrap();

        let r = HbaRules::load(&hba).unwrap();
        assert_eq!(tcp(&r, "1.2.3.4", "app", "alice"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "1.2.3.4", "audit", "bob"), Some(HbaMethod::Md5));
        assert_eq!(tcp(&r, "1.2.3.4", "all", "carol"), Some(HbaMethod::Md5));
        assert_eq!(
            tcp(&r, "1.2.3.4", "other", "alice"),
            None,
            "quoted all is a name"
        );
        assert_eq!(tcp(&r, "1.2.3.4", "app", "dave"), None);
    }

    #[test]
    fn at_file_keywords_keep_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users"), "all\n").unwrap();
        let hba = dir.path().join("hba.conf");
        let r = HbaRules::parse(&hba, "host app @users all md5\n").unwrap();
        assert_eq!(tcp(&r, "1.2.3.4", "app", "anyone"), Some(HbaMethod::Md5));
    }

    #[test]
    fn missing_at_file_is_an_error_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let hba = dir.path().join("hba.conf");
        let err = HbaRules::parse(&hba, "\nhost app @nope all md5\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}:2: cannot read @file ", hba.display())),
            "{msg}"
        );
        assert!(
            msg.contains(&dir.path().join("nope").display().to_string()),
            "{msg}"
        );
        assert_eq!(err.location(), (hba.as_path(), 2));
    }

    #[test]
    fn self_including_at_file_stops_at_the_depth_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loop"), "@loop\n").unwrap();
        let hba = dir.path().join("hba.conf");
        let msg = HbaRules::parse(&hba, "host all @loop all md5\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("{}:1: ", dir.path().join("loop").display())),
            "{msg}"
        );
        assert!(msg.contains("nested more than 10 levels"), "{msg}");
    }

    #[test]
    fn error_inside_at_file_points_at_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users"), "alice\n+admins\n").unwrap();
        let hba = dir.path().join("hba.conf");
        let msg = HbaRules::parse(&hba, "host all @users all md5\n")
            .unwrap_err()
            .to_string();
        let expected = format!(
            "{}:2: \"+admins\" is not supported",
            dir.path().join("users").display()
        );
        assert!(msg.starts_with(&expected), "{msg}");
    }

    #[test]
    fn unreadable_hba_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.conf");
        let err = HbaRules::load(&path).unwrap_err();
        assert!(matches!(err, HbaError::Io { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", path.display())),
            "{err}"
        );
    }

    /// Each invalid line fails with `file:line:` and a message naming the problem (and, for
    /// unsupported features, saying so).
    #[test]
    fn every_syntax_error_names_file_line_and_problem() {
        let cases: &[(&str, &str)] = &[
            ("hots all all all md5", "unknown record type \"hots\""),
            (
                "host,local all all all md5",
                "the record type field must be a single value",
            ),
            ("local", "missing database field"),
            ("local all", "missing user field"),
            ("local all all", "missing method field"),
            ("host all all", "missing address field"),
            ("host all all all", "missing method field"),
            (
                "host all all 127.0.0.1",
                "missing netmask after IP address \"127.0.0.1\"",
            ),
            ("host all all 127.0.0.1/32", "missing method field"),
            ("host \"app all all all md5", "unterminated quoted field"),
            ("host app all all md5 extra", "unexpected field \"extra\""),
            (
                "host app,,b all all md5",
                "empty entry in a comma-separated list",
            ),
            (
                "host app, all all md5,",
                "empty entry in a comma-separated list",
            ),
            ("host samerole all all md5", "\"samerole\" is not supported"),
            (
                "host samegroup all all md5",
                "\"samegroup\" is not supported",
            ),
            ("host all +admins all md5", "\"+admins\" is not supported"),
            (
                "host /^db all all md5",
                "regular expressions are not supported",
            ),
            (
                "host all @ all md5",
                "\"@\" must be followed by a file name",
            ),
            ("host all all samehost md5", "\"samehost\" is not supported"),
            ("host all all samenet md5", "\"samenet\" is not supported"),
            (
                "host all all db.example.com md5",
                "\"db.example.com\" is not an IP address",
            ),
            (
                "host all all .example.com md5",
                "host names are not supported",
            ),
            (
                "host all all 10.0.0/8 md5",
                "\"10.0.0/8\" is not an IP address",
            ),
            (
                "host all all 10.0.0.0/33 md5",
                "invalid CIDR prefix length in \"10.0.0.0/33\"",
            ),
            (
                "host all all ::/129 md5",
                "invalid CIDR prefix length in \"::/129\"",
            ),
            ("host all all 10.0.0.0/+8 md5", "invalid CIDR prefix length"),
            ("host all all 10.0.0.0/ md5", "invalid CIDR prefix length"),
            ("host all all 10.0.0.0/x md5", "invalid CIDR prefix length"),
            (
                "host all all 10.0.0.0,10.1.0.0 md5",
                "the address field must be a single value",
            ),
            (
                "host all all 127.0.0.1 trust",
                "invalid netmask \"trust\" after IP address \"127.0.0.1\": expected a netmask",
            ),
            ("host all all 127.0.0.1 ffff:: md5", "different families"),
            (
                "host all all 10.0.0.0 255.0.255.0 md5",
                "bits are not contiguous",
            ),
            (
                "host all all all gss",
                "unsupported authentication method \"gss\" (supported: trust, reject, md5, password, scram-sha-256, cert, peer)",
            ),
            (
                "host all all all ldap ldapserver=x",
                "unsupported authentication method \"ldap\"",
            ),
            (
                "local all all scram",
                "unsupported authentication method \"scram\"",
            ),
            (
                "local all all MD5",
                "unsupported authentication method \"MD5\"",
            ),
            (
                "host all all all peer",
                "peer authentication is only supported on local records",
            ),
            (
                "host all all all cert",
                "cert authentication is only supported on hostssl records",
            ),
            (
                "local all all cert",
                "cert authentication is only supported on hostssl",
            ),
            (
                "local all all peer map=admins",
                "authentication option \"map=admins\" is not supported",
            ),
            (
                "hostssl all all all cert clientcert=verify-full",
                "option \"clientcert=verify-full\"",
            ),
        ];
        let mut failures = Vec::new();
        for (line, expected) in cases {
            let msg = error(&format!("# comment\n\n{line}\n"));
            if !msg.starts_with("/etc/pgberth/hba.conf:3: ") || !msg.contains(expected) {
                failures.push(format!("{line:?}\n   got: {msg}\n  want: {expected}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn error_location_is_the_offending_line() {
        let err =
            HbaRules::parse(Path::new("hba.conf"), "host all all all md5\nbogus\n").unwrap_err();
        assert_eq!(err.location(), (Path::new("hba.conf"), 2));
        assert!(matches!(
            err,
            HbaError::Syntax { problem: HbaProblem::UnknownRecordType(ref t), .. } if t == "bogus"
        ));
    }

    #[test]
    fn ipv4_and_ipv6_types_round_trip_through_matching() {
        // Guard against byte-order mistakes: the raw integer forms must agree.
        let a = Address::with_prefix(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16).unwrap();
        assert_eq!(
            a,
            Address::V4 {
                net: 0xC0A8_0000,
                mask: 0xFFFF_0000
            }
        );
        let a = Address::with_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).unwrap();
        assert_eq!(
            a,
            Address::V6 {
                net: 1,
                mask: u128::MAX
            }
        );
    }
}
