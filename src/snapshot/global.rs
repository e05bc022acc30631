//! The global datasources of a snapshot: for each `powa_functions` row, the
//! rows of its source function on the remote, tagged with the server's id,
//! copied into its `*_src_tmp` table on the repository, then its cleanup
//! run on the remote.

use postgres::Transaction;

use super::copy::{self, Broken, Copy};
use super::{Context, Job, SnapshotReport};
use crate::error::Error;
use crate::powa::{Powa, quote_ident};
use crate::repository::datasources::Datasource;

/// Copies `sources` in order; errors of single datasources go to
/// `report.errors`.
pub fn copy_all(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    job: &Job<'_>,
    sources: &[Datasource],
    report: &mut SnapshotReport,
    context: &dyn Context,
) -> Result<(), Error> {
    for source in sources {
        super::checkpoint(job, context)?;
        copy_one(remote, repo, job, source, report)?;
    }
    Ok(())
}

/// Copies one datasource, then runs its cleanup, even after a failed copy.
fn copy_one(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    job: &Job<'_>,
    source: &Datasource,
    report: &mut SnapshotReport,
) -> Result<(), Broken> {
    let Some(query_source) = &source.query_source else {
        log::warn!(
            "datasource {} ({}) has no query_source, skipped",
            source.name,
            source.function_name
        );
        return Ok(());
    };
    match copy_of(job, source, query_source) {
        Err(message) => report.error(message),
        Ok((query, table)) => {
            log::debug!("copying {query_source}");
            let copy = Copy {
                name: query_source,
                query,
                table: &table,
            };
            match copy::copy(remote, repo, &copy)? {
                Ok(rows) => {
                    log::debug!("{query_source}: {rows} rows");
                    report.rows += rows;
                }
                Err(message) => report.error(message),
            }
        }
    }
    if let Some(cleanup) = &source.query_cleanup {
        run_cleanup(remote, job.remote_powa, cleanup, report)?;
    }
    Ok(())
}

/// The remote's query and the repository's table for a datasource, each in
/// the schema where that side has the datasource's objects; an error when
/// one side lacks its extension.
fn copy_of(
    job: &Job<'_>,
    source: &Datasource,
    query_source: &str,
) -> Result<(String, String), String> {
    let schema = |powa: &Powa, side: &str| {
        powa.datasource_schema(&source.name, source.external)
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "Extension {} is not installed on the {side} server",
                    source.name
                )
            })
    };
    let remote_schema = schema(job.remote_powa, "remote")?;
    let repo_schema = schema(job.repo_powa, "repository")?;
    Ok((
        format!(
            "SELECT {}, * FROM {remote_schema}.{}(0)",
            job.srvid,
            quote_ident(query_source)
        ),
        format!(
            "{repo_schema}.{}",
            quote_ident(&format!("{query_source}_tmp"))
        ),
    ))
}

/// Runs a datasource's cleanup on the remote, with its `{extension}`
/// placeholders expanded where the generation has them.
fn run_cleanup(
    remote: &mut Transaction<'_>,
    remote_powa: &Powa,
    cleanup: &str,
    report: &mut SnapshotReport,
) -> Result<(), Broken> {
    let sql = if remote_powa.generation.cleanup_has_placeholders() {
        match remote_powa.schemas.expand(cleanup) {
            Ok(sql) => sql,
            Err(why) => {
                report.error(format!("Cannot run cleanup {cleanup}: {why}"));
                return Ok(());
            }
        }
    } else {
        cleanup.to_string()
    };
    log::debug!("running cleanup: {sql}");
    if let Err(message) = copy::cleanup(remote, &sql)? {
        report.error(message);
    }
    Ok(())
}
