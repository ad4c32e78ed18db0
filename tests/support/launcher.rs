//! Runs the built pgberth binary on a config written for one test, and talks to it.
//!
//! The ini and userlist may use placeholders: `@PORT@` (a free port for pgberth), `@PGPORT@`
//! (the test cluster's port), `@PGSOCKET@` (the cluster's unix socket dir) and `@DIR@` (this
//! instance's temp dir). Tests write `listen_addr`/`listen_port`/`unix_socket_dir` themselves,
//! usually `listen_addr = 127.0.0.1`, `listen_port = @PORT@`, `unix_socket_dir = @DIR@`.

use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use pgberth::cluster::free_port;

/// How long pgberth may take to listen after it was spawned.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running pgberth process; SIGTERM (then SIGKILL) and temp dir removal on drop.
pub struct Pgberth {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    ini: PathBuf,
}

impl Pgberth {
    /// Start `pgberth -v <ini>` and wait until its port accepts TCP connections.
    pub fn start(ini_body: &str, userlist: &str) -> Pgberth {
        Pgberth::start_with_args(&["-v"], ini_body, userlist)
    }

    /// Like [`Pgberth::start`] with other flags before the ini path (e.g. `&[]` or `&["-q"]`).
    pub fn start_with_args(args: &[&str], ini_body: &str, userlist: &str) -> Pgberth {
        let dir = tempfile::Builder::new()
            .prefix("pgberth-test-")
            .tempdir()
            .expect("create a temp dir for pgberth");
        let port = free_port().expect("find a free port for pgberth");
        let ini = dir.path().join("pgberth.ini");
        let userlist_path = dir.path().join("userlist.txt");
        let subst = |body: &str| substitute(body, port, dir.path());
        let ini_text = subst(ini_body);
        std::fs::write(&ini, &ini_text).expect("write pgberth.ini");
        std::fs::write(&userlist_path, subst(userlist)).expect("write userlist.txt");

        let log = File::create(dir.path().join("pgberth.log")).expect("create pgberth.log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgberth"))
            .args(args)
            .arg(&ini)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn the pgberth binary");
        let mut pgberth = Pgberth {
            child,
            port,
            dir,
            ini,
        };
        pgberth.wait_listening(unix_socket_path(&ini_text, port).as_deref());
        pgberth
    }

    /// Waits until pgberth accepts connections on its TCP port and, when it has one, on its
    /// unix socket (bound just after the TCP listeners, so the TCP port alone is not enough).
    fn wait_listening(&mut self, unix: Option<&Path>) {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pgberth") {
                panic!(
                    "pgberth exited ({status}) before listening on port {}; its log:\n{}",
                    self.port,
                    self.log_contents()
                );
            }
            let addr = (Ipv4Addr::LOCALHOST, self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && unix.is_none_or(|path| std::os::unix::net::UnixStream::connect(path).is_ok())
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgberth did not listen on port {} within {LISTEN_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding pgberth.ini, userlist.txt and pgberth.log (`@DIR@`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ini_path(&self) -> &Path {
        &self.ini
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal, e.g. `libc::SIGHUP` (reload), `libc::SIGINT` (safe shutdown).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child process.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.child.id());
    }

    /// Replace pgberth.ini (same placeholders, same port); send SIGHUP or RELOAD afterwards.
    pub fn rewrite_ini(&self, ini_body: &str) {
        std::fs::write(&self.ini, substitute(ini_body, self.port, self.dir.path()))
            .expect("rewrite pgberth.ini");
    }

    /// Replace userlist.txt.
    pub fn rewrite_userlist(&self, userlist: &str) {
        let path = self.dir.path().join("userlist.txt");
        std::fs::write(path, substitute(userlist, self.port, self.dir.path()))
            .expect("rewrite userlist.txt");
    }

    /// Everything pgberth wrote to stdout and stderr so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgberth.log")).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_contents().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "pgberth's log did not show {needle:?} within {timeout:?}:\n{}",
                    self.log_contents()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pgberth") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A tokio-postgres connection string through pgberth, without TLS.
    pub fn conn_str(&self, user: &str, password: &str, db: &str) -> String {
        super::conn_str(self.port, user, password, db)
    }

    /// Connect through pgberth (the connection task is spawned on the current runtime).
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
        match self.try_connect(user, password, db).await {
            Ok(client) => client,
            Err(err) => panic!(
                "connect as {user} to {db} through pgberth failed: {err:?}\npgberth log:\n{}",
                self.log_contents()
            ),
        }
    }

    /// Like [`Pgberth::connect`], returning the error (for tests of rejected logins).
    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_str(user, password, db), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Run psql against pgberth (`PGHOST`/`PGPORT` set, `-X`); add `-U`, `-d`, `-c` yourself.
    pub fn psql(&self, args: &[&str]) -> Output {
        self.psql_command().args(args).output().expect("run psql")
    }

    /// psql as `user` with `password`, on `db`, running `sql` (`-A -t -v ON_ERROR_STOP=1`).
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Output {
        self.psql_command()
            .env("PGPASSWORD", password)
            .args([
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                user,
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql")
    }

    fn psql_command(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/psql");
        for var in [
            "PGPASSWORD",
            "PGUSER",
            "PGDATABASE",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .arg("-X")
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Pgberth {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            if self.wait_exit(STOP_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn substitute(body: &str, port: u16, dir: &Path) -> String {
    let cluster = super::cluster();
    body.replace("@PGPORT@", &cluster.port().to_string())
        .replace("@PGSOCKET@", &cluster.socket_dir().display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@DIR@", &dir.display().to_string())
}

/// The unix socket an ini sets up (`unix_socket_dir`, when not empty), for `port`.
fn unix_socket_path(ini_text: &str, port: u16) -> Option<std::path::PathBuf> {
    ini_text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if key.trim() != "unix_socket_dir" || value.trim().is_empty() {
            return None;
        }
        Some(Path::new(value.trim()).join(format!(".s.PGSQL.{port}")))
    })
}
