//! Recognises the few SQL statements that carry session state through transaction pooling:
//! `PREPARE`/`EXECUTE`/`DEALLOCATE`, `SET`/`RESET`, `DISCARD ALL` and transaction control.
//!
//! This is a lexer following PostgreSQL's `scan.l`, not a parser: it splits a simple-protocol
//! Query string into top-level statements (as the server and psql do: a `;` inside a string,
//! comment, quoted identifier, parentheses or a `CREATE FUNCTION ... BEGIN ATOMIC` body does
//! not separate) and classifies each statement from its first few tokens. No I/O.

use std::ops::Range;

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` bytes.
const MAX_IDENT: usize = 63;

/// One top-level statement of a Query string, classified. Ranges are byte ranges of the
/// original query string; `text` runs from the first token to the last (no comments around it,
/// no `;`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `PREPARE name [ ( type [, ...] ) ] AS statement`. `name_range` is the name token as
    /// written, so `query[text.start..name_range.start] + new + query[name_range.end..text.end]`
    /// renames it.
    Prepare {
        name: String,
        name_range: Range<usize>,
        text: Range<usize>,
    },
    /// `EXECUTE name [ ( args ) ]`.
    Execute {
        name: String,
        name_range: Range<usize>,
        text: Range<usize>,
    },
    /// `DEALLOCATE [ PREPARE ] name`, or `... ALL` (`name` is `None`).
    Deallocate {
        name: Option<String>,
        text: Range<usize>,
    },
    /// `SET [ SESSION ] name { TO | = } value`, and the special forms `TIME ZONE` (`timezone`),
    /// `ROLE` (`role`), `SESSION AUTHORIZATION` (`session_authorization`), `NAMES`
    /// (`client_encoding`), `SCHEMA` (`search_path`), `XML OPTION` (`xmloption`). `name` is
    /// lower case (GUC names are case-insensitive, quoted or not). `value` is the value as
    /// written, except that a bare `DEFAULT` keyword (and `TIME ZONE LOCAL`, `NAMES` alone,
    /// which mean the same) becomes exactly `DEFAULT`; a quoted `'default'` stays quoted.
    Set {
        name: String,
        value: String,
        text: Range<usize>,
    },
    /// `RESET name` (lower case), `RESET ALL` (`None`).
    Reset {
        name: Option<String>,
        text: Range<usize>,
    },
    /// `DISCARD ALL`.
    DiscardAll { text: Range<usize> },
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK`, `ABORT` (not the two-phase
    /// `COMMIT/ROLLBACK PREPARED`, not `ROLLBACK TO SAVEPOINT`).
    Transaction { text: Range<usize> },
    /// Anything else, including `SET LOCAL`, `SET TRANSACTION` and `PREPARE TRANSACTION`.
    Other { text: Range<usize> },
}

impl Statement {
    /// The statement's byte range in the query string.
    pub fn text(&self) -> Range<usize> {
        match self {
            Statement::Prepare { text, .. }
            | Statement::Execute { text, .. }
            | Statement::Deallocate { text, .. }
            | Statement::Set { text, .. }
            | Statement::Reset { text, .. }
            | Statement::DiscardAll { text }
            | Statement::Transaction { text }
            | Statement::Other { text } => text.clone(),
        }
    }
}

/// Splits a Query string into its top-level statements (empty ones skipped) and classifies
/// each, assuming `standard_conforming_strings = on` (the default since PostgreSQL 9.1).
pub fn statements(query: &str) -> Vec<Statement> {
    statements_with(query, true)
}

/// [`statements`] for a session whose `standard_conforming_strings` may be off, where a
/// backslash escapes the next character in plain `'...'` strings too.
pub fn statements_with(query: &str, standard_conforming_strings: bool) -> Vec<Statement> {
    let mut lexer = Lexer {
        src: query,
        pos: 0,
        backslash_quotes: !standard_conforming_strings,
    };
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let mut depth = Depth::default();
    while let Some(token) = lexer.next_token() {
        if token.kind == Kind::Punct(b';') && depth.at_top() {
            if !tokens.is_empty() {
                out.push(classify(query, &tokens));
                tokens.clear();
            }
            depth = Depth::default();
            continue;
        }
        depth.track(&token);
        tokens.push(token);
    }
    if !tokens.is_empty() {
        out.push(classify(query, &tokens));
    }
    out
}

/// Quotes an identifier for re-emission: always double-quoted, inner `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: `'...'` with `'` doubled; when the value holds a backslash, the
/// `E'...'` form with `\` doubled too (as PostgreSQL's `quote_literal` does), which reads the
/// same whatever `standard_conforming_strings` is.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// An unquoted identifier or keyword, folded to lower case.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// Any string constant, dollar-quoted ones included.
    Str,
    /// An operator such as `=` or `<>`.
    Op,
    /// A single punctuation character: `( ) , ; . [ ] :` and stray bytes.
    Punct(u8),
    /// A number or a `$n` parameter.
    Number,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    range: Range<usize>,
}

impl Token {
    fn word(&self) -> Option<&str> {
        match &self.kind {
            Kind::Word(w) => Some(w),
            _ => None,
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    backslash_quotes: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_op_char(b: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&b)
}

/// Truncates to `MAX_IDENT` bytes on a character boundary, as the server does.
fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT {
        let mut n = MAX_IDENT;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + ahead).copied()
    }

    /// The next token, skipping whitespace and comments; `None` at the end.
    fn next_token(&mut self) -> Option<Token> {
        loop {
            let b = self.peek(0)?;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'-' if self.peek(1) == Some(b'-') => self.line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.block_comment(),
                _ => {
                    let start = self.pos;
                    let kind = self.token(b);
                    debug_assert!(self.pos > start && self.pos <= self.src.len());
                    return Some(Token {
                        kind,
                        range: start..self.pos,
                    });
                }
            }
        }
    }

    fn token(&mut self, b: u8) -> Kind {
        match b {
            b'\'' => {
                self.pos += 1;
                self.string(self.backslash_quotes);
                Kind::Str
            }
            b'e' | b'E' if self.peek(1) == Some(b'\'') => {
                self.pos += 2;
                self.string(true);
                Kind::Str
            }
            b'"' => {
                self.pos += 1;
                Kind::Quoted(truncate_ident(self.quoted_ident()))
            }
            b'$' => self.dollar(),
            b'0'..=b'9' => self.number(),
            b'.' if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => self.number(),
            _ if is_ident_start(b) => {
                let start = self.pos;
                self.skip_while(is_ident_cont);
                let word = self.src[start..self.pos].to_ascii_lowercase();
                Kind::Word(truncate_ident(word))
            }
            _ if is_op_char(b) => self.operator(),
            _ => {
                self.pos += 1;
                Kind::Punct(b)
            }
        }
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek(0).is_some_and(&f) {
            self.pos += 1;
        }
    }

    fn line_comment(&mut self) {
        self.skip_while(|c| c != b'\n' && c != b'\r');
    }

    /// `/* ... */`, nested; an unterminated one runs to the end.
    fn block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1usize;
        while let Some(b) = self.peek(0) {
            match (b, self.peek(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', Some(b'/')) => {
                    self.pos += 2;
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The body of a `'...'` string after its opening quote: `''` is a quote, and with
    /// `backslash` a `\` escapes the next byte. An unterminated string runs to the end.
    fn string(&mut self, backslash: bool) {
        while let Some(b) = self.peek(0) {
            match b {
                b'\\' if backslash => self.pos = (self.pos + 2).min(self.src.len()),
                b'\'' if self.peek(1) == Some(b'\'') => self.pos += 2,
                b'\'' => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// The body of a `"..."` identifier after its opening quote, unescaped.
    fn quoted_ident(&mut self) -> String {
        let mut out = String::new();
        let mut start = self.pos;
        while let Some(b) = self.peek(0) {
            if b == b'"' {
                out.push_str(&self.src[start..self.pos]);
                if self.peek(1) == Some(b'"') {
                    out.push('"');
                    self.pos += 2;
                    start = self.pos;
                } else {
                    self.pos += 1;
                    return out;
                }
            } else {
                self.pos += 1;
            }
        }
        out.push_str(&self.src[start..]);
        out
    }

    /// `$n`, `$tag$...$tag$`, or a lone `$`.
    fn dollar(&mut self) -> Kind {
        let start = self.pos;
        self.pos += 1;
        if self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.skip_while(|c| c.is_ascii_digit());
            return Kind::Number;
        }
        if self.peek(0).is_some_and(is_ident_start) {
            self.skip_while(|c| c != b'$' && is_ident_cont(c));
        }
        if self.peek(0) != Some(b'$') {
            // scan.l's `dolqfailed`: the `$` alone is the token.
            self.pos = start + 1;
            return Kind::Punct(b'$');
        }
        self.pos += 1;
        let delimiter = &self.src[start..self.pos];
        self.pos = match self.src[self.pos..].find(delimiter) {
            Some(at) => self.pos + at + delimiter.len(),
            None => self.src.len(),
        };
        Kind::Str
    }

    /// Numbers, loosely: the digits and whatever letters, `_` and `.` stick to them.
    fn number(&mut self) -> Kind {
        self.skip_while(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
        Kind::Number
    }

    /// A run of operator characters, cut before a comment start; a trailing `+`/`-` is not
    /// part of an operator made only of `+ - * / < > =` (so `=-1` is `=` then `-1`).
    fn operator(&mut self) -> Kind {
        let start = self.pos;
        while let Some(b) = self.peek(0) {
            let comment = matches!((b, self.peek(1)), (b'-', Some(b'-')) | (b'/', Some(b'*')));
            if !is_op_char(b) || (comment && self.pos > start) {
                break;
            }
            self.pos += 1;
        }
        let op = &self.src.as_bytes()[start..self.pos];
        if !op.iter().any(|c| b"~!@#^&|`?%".contains(c)) {
            let mut len = op.len();
            while len > 1 && matches!(op[len - 1], b'+' | b'-') {
                len -= 1;
            }
            self.pos = start + len;
        }
        Kind::Op
    }
}

/// What keeps a `;` from ending a statement: parentheses, and the `BEGIN ATOMIC ... END` body
/// of a SQL-standard `CREATE FUNCTION`/`PROCEDURE` (where `CASE ... END` nests). psql gates
/// its `BEGIN` counting on a `CREATE [OR REPLACE] {FUNCTION|PROCEDURE}` prefix instead, which
/// miscounts a routine *named* `begin`; `ATOMIC` is what the grammar requires.
#[derive(Default)]
struct Depth {
    parens: usize,
    begins: usize,
    after_begin: bool,
}

impl Depth {
    fn at_top(&self) -> bool {
        self.parens == 0 && self.begins == 0
    }

    fn track(&mut self, token: &Token) {
        let word = token.word();
        match (&token.kind, word) {
            (Kind::Punct(b'('), _) => self.parens += 1,
            (Kind::Punct(b')'), _) => self.parens = self.parens.saturating_sub(1),
            (_, Some("atomic")) if self.after_begin => self.begins += 1,
            (_, Some("case")) if self.begins > 0 => self.begins += 1,
            (_, Some("end")) => self.begins = self.begins.saturating_sub(1),
            _ => {}
        }
        self.after_begin = word == Some("begin");
    }
}

/// A cursor over one statement's tokens.
struct Words<'a> {
    query: &'a str,
    tokens: &'a [Token],
}

impl Words<'_> {
    fn is(&self, i: usize, keyword: &str) -> bool {
        self.tokens.get(i).and_then(Token::word) == Some(keyword)
    }

    fn is_punct(&self, i: usize, c: u8) -> bool {
        self.tokens.get(i).is_some_and(|t| t.kind == Kind::Punct(c))
    }

    fn is_op(&self, i: usize, op: &str) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| t.kind == Kind::Op && &self.query[t.range.clone()] == op)
    }

    /// An identifier (quoted or not) at `i`.
    fn name(&self, i: usize) -> Option<String> {
        match &self.tokens.get(i)?.kind {
            Kind::Word(w) => Some(w.clone()),
            Kind::Quoted(q) if !q.is_empty() => Some(q.clone()),
            _ => None,
        }
    }

    /// A dotted parameter name starting at `i`, lower-cased; and the index after it.
    fn param(&self, mut i: usize) -> Option<(String, usize)> {
        let mut name = self.name(i)?;
        i += 1;
        while self.is_punct(i, b'.') {
            name.push('.');
            name.push_str(&self.name(i + 1)?);
            i += 2;
        }
        Some((name.to_ascii_lowercase(), i))
    }

    /// The text from token `i` to the end; `None` if there is none.
    fn rest(&self, i: usize) -> Option<String> {
        let first = self.tokens.get(i)?;
        let last = self.tokens.last()?;
        let text = &self.query[first.range.start..last.range.end];
        let bare_default = i + 1 == self.tokens.len() && self.is(i, "default");
        Some(if bare_default { "DEFAULT" } else { text }.to_string())
    }
}

fn classify(query: &str, tokens: &[Token]) -> Statement {
    let text = tokens[0].range.start..tokens[tokens.len() - 1].range.end;
    let w = Words { query, tokens };
    let classified = match tokens[0].word() {
        Some("prepare") => prepare(&w, &text),
        Some("execute") => execute(&w, &text),
        Some("deallocate") => deallocate(&w, &text),
        Some("set") => set(&w, &text),
        Some("reset") => reset(&w, &text),
        Some("discard") if tokens.len() == 2 && w.is(1, "all") => {
            Some(Statement::DiscardAll { text: text.clone() })
        }
        Some(first) if is_transaction(&w, first) => {
            Some(Statement::Transaction { text: text.clone() })
        }
        _ => None,
    };
    classified.unwrap_or(Statement::Other { text })
}

fn prepare(w: &Words, text: &Range<usize>) -> Option<Statement> {
    // `PREPARE TRANSACTION 'gid'` has a string where `(` or `AS` would be.
    let name = w.name(1)?;
    let body = w.is_punct(2, b'(') || w.is(2, "as");
    (body && w.tokens.len() > 3).then(|| Statement::Prepare {
        name,
        name_range: w.tokens[1].range.clone(),
        text: text.clone(),
    })
}

fn execute(w: &Words, text: &Range<usize>) -> Option<Statement> {
    let name = w.name(1)?;
    (w.tokens.len() == 2 || w.is_punct(2, b'(')).then(|| Statement::Execute {
        name,
        name_range: w.tokens[1].range.clone(),
        text: text.clone(),
    })
}

fn deallocate(w: &Words, text: &Range<usize>) -> Option<Statement> {
    let i = if w.is(1, "prepare") && w.tokens.len() > 2 {
        2
    } else {
        1
    };
    if w.tokens.len() != i + 1 {
        return None;
    }
    let name = if w.is(i, "all") {
        None
    } else {
        Some(w.name(i)?)
    };
    Some(Statement::Deallocate {
        name,
        text: text.clone(),
    })
}

fn set(w: &Words, text: &Range<usize>) -> Option<Statement> {
    let assign = |i: usize| w.is(i, "to") || w.is_op(i, "=");
    let mut i = 1;
    if w.is(1, "local") || w.is(1, "transaction") {
        return None;
    }
    if w.is(1, "session") && !assign(2) && !w.is(2, "authorization") {
        i = 2;
    }
    let generic = w.param(i).filter(|&(_, at)| assign(at));
    let (name, value) = match generic {
        Some((name, at)) => (name, w.rest(at + 1)?),
        None if w.is(i, "time") && w.is(i + 1, "zone") => {
            let local = w.tokens.len() == i + 3 && w.is(i + 2, "local");
            let value = if local {
                "DEFAULT".into()
            } else {
                w.rest(i + 2)?
            };
            ("timezone".into(), value)
        }
        None if w.is(i, "session") && w.is(i + 1, "authorization") => {
            ("session_authorization".into(), w.rest(i + 2)?)
        }
        None if w.is(i, "role") => ("role".into(), w.rest(i + 1)?),
        None if w.is(i, "schema") => ("search_path".into(), w.rest(i + 1)?),
        None if w.is(i, "xml") && w.is(i + 1, "option") => ("xmloption".into(), w.rest(i + 2)?),
        None if w.is(i, "names") => {
            let value = w.rest(i + 1).unwrap_or_else(|| "DEFAULT".into());
            ("client_encoding".into(), value)
        }
        None => return None,
    };
    Some(Statement::Set {
        name,
        value,
        text: text.clone(),
    })
}

fn reset(w: &Words, text: &Range<usize>) -> Option<Statement> {
    let len = w.tokens.len();
    let name = if len == 2 && w.is(1, "all") {
        None
    } else if len == 3 && w.is(1, "time") && w.is(2, "zone") {
        Some("timezone".into())
    } else if len == 3 && w.is(1, "session") && w.is(2, "authorization") {
        Some("session_authorization".into())
    } else {
        let (name, end) = w.param(1)?;
        if end != len {
            return None;
        }
        Some(name)
    };
    Some(Statement::Reset {
        name,
        text: text.clone(),
    })
}

fn is_transaction(w: &Words, first: &str) -> bool {
    match first {
        "begin" => true,
        "start" => w.is(1, "transaction"),
        "commit" | "end" | "rollback" | "abort" => {
            let i = if w.is(1, "work") || w.is(1, "transaction") {
                2
            } else {
                1
            };
            !w.is(1, "prepared") && !w.is(i, "to")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: &str) -> Statement {
        let mut all = statements(q);
        assert_eq!(all.len(), 1, "{q:?} -> {all:?}");
        all.remove(0)
    }

    fn set_of(q: &str) -> (String, String) {
        match one(q) {
            Statement::Set { name, value, .. } => (name, value),
            other => panic!("{q:?} -> {other:?}"),
        }
    }

    fn is_other(q: &str) -> bool {
        matches!(one(q), Statement::Other { .. })
    }

    #[test]
    fn prepare_with_odd_spacing_case_and_comments() {
        let q = "  /* a /* nested */ c */ PrePare\n\t-- x\n My_Stmt ( int ,text )AS select $1;";
        let Statement::Prepare {
            name,
            name_range,
            text,
        } = one(q)
        else {
            panic!()
        };
        assert_eq!(name, "my_stmt");
        assert_eq!(&q[name_range.clone()], "My_Stmt");
        assert_eq!(
            &q[text.clone()],
            &q[q.find("PrePare").unwrap()..q.len() - 1]
        );
        let renamed = format!(
            "{}p_1{}",
            &q[text.start..name_range.start],
            &q[name_range.end..text.end]
        );
        assert!(renamed.starts_with("PrePare\n\t-- x\n p_1 ( int"));
        assert!(renamed.ends_with("select $1"));
        let q = r#"prepare "My ""odd"" name"as select 1"#;
        let Statement::Prepare {
            name, name_range, ..
        } = one(q)
        else {
            panic!()
        };
        assert_eq!(name, r#"My "odd" name"#);
        assert_eq!(&q[name_range], r#""My ""odd"" name""#);
        assert!(is_other("PREPARE p"));
        assert!(is_other("PREPARE p AS"));
    }

    #[test]
    fn prepare_transaction_is_two_phase_commit() {
        assert!(is_other("PREPARE TRANSACTION 'gid-1'"));
        assert!(is_other("prepare transaction $$x$$"));
        assert!(
            matches!(one("PREPARE transaction AS SELECT 1"), Statement::Prepare { name, .. } if name == "transaction")
        );
    }

    #[test]
    fn execute_and_deallocate() {
        let q = "EXECUTE Foo(1, 'a;b')";
        let Statement::Execute {
            name,
            name_range,
            text,
        } = one(q)
        else {
            panic!()
        };
        assert_eq!((name.as_str(), &q[name_range]), ("foo", "Foo"));
        assert_eq!(text, 0..q.len());
        assert!(matches!(one("execute\"Foo\""), Statement::Execute { name, .. } if name == "Foo"));
        assert!(is_other("EXECUTE foo bar"));
        assert!(is_other("EXECUTE"));
        let dealloc = |q| match one(q) {
            Statement::Deallocate { name, .. } => name,
            other => panic!("{q:?} -> {other:?}"),
        };
        assert_eq!(dealloc("DEALLOCATE p1"), Some("p1".into()));
        assert_eq!(dealloc("deallocate PREPARE \"P 1\""), Some("P 1".into()));
        assert_eq!(dealloc("DEALLOCATE prepare"), Some("prepare".into()));
        assert_eq!(dealloc("DEALLOCATE ALL"), None);
        assert_eq!(dealloc("Deallocate Prepare All"), None);
        assert_eq!(dealloc("DEALLOCATE \"all\""), Some("all".into()));
        assert!(is_other("DEALLOCATE a b"));
    }

    #[test]
    fn set_forms() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            set_of("SET statement_timeout = 1000"),
            s("statement_timeout", "1000")
        );
        assert_eq!(
            set_of("set SESSION Work_Mem TO '64MB' -- c"),
            s("work_mem", "'64MB'")
        );
        assert_eq!(
            set_of("SET search_path TO a, \"B\""),
            s("search_path", "a, \"B\"")
        );
        assert_eq!(set_of("SET TIME ZONE 'UTC'"), s("timezone", "'UTC'"));
        assert_eq!(set_of("set time zone local"), s("timezone", "DEFAULT"));
        assert_eq!(set_of("SET x.y TO default"), s("x.y", "DEFAULT"));
        assert_eq!(set_of("SET x = 'default'"), s("x", "'default'"));
        assert_eq!(set_of("SET \"TimeZone\"='UTC'"), s("timezone", "'UTC'"));
        assert_eq!(set_of("SET a =-1"), s("a", "-1"));
        assert_eq!(set_of("SET ROLE admin"), s("role", "admin"));
        assert_eq!(set_of("SET role TO admin"), s("role", "admin"));
        assert_eq!(
            set_of("SET SESSION AUTHORIZATION 'bob'"),
            s("session_authorization", "'bob'")
        );
        assert_eq!(set_of("SET NAMES 'UTF8'"), s("client_encoding", "'UTF8'"));
        assert_eq!(set_of("SET NAMES"), s("client_encoding", "DEFAULT"));
        assert_eq!(set_of("SET SCHEMA 'app'"), s("search_path", "'app'"));
        assert_eq!(
            set_of("SET XML OPTION DOCUMENT"),
            s("xmloption", "DOCUMENT")
        );
        assert_eq!(set_of("SET d = E'a\\';b'"), s("d", "E'a\\';b'"));
        for q in [
            "SET LOCAL work_mem = '1MB'",
            "SET local TIME ZONE 'UTC'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET work_mem FROM CURRENT",
            "SET work_mem TO",
            "SET",
        ] {
            assert!(is_other(q), "{q}");
        }
    }

    #[test]
    fn reset_discard_transaction() {
        let reset = |q| match one(q) {
            Statement::Reset { name, .. } => name,
            other => panic!("{q:?} -> {other:?}"),
        };
        assert_eq!(reset("RESET ALL"), None);
        assert_eq!(reset("reset Work_Mem"), Some("work_mem".into()));
        assert_eq!(reset("RESET time ZONE"), Some("timezone".into()));
        assert_eq!(
            reset("RESET SESSION AUTHORIZATION"),
            Some("session_authorization".into())
        );
        assert_eq!(reset("RESET a.b"), Some("a.b".into()));
        assert!(is_other("RESET TRANSACTION ISOLATION LEVEL"));
        assert!(is_other("RESET a b"));
        assert!(matches!(one(" Discard  ALL "), Statement::DiscardAll { text } if text == (1..13)));
        assert!(is_other("DISCARD PLANS"));
        for q in [
            "BEGIN",
            "begin isolation level serializable",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "commit and chain",
            "END",
            "END TRANSACTION",
            "ROLLBACK",
            "rollback work",
            "ABORT",
        ] {
            assert!(matches!(one(q), Statement::Transaction { .. }), "{q}");
        }
        for q in [
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "ROLLBACK TO SAVEPOINT s",
            "rollback transaction to s",
            "SAVEPOINT s",
            "START",
        ] {
            assert!(is_other(q), "{q}");
        }
    }

    #[test]
    fn semicolons_inside_strings_comments_and_identifiers() {
        let q = "SELECT 'a;''b', E'\\';', $$;$$, $t$ $$; $t$, \"x;\"\"y\" /* ; /* ; */ ; */ -- ;\n; SET a TO 1";
        let all = statements(q);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            matches!(&all[0], Statement::Other { text } if q[text.clone()].ends_with("\"x;\"\"y\""))
        );
        assert!(matches!(&all[1], Statement::Set { name, .. } if name == "a"));
        assert_eq!(statements("SELECT (1; 2); SELECT 3").len(), 2);
        let func = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SET a TO 1";
        let all = statements(func);
        assert_eq!(all.len(), 2, "{all:?}");
        let named_begin =
            "CREATE FUNCTION begin() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql; SET a TO 1";
        assert_eq!(statements(named_begin).len(), 2);
        // EXECUTE inside a DO body is inside a dollar string.
        let all = statements("DO $body$ BEGIN EXECUTE 'x'; END $body$; EXECUTE p");
        assert!(matches!(&all[0], Statement::Other { .. }));
        assert!(matches!(&all[1], Statement::Execute { name, .. } if name == "p"));
        // `$` inside identifiers and `$n` parameters do not open dollar quotes.
        assert_eq!(statements("SELECT a$b$, $1; SELECT $2$").len(), 2);
    }

    #[test]
    fn standard_conforming_strings_off() {
        let q = "SELECT 'a\\', 'b'; SET x TO 1";
        assert_eq!(statements(q).len(), 2);
        assert_eq!(statements_with(q, false).len(), 1);
    }

    #[test]
    fn multiple_empty_and_unterminated() {
        assert!(statements("").is_empty());
        assert!(statements(";;").is_empty());
        assert!(statements(" ; -- only a comment\n ; /* x */").is_empty());
        let all = statements("BEGIN;SET a=1;;EXECUTE p ; COMMIT");
        assert_eq!(all.len(), 4);
        assert_eq!(all[2].text(), 15..24);
        for q in [
            "SELECT 'abc",
            "SELECT $$abc",
            "SELECT \"abc",
            "/* abc",
            "SELECT E'\\",
        ] {
            assert_eq!(
                statements(q).len(),
                usize::from(q.starts_with("SELECT")),
                "{q}"
            );
        }
        let long = "a".repeat(70);
        assert!(
            matches!(one(&format!("EXECUTE {long}")), Statement::Execute { name, .. } if name.len() == 63)
        );
        let wide = "é".repeat(40);
        assert!(
            matches!(one(&format!("EXECUTE {wide}")), Statement::Execute { name, .. } if name.len() == 62)
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b c"), "\"a\"\"b c\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
        let q = format!(
            "SET x TO {}; PREPARE {} AS SELECT 1",
            quote_literal("a;'\\"),
            quote_ident("N\";")
        );
        let all = statements(&q);
        assert!(matches!(&all[1], Statement::Prepare { name, .. } if name == "N\";"));
    }

    #[test]
    fn random_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "'",
            "''",
            "\"",
            "$",
            "$$",
            "$a$",
            "E'",
            "\\",
            "--",
            "/*",
            "*/",
            "\n",
            ";",
            " ",
            "(",
            ")",
            "=",
            ".",
            "SET ",
            "PREPARE ",
            "EXECUTE ",
            "TIME ZONE ",
            "é",
            "1",
            "a",
            "TO ",
        ];
        for round in 0..4000 {
            let len = (next() % 40) as usize;
            let q = if round % 2 == 0 {
                (0..len)
                    .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                    .collect::<String>()
            } else {
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            for scs in [true, false] {
                for st in statements_with(&q, scs) {
                    let text = st.text();
                    assert!(text.start < text.end && q.get(text).is_some(), "{q:?}");
                }
            }
        }
    }
}
