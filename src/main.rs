//! Command line, logging and exit codes; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use log::LevelFilter;

use powa_collector::{Control, collector, config, systemd};

/// Collects PoWA snapshots of remote PostgreSQL servers into a PoWA repository.
#[derive(Parser)]
#[command(name = "powa-collector", version, disable_help_flag = true)]
struct Cli {
    /// Configuration file [default: the first of /etc/powa-collector.conf,
    /// ~/.config/powa-collector.conf, ~/.powa-collector.conf,
    /// ./powa-collector.conf]
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Log at debug level, whatever the configuration file says
    #[arg(short, long)]
    debug: bool,

    /// Print help (also -?)
    #[arg(short = 'h', long = "help", short_alias = '?', action = ArgAction::Help)]
    help: Option<bool>,
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
    init_logging(collector::log_level(cli.debug || config.debug));
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
    match powa_collector::run(config, cli.debug, &control) {
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
