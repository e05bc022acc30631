//! One snapshot of one remote server, run by that server's worker thread.
//!
//! The steps, all in one repository transaction so that a snapshot lands
//! whole or not at all and two snapshots of a server never interleave:
//! 1. the repository and the remote must run the same PoWA major.minor;
//! 2. the global datasources ([`global`]): each source function's rows on
//!    the remote streamed into its `*_src_tmp` table on the repository;
//! 3. on PoWA 5, the per-database modules and catalogs ([`databases`]),
//!    one database of the remote at a time;
//! 4. `powa_take_snapshot(srvid)` turns the staged rows into history; if it
//!    fails, the staged rows are rolled back with it;
//! 5. the errors recorded on the way are appended to
//!    `powa_snapshot_metas.errors` for the UI.
//!
//! Each datasource runs in a savepoint on both sides ([`copy`]): one that
//! fails is rolled back and recorded, and the snapshot goes on.

pub mod copy;
pub mod databases;
pub mod global;

use std::time::{Duration, Instant};

use postgres::{Client, Transaction};

use crate::error::{Error, describe_postgres_error};
use crate::powa::Powa;
use crate::remote;
use crate::repository::datasources;
use crate::repository::metas::{self, ErrorReport};
use databases::{CatalogRefresh, Databases};

/// What a snapshot needs from the worker that runs it.
pub trait Context {
    /// Whether the snapshot must be abandoned (the worker is stopping).
    fn interrupted(&self) -> bool;
    /// Opens a connection to database `dbname` of the remote, with the
    /// session settings of the worker's other connections, whose queries a
    /// stop can cancel until [`Context::closed_database`].
    fn connect_database(&self, dbname: &str) -> Result<Client, Error>;
    /// The connection of [`Context::connect_database`] is closed.
    fn closed_database(&self);
}

/// Which snapshot to take.
pub struct Job<'a> {
    pub srvid: i32,
    /// When the snapshot must be over, and the timeout it comes from.
    pub deadline: Instant,
    pub timeout: Duration,
    /// PoWA on the remote connection.
    pub remote_powa: &'a Powa,
    /// PoWA on the repository connection.
    pub repo_powa: &'a Powa,
    /// The repository connection's name, restored after
    /// `powa_take_snapshot` (which overwrites it).
    pub application_name: &'a str,
    /// Catalog refreshes to do beyond the yearly ones.
    pub refresh: &'a CatalogRefresh,
    /// Why the snapshot started late, for the UI, if it did.
    pub late: Option<&'a str>,
}

/// What a snapshot did.
#[derive(Debug, Default)]
pub struct SnapshotReport {
    /// Rows copied from the remote, all datasources together.
    pub rows: u64,
    /// Time spent on the global datasources (with their cleanups).
    pub global_time: Duration,
    /// Time spent on the per-database modules and catalogs.
    pub databases_time: Duration,
    /// Connections opened to the remote's databases.
    pub databases_visited: usize,
    /// Time spent in `powa_take_snapshot`.
    pub take_snapshot_time: Duration,
    /// Errors recorded for the UI.
    pub errors: Vec<String>,
    /// Why nothing was done, if nothing was.
    pub skipped: Option<String>,
}

impl SnapshotReport {
    /// Records an error for the UI.
    fn error(&mut self, message: String) {
        log::warn!("{message}");
        self.errors.push(message);
    }
}

/// The savepoint taken right after the repository transaction begins.
const SNAPSHOT_START: &str = "snapshot_start";

fn on_repo(what: &'static str) -> impl FnOnce(postgres::Error) -> Error {
    move |e| Error::postgres(format!("{what} on the repository"), e)
}

fn on_remote(what: &'static str) -> impl FnOnce(postgres::Error) -> Error {
    move |e| Error::postgres(format!("{what} on the remote server"), e)
}

/// Takes one snapshot. An `Err` means a connection or transaction failed,
/// or the worker is stopping (`Error::Interrupted`), and nothing was
/// committed; errors of single datasources or databases are in the report
/// instead.
pub fn take(
    remote: &mut Client,
    repo: &mut Client,
    job: &Job<'_>,
    context: &dyn Context,
) -> Result<SnapshotReport, Error> {
    let mut report = SnapshotReport::default();
    if let Some(late) = job.late {
        report.errors.push(late.to_string());
    }
    if let Some(mismatch) = version_mismatch(job) {
        metas::report_errors(
            repo,
            job.repo_powa,
            job.srvid,
            std::slice::from_ref(&mismatch),
            ErrorReport::Replace,
        )?;
        report.skipped = Some(mismatch);
        return Ok(report);
    }

    let mut repo_tx = repo
        .transaction()
        .map_err(on_repo("cannot begin the snapshot"))?;
    let limit = server_timeout(job);
    repo_tx
        .batch_execute(&format!(
            "{limit}; SET LOCAL idle_in_transaction_session_timeout = {}; \
             SAVEPOINT {SNAPSHOT_START}",
            job.timeout.as_millis().max(1)
        ))
        .map_err(on_repo("cannot begin the snapshot"))?;
    let sources = datasources::global(&mut repo_tx, job.repo_powa, job.srvid)
        .map_err(on_repo("cannot read the datasources"))?;
    if sources.is_empty() {
        repo_tx
            .commit()
            .map_err(on_repo("cannot end the snapshot"))?;
        report.skipped = Some(format!("no datasource configured for server {}", job.srvid));
        return Ok(report);
    }
    let mut remote_tx = remote
        .transaction()
        .map_err(on_remote("cannot begin the snapshot"))?;
    remote_tx
        .batch_execute(&limit)
        .map_err(on_remote("cannot begin the snapshot"))?;

    let started = Instant::now();
    global::copy_all(
        &mut remote_tx,
        &mut repo_tx,
        job,
        &sources,
        &mut report,
        context,
    )?;
    report.global_time = started.elapsed();

    if job.repo_powa.generation.snapshots_databases() {
        let started = Instant::now();
        report.databases_visited =
            copy_databases(&mut remote_tx, &mut repo_tx, job, &mut report, context)?;
        report.databases_time = started.elapsed();
    }

    checkpoint(job, context)?;
    take_snapshot(&mut repo_tx, job, &mut report)?;
    finish(repo_tx, remote_tx, job, &report, context)?;
    Ok(report)
}

/// Whether the snapshot may go on: not when the worker is stopping
/// (`Error::Interrupted`) or the deadline has passed
/// (`Error::DeadlineExceeded`).
pub fn checkpoint(job: &Job<'_>, context: &dyn Context) -> Result<(), Error> {
    if context.interrupted() {
        return Err(Error::Interrupted);
    }
    if Instant::now() >= job.deadline {
        return Err(Error::DeadlineExceeded(job.timeout));
    }
    Ok(())
}

/// `SET LOCAL statement_timeout` to what is left of the deadline, for the
/// transactions of a snapshot: a server that still answers ends the
/// snapshot's statements itself at the deadline.
pub fn server_timeout(job: &Job<'_>) -> String {
    let left = job.deadline.saturating_duration_since(Instant::now());
    format!("SET LOCAL statement_timeout = {}", left.as_millis().max(1))
}

/// The error reported when the repository and the remote run different
/// PoWA major.minor versions.
fn version_mismatch(job: &Job<'_>) -> Option<String> {
    incompatible_versions(job.repo_powa, job.remote_powa)
}

/// Why snapshots of a remote running `remote` cannot go into a repository
/// running `repo`, if they cannot: their PoWA major.minor differ.
pub fn incompatible_versions(repo: &Powa, remote: &Powa) -> Option<String> {
    let (repo, remote) = (&repo.version, &remote.version);
    (!repo.compatible_with(remote)).then(|| {
        format!(
            "Incompatible PoWA version between the repository server ({repo}) \
             and the remote host ({remote})"
        )
    })
}

/// Reads what the databases need and collects them; returns how many
/// connections were opened.
fn copy_databases(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    job: &Job<'_>,
    report: &mut SnapshotReport,
    context: &dyn Context,
) -> Result<usize, Error> {
    let timestamp = remote::now(remote).map_err(on_remote("cannot read the time"))?;
    let server_version_num =
        remote::server_version_num(remote).map_err(on_remote("cannot read the version"))?;
    let dbnames = remote::databases(remote).map_err(on_remote("cannot list the databases"))?;
    let modules = datasources::database_modules(repo, job.repo_powa, job.srvid, server_version_num)
        .map_err(on_repo("cannot read the database modules"))?;
    let catalogs = datasources::catalogs(repo, job.repo_powa, job.srvid, server_version_num)
        .map_err(on_repo("cannot read the catalogs"))?;
    let databases = Databases {
        timestamp: &timestamp,
        work: databases::plan(&dbnames, &modules, &catalogs, job.refresh),
    };
    databases::copy_all(repo, job, &databases, report, context)
}

/// Calls `powa_take_snapshot` in a savepoint. When it fails, the staged
/// rows are rolled back too (so that the next snapshot does not count them
/// twice), and the server's errors are cleared as it would have done.
fn take_snapshot(
    repo: &mut Transaction<'_>,
    job: &Job<'_>,
    report: &mut SnapshotReport,
) -> Result<(), Error> {
    let srvid = job.srvid;
    let started = Instant::now();
    let mut savepoint = repo
        .savepoint("powa_take_snapshot")
        .map_err(on_repo("cannot open a savepoint"))?;
    let sql = format!("SELECT {}($1)", job.repo_powa.qualify("powa_take_snapshot"));
    match savepoint.query_one(&sql, &[&srvid]) {
        Ok(row) => {
            let failed: i32 = row.get(0);
            if failed != 0 {
                log::warn!(
                    "powa_take_snapshot({srvid}) reported {failed} errors; \
                     see the repository server's log"
                );
            }
            savepoint
                .commit()
                .map_err(on_repo("cannot close a savepoint"))?;
        }
        Err(e) => {
            report.error(format!(
                "Error while taking snapshot for server {srvid}: {}",
                describe_postgres_error(&e)
            ));
            savepoint
                .rollback()
                .map_err(on_repo("cannot roll back a savepoint"))?;
            discard_staged_rows(repo)?;
            metas::clear_errors(repo, job.repo_powa, srvid)
                .map_err(on_repo("cannot reset the errors"))?;
        }
    }
    report.take_snapshot_time = started.elapsed();
    Ok(())
}

/// Rolls back everything the snapshot staged, keeping the transaction
/// open: done with a savepoint taken right after BEGIN.
fn discard_staged_rows(repo: &mut Transaction<'_>) -> Result<(), Error> {
    repo.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SNAPSHOT_START}"))
        .map_err(on_repo("cannot discard the staged rows"))
}

/// Restores `application_name`, appends the errors and commits both sides,
/// unless the worker is stopping.
fn finish(
    mut repo: Transaction<'_>,
    remote: Transaction<'_>,
    job: &Job<'_>,
    report: &SnapshotReport,
    context: &dyn Context,
) -> Result<(), Error> {
    repo.execute(
        "SELECT pg_catalog.set_config('application_name', $1, false)",
        &[&job.application_name],
    )
    .map_err(on_repo("cannot restore application_name"))?;

    // powa_take_snapshot resets the errors: ours go after it.
    if !report.errors.is_empty()
        && let Err(e) = metas::report_errors(
            &mut repo,
            job.repo_powa,
            job.srvid,
            &report.errors,
            ErrorReport::Append,
        )
    {
        log::warn!("{e}");
    }

    // A query cancelled by a stop request or at the deadline fails like any
    // other: make sure such a snapshot is rolled back, not committed
    // half-done.
    checkpoint(job, context)?;
    repo.commit()
        .map_err(on_repo("cannot commit the snapshot"))?;
    remote
        .commit()
        .map_err(on_remote("cannot end the snapshot"))
}
