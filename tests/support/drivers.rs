//! Client drivers other than tokio-postgres, for tests that must see what real applications
//! send: a Python virtualenv with asyncpg and psycopg 3 (made once and cached under the
//! target dir), pgbench, and a raw protocol client that sends hand-made extended-protocol
//! messages (to reuse a statement name after Close, which no driver does).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgberth::auth::{ScramClient, ScramCredential};
use pgberth::protocol::build;
use pgberth::protocol::error::{ServerError, parse_error_fields};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Pgberth;

// ---------------------------------------------------------------------------------------------
// Python.

/// What the virtualenv gets; the marker file holds this line, so changing it rebuilds the venv.
pub const PYTHON_REQUIREMENTS: &[&str] = &["asyncpg==0.32.0", "psycopg[binary]==3.3.9"];

/// The Python interpreter the venv is made from (`PGBERTH_TEST_PYTHON` overrides `python3`).
fn base_python() -> String {
    std::env::var("PGBERTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// `<target>/tmp/pyenv`: outside the source tree, kept between runs, one per target dir.
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyenv")
}

/// The venv's python, creating the venv (`python3 -m venv`, then `pip install` of
/// [`PYTHON_REQUIREMENTS`] from PyPI) on first use. Threads of this process wait for each
/// other through the `OnceLock`, other test processes through an flock.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(provision_venv)
        .clone()
        .unwrap_or_else(|err| panic!("{err}"))
}

fn provision_venv() -> Result<PathBuf, String> {
    let dir = venv_dir();
    let parent = dir.parent().expect("venv dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    let lock_path = parent.join("pyenv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    let _guard = Flock::exclusive(&lock);

    let python = dir.join("bin").join("python");
    let marker = dir.join(".pgberth-requirements");
    let wanted = PYTHON_REQUIREMENTS.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|have| have == wanted) && python.exists() {
        return Ok(python);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    let base = base_python();
    let venv = Command::new(&base)
        .args(["-m", "venv"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run `{base} -m venv`: {e} (is Python 3 installed?)"))?;
    if !venv.status.success() {
        return Err(format!(
            "`{base} -m venv {}` failed (on Debian/Ubuntu install python3-venv; .ci/run does): \
             {}",
            dir.display(),
            output_text(&venv)
        ));
    }
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_REQUIREMENTS)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run pip: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "pip install {wanted} into {} failed: {}",
            dir.display(),
            output_text(&pip)
        ));
    }
    std::fs::write(&marker, &wanted).map_err(|e| format!("write {}: {e}", marker.display()))?;
    Ok(python)
}

/// An exclusive flock(2), released on drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> Flock<'a> {
        // SAFETY: flock(2) on a file descriptor we own for the guard's lifetime.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        Flock(file)
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Runs `script` with the venv's python (`python -c script args...`), killing it after
/// `timeout` (a hang). Stdout and stderr go through files so a chatty script cannot block.
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> Output {
    let python = python();
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(script).args(args);
    run_with_timeout(cmd, timeout)
}

/// Runs `cmd` (stdin closed) and collects its output; kills it after `timeout` and says so on
/// stderr.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir for command output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            break (status, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break (child.wait().expect("reap child"), true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = std::fs::read(&err_path).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[killed after {timeout:?}: hung]\n").as_bytes());
    }
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr,
    }
}

/// `status …`, stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// pgbench.

/// pgbench against pgberth as `user` (PGHOST, PGPORT, PGPASSWORD set), killed after `timeout`.
pub fn pgbench(
    pgberth: &Pgberth,
    user: &str,
    password: &str,
    args: &[&str],
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new("/usr/bin/pgbench");
    for var in ["PGUSER", "PGDATABASE", "PGSERVICE", "PGOPTIONS"] {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", pgberth.port().to_string())
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-U", user])
        .args(args);
    run_with_timeout(cmd, timeout)
}

// ---------------------------------------------------------------------------------------------
// Raw protocol client.

/// What one round trip up to ReadyForQuery brought back.
#[derive(Debug, Default)]
pub struct Reply {
    /// DataRow values as text (all results of the round trip in order).
    pub rows: Vec<Vec<Option<String>>>,
    /// The first ErrorResponse, if any.
    pub error: Option<ServerError>,
}

/// A frontend that writes protocol messages itself: Parse/Bind/Execute/Close/Sync queued with
/// the builder methods, sent by [`RawClient::round_trip`]. Text format throughout.
pub struct RawClient {
    stream: TcpStream,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl RawClient {
    /// Logs in (SCRAM-SHA-256, md5-free) and reads up to the first ReadyForQuery.
    pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to pgberth");
        let mut client = RawClient {
            stream,
            out: Vec::new(),
            buf: Vec::new(),
        };
        build::startup_message(&mut client.out, &[("user", user), ("database", db)]);
        client.send().await;
        let mut scram = ScramClient::new(ScramCredential::Password(password.to_owned()));
        loop {
            let (tag, body) = client.read_message().await;
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        10 => {
                            let first = scram.client_first();
                            build::sasl_initial_response(&mut client.out, "SCRAM-SHA-256", &first);
                            client.send().await;
                        }
                        11 => {
                            let last = scram.server_first(&body[4..]).expect("SCRAM server-first");
                            build::sasl_response(&mut client.out, &last);
                            client.send().await;
                        }
                        12 => scram.server_final(&body[4..]).expect("SCRAM server-final"),
                        3 => {
                            build::password(&mut client.out, password);
                            client.send().await;
                        }
                        other => panic!("raw client: unsupported authentication request {other}"),
                    }
                }
                b'E' => panic!("raw client login failed: {}", parse_error_fields(&body)),
                b'Z' => return client,
                _ => {}
            }
        }
    }

    pub fn parse(&mut self, name: &str, sql: &str) -> &mut Self {
        self.message(b'P', |out| {
            cstr(out, name);
            cstr(out, sql);
            out.extend_from_slice(&0u16.to_be_bytes());
        })
    }

    /// Bind to the unnamed portal with text parameters and text results.
    pub fn bind(&mut self, statement: &str, params: &[&str]) -> &mut Self {
        self.message(b'B', |out| {
            cstr(out, "");
            cstr(out, statement);
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&(params.len() as u16).to_be_bytes());
            for p in params {
                out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                out.extend_from_slice(p.as_bytes());
            }
            out.extend_from_slice(&0u16.to_be_bytes());
        })
    }

    /// Execute the unnamed portal, all rows.
    pub fn execute(&mut self) -> &mut Self {
        self.message(b'E', |out| {
            cstr(out, "");
            out.extend_from_slice(&0u32.to_be_bytes());
        })
    }

    pub fn close_statement(&mut self, name: &str) -> &mut Self {
        self.message(b'C', |out| {
            out.push(b'S');
            cstr(out, name);
        })
    }

    pub fn sync(&mut self) -> &mut Self {
        self.message(b'S', |_| {})
    }

    /// A simple-protocol Query.
    pub fn query(&mut self, sql: &str) -> &mut Self {
        build::query(&mut self.out, sql);
        self
    }

    /// Sends what was queued and reads up to the next ReadyForQuery (queue exactly one Sync or
    /// Query per round trip).
    pub async fn round_trip(&mut self) -> Reply {
        self.send().await;
        let mut reply = Reply::default();
        loop {
            let (tag, body) = self.read_message().await;
            match tag {
                b'D' => reply.rows.push(data_row(&body)),
                b'E' if reply.error.is_none() => reply.error = Some(parse_error_fields(&body)),
                b'Z' => return reply,
                _ => {}
            }
        }
    }

    /// Parse + Sync: `Err` carries the server's error.
    pub async fn prepare(&mut self, name: &str, sql: &str) -> Result<(), ServerError> {
        let reply = self.parse(name, sql).sync().round_trip().await;
        reply.error.map_or(Ok(()), Err)
    }

    /// Bind + Execute + Sync of a named statement: the rows, or the server's error.
    pub async fn run(
        &mut self,
        name: &str,
        params: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let reply = self.bind(name, params).execute().sync().round_trip().await;
        match reply.error {
            Some(err) => Err(err),
            None => Ok(reply.rows),
        }
    }

    /// Close + Sync.
    pub async fn close(&mut self, name: &str) -> Result<(), ServerError> {
        let reply = self.close_statement(name).sync().round_trip().await;
        reply.error.map_or(Ok(()), Err)
    }

    fn message(&mut self, tag: u8, body: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.out.push(tag);
        let start = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        body(&mut self.out);
        let len = (self.out.len() - start) as u32;
        self.out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        self
    }

    async fn send(&mut self) {
        self.stream
            .write_all(&self.out)
            .await
            .expect("raw client write");
        self.out.clear();
    }

    async fn read_message(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!((4..1 << 24).contains(&len), "raw client: bad length {len}");
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return (tag, body);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.expect("raw client read");
            assert!(n > 0, "raw client: connection closed by pgberth");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            values.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
            rest = &rest[len..];
        }
    }
    values
}
