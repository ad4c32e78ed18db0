//! Command line: PgBouncer's flags for running the pooler, plus pgberth's subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pgberth::tools::certs::{self, CertOptions};
use pgberth::tools::passwd::{self, SecretFormat};

#[derive(Debug, Parser)]
#[command(
    name = "pgberth",
    version,
    about = "PostgreSQL connection pooler, configured like PgBouncer"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Run in the background (needs logfile; writes pidfile).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Do not log to stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// More verbose logging (repeat for more).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Switch to this OS user at start-up.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// The pgbouncer.ini to run with.
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file; print problems with file:line.
    Check { config: PathBuf },
    /// Start a throwaway PostgreSQL with pgberth in front of it (until Ctrl-C).
    Demo,
    /// Print a userlist.txt line for USER (SCRAM-SHA-256 verifier by default).
    ///
    /// The password is read twice without echo from the terminal, or as one line from stdin
    /// when stdin is not a terminal (only the line ending is removed).
    Passwd {
        /// The user name, as clients send it.
        user: String,
        /// Store the password as md5 (`md5` + md5(password + user)).
        #[arg(long, conflicts_with = "scram")]
        md5: bool,
        /// Store the password as a SCRAM-SHA-256 verifier (4096 iterations; the default).
        #[arg(long)]
        scram: bool,
    },
    /// Write a development CA, a server and a client certificate, and print config lines.
    ///
    /// Files in DIR: ca.crt, ca.key, server.crt, server.key, client.crt, client.key and
    /// server-combined.pem (the server certificate followed by the CA certificate). Keys are
    /// mode 0600, certificates 0644; DIR is created with mode 0700 when missing. Existing
    /// files are not overwritten unless --force is given.
    Certs {
        /// Directory to write the files into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Server names, comma-separated: DNS names, or IP addresses when a name parses as
        /// one. The first name is also the server certificate's CN.
        #[arg(
            long,
            value_name = "NAME[,NAME...]",
            value_delimiter = ',',
            required = true
        )]
        host: Vec<String>,
        /// Validity of the server and client certificates in days (the CA: 3650 days).
        #[arg(long, value_name = "N", default_value_t = pgberth::tools::certs::DEFAULT_LEAF_DAYS)]
        days: u32,
        /// Common name of the client certificate (the user name for `cert` auth).
        #[arg(long, value_name = "NAME", default_value = pgberth::tools::certs::DEFAULT_CLIENT_CN)]
        client_cn: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Live view of a running pgberth's admin console: pools, waiting clients, TPS/QPS and
    /// average times.
    ///
    /// Keys: q, Esc or Ctrl-C quit. When stdout is not a terminal, or with --once, prints one
    /// plain-text snapshot and exits; its rates come from two samples --interval apart.
    Top {
        /// libpq-style conninfo or URL of the admin console; the password may also come from
        /// PGPASSWORD.
        #[arg(default_value = pgberth::tools::top::DEFAULT_CONNINFO)]
        conninfo: String,
        /// Print one plain-text snapshot and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes; with --once, between the two samples the rates come
        /// from (0: one sample, totals only).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
    },
}

/// jemalloc: its size classes need no per-allocation header and align the runtime's
/// cache-line-aligned task and socket states without padding, so an idle client costs about
/// a fifth less memory than with the system allocator, and a new connection less CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => {
            let ok = pgberth::process::check(&config, &mut std::io::stdout());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Command::Demo) => match pgberth::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgberth demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Passwd {
            user,
            md5,
            scram: _,
        }) => {
            let format = if md5 {
                SecretFormat::Md5
            } else {
                SecretFormat::Scram
            };
            exit_with("passwd", passwd(&user, format))
        }
        Some(Command::Certs {
            out,
            host,
            days,
            client_cn,
            force,
        }) => {
            let options = CertOptions {
                hosts: host,
                client_cn,
                leaf_days: days,
                ..CertOptions::default()
            };
            exit_with("certs", certs(&out, &options, force))
        }
        Some(Command::Top {
            conninfo,
            once,
            interval,
        }) => exit_with("top", top(&conninfo, once, interval)),
        None => {
            let Some(config_path) = cli.config else {
                eprintln!(
                    "usage: pgberth [-d] [-q] [-v] [-u USER] config.ini  (see pgberth --help)"
                );
                return ExitCode::from(2);
            };
            let options = pgberth::process::RunOptions {
                config_path,
                daemonize: cli.daemon,
                quiet: cli.quiet,
                verbose: cli.verbose,
                user: cli.user,
            };
            match pgberth::process::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgberth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn exit_with(tool: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgberth {tool}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn passwd(user: &str, format: SecretFormat) -> anyhow::Result<()> {
    let password = passwd::read_password()?;
    println!("{}", passwd::userlist_line(user, &password, format));
    Ok(())
}

fn certs(out: &Path, options: &CertOptions, force: bool) -> anyhow::Result<()> {
    let generated = certs::generate(options).context("could not generate certificates")?;
    let dir = certs::write_files(out, &generated, force)?;
    eprintln!("wrote {} files to {}", certs::FILES.len(), dir.display());
    print!("{}", certs::config_snippet(&dir, &options.hosts[0]));
    Ok(())
}

fn top(conninfo: &str, once: bool, interval: f64) -> anyhow::Result<()> {
    let conninfo = pgberth::tools::top::ConnInfo::parse(conninfo)
        .map_err(|e| anyhow::anyhow!("invalid conninfo: {e}"))?
        .with_env_password();
    let interval = std::time::Duration::try_from_secs_f64(interval)
        .map_err(|_| anyhow::anyhow!("--interval {interval}: expected seconds, 0 or more"))?;
    pgberth::tools::top::run(pgberth::tools::top::TopOptions {
        conninfo,
        once,
        interval,
    })
}
