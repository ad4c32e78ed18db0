//! The ini line parser: sections, `key = value` pairs, comments and `%include`,
//! with the file and line of every item.
//!
//! Syntax (PgBouncer's): `[section]` headers (case-insensitive), `key = value`
//! lines with surrounding whitespace trimmed, whole-line comments starting with
//! `;` or `#`, keys optionally double-quoted (`"my db" = …`, `""` escapes a
//! quote), and `%include path` anywhere, resolved against the including file's
//! directory. The current section carries into and out of included files, as in
//! PgBouncer.

use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// How deep `%include`s may nest before we call it a cycle.
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Lower-cased section name; empty for a pair before any section header.
    pub section: String,
    /// The key as written (unquoted, not case-folded: database and user names
    /// are case-sensitive).
    pub key: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

/// A section header, kept so unknown sections can be reported even when empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Section(Section),
    Pair(Entry),
}

/// Reads `path` and everything it includes into a flat list of items, in order.
pub(crate) fn read(path: &Path) -> Result<Vec<Item>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, e))?;
    let mut parser = Parser {
        items: Vec::new(),
        section: String::new(),
    };
    parser.parse(path, &text, 0)?;
    Ok(parser.items)
}

/// Parses `text` as if read from `path` (includes are still read from disk).
#[cfg(test)]
pub(crate) fn parse_str(path: &Path, text: &str) -> Result<Vec<Item>, ConfigError> {
    let mut parser = Parser {
        items: Vec::new(),
        section: String::new(),
    };
    parser.parse(path, text, 0)?;
    Ok(parser.items)
}

struct Parser {
    items: Vec<Item>,
    section: String,
}

impl Parser {
    fn parse(&mut self, file: &Path, text: &str, depth: usize) -> Result<(), ConfigError> {
        // Editors on Windows like to start files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| {
                    ConfigError::invalid(file, line, "section header is missing its closing `]`")
                })?;
                self.section = name.trim().to_ascii_lowercase();
                self.items.push(Item::Section(Section {
                    name: self.section.clone(),
                    file: file.to_path_buf(),
                    line,
                }));
            } else if let Some(rest) = trimmed.strip_prefix('%') {
                self.directive(file, line, rest, depth)?;
            } else {
                let (key, value) = split_pair(trimmed)
                    .map_err(|message| ConfigError::invalid(file, line, message))?;
                self.items.push(Item::Pair(Entry {
                    section: self.section.clone(),
                    key,
                    value: value.to_string(),
                    file: file.to_path_buf(),
                    line,
                }));
            }
        }
        Ok(())
    }

    fn directive(
        &mut self,
        file: &Path,
        line: usize,
        rest: &str,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let (word, arg) = rest
            .split_once(|c: char| c.is_whitespace())
            .unwrap_or((rest, ""));
        if !word.eq_ignore_ascii_case("include") {
            return Err(ConfigError::invalid(
                file,
                line,
                format!("unknown directive `%{word}` (expected %include)"),
            ));
        }
        let arg = arg.trim();
        if arg.is_empty() {
            return Err(ConfigError::invalid(
                file,
                line,
                "%include needs a file name",
            ));
        }
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(ConfigError::IncludeDepth {
                file: file.to_path_buf(),
                line,
                limit: MAX_INCLUDE_DEPTH,
            });
        }
        let included = resolve(file, Path::new(arg));
        let text = std::fs::read_to_string(&included).map_err(|source| ConfigError::Include {
            file: file.to_path_buf(),
            line,
            included: included.clone(),
            source,
        })?;
        self.parse(&included, &text, depth + 1)
    }
}

/// `target` as is when absolute, else relative to the directory of `file`.
pub(crate) fn resolve(file: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        return target.to_path_buf();
    }
    match file.parent() {
        Some(dir) => dir.join(target),
        None => target.to_path_buf(),
    }
}

/// Splits a trimmed `key = value` line. A double-quoted key may contain `=`
/// and spaces; `""` inside it is a literal `"`.
fn split_pair(line: &str) -> Result<(String, &str), String> {
    let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated quoted key".to_string()),
                Some((i, '"')) => {
                    if quoted[i + 1..].starts_with('"') {
                        key.push('"');
                        chars.next();
                    } else {
                        break i + 1;
                    }
                }
                Some((_, c)) => key.push(c),
            }
        };
        let rest = quoted[end..].trim_start();
        let rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after key \"{key}\""))?;
        (key, rest)
    } else {
        let (key, rest) = line
            .split_once('=')
            .ok_or_else(|| "expected `key = value`".to_string())?;
        (key.trim_end().to_string(), rest)
    };
    if key.is_empty() {
        return Err("missing key before `=`".to_string());
    }
    Ok((key, rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[Item]) -> Vec<(String, String, String, usize)> {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Pair(e) => Some((e.section.clone(), e.key.clone(), e.value.clone(), e.line)),
                Item::Section(_) => None,
            })
            .collect()
    }

    #[test]
    fn parses_sections_pairs_and_comments_with_line_numbers() {
        let text = "; comment\n[PgBouncer]\n  listen_port =  6432  \n# another\n\n[databases]\n\"my db\" = host=x\nfoo=bar=baz\n";
        let items = parse_str(Path::new("/etc/p.ini"), text).unwrap();
        assert_eq!(
            pairs(&items),
            vec![
                ("pgbouncer".into(), "listen_port".into(), "6432".into(), 3),
                ("databases".into(), "my db".into(), "host=x".into(), 7),
                ("databases".into(), "foo".into(), "bar=baz".into(), 8),
            ]
        );
        assert!(matches!(&items[0], Item::Section(s) if s.name == "pgbouncer" && s.line == 2));
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let items = parse_str(Path::new("a.ini"), "\u{feff}[pgbouncer]\nk = v\n").unwrap();
        assert!(matches!(&items[0], Item::Section(s) if s.name == "pgbouncer"));
    }

    #[test]
    fn comment_characters_later_in_a_line_are_part_of_the_value() {
        let items = parse_str(Path::new("a.ini"), "[x]\nk = a ; b # c\n").unwrap();
        assert_eq!(pairs(&items)[0].2, "a ; b # c");
    }

    #[test]
    fn quoted_keys_unescape_doubled_quotes() {
        let items = parse_str(Path::new("a.ini"), "[databases]\n\"a\"\"b = c\" = x\n").unwrap();
        assert_eq!(pairs(&items)[0].1, "a\"b = c");
    }

    #[test]
    fn syntax_errors_carry_file_and_line() {
        let err = parse_str(Path::new("/x/p.ini"), "[pgbouncer]\nnonsense\n").unwrap_err();
        assert_eq!(err.to_string(), "/x/p.ini:2: expected `key = value`");
        let err = parse_str(Path::new("/x/p.ini"), "[pgbouncer\n").unwrap_err();
        assert!(err.to_string().starts_with("/x/p.ini:1: "), "{err}");
        let err = parse_str(Path::new("/x/p.ini"), "\n\n = 3\n").unwrap_err();
        assert!(err.to_string().starts_with("/x/p.ini:3: "), "{err}");
        let err = parse_str(Path::new("/x/p.ini"), "%includ foo\n").unwrap_err();
        assert!(err.to_string().contains("unknown directive"), "{err}");
    }

    #[test]
    fn include_is_relative_to_the_including_file_and_keeps_the_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("main.ini"),
            "[pgbouncer]\n%include conf.d/a.ini\nafter = 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/a.ini"),
            "inner = 2\n%include b.ini\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/b.ini"), "[databases]\ndb = x\n").unwrap();
        let items = read(&dir.path().join("main.ini")).unwrap();
        let got: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Pair(e) => Some((
                    e.section.as_str(),
                    e.key.as_str(),
                    e.file.file_name().unwrap().to_str().unwrap().to_string(),
                    e.line,
                )),
                Item::Section(_) => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("pgbouncer", "inner", "a.ini".to_string(), 1),
                ("databases", "db", "b.ini".to_string(), 2),
                ("databases", "after", "main.ini".to_string(), 3),
            ]
        );
    }

    #[test]
    fn include_cycle_hits_the_depth_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("self.ini");
        std::fs::write(&path, "[pgbouncer]\n%include self.ini\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            matches!(err, ConfigError::IncludeDepth { line: 2, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("self.ini:2: %include nested more than 10"),
            "{err}"
        );
    }

    #[test]
    fn missing_include_names_the_including_line_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.ini");
        std::fs::write(&path, "\n%include nope.ini\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("main.ini:2: cannot read %include "), "{err}");
        assert!(err.contains("nope.ini"), "{err}");
    }

    #[test]
    fn missing_main_file_is_an_io_error() {
        let err = read(Path::new("/nonexistent/p.ini")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/p.ini: cannot read: "),
            "{err}"
        );
    }
}
