//! The connection-string syntax of `[databases]` and `[users]` values:
//! `key=value key='quoted value'`, where `''` inside quotes is a literal `'`.
//!
//! Errors never echo values: a database line may hold a password.

/// Splits a connection string into `(lower-cased key, value)` pairs, in order.
pub(crate) fn parse(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        if key.is_empty() {
            return Err("expected `key=value` in connection string, found `=`".to_string());
        }
        let after_key = rest[key_end..].trim_start();
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err(format!("expected `=` after `{key}` in connection string"));
        };
        let after_eq = after_eq.trim_start();
        let (value, remaining) = if let Some(quoted) = after_eq.strip_prefix('\'') {
            unquote(quoted)
                .ok_or_else(|| format!("unterminated quoted value for `{key}` (missing `'`)"))?
        } else {
            let end = after_eq.find(char::is_whitespace).unwrap_or(after_eq.len());
            (after_eq[..end].to_string(), &after_eq[end..])
        };
        pairs.push((key.to_ascii_lowercase(), value));
        rest = remaining.trim_start();
    }
    Ok(pairs)
}

/// Reads a single-quoted value whose opening quote was already consumed;
/// returns it with the text after the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\'' {
            value.push(c);
        } else if s[i + 1..].starts_with('\'') {
            value.push('\'');
            chars.next();
        } else {
            return Some((value, &s[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<(String, String)> {
        parse(s).unwrap()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plain_pairs() {
        assert_eq!(
            p("host=localhost port=5433  dbname=app"),
            kv(&[("host", "localhost"), ("port", "5433"), ("dbname", "app")])
        );
        assert!(p("   ").is_empty());
    }

    #[test]
    fn quoted_values_keep_spaces_and_unescape_doubled_quotes() {
        assert_eq!(
            p("password='it''s a secret' application_name='my app'"),
            kv(&[
                ("password", "it's a secret"),
                ("application_name", "my app")
            ])
        );
        assert_eq!(p("password=''"), kv(&[("password", "")]));
        assert_eq!(p("a='x'b=1"), kv(&[("a", "x"), ("b", "1")]));
    }

    #[test]
    fn spaces_around_equals_and_key_case() {
        assert_eq!(p("HOST = h  Port= 1"), kv(&[("host", "h"), ("port", "1")]));
    }

    #[test]
    fn errors_do_not_echo_values() {
        let err = parse("password='hunter2").unwrap_err();
        assert!(
            err.contains("unterminated quoted value for `password`"),
            "{err}"
        );
        assert!(!err.contains("hunter2"));
        assert!(
            parse("host")
                .unwrap_err()
                .contains("expected `=` after `host`")
        );
        assert!(parse("=x").is_err());
    }
}
