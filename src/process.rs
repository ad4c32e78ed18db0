//! The running process: logging, daemonizing, the pidfile, dropping privileges, the tokio
//! runtime, and signals (SIGHUP reload, SIGINT drain, SIGTERM stop).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::prelude::*;

use crate::app::{App, RunState};
use crate::auth::hba::HbaRules;
use crate::config::{Config, ConfigError};
use crate::listener::{self, Bound, ListenError};
use crate::tls::TlsSettings;

/// Command-line options of the pooler itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub daemonize: bool,
    pub quiet: bool,
    pub verbose: u8,
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot open logfile {path}: {source}")]
    Logfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write pidfile {path}: {source}")]
    Pidfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pidfile {0} names a running process: is pgberth already running?")]
    AlreadyRunning(PathBuf),
    #[error("cannot switch to user \"{user}\": {reason}")]
    User { user: String, reason: String },
    #[error("cannot daemonize: {0}")]
    Daemonize(std::io::Error),
    #[error("-d needs a logfile (or syslog) to log to: set logfile in [pgbouncer]")]
    DaemonWithoutLog,
    #[error("auth_type \"{0}\" is not supported by pgberth yet")]
    UnsupportedAuth(&'static str),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Hba(#[from] crate::auth::hba::HbaError),
    #[error("auth_type = hba needs auth_hba_file")]
    HbaWithoutFile,
    #[error(transparent)]
    Metrics(#[from] crate::metrics::BindError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A config with everything it names read and checked: TLS keys and certificates, the hba
/// file. What start-up and every reload build before touching the running instance.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub tls: TlsSettings,
    pub hba: Option<Arc<HbaRules>>,
}

/// Loads and checks a config the way start-up does, including settings this build refuses.
pub fn load_config(path: &Path) -> Result<Loaded, RunError> {
    prepare(Config::load(path)?)
}

/// Checks a parsed config the way start-up does and reads what it names (TLS files, the hba
/// file): what RELOAD and the admin console's SET apply.
pub fn prepare(config: Config) -> Result<Loaded, RunError> {
    use crate::config::AuthType;
    let hba = match config.general.auth_type {
        AuthType::Pam => return Err(RunError::UnsupportedAuth("pam")),
        AuthType::Hba => match &config.general.auth_hba_file {
            Some(file) => Some(Arc::new(HbaRules::load(file)?)),
            None => return Err(RunError::HbaWithoutFile),
        },
        _ => None,
    };
    let tls = TlsSettings::new(&config.general)?;
    Ok(Loaded { config, tls, hba })
}

/// Runs the pooler until it is told to stop. Blocks.
pub fn run(options: RunOptions) -> Result<(), RunError> {
    let loaded = load_config(&options.config_path)?;
    let config = &loaded.config;
    let bound = listener::bind(&config.general)?;
    let metrics = crate::metrics::bind(&config.general)?;
    if let Some(user) = options.user.clone().or(config.general.user.clone()) {
        switch_user(&user)?;
    }
    if options.daemonize && config.general.logfile.is_none() {
        return Err(RunError::DaemonWithoutLog);
    }
    if let Some(pidfile) = &config.general.pidfile {
        check_pidfile(pidfile)?;
    }
    if options.daemonize {
        daemonize()?;
    }
    init_logging(config, &options)?;
    if let Some(pidfile) = &config.general.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id())).map_err(|source| {
            RunError::Pidfile {
                path: pidfile.clone(),
                source,
            }
        })?;
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let workers = match config.general.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (runtime, other_workers) = crate::workers::start(workers).map_err(RunError::Runtime)?;
    let pidfile = config.general.pidfile.clone();
    let result = runtime.block_on(serve(options.config_path.clone(), loaded, bound, metrics));
    drop(other_workers);
    runtime.shutdown_background();
    if let Some(pidfile) = pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    result
}

/// Serves clients from already bound sockets until SIGTERM, or SIGINT and the last client
/// leaving.
async fn serve(
    config_path: PathBuf,
    loaded: Loaded,
    bound: Bound,
    metrics: Option<std::net::TcpListener>,
) -> Result<(), RunError> {
    let app = App::new(loaded);
    let mut unix_path = None;
    // Every worker accepts from each listening socket, through a descriptor of its own.
    let workers = crate::workers::handles();
    for l in bound.tcp {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        for worker in workers {
            let l = l.try_clone().map_err(RunError::Runtime)?;
            worker.spawn(listener::accept_tcp(app.clone(), l));
        }
        tracing::info!("listening on {addr}");
    }
    if let Some((l, path)) = bound.unix {
        for worker in workers {
            let l = l.try_clone().map_err(RunError::Runtime)?;
            worker.spawn(listener::accept_unix(app.clone(), l, path.clone()));
        }
        tracing::info!("listening on unix:{}", path.display());
        unix_path = Some(path);
    }
    tokio::spawn(app.clone().maintenance());
    let fresh = app.clone();
    tokio::spawn(async move { fresh.fresh_clients.run().await });
    tokio::spawn(app.clone().stats_periods_task());
    if let Some(l) = metrics {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let l = tokio::net::TcpListener::from_std(l).map_err(RunError::Runtime)?;
        tracing::info!("metrics and health probes on http://{addr}/metrics, /health, /ready");
        tokio::spawn(crate::metrics::serve(app.clone(), l));
    }

    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Runtime)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
    let mut state = app.watch_state();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let drain_timeout = async {
            match drain_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup.recv() => reload(&app, &config_path),
            _ = int.recv() => {
                tracing::info!("SIGINT: no new clients; exiting when the last of {} clients leaves", app.client_count());
                app.set_run_state(RunState::Draining);
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: exiting now");
                app.set_run_state(RunState::Stopping);
                break;
            }
            _ = drain_timeout => {
                tracing::info!("shutdown_wait_timeout reached with {} clients connected; exiting", app.client_count());
                break;
            }
            _ = state.changed() => {}
        }
        // SIGINT and the admin console's SHUTDOWN commands change the run state.
        match app.run_state() {
            RunState::Running => {}
            RunState::Stopping => break,
            RunState::Draining => {
                let wait = app.config().general.shutdown_wait_timeout;
                if drain_deadline.is_none() && !wait.is_zero() {
                    drain_deadline = Some(tokio::time::Instant::now() + wait);
                }
                if app.client_count() == 0 {
                    tracing::info!("last client left; exiting");
                    break;
                }
            }
        }
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// SIGHUP: re-reads the config; a config with errors is refused and the old one stays.
pub fn reload(app: &App, path: &Path) {
    match load_config(path) {
        Ok(loaded) => {
            let new = &loaded.config;
            for warning in &new.warnings {
                tracing::warn!("{warning}");
            }
            let old = app.config();
            if old.general.listen_addr != new.general.listen_addr
                || old.general.listen_port != new.general.listen_port
                || old.general.unix_socket_dir != new.general.unix_socket_dir
                || old.general.so_reuseport != new.general.so_reuseport
                || old.general.tcp_defer_accept != new.general.tcp_defer_accept
            {
                tracing::warn!(
                    "listen_addr, listen_port, unix_socket_dir, so_reuseport and tcp_defer_accept take effect only at restart"
                );
            }
            if old.general.metrics_listen != new.general.metrics_listen {
                tracing::warn!("metrics_listen takes effect only at restart");
            }
            app.reload(loaded);
            tracing::info!("configuration reloaded from {}", path.display());
        }
        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
    }
}

fn check_pidfile(path: &Path) -> Result<(), RunError> {
    let running = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        // SAFETY: kill with signal 0 only checks that the process exists.
        .is_some_and(|pid| pid > 0 && unsafe { libc::kill(pid, 0) } == 0);
    if running {
        return Err(RunError::AlreadyRunning(path.to_path_buf()));
    }
    Ok(())
}

/// Forks into the background: the parent exits, the child starts a new session with its
/// standard streams on /dev/null. Called before any thread exists.
fn daemonize() -> Result<(), RunError> {
    // SAFETY: the process is single-threaded here (no runtime yet), so fork is sound.
    unsafe {
        match libc::fork() {
            -1 => return Err(RunError::Daemonize(std::io::Error::last_os_error())),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(RunError::Daemonize(std::io::Error::last_os_error()));
        }
        let devnull = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(RunError::Daemonize)?;
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            libc::dup2(devnull.as_raw_fd(), fd);
        }
    }
    Ok(())
}

fn switch_user(user: &str) -> Result<(), RunError> {
    let err = |reason: String| RunError::User {
        user: user.to_owned(),
        reason,
    };
    let name = std::ffi::CString::new(user).map_err(|_| err("invalid name".into()))?;
    // SAFETY: getpwnam returns a pointer into static storage, read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(err("no such user".into()));
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: plain system calls on the current process.
    unsafe {
        if libc::getuid() == uid {
            return Ok(());
        }
        if libc::initgroups(name.as_ptr(), gid) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(err(std::io::Error::last_os_error().to_string()));
        }
    }
    Ok(())
}

fn init_logging(config: &Config, options: &RunOptions) -> Result<(), RunError> {
    let level = match options.verbose {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let stderr = (!options.quiet && !options.daemonize).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    let file = match &config.general.logfile {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| RunError::Logfile {
                    path: path.clone(),
                    source,
                })?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false),
            )
        }
        None => None,
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
    Ok(())
}

/// Prints the result of `pgberth check`: warnings and the error, with file:line. Returns
/// whether the config is usable.
pub fn check(path: &Path, out: &mut impl Write) -> bool {
    match load_config(path) {
        Ok(Loaded { config, .. }) => {
            for w in &config.warnings {
                let _ = writeln!(out, "warning: {w}");
            }
            let _ = writeln!(
                out,
                "{}: OK ({} databases{}, {} users in auth_file, {} warnings)",
                path.display(),
                config.databases.len(),
                if config.fallback_database.is_some() {
                    " and a * fallback"
                } else {
                    ""
                },
                config.userlist.len(),
                config.warnings.len()
            );
            true
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            false
        }
    }
}
