//! Configuration: pgbouncer.ini, userlist.txt, typed settings and validation.
//!
//! `Config::load` reads the ini file (with `%include`s), applies every setting
//! with file:line tracking, collects warnings for settings pgberth ignores, and
//! reads `auth_file`. Submodules:
//! - `ini`: line syntax and `%include`;
//! - `general`: `[pgbouncer]` settings and their defaults;
//! - `database`: `[databases]` / `[users]` entries;
//! - `connstring`: the `key=value key='quoted'` syntax of those entries;
//! - `userlist`: the auth file and secret classification;
//! - `values`: value parsers and the `PoolMode` / `AuthType` enums;
//! - `keys`: PgBouncer settings recognised but not implemented yet;
//! - `error`: `ConfigError` and `Diagnostic`.

mod connstring;
mod database;
mod error;
mod general;
mod ini;
mod keys;
mod show;
mod userlist;
mod values;

/// A database as [`Config::database`] finds it: its `[databases]` entry, or one made from the
/// `*` fallback. The made one is boxed so that this is a pointer either way: logins keep it
/// across awaits, in a future allocated per connection.
#[derive(Debug)]
pub enum FoundDatabase<'a> {
    Borrowed(&'a Database),
    Owned(Box<Database>),
}

impl std::ops::Deref for FoundDatabase<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        match self {
            FoundDatabase::Borrowed(db) => db,
            FoundDatabase::Owned(db) => db,
        }
    }
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use database::{Database, UserSettings};
pub use error::{ConfigError, Diagnostic};
pub use general::General;
pub use ini::MAX_INCLUDE_DEPTH;
pub use keys::{
    NOT_YET_EFFECTIVE_GENERAL_KEYS, UNSUPPORTED_DATABASE_KEYS, UNSUPPORTED_GENERAL_KEYS,
    UNSUPPORTED_USER_KEYS,
};
pub use show::{SetError, changeable};
pub use userlist::{Secret, Userlist};
pub use values::{AuthType, PoolMode, SslMode};

use error::At;
use general::Applied;
use ini::Item;

/// Names reserved for the admin console; a `[databases]` entry with one of
/// these names is shadowed by it.
pub const ADMIN_DATABASES: &[&str] = &["pgbouncer", "pgberth"];

/// A fully parsed and validated configuration snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The main ini file, as given to `load`.
    pub path: PathBuf,
    /// `[pgbouncer]`.
    pub general: General,
    /// `[databases]`, without the `*` fallback.
    pub databases: BTreeMap<String, Database>,
    /// The `*` line of `[databases]`, if any (its `dbname` is empty unless set).
    pub fallback_database: Option<Database>,
    /// `[users]`.
    pub users: BTreeMap<String, UserSettings>,
    /// The parsed `auth_file`; empty when `auth_file` is not set.
    pub userlist: Userlist,
    /// Settings that were ignored, with file:line. Report them at start-up.
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// Reads, parses and validates the ini file at `path` and the `auth_file`
    /// it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let items = ini::read(path)?;
        let mut config = Config {
            path: path.to_path_buf(),
            general: General::default(),
            databases: BTreeMap::new(),
            fallback_database: None,
            users: BTreeMap::new(),
            userlist: Userlist::default(),
            warnings: Vec::new(),
        };
        for item in &items {
            config.apply(item)?;
        }
        if let Some(auth_file) = &config.general.auth_file {
            config.userlist = Userlist::load(auth_file)?;
        }
        Ok(config)
    }

    fn apply(&mut self, item: &Item) -> Result<(), ConfigError> {
        let entry = match item {
            Item::Section(section) => {
                if !matches!(
                    section.name.as_str(),
                    "pgbouncer" | "databases" | "users" | "peers"
                ) {
                    let at = At {
                        file: &section.file,
                        line: section.line,
                    };
                    self.warnings.push(at.warning(format!(
                        "unknown section [{}], its settings are ignored",
                        section.name
                    )));
                }
                return Ok(());
            }
            Item::Pair(entry) => entry,
        };
        let at = At {
            file: &entry.file,
            line: entry.line,
        };
        match entry.section.as_str() {
            "pgbouncer" => {
                let key = entry.key.to_ascii_lowercase();
                let applied = self.general.apply(&key, &entry.value, &self.path, at)?;
                if let Some((_, why)) = NOT_YET_EFFECTIVE_GENERAL_KEYS
                    .iter()
                    .find(|(k, _)| *k == key)
                {
                    self.warnings
                        .push(at.warning(format!("`{key}` has no effect yet: {why}")));
                }
                if applied == Applied::Unknown {
                    let message = if UNSUPPORTED_GENERAL_KEYS.contains(&key.as_str()) {
                        format!("`{key}` is not supported by pgberth yet, ignored")
                    } else {
                        format!("unknown setting `{key}`, ignored")
                    };
                    self.warnings.push(at.warning(message));
                }
            }
            "databases" => {
                let db =
                    database::parse_database(&entry.key, &entry.value, at, &mut self.warnings)?;
                self.add_database(db, at);
            }
            "users" => {
                let user = database::parse_user(&entry.key, &entry.value, at, &mut self.warnings)?;
                self.users.insert(entry.key.clone(), user);
            }
            "peers" => self.warnings.push(at.warning(format!(
                "[peers] is not supported by pgberth yet, peer `{}` ignored",
                entry.key
            ))),
            "" => self.warnings.push(at.warning(format!(
                "setting `{}` is outside any section, ignored",
                entry.key
            ))),
            // Unknown section: already reported at its header.
            _ => {}
        }
        Ok(())
    }

    fn add_database(&mut self, db: Database, at: At<'_>) {
        if ADMIN_DATABASES.contains(&db.name.as_str()) {
            self.warnings.push(at.warning(format!(
                "database \"{}\" is the admin console's name; this entry is never used",
                db.name
            )));
        }
        let previous = if db.name == "*" {
            self.fallback_database.replace(db)
        } else {
            self.databases.insert(db.name.clone(), db)
        };
        if let Some(previous) = previous {
            let (file, line) = &previous.defined_at;
            self.warnings.push(at.warning(format!(
                "database \"{}\" is defined again; this replaces the definition at {}:{}",
                previous.name,
                file.display(),
                line
            )));
        }
    }

    /// The database a client asking for `name` gets: the `[databases]` entry
    /// of that name, else the `*` fallback with `name` as its name (and as its
    /// `dbname`, unless the fallback sets one).
    pub fn database(&self, name: &str) -> Option<FoundDatabase<'_>> {
        if let Some(db) = self.databases.get(name) {
            return Some(FoundDatabase::Borrowed(db));
        }
        let mut db = self.fallback_database.clone()?;
        db.name = name.to_string();
        if db.dbname.is_empty() {
            db.dbname = name.to_string();
        }
        Some(FoundDatabase::Owned(Box::new(db)))
    }

    /// The pool mode for `user` on `db`: `[users]` beats the database line,
    /// which beats `[pgbouncer]`.
    pub fn pool_mode_for(&self, db: &Database, user: &str) -> PoolMode {
        self.users
            .get(user)
            .and_then(|u| u.pool_mode)
            .or(db.pool_mode)
            .unwrap_or(self.general.pool_mode)
    }

    /// `max_user_connections` for `user`: `[users]` beats `[pgbouncer]`; 0 = unlimited.
    pub fn max_user_connections_for(&self, user: &str) -> u32 {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.general.max_user_connections)
    }
}
