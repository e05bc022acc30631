//! One snapshot of one remote server, run by that server's worker thread.
//!
//! For each datasource enabled for the server in `powa_functions`, the rows
//! of its source function on the remote are streamed with COPY into its
//! `*_src_tmp` table on the repository, chunk by chunk, so memory does not
//! grow with the size of a datasource. Then `powa_take_snapshot(srvid)`
//! turns them into history. All of it happens in one repository
//! transaction: a snapshot lands whole or not at all, and two snapshots of a
//! server never interleave.
//!
//! Each datasource runs in a savepoint on both sides: one that fails is
//! rolled back and recorded, and the snapshot goes on with the next. The
//! recorded errors end up in `powa_snapshot_metas.errors` for the UI.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use postgres::{Client, Transaction};

use crate::error::{Error, describe_postgres_error};
use crate::repository::{self, ErrorReport, PowaInstall};

/// A datasource: a row of `powa_functions` with `operation = 'snapshot'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datasource {
    pub module: String,
    /// The source function (`powa_statements_src`); its rows go to the
    /// table of the same name suffixed `_tmp`.
    pub query_source: Option<String>,
    /// SQL run on the remote after the copy, such as `pg_qualstats_reset()`.
    pub query_cleanup: Option<String>,
    pub function_name: String,
}

impl Datasource {
    /// The remote-side statement producing the rows, tagged with `srvid`.
    fn copy_out_sql(&self, source: &str, remote: &PowaInstall, srvid: i32) -> String {
        format!(
            "COPY (SELECT {srvid}, * FROM {}(0)) TO STDOUT",
            remote.qualify(source)
        )
    }

    /// The repository-side statement receiving them.
    fn copy_in_sql(&self, source: &str, repository: &PowaInstall) -> String {
        format!(
            "COPY {} FROM STDIN",
            repository.qualify(&format!("{source}_tmp"))
        )
    }
}

/// What a snapshot did.
#[derive(Debug, Default)]
pub struct SnapshotReport {
    /// Rows copied from the remote, all datasources together.
    pub rows: u64,
    /// Time spent copying (and cleaning up on the remote).
    pub copy_time: Duration,
    /// Time spent in `powa_take_snapshot`.
    pub take_snapshot_time: Duration,
    /// Errors recorded for the UI.
    pub errors: Vec<String>,
    /// Why nothing was done, if nothing was.
    pub skipped: Option<String>,
}

/// Reads the datasources enabled for `srvid`, in priority order.
pub fn datasources(
    client: &mut impl postgres::GenericClient,
    repository: &PowaInstall,
    srvid: i32,
) -> Result<Vec<Datasource>, postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT module, query_source, query_cleanup, function_name FROM {} \
             WHERE operation = 'snapshot' AND enabled AND srvid = $1 ORDER BY priority",
            repository.qualify("powa_functions")
        ),
        &[&srvid],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| Datasource {
            module: row.get(0),
            query_source: row.get(1),
            query_cleanup: row.get(2),
            function_name: row.get(3),
        })
        .collect())
}

/// Takes one snapshot of server `srvid`.
///
/// `remote_powa` is where PoWA lives on the remote; `application_name` is
/// the repository connection's name, restored after `powa_take_snapshot`
/// (which overwrites it). An `Err` means a connection or transaction failed
/// and nothing was committed; errors of single datasources are in the
/// report instead. `interrupted` is asked between steps: when it says yes,
/// the snapshot is abandoned and rolled back (`Err(Error::Interrupted)`).
pub fn take(
    remote: &mut Client,
    repo: &mut Client,
    remote_powa: &PowaInstall,
    srvid: i32,
    application_name: &str,
    interrupted: &dyn Fn() -> bool,
) -> Result<SnapshotReport, Error> {
    let mut report = SnapshotReport::default();
    let repo_powa = repository::require_powa(repo, "the repository")?;
    if !repo_powa.version.compatible_with(&remote_powa.version) {
        let message = format!(
            "Incompatible PoWA version between the repository server ({}) and the remote host ({})",
            repo_powa.version, remote_powa.version
        );
        repository::report_errors(
            repo,
            &repo_powa,
            srvid,
            std::slice::from_ref(&message),
            ErrorReport::Replace,
        )?;
        report.skipped = Some(message);
        return Ok(report);
    }

    let on_repo = |what: &str| {
        let what = what.to_string();
        move |e| Error::postgres(format!("{what} on the repository"), e)
    };
    let on_remote = |what: &str| {
        let what = what.to_string();
        move |e| Error::postgres(format!("{what} on the remote server"), e)
    };

    let mut repo_tx = repo
        .transaction()
        .map_err(on_repo("cannot begin the snapshot"))?;
    let sources = datasources(&mut repo_tx, &repo_powa, srvid)
        .map_err(on_repo("cannot read the datasources"))?;
    if sources.is_empty() {
        repo_tx
            .commit()
            .map_err(on_repo("cannot end the snapshot"))?;
        report.skipped = Some(format!("no datasource configured for server {srvid}"));
        return Ok(report);
    }
    let mut remote_tx = remote
        .transaction()
        .map_err(on_remote("cannot begin the snapshot"))?;

    let copy_started = Instant::now();
    for source in &sources {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let Some(query_source) = &source.query_source else {
            log::warn!(
                "datasource {} ({}) has no query_source, skipped",
                source.module,
                source.function_name
            );
            continue;
        };
        log::debug!("copying {query_source}");
        match copy_datasource(
            &mut remote_tx,
            &mut repo_tx,
            &source.copy_out_sql(query_source, remote_powa, srvid),
            &source.copy_in_sql(query_source, &repo_powa),
            query_source,
        )? {
            Ok(rows) => {
                log::debug!("{query_source}: {rows} rows");
                report.rows += rows;
            }
            Err(message) => {
                log::warn!("{message}");
                report.errors.push(message);
            }
        }
        if let Some(cleanup) = &source.query_cleanup {
            log::debug!("running cleanup of {query_source}: {cleanup}");
            let mut savepoint = remote_tx
                .savepoint("cleanup")
                .map_err(on_remote("cannot open a savepoint"))?;
            match savepoint.batch_execute(cleanup) {
                Ok(()) => savepoint.commit(),
                Err(e) => {
                    let message = format!(
                        "Error while calling {cleanup}: {}",
                        describe_postgres_error(&e)
                    );
                    log::warn!("{message}");
                    report.errors.push(message);
                    savepoint.rollback()
                }
            }
            .map_err(on_remote("cannot close a savepoint"))?;
        }
    }
    report.copy_time = copy_started.elapsed();

    if interrupted() {
        return Err(Error::Interrupted);
    }
    let snapshot_started = Instant::now();
    let mut savepoint = repo_tx
        .savepoint("powa_take_snapshot")
        .map_err(on_repo("cannot open a savepoint"))?;
    let sql = format!("SELECT {}($1)", repo_powa.qualify("powa_take_snapshot"));
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
            let message = format!(
                "Error while taking snapshot for server {srvid}: {}",
                describe_postgres_error(&e)
            );
            log::warn!("{message}");
            report.errors.push(message);
            savepoint
                .rollback()
                .map_err(on_repo("cannot roll back a savepoint"))?;
            repo_tx
                .execute(
                    &format!(
                        "UPDATE {} SET errors = NULL WHERE srvid = $1",
                        repo_powa.qualify("powa_snapshot_metas")
                    ),
                    &[&srvid],
                )
                .map_err(on_repo("cannot reset the errors"))?;
        }
    }
    report.take_snapshot_time = snapshot_started.elapsed();
    repo_tx
        .execute(
            "SELECT pg_catalog.set_config('application_name', $1, false)",
            &[&application_name],
        )
        .map_err(on_repo("cannot restore application_name"))?;

    // powa_take_snapshot resets the errors: ours go after it.
    if !report.errors.is_empty()
        && let Err(e) = repository::report_errors(
            &mut repo_tx,
            &repo_powa,
            srvid,
            &report.errors,
            ErrorReport::Append,
        )
    {
        log::warn!("{e}");
    }

    // A query cancelled by a stop request fails like any other: make sure
    // such a snapshot is rolled back, not committed half-done.
    if interrupted() {
        return Err(Error::Interrupted);
    }
    repo_tx
        .commit()
        .map_err(on_repo("cannot commit the snapshot"))?;
    remote_tx
        .commit()
        .map_err(on_remote("cannot end the snapshot"))?;
    Ok(report)
}

/// Copies one datasource, each side in a savepoint. The outer `Err` is a
/// failure of the connections themselves; the inner one, the datasource's
/// own error, already rolled back.
fn copy_datasource(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    copy_out_sql: &str,
    copy_in_sql: &str,
    name: &str,
) -> Result<Result<u64, String>, Error> {
    let savepoint_error = |e| Error::postgres(format!("cannot open a savepoint for {name}"), e);
    let mut source = remote.savepoint("src").map_err(savepoint_error)?;
    let mut target = repo.savepoint("data").map_err(savepoint_error)?;
    let copied = stream(&mut source, &mut target, copy_out_sql, copy_in_sql, name);
    let closed = if copied.is_ok() {
        source.commit().and_then(|()| target.commit())
    } else {
        source.rollback().and_then(|()| target.rollback())
    };
    closed.map_err(|e| Error::postgres(format!("cannot close the savepoint of {name}"), e))?;
    Ok(copied)
}

/// Streams the remote's COPY output into the repository's COPY input, one
/// chunk at a time.
fn stream(
    source: &mut Transaction<'_>,
    target: &mut Transaction<'_>,
    copy_out_sql: &str,
    copy_in_sql: &str,
    name: &str,
) -> Result<u64, String> {
    let reading = |e: &dyn std::fmt::Display| format!("Error while calling {name}: {e}");
    let writing = |e: &dyn std::fmt::Display| format!("Error while inserting data of {name}: {e}");

    let mut reader = source
        .copy_out(copy_out_sql)
        .map_err(|e| reading(&describe_postgres_error(&e)))?;
    let mut writer = target
        .copy_in(copy_in_sql)
        .map_err(|e| writing(&describe_postgres_error(&e)))?;
    loop {
        let chunk = reader.fill_buf().map_err(|e| reading(&describe_io(&e)))?;
        if chunk.is_empty() {
            break;
        }
        let length = chunk.len();
        writer
            .write_all(chunk)
            .map_err(|e| writing(&describe_io(&e)))?;
        reader.consume(length);
    }
    writer
        .finish()
        .map_err(|e| writing(&describe_postgres_error(&e)))
}

/// The `postgres` error inside an I/O error from a COPY reader or writer.
fn describe_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<postgres::Error>())
    {
        Some(postgres) => describe_postgres_error(postgres),
        None => error.to_string(),
    }
}
