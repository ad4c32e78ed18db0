//! Command line: PgBouncer's flags for running the pooler, plus pgberth's subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

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
