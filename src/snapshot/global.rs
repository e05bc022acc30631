//! The global datasources of a snapshot: for each `powa_functions` row, the
//! rows of its source function on the remote, tagged with the server's id,
//! copied into its `*_src_tmp` table on the repository, then its cleanup
//! run on the remote.

use postgres::Transaction;

use super::copy::{self, Broken, Copy};
use super::{Context, SnapshotReport};
use crate::error::Error;
use crate::powa::Powa;
use crate::repository::datasources::Datasource;

/// Copies `sources` in order; errors of single datasources go to
/// `report.errors`.
pub fn copy_all(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    sides: (&Powa, &Powa),
    srvid: i32,
    sources: &[Datasource],
    report: &mut SnapshotReport,
    context: &dyn Context,
) -> Result<(), Error> {
    let (remote_powa, repo_powa) = sides;
    for source in sources {
        if context.interrupted() {
            return Err(Error::Interrupted);
        }
        let Some(query_source) = &source.query_source else {
            log::warn!(
                "datasource {} ({}) has no query_source, skipped",
                source.name,
                source.function_name
            );
            continue;
        };
        let Some(remote_schema) = remote_powa.datasource_schema(&source.name, source.external)
        else {
            report.error(format!(
                "Extension {} is not installed on the remote server",
                source.name
            ));
            continue;
        };
        let Some(repo_schema) = repo_powa.datasource_schema(&source.name, source.external) else {
            report.error(format!(
                "Extension {} is not installed on the repository server",
                source.name
            ));
            continue;
        };
        let table = format!(
            "{repo_schema}.{}",
            crate::powa::quote_ident(&format!("{query_source}_tmp"))
        );
        let copy = Copy {
            name: query_source,
            query: format!(
                "SELECT {srvid}, * FROM {remote_schema}.{}(0)",
                crate::powa::quote_ident(query_source)
            ),
            table: &table,
        };
        log::debug!("copying {query_source}");
        match copy::copy(remote, repo, &copy)? {
            Ok(rows) => {
                log::debug!("{query_source}: {rows} rows");
                report.rows += rows;
            }
            Err(message) => report.error(message),
        }
        if let Some(cleanup) = &source.query_cleanup {
            run_cleanup(remote, remote_powa, cleanup, report)?;
        }
    }
    Ok(())
}

/// Runs a datasource's cleanup on the remote, even after a failed copy,
/// with its `{extension}` placeholders expanded where the generation has
/// them.
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
