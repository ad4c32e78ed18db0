//! `pgberth demo`: a throwaway PostgreSQL with pgberth in front of it.
//!
//! Starts a [`TempCluster`], creates role and database `demo`, writes a pgbouncer.ini and
//! userlist.txt into a temp dir, runs this same executable on that ini in the foreground and
//! prints how to connect. Ctrl-C (or SIGTERM, SIGHUP) stops everything and removes all files;
//! so does any error.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::{ClusterOptions, PasswordEncryption, TempCluster, free_port};

/// The port the demo prefers for pgberth, PgBouncer's default.
const PREFERRED_PORT: u16 = 6432;
/// How long pgberth may take to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pgberth may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the demo until Ctrl-C. Blocking.
pub fn run() -> anyhow::Result<()> {
    let cluster = TempCluster::start(ClusterOptions::default())
        .context("could not start a temporary PostgreSQL")?;
    cluster
        .create_role("demo", "demo", PasswordEncryption::Scram)
        .context("could not create role demo")?;
    cluster
        .create_database("demo", "demo")
        .context("could not create database demo")?;
    let version = cluster.server_version().unwrap_or_default();

    let dir = tempfile::Builder::new()
        .prefix("pgberth-demo-")
        .tempdir()
        .context("could not create a temp dir for the demo config")?;
    let port = pick_port()?;
    let ini = write_config(dir.path(), cluster.port(), port)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not build the tokio runtime")?;
    let result = runtime.block_on(run_pooler(&ini, port, cluster.port(), &version));
    // Explicit order: pooler is gone (run_pooler waited for it), then the server, then files.
    drop(cluster);
    drop(dir);
    result
}

/// Spawn pgberth on `ini`, announce it, and wait for Ctrl-C or its exit.
async fn run_pooler(ini: &Path, port: u16, pg_port: u16, version: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("could not find the pgberth executable")?;
    let child = Command::new(&exe)
        .arg(ini)
        .stdin(Stdio::null())
        // Its own process group: Ctrl-C in the terminal reaches only us, and we stop it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start {}", exe.display()))?;
    // If anything below fails or panics, the pooler does not outlive the demo.
    let mut child = KilledOnDrop(child);
    let child = &mut child.0;

    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("pgberth exited before it listened on port {port}: {status}");
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("pgberth did not listen on 127.0.0.1:{port} within {LISTEN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "pgberth demo: PostgreSQL {version} on 127.0.0.1:{pg_port}, \
         pgberth on 127.0.0.1:{port} (transaction pooling, SCRAM)"
    );
    println!("  connect:  psql \"postgresql://demo:demo@127.0.0.1:{port}/demo\"");
    println!("  config:   {}", ini.display());
    println!("Press Ctrl-C to stop; everything is removed on exit.");

    // SIGTERM and SIGHUP (terminal closed) clean up like Ctrl-C.
    let mut terminate = signal(SignalKind::terminate()).context("could not listen for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("could not listen for SIGHUP")?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => {
            signal.context("could not listen for Ctrl-C")?;
            eprintln!("pgberth demo: stopping");
        }
        _ = terminate.recv() => eprintln!("pgberth demo: SIGTERM, stopping"),
        _ = hangup.recv() => eprintln!("pgberth demo: SIGHUP, stopping"),
        status = exited(child) => {
            bail!("pgberth exited unexpectedly: {}", status?);
        }
    }
    stop_child(child).await
}

/// The child's exit status, once it has exited (looked at every 100 ms).
async fn exited(child: &mut Child) -> std::io::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`.
async fn stop_child(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_none() {
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(STOP_TIMEOUT, exited(child))
        .await
        .is_err()
    {
        eprintln!("pgberth demo: pgberth did not stop within {STOP_TIMEOUT:?}; killing it");
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// The pooler's process, killed and reaped if the demo leaves without stopping it.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// 6432 if it is free, else any free port.
fn pick_port() -> anyhow::Result<u16> {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, PREFERRED_PORT)).is_ok() {
        return Ok(PREFERRED_PORT);
    }
    Ok(free_port()?)
}

/// Write `pgberth.ini` and `userlist.txt` into `dir`; returns the ini's path.
fn write_config(dir: &Path, pg_port: u16, port: u16) -> anyhow::Result<std::path::PathBuf> {
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"demo\" \"demo\"\n")
        .with_context(|| format!("could not write {}", userlist.display()))?;
    let ini = dir.join("pgberth.ini");
    let body = format!(
        "[databases]\n\
         demo = host=127.0.0.1 port={pg_port} dbname=demo\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {userlist}\n\
         pool_mode = transaction\n\
         admin_users = demo\n",
        userlist = userlist.display()
    );
    std::fs::write(&ini, body).with_context(|| format!("could not write {}", ini.display()))?;
    Ok(ini)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_ports_and_the_userlist() {
        let dir = tempfile::tempdir().unwrap();
        let ini = write_config(dir.path(), 5555, 6666).unwrap();
        let body = std::fs::read_to_string(&ini).unwrap();
        assert!(body.contains("demo = host=127.0.0.1 port=5555 dbname=demo"));
        assert!(body.contains("listen_port = 6666"));
        assert!(body.contains(&format!(
            "auth_file = {}",
            dir.path().join("userlist.txt").display()
        )));
        let userlist = std::fs::read_to_string(dir.path().join("userlist.txt")).unwrap();
        assert_eq!(userlist, "\"demo\" \"demo\"\n");
    }
}
