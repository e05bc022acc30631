//! Command line, logging and exit codes; the work is in the library.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;

use powa_collector::cli::{Cli, Command};
use powa_collector::{Control, check, collector, config, control, systemd};

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
        Some(Command::Check { server, json }) => run_command(|| check::run(&config, server, json)),
    }
}

/// A `--timeout` value; a negative or odd one is taken as 0.
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

/// Runs a command: exit 0 when it succeeded (the collector answered, the
/// checks passed), 1 when not, the error's code on an error (said on
/// stderr).
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

/// The allocator: jemalloc, which gives freed memory back to the system
/// over time, where glibc's allocator keeps one arena per busy thread at
/// its high-water mark, so that with a hundred workers the resident size
/// crept up for as long as the collector ran.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: one arena and no per-thread caches, so that the
/// workers' threads keep no memory of their own between snapshots, and
/// freed pages go back to the system within a second.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
