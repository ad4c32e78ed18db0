//! A throwaway PostgreSQL cluster (initdb + pg_ctl in a temp dir) for the demo and tests.
//!
//! [`TempCluster::start`] finds the PostgreSQL binaries, runs `initdb` into a fresh temp dir,
//! picks a free TCP port on 127.0.0.1, starts the server with `pg_ctl` and hands back a handle.
//! The superuser `postgres` logs in without a password over the cluster's own unix socket
//! (`socket_dir()`) and with SCRAM over TCP. Dropping the handle stops the server
//! (`pg_ctl stop -m immediate`) and removes the directory.
//!
//! PostgreSQL refuses to run as root: when the effective uid is 0, `initdb`, `pg_ctl` and the
//! server run as the OS user `postgres`, which then owns the temp dir.

use std::ffi::CString;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;

/// Environment variable that overrides where the PostgreSQL binaries are looked up.
pub const BINDIR_ENV: &str = "PGBERTH_PG_BINDIR";

/// libpq environment variables that must not leak into our psql calls.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGDATA",
];

/// How many times `start` picks a new port when the chosen one was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// Errors from creating, starting, stopping or querying a [`TempCluster`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0} not found (install the postgresql package, or set {BINDIR_ENV})")]
    BinaryNotFound(&'static str),
    #[error(
        "running as root, but there is no OS user `postgres` to run PostgreSQL as \
         (PostgreSQL refuses to run as root)"
    )]
    NoPostgresUser,
    #[error("could not run {command}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}):\n{stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ClusterError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
        let what = what.into();
        move |source| ClusterError::Io { what, source }
    }
}

/// How a role's password is stored in `pg_authid` (and so how the server authenticates it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordEncryption {
    Scram,
    Md5,
}

impl PasswordEncryption {
    fn setting(self) -> &'static str {
        match self {
            PasswordEncryption::Scram => "scram-sha-256",
            PasswordEncryption::Md5 => "md5",
        }
    }
}

/// Settings for [`TempCluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Password of the superuser `postgres` (stored as SCRAM). Default `"postgres"`.
    pub superuser_password: String,
    /// `max_connections`. Default 100.
    pub max_connections: u32,
    /// Extra `postgresql.conf` lines, appended after ours (so they win).
    pub extra_conf: Vec<String>,
    /// Replaces `pg_hba.conf` entirely when set. Without it, the initdb default applies:
    /// `trust` on the unix socket and `scram-sha-256` on TCP. Set it when a role needs md5 or
    /// trust over TCP, e.g. `host all md5_user 127.0.0.1/32 md5` before the scram line. Keep a
    /// `local all all trust` line: the helpers (`psql`, `create_role`, ...) rely on it.
    pub hba: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            superuser_password: "postgres".to_owned(),
            max_connections: 100,
            extra_conf: Vec::new(),
            hba: None,
        }
    }
}

/// A running PostgreSQL server in a temp dir, removed on drop.
#[derive(Debug)]
pub struct TempCluster {
    /// `None` once `shutdown` has removed the directory.
    dir: Mutex<Option<tempfile::TempDir>>,
    root: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    superuser_password: String,
    /// uid/gid to run PostgreSQL as when we are root.
    run_as: Option<(u32, u32)>,
}

impl TempCluster {
    /// initdb, configure and start a new cluster. Blocks until the server accepts connections.
    pub fn start(options: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_os_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgberth-pg-")
            .tempdir()
            .map_err(ClusterError::io(
                "could not create a temp dir for PostgreSQL",
            ))?;
        let root = dir.path().to_path_buf();
        // Others (the root test process, a non-root pgberth) must reach the unix socket in it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(ClusterError::io(format!("chmod {}", root.display())))?;
        if let Some((uid, gid)) = run_as {
            chown(&root, uid, gid)?;
        }
        let mut cluster = TempCluster {
            dir: Mutex::new(Some(dir)),
            root,
            bin_dir,
            port: 0,
            superuser_password: options.superuser_password.clone(),
            run_as,
        };
        cluster.initdb(&options)?;
        cluster.configure(&options)?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    fn initdb(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        // initdb wants the superuser password when host auth uses passwords; give it a file
        // that only the server's OS user can read, and delete it right after.
        let pwfile = self.root.join("pwfile");
        write_file(&pwfile, &format!("{}\n", options.superuser_password))?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .map_err(ClusterError::io(format!("chmod {}", pwfile.display())))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&pwfile, uid, gid)?;
        }
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = run(cmd, "initdb");
        let _ = std::fs::remove_file(&pwfile);
        result.map(drop)
    }

    fn configure(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let mut conf = String::from("\n# added by pgberth's TempCluster\n");
        let _ = writeln!(conf, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(
            conf,
            "unix_socket_directories = '{}'",
            self.root.display().to_string().replace('\'', "''")
        );
        let _ = writeln!(conf, "max_connections = {}", options.max_connections);
        for line in [
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "logging_collector = off",
        ] {
            let _ = writeln!(conf, "{line}");
        }
        for line in &options.extra_conf {
            let _ = writeln!(conf, "{line}");
        }
        self.append_conf(&conf)?;
        if let Some(hba) = &options.hba {
            let path = self.data_dir().join("pg_hba.conf");
            write_file(&path, hba)?;
            if let Some((uid, gid)) = self.run_as {
                chown(&path, uid, gid)?;
            }
        }
        Ok(())
    }

    /// Append lines to `postgresql.conf` (later lines win). Takes effect on restart or, for
    /// reloadable settings, after `pg_ctl(&["reload"])`.
    pub fn append_conf(&self, text: &str) -> Result<(), ClusterError> {
        let path = self.data_dir().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(ClusterError::io(format!("open {}", path.display())))?;
        file.write_all(text.as_bytes())
            .map_err(ClusterError::io(format!("write {}", path.display())))
    }

    /// Pick a free port and start; if another process grabbed the port in between, retry.
    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.append_conf(&format!("port = {}\n", self.port))?;
            match self.start_server() {
                Ok(()) => return Ok(()),
                Err(err)
                    if attempt < PORT_ATTEMPTS && self.log_tail().contains("could not bind") =>
                {
                    drop(err);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`); usable as `host=`.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Name of the superuser role.
    pub fn superuser(&self) -> &str {
        "postgres"
    }

    /// Password of the superuser role, for TCP logins.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgresql.log")
    }

    /// Last few kB of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let mut start = log.len().saturating_sub(4000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }

    /// Run `pg_ctl -D <data dir> <args>` as the server's OS user; returns its stdout.
    pub fn pg_ctl(&self, args: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args);
        let command = format!("pg_ctl {}", args.join(" "));
        run(cmd, &command).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start the server (again) and wait until it accepts connections.
    pub fn start_server(&self) -> Result<(), ClusterError> {
        let log = self.log_path();
        let log = log.to_string_lossy();
        match self.pg_ctl(&["-w", "-t", "60", "-l", &log, "start"]) {
            Ok(_) => Ok(()),
            Err(ClusterError::CommandFailed {
                command,
                status,
                stderr,
            }) => Err(ClusterError::CommandFailed {
                command,
                status,
                stderr: format!("{stderr}\nserver log:\n{}", self.log_tail()),
            }),
            Err(err) => Err(err),
        }
    }

    /// Stop the server (fast shutdown: open sessions are terminated) and wait for it to exit.
    /// The data stays; `start_server` brings it back on the same port.
    pub fn stop_server(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]).map(drop)
    }

    /// Stop the server and remove the directory, reporting a failed stop.
    pub fn stop(self) -> Result<(), ClusterError> {
        let result = self.stop_server();
        self.shutdown();
        result
    }

    /// Stop the server immediately (ignoring errors) and remove the directory. Idempotent.
    /// For handles that are never dropped, such as one kept in a `static` (call it from an
    /// `atexit` hook); `Drop` calls it too.
    pub fn shutdown(&self) {
        let dir = self.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dir) = dir {
            if self.data_dir().join("postmaster.pid").exists() {
                let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
            }
            let _ = dir.close();
        }
    }

    /// Run SQL as the superuser over the unix socket with psql (`-X -A -t -q`,
    /// `ON_ERROR_STOP=1`); returns stdout without its final newline. Statements run one by one,
    /// as in a script, so `CREATE DATABASE` works.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.psql_path());
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                self.superuser(),
                "-d",
                db,
            ])
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!("psql -d {db}");
        let mut child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            command: command.clone(),
            source,
        })?;
        // Feed stdin from a thread so a large result cannot deadlock against our write.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let script = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let output = child
            .wait_with_output()
            .map_err(|source| ClusterError::Spawn {
                command: command.clone(),
                source,
            })?;
        let _ = writer.join();
        let output = check(output, &command)?;
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// The server's version string (`SHOW server_version`), e.g. `15.8 (Debian 15.8-0+deb12u1)`.
    pub fn server_version(&self) -> Result<String, ClusterError> {
        self.psql("postgres", "SHOW server_version")
    }

    /// Create a login role whose password is stored as SCRAM or md5.
    pub fn create_role(
        &self,
        name: &str,
        password: &str,
        auth: PasswordEncryption,
    ) -> Result<(), ClusterError> {
        let sql = format!(
            "SET password_encryption = '{}';\nCREATE ROLE {} LOGIN PASSWORD {};\n",
            auth.setting(),
            quote_ident(name),
            quote_literal(password)
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// Create a database owned by `owner`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ClusterError> {
        let sql = format!(
            "CREATE DATABASE {} OWNER {};\n",
            quote_ident(name),
            quote_ident(owner)
        );
        self.psql("postgres", &sql).map(drop)
    }

    /// The stored password of `role` (`pg_authid.rolpassword`): `SCRAM-SHA-256$...` or
    /// `md5...`, the form pgbouncer's userlist.txt accepts.
    pub fn scram_verifier(&self, role: &str) -> Result<String, ClusterError> {
        let sql = format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = {}",
            quote_literal(role)
        );
        self.psql("postgres", &sql)
    }

    fn psql_path(&self) -> PathBuf {
        let ours = self.bin_dir.join("psql");
        if ours.is_file() {
            ours
        } else {
            PathBuf::from("/usr/bin/psql")
        }
    }

    /// A command for a server-side binary, run as `postgres` when we are root.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.root);
        for var in LIBPQ_ENV {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Picked at random below the kernel's
/// ephemeral range (32768 and up), so that an outgoing connection cannot take it before the
/// caller binds it, and two callers rarely pick the same one.
pub fn free_port() -> Result<u16, ClusterError> {
    for _ in 0..100 {
        let port = rand::random_range(20_000..32_000);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ClusterError::io(
        "could not bind 127.0.0.1:0 to find a free port",
    ))?;
    let port = listener
        .local_addr()
        .map_err(ClusterError::io("could not read the bound port"))?
        .port();
    Ok(port)
}

/// `$PGBERTH_PG_BINDIR`, else `pg_config --bindir`, else the highest
/// `/usr/lib/postgresql/<version>/bin`, else the directory on `PATH` holding `initdb`.
fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinaryNotFound("initdb"))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let best = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version: Vec<u32> = name
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                let bin = e.path().join("bin");
                has_initdb(&bin).then_some((version, bin))
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, bin)) = best {
            return Ok(bin);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_initdb(dir)))
        .ok_or(ClusterError::BinaryNotFound("initdb"))
}

/// uid and gid of the OS user `postgres`.
fn postgres_os_user() -> Result<(u32, u32), ClusterError> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage; we copy the two ids out
    // before any other call could overwrite it. Only used during setup.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(ClusterError::NoPostgresUser);
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok((uid, gid))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(ClusterError::io(format!("chown {}", path.display())))
}

fn write_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    std::fs::write(path, text).map_err(ClusterError::io(format!("write {}", path.display())))
}

/// Run to completion with captured output; a non-zero exit becomes `CommandFailed`.
fn run(mut cmd: Command, command: &str) -> Result<Output, ClusterError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            command: command.to_owned(),
            source,
        })?;
    check(output, command)
}

fn check(output: Output, command: &str) -> Result<Output, ClusterError> {
    if output.status.success() {
        Ok(output)
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.trim().is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).into_owned();
        }
        Err(ClusterError::CommandFailed {
            command: command.to_owned(),
            status: output.status,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
