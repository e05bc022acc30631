//! Integration tests of `powa-collector`: the real binary against throwaway
//! PostgreSQL clusters: PoWA 4 repositories and remote servers on PostgreSQL 15,
//! PoWA 5 ones on PostgreSQL 17 in the PoWA 5 chroot (`scripts/powa5-chroot`).
//!
//! Needs the Debian packages postgresql-15, postgresql-15-powa,
//! postgresql-15-pg-qualstats, postgresql-15-pg-stat-kcache and
//! postgresql-15-pg-wait-sampling; the harness names the missing one.
//! When run as root, PostgreSQL runs as user `postgres` through `runuser`.
//!
//! - `harness`: clusters, the collector process, polling helpers
//! - `bad_rows`: bad `powa_servers` rows are errors for their server only
//! - `auth`: password file, TLS and client certificates, deadlines, sockets
//! - `snapshots`: snapshots land, hold what the remote had, on time
//! - `failures`: a remote without PoWA, a datasource failing on the repository
//! - `faults`: stopped, black-holed and killed peers, mid-snapshot
//! - `fuzz`: 10,000 hostile payloads on the command protocol
//! - `proxy`: a TCP proxy with pass, blackhole and reset modes
//! - `metrics`: the metrics endpoint: /metrics, /healthz, start and reload
//! - `memory`: peak memory does not grow with the size of a datasource
//! - `control`: `status` and `reload` from the command line
//! - `check`: `check` finds what fails, says what to grant, changes nothing
//! - `config_errors`: command line and configuration file errors
//! - `signals`: SIGTERM stops the daemon promptly and cleanly
//! - `powa5`: PoWA 5 snapshots, per-database data, catalogs, roles, schemas, versions
//! - `powa_web`: a client of the command protocol that behaves like powa-web
//! - `fleet`: one remote cluster as many servers; the collector's sessions
//! - `pool`: many servers share the pool's few repository connections
//! - `protocol`: every command and malformed request gets the right answer
//! - `reload`: SIGHUP and RELOAD make the workers follow the server list
//! - `sharing`: two collectors share one repository's servers
//! - `shutdown`: SIGTERM with many servers, with a snapshot in flight, twice
//! - `systemd`: READY, RELOADING, STOPPING and WATCHDOG on `NOTIFY_SOCKET`

mod auth;
mod bad_rows;
mod check;
mod config_errors;
mod control;
mod failures;
mod faults;
mod fleet;
mod fuzz;
mod harness;
mod memory;
mod metrics;
mod pool;
mod powa5;
mod powa_web;
mod protocol;
mod proxy;
mod reload;
mod sharing;
mod shutdown;
mod signals;
mod snapshots;
mod systemd;
