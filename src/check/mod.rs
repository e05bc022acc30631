//! `powa-collector check`: whether the collector can work with this
//! configuration, checked once, changing nothing, so that a DBA can act on
//! what fails before starting the daemon.
//!
//! - [`repository`]: the repository: PoWA there, what the collector's
//!   role may do (read the servers and datasources, write snapshots, use
//!   the command protocol), and the servers to check;
//! - [`server`]: one remote server, with the daemon's own connection code
//!   and deadlines: reachable, PoWA and its version against the
//!   repository's, its extensions, its datasources' source functions and,
//!   on PoWA 5, its databases;
//! - [`privileges`]: what a role may do with a table or a function;
//! - [`report`]: the results as a table or JSON, the exit decision and the
//!   wording of the fixes, no I/O.
//!
//! Every session is read-only (`default_transaction_read_only = on`); no
//! snapshot is taken and no error is written to `powa_snapshot_metas`.
//! Runs on the caller's thread; the servers are checked in parallel, one
//! scoped thread each, joined before the report is printed in srvid order.

pub mod privileges;
pub mod report;
pub mod repository;
pub mod server;

use std::thread;

use crate::collector::MAIN_STATEMENT_TIMEOUT;
use crate::config::Config;
use crate::error::Error;
use report::{Problem, Report, ServerReport};
use repository::Target;

/// `powa-collector check [--server ID] [--json]`: checks, prints the
/// results (a table, or JSON with `json`) and returns whether everything
/// passed. An unusable configuration, or an `only` that is no server to
/// check, is an `Err`.
pub fn run(config: &Config, only: Option<i32>, json: bool) -> Result<bool, Error> {
    let report = probe(config, only)?;
    if json {
        println!("{:#}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(report.passed())
}

/// Checks the repository, then the servers.
pub fn probe(config: &Config, only: Option<i32>) -> Result<Report, Error> {
    let conninfo = config.repository()?;
    let application_name = format!("PoWA collector - check ({})", crate::VERSION);
    let mut repo = match repository::open(&conninfo, &application_name, MAIN_STATEMENT_TIMEOUT) {
        Ok(repo) => repo,
        Err(problem) => {
            let mut report = Report::default();
            report.repository.problems.push(problem);
            return Ok(report);
        }
    };
    let mut report = Report {
        repository: repo.report(),
        servers: Vec::new(),
    };
    let targets = match repo.targets(config.use_server_alias, only) {
        Ok(targets) => targets,
        Err(error @ Error::NotFound(_)) => return Err(error),
        Err(error) => {
            let problem = Problem::from_error("privileges", error.to_string(), &repo.role);
            report.repository.problems.push(problem);
            return Ok(report);
        }
    };
    let context = server::Context {
        repository: conninfo,
        repo_powa: repo.powa.clone(),
        snapshot_timeout: config.snapshot_timeout,
    };
    report.servers = check_all(&targets, &context);
    Ok(report)
}

/// Checks every target on a thread of its own; the reports in the order
/// of `targets`.
fn check_all(targets: &[Target], context: &server::Context) -> Vec<ServerReport> {
    thread::scope(|scope| {
        let pending: Vec<_> = targets
            .iter()
            .map(|target| {
                let name = target_name(target);
                let spawned = thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, || check_one(target, context));
                (target.srvid(), name, spawned)
            })
            .collect();
        pending
            .into_iter()
            .map(|(srvid, name, spawned)| {
                let failure = match spawned {
                    Ok(handle) => match handle.join() {
                        Ok(report) => return report,
                        Err(_) => "the check of this server panicked".to_string(),
                    },
                    Err(e) => format!("cannot start a thread to check this server: {e}"),
                };
                let mut report = ServerReport::new(srvid, name);
                report.problems.push(Problem::new("connection", failure));
                report
            })
            .collect()
    })
}

/// The name a target is shown under: its worker's, or its id.
fn target_name(target: &Target) -> String {
    match target {
        Target::Server { name, .. } => name.clone(),
        Target::Refused { srvid, .. } => format!("id {srvid}"),
    }
}

fn check_one(target: &Target, context: &server::Context) -> ServerReport {
    match target {
        Target::Server { server, name } => server::check(server, name, context),
        Target::Refused { srvid, why } => {
            let mut report = ServerReport::new(*srvid, target_name(target));
            report.problems.push(
                Problem::new(
                    "registration",
                    format!("{why}; this server is not collected"),
                )
                .with_hint("correct the powa_servers row"),
            );
            report
        }
    }
}
