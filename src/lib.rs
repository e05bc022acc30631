//! powa-collector: the remote-mode collector of PoWA, the PostgreSQL
//! Workload Analyzer.
//!
//! The collector reads the remote servers registered in a PoWA repository
//! database and, for each, runs a worker thread that every `frequency`
//! seconds copies the output of PoWA's source functions from the remote into
//! the repository and calls `powa_take_snapshot()` there.
//!
//! Modules, from the outside in:
//! - [`cli`]: the command line;
//! - [`config`]: the JSON configuration file;
//! - [`collector`]: the main thread ([`run`]) and its [`Control`];
//! - [`control`]: `status` and `reload` from the command line;
//! - [`check`]: `check`, whether the collector can work, changing nothing;
//! - [`worker`]: one thread per remote server;
//! - [`watchdog`]: snapshot deadlines and stop requests' cancels;
//! - [`pool`]: the workers' shared repository connections;
//! - [`metrics`]: the optional metrics endpoint and what it counts;
//! - [`snapshot`]: one snapshot, remote COPY into the repository;
//! - [`powa`]: PoWA on a connection, and what differs between PoWA 4 and 5;
//! - [`repository`]: what the collector reads and writes in the repository;
//! - [`remote`]: what the collector asks a remote about itself;
//! - [`servers`]: remote server settings from `powa_servers`;
//! - [`sharing`]: which servers this collector owns, among several;
//! - [`conninfo`]: connection strings and connection set-up;
//! - [`error`]: the error type.

pub mod check;
pub mod cli;
pub mod collector;
pub mod config;
pub mod conninfo;
pub mod control;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod powa;
pub mod protocol;
pub mod remote;
pub mod repository;
pub mod servers;
pub mod sharing;
pub mod snapshot;
pub mod systemd;
pub mod watchdog;
pub mod worker;

pub use collector::{Control, run};
pub use config::Config;
pub use error::Error;

/// The collector's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
