//! The command line of the built binary: `-V`, `check`, refusing a bad config at start-up,
//! `%include`, `-d` (daemon, pidfile, logfile) and `-q`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Pgberth, SCRAM_PASS, SCRAM_USER, cluster};

/// Generous bound for anything that should happen promptly; only detects hangs.
const HANG: Duration = Duration::from_secs(30);

const USERLIST: &str = "\"scram_user\" \"scram_pass\"\n";

fn pgberth() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgberth"));
    cmd.stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    pgberth().args(args).output().expect("run pgberth")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A temp dir holding `pgberth.ini` (with `general` in `[pgbouncer]`) and `userlist.txt`.
struct Files {
    dir: tempfile::TempDir,
    port: u16,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::Builder::new()
            .prefix("pgberth-cli-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("userlist.txt"), USERLIST).expect("write userlist");
        let port = pgberth::cluster::free_port().expect("free port");
        Files { dir, port }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` with `@PORT@`, `@PGPORT@` and `@DIR@` substituted; returns its path.
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let body = body
            .replace("@PGPORT@", &cluster().port().to_string())
            .replace("@PORT@", &self.port.to_string())
            .replace("@DIR@", &self.dir.path().display().to_string());
        let path = self.path(name);
        std::fs::write(&path, body).expect("write config file");
        path
    }
}

const GOOD_INI: &str = "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
";

/// The line number of a line appended to `GOOD_INI`.
fn appended_line() -> usize {
    GOOD_INI.lines().count() + 1
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn version_flag_prints_the_crate_version() {
    for flag in ["-V", "--version"] {
        let out = run(&[flag]);
        assert!(out.status.success(), "{flag}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("pgberth") && stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag} printed {stdout:?}"
        );
    }
}

#[test]
fn check_accepts_a_good_config_with_exit_status_zero() {
    let files = Files::new();
    let ini = files.write("pgberth.ini", GOOD_INI);
    let out = run(&["check", s(&ini)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"), "{}", text(&out));
}

#[test]
fn check_rejects_a_bad_value_with_file_line_and_the_allowed_values() {
    let files = Files::new();
    let ini = files.write("bad.ini", &format!("{GOOD_INI}pool_mode = sesion\n"));
    let out = run(&["check", s(&ini)]);
    let output = text(&out);
    assert!(!out.status.success(), "a bad value must fail: {output}");
    assert!(
        output.contains(&format!("{}:{}:", ini.display(), appended_line())),
        "no file:line in {output:?}"
    );
    assert!(output.contains("sesion"), "{output}");
    for allowed in ["session", "transaction", "statement"] {
        assert!(
            output.contains(allowed),
            "allowed value {allowed} missing: {output}"
        );
    }
}

#[test]
fn check_warns_about_an_unknown_key_with_file_line_but_passes() {
    let files = Files::new();
    let ini = files.write("unknown.ini", &format!("{GOOD_INI}no_such_setting = 1\n"));
    let out = run(&["check", s(&ini)]);
    let output = text(&out);
    assert!(
        out.status.success(),
        "an unknown key is a warning: {output}"
    );
    assert!(
        output.contains(&format!("{}:{}:", ini.display(), appended_line()))
            && output.contains("no_such_setting"),
        "no warning with file:line in {output:?}"
    );
    assert!(output.to_lowercase().contains("warning"), "{output}");
}

#[test]
fn running_with_a_bad_value_refuses_to_start_with_file_line() {
    let files = Files::new();
    let ini = files.write("bad.ini", &format!("{GOOD_INI}pool_mode = sesion\n"));
    let mut child = pgberth()
        .arg(&ini)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgberth");
    let deadline = Instant::now() + HANG;
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgberth started with a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains(&format!("{}:{}:", ini.display(), appended_line()))
            && output.contains("sesion"),
        "{output:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", files.port)).is_err(),
        "nothing may listen on the port"
    );
}

#[test]
fn check_follows_include_and_reports_errors_at_the_included_file_line() {
    let files = Files::new();
    files.write(
        "databases.ini",
        "app = host=127.0.0.1 port=@PGPORT@ dbname=app\n",
    );
    files.write("bad-include.ini", "pool_mode = sesion\n");
    let ini = files.write(
        "main.ini",
        "\
[databases]
%include @DIR@/databases.ini

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
auth_file = @DIR@/userlist.txt
",
    );
    let out = run(&["check", s(&ini)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 databases"), "{}", text(&out));

    // An error inside an included file points at that file and line.
    let with_bad = files.write(
        "main-bad.ini",
        &format!(
            "{}%include bad-include.ini\n",
            std::fs::read_to_string(&ini).unwrap()
        ),
    );
    let out = run(&["check", s(&with_bad)]);
    assert!(!out.status.success(), "{}", text(&out));
    let included = files.path("bad-include.ini");
    assert!(
        text(&out).contains(&format!("{}:1:", included.display())),
        "{}",
        text(&out)
    );
}

/// A pgberth child started directly on a `Files` config; SIGKILLed on drop.
struct Running(std::process::Child);

impl Running {
    fn start(ini: &Path, port: u16) -> Running {
        let mut child = pgberth()
            .arg(ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgberth");
        let deadline = Instant::now() + HANG;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().expect("poll") {
                panic!("pgberth exited ({status}) before listening");
            }
            assert!(Instant::now() < deadline, "pgberth did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn include_files_provide_databases_and_settings_at_run_time() {
    let files = Files::new();
    files.write(
        "databases.ini",
        "app = host=127.0.0.1 port=@PGPORT@ dbname=app\n",
    );
    files.write(
        "auth.ini",
        "auth_type = scram-sha-256\nauth_file = @DIR@/userlist.txt\n",
    );
    let ini = files.write(
        "main.ini",
        "\
[databases]
%include databases.ini

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
%include auth.ini
",
    );
    let _running = Running::start(&ini, files.port);
    let conn_str = support::conn_str(files.port, SCRAM_USER, SCRAM_PASS, "app");
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .expect("connect to the database defined in the included file");
    tokio::spawn(connection);
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "app");
}

fn is_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn daemon_flag_detaches_writes_pidfile_serves_and_stops_on_sigterm() {
    let files = Files::new();
    let ini = files.write(
        "daemon.ini",
        &format!("{GOOD_INI}logfile = @DIR@/pgberth.log\npidfile = @DIR@/pgberth.pid\n"),
    );
    let pidfile = files.path("pgberth.pid");
    let logfile = files.path("pgberth.log");

    let mut child = pgberth()
        .args(["-d", s(&ini)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgberth -d");
    let launcher_pid = child.id() as i32;
    wait_until("pgberth -d returns", || {
        child.try_wait().expect("poll").is_some()
    });
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "pgberth -d: {}", text(&out));

    wait_until("the pidfile exists", || {
        std::fs::read_to_string(&pidfile)
            .map(|t| t.ends_with('\n'))
            .unwrap_or(false)
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .expect("pidfile holds a pid");
    // Stop the daemon whatever happens below.
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the daemon this test started.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
    let guard = Kill(pid);
    assert_ne!(pid, launcher_pid, "the pidfile must name the daemon");
    assert!(is_alive(pid), "the pid in the pidfile is not running");

    let conn_str = support::conn_str(files.port, SCRAM_USER, SCRAM_PASS, "app");
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect to the daemon: {e:?}\nlog:\n{}",
                std::fs::read_to_string(&logfile).unwrap_or_default()
            )
        });
    tokio::spawn(connection);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);

    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_until("the daemon exits", || !is_alive(pid));
    std::mem::forget(guard);
    wait_until("the pidfile is removed", || !pidfile.exists());
    let log = std::fs::read_to_string(&logfile).unwrap_or_default();
    assert!(log.contains("listening on"), "logfile: {log}");
    assert!(log.contains("SIGTERM"), "logfile: {log}");
}

#[test]
fn daemon_flag_without_logfile_is_refused() {
    let files = Files::new();
    let ini = files.write("daemon.ini", GOOD_INI);
    let out = run(&["-d", s(&ini)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("logfile"), "{}", text(&out));
}

#[tokio::test]
async fn quiet_flag_keeps_stderr_empty() {
    let ini = "\
[databases]
app = host=127.0.0.1 port=@PGPORT@ dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = @PORT@
unix_socket_dir =
auth_type = scram-sha-256
auth_file = @DIR@/userlist.txt
log_connections = 1
no_such_setting = 1
";
    // Without -q the same config logs (so the check below is meaningful).
    let loud = Pgberth::start_with_args(&[], ini, USERLIST);
    let client = loud.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    loud.wait_for_log("listening on", HANG);
    drop(client);

    let mut quiet = Pgberth::start_with_args(&["-q"], ini, USERLIST);
    let client = quiet.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    quiet.signal(libc::SIGHUP);
    let _ = quiet.try_connect(SCRAM_USER, "wrong", "app").await;
    // A successful login after the SIGHUP shows the reload was handled; then stop the process
    // so that everything it would have written is in the file.
    let client = quiet.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    quiet.signal(libc::SIGTERM);
    assert!(quiet.wait_exit(HANG).is_some(), "pgberth -q did not exit");
    assert_eq!(quiet.log_contents(), "", "-q must keep stderr quiet");
}

#[test]
fn pidfile_naming_a_running_process_refuses_a_second_start() {
    let files = Files::new();
    let pidfile = files.path("pgberth.pid");
    // This test process is alive: pgberth must think another instance runs.
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    let ini = files.write(
        "pid.ini",
        &format!("{GOOD_INI}pidfile = @DIR@/pgberth.pid\n"),
    );
    let out = run(&[s(&ini)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already running"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", std::process::id()),
        "the other instance's pidfile must be left alone"
    );
}

#[tokio::test]
async fn log_written_to_a_file_or_pipe_has_no_terminal_color_codes() {
    let pgberth = Pgberth::start_with_args(&[], GOOD_INI, USERLIST);
    let client = pgberth.connect(SCRAM_USER, SCRAM_PASS, "app").await;
    client.simple_query("SELECT 1").await.unwrap();
    pgberth.wait_for_log("login attempt", HANG);
    let log = pgberth.log_contents();
    assert!(
        !log.contains('\u{1b}'),
        "stderr is not a terminal, yet the log has escape codes: {log:?}"
    );
}
