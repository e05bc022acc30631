//! Command line, logging and exit codes; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use log::LevelFilter;

use powa_collector::{Control, collector, config, control, systemd};

/// Collects PoWA snapshots of remote PostgreSQL servers into a PoWA repository.
///
/// Without a command, runs the collector daemon.
#[derive(Parser)]
#[command(name = "powa-collector", version, disable_help_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file [default: the first of /etc/powa-collector.conf,
    /// ~/.config/powa-collector.conf, ~/.powa-collector.conf,
    /// ./powa-collector.conf]
    #[arg(short, long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    /// Log at debug level, whatever the configuration file says
    #[arg(short, long)]
    debug: bool,

    /// Print help (also -?)
    #[arg(short = 'h', long = "help", short_alias = '?', action = ArgAction::Help, global = true)]
    help: Option<bool>,
}

/// Commands that talk to a running collector through the repository, as
/// powa-web does; they exit 0 when it answered in time, 1 otherwise.
#[derive(Subcommand)]
enum Command {
    /// Show the servers, what the running collector says of their workers,
    /// their last snapshot and their errors
    Status {
        /// Only this server
        srvid: Option<i32>,
        /// Seconds to wait for the collector's answer
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        timeout: f64,
    },
    /// Ask the running collector to reload its configuration and server list
    Reload {
        /// Seconds to wait for the collector's answer
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("powa-collector: {error}");
            return ExitCode::from(error.exit_code());
        }
    };
    match cli.command {
        None => run_daemon(config, cli.debug),
        Some(Command::Status { srvid, timeout }) => {
            run_command(|| control::status(&config, srvid, seconds(timeout)))
        }
        Some(Command::Reload { timeout }) => {
            run_command(|| control::reload(&config, seconds(timeout)))
        }
    }
}

/// A `--timeout` value; a negative or odd one is taken as 0.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// Runs a command: exit 0 when the collector answered, 1 when not or on
/// an error (said on stderr).
fn run_command(command: impl FnOnce() -> Result<bool, powa_collector::Error>) -> ExitCode {
    match command() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("powa-collector: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run_daemon(config: config::Config, force_debug: bool) -> ExitCode {
    init_logging(collector::log_level(force_debug || config.debug));
    for key in &config.unknown_keys {
        log::warn!("{}: unknown key {key} ignored", config.path.display());
    }
    log::info!(
        "starting powa-collector {} with {}",
        powa_collector::VERSION,
        config.path.display()
    );

    let control = Control::new();
    if let Err(e) = control.register_signals() {
        eprintln!("powa-collector: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match powa_collector::run(config, force_debug, &control) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            log::error!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Logs to stderr: time, level, thread (the worker's server name) and
/// message. When stderr is the journal, each line starts with its syslog
/// priority instead (`<3>` for errors...) and carries no time of its own,
/// so that `journalctl -p err` works. Only this crate logs below warning
/// level.
fn init_logging(level: LevelFilter) {
    let journal = systemd::stderr_is_journal();
    env_logger::Builder::new()
        .filter_level(LevelFilter::Warn)
        .filter_module("powa_collector", LevelFilter::Debug)
        .format(move |buf, record| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("main");
            if journal {
                writeln!(
                    buf,
                    "<{}>{:<5} [{name}] {}",
                    systemd::syslog_priority(record.level()),
                    record.level(),
                    record.args()
                )
            } else {
                writeln!(
                    buf,
                    "{} {:<5} [{name}] {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.args()
                )
            }
        })
        .init();
    log::set_max_level(level);
}
