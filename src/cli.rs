//! The command line: the daemon's options and the subcommands, in one
//! definition that `main` parses and the man page is generated from.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

/// Collects PoWA snapshots of remote PostgreSQL servers into a PoWA repository.
///
/// Without a command, runs the collector daemon.
#[derive(Parser)]
#[command(name = "powa-collector", version, disable_help_flag = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Configuration file [default: the first of /etc/powa-collector.conf,
    /// ~/.config/powa-collector.conf, ~/.powa-collector.conf,
    /// ./powa-collector.conf]
    #[arg(short, long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Log at debug level, whatever the configuration file says
    #[arg(short, long)]
    pub debug: bool,

    /// Print help (also -?)
    #[arg(short = 'h', long = "help", short_alias = '?', action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
}

/// Commands that talk to a running collector through the repository, as
/// powa-web does; they exit 0 when it answered in time, 1 otherwise.
#[derive(Subcommand)]
pub enum Command {
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
