//! The config module's error type and the `Diagnostic` used for warnings.
//!
//! Every content error carries the file and line it came from and displays as
//! `path:line: message`; I/O errors display as `path: cannot read: error`.
//! No variant ever holds a password or a userlist secret.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A non-fatal problem found while loading the configuration (unknown or
/// unsupported setting, ignored section…). Displays as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, line: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Why a configuration (ini file, included file or userlist) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all (missing, permissions, not UTF-8).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A `%include` named a file that could not be read.
    #[error("{}:{line}: cannot read %include {}: {source}", file.display(), included.display())]
    Include {
        file: PathBuf,
        line: usize,
        included: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `%include` nested deeper than [`MAX_INCLUDE_DEPTH`](super::ini::MAX_INCLUDE_DEPTH)
    /// (most likely a file including itself).
    #[error("{}:{line}: %include nested more than {limit} levels deep (include cycle?)", file.display())]
    IncludeDepth {
        file: PathBuf,
        line: usize,
        limit: usize,
    },

    /// A setting whose value does not parse or is out of range.
    #[error("{}:{line}: invalid value \"{value}\" for {key} (expected {expected})", file.display())]
    InvalidValue {
        file: PathBuf,
        line: usize,
        key: String,
        value: String,
        expected: String,
    },

    /// A line that is not valid ini / connection-string / userlist syntax, or
    /// a combination of settings that cannot work.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(file: &Path, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> ConfigError {
        ConfigError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The file and line the error points at (the file alone for I/O errors,
    /// with line 0).
    pub fn location(&self) -> (&Path, usize) {
        match self {
            ConfigError::Io { path, .. } => (path, 0),
            ConfigError::Include { file, line, .. }
            | ConfigError::IncludeDepth { file, line, .. }
            | ConfigError::InvalidValue { file, line, .. }
            | ConfigError::Invalid { file, line, .. } => (file, *line),
        }
    }
}

/// Where a setting was read: used to build errors and warnings for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub file: &'a Path,
    pub line: usize,
}

impl At<'_> {
    pub fn invalid_value(
        &self,
        key: &str,
        value: &str,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            file: self.file.to_path_buf(),
            line: self.line,
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.file, self.line, message)
    }

    pub fn warning(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.file, self.line, message)
    }
}
