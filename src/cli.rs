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

/// The commands besides the daemon: `status` and `reload` talk to a running
/// collector through the repository, as powa-web does, and exit 0 when it
/// answered in time, 1 otherwise; `check` checks the configuration, the
/// repository and the servers once, changing nothing.
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
    /// Check, once and changing nothing, that the collector can work: the
    /// repository, and each server registered in powa_servers
    ///
    /// On the repository: PoWA and its version, and what the collector's
    /// role may do there: read the servers and datasources, write
    /// snapshots, use the command protocol. For each server, with the
    /// daemon's connection code and deadlines: it can be reached, PoWA and
    /// its version match the repository's major.minor, the extensions it is
    /// registered with are installed, every datasource's source function
    /// can be called (and its *_src_tmp table written on the repository)
    /// and, on PoWA 5, every database the per-database modules and catalogs
    /// need can be reached and answers their queries. Every session is
    /// read-only; no snapshot is taken and no error is written for the UI.
    /// The servers are checked in parallel.
    #[command(after_long_help = CHECK_HELP)]
    Check {
        /// Only the server of this powa_servers id
        #[arg(long, value_name = "ID")]
        server: Option<i32>,
        /// Print the results as JSON (fields below)
        #[arg(long)]
        json: bool,
    },
}

/// The end of `check --help`: exit codes and the JSON fields.
const CHECK_HELP: &str = "\
Exit codes: 0 when every check passes, 1 when one fails (or --server names no
server to check), 78 for a configuration error.

JSON (--json), one object:
  ok                      true when every check passed
  repository.ok           true when the repository's checks passed
  repository.role         the collector's role on the repository, or null
  repository.powa_version extension powa's version there, or null
  repository.problems     what failed there (see problems)
  servers                 one object per server, in srvid order:
    srvid                 its powa_servers id
    name                  its name, as the daemon's worker is named
                          (the alias with use_server_alias, else host:port)
    ok                    true when all of its checks passed
    reachable             whether a connection to it could be opened
    powa_version          extension powa's version there, or null
    problems              what failed for it (see problems)
problems: a list of objects:
    check                 which check: connection, powa, version,
                          registration, privileges, protocol, extension,
                          datasource or database
    message               what failed and why
    hint                  what to run or change to fix it (a GRANT...), or null";
