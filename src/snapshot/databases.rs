//! The per-database part of a PoWA 5 snapshot: the per-database modules
//! (`pg_stat_all_tables`...) and the catalogs (`pg_class`...), collected by
//! connecting to each database of the remote that accepts connections and
//! that a module or a catalog needs, one database at a time.
//!
//! Every row carries the server's id, the database's oid and, for modules,
//! the one timestamp of the snapshot (the remote's `now()`), so that all
//! databases of a snapshot line up. A database that cannot be reached, or
//! whose connection breaks, is an error for the UI; the snapshot goes on
//! with the next database. Which catalogs are due is decided by
//! [`plan`], a pure function, from what the repository says is fresh and
//! what REFRESH_DB_CAT asked for ([`CatalogRefresh`]).

use std::collections::BTreeSet;

use postgres::Client;

use super::copy::{self, Broken, Copy};
use super::{Context, Job, SnapshotReport};
use crate::error::Error;
use crate::powa::quote_literal;
use crate::repository::datasources::{Catalog, DatabaseModule};

/// Catalog refreshes asked for with REFRESH_DB_CAT and not yet served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CatalogRefresh {
    #[default]
    Nothing,
    /// Every database.
    All,
    /// These databases.
    Some(BTreeSet<String>),
}

impl CatalogRefresh {
    /// Adds a request: `dbnames` empty means every database.
    pub fn add(&mut self, dbnames: Vec<String>) {
        *self = match std::mem::take(self) {
            CatalogRefresh::All => CatalogRefresh::All,
            _ if dbnames.is_empty() => CatalogRefresh::All,
            CatalogRefresh::Nothing => CatalogRefresh::Some(dbnames.into_iter().collect()),
            CatalogRefresh::Some(mut names) => {
                names.extend(dbnames);
                CatalogRefresh::Some(names)
            }
        }
    }

    /// Whether the catalogs of `dbname` must be refreshed whatever their
    /// age.
    pub fn covers(&self, dbname: &str) -> bool {
        match self {
            CatalogRefresh::Nothing => false,
            CatalogRefresh::All => true,
            CatalogRefresh::Some(names) => names.contains(dbname),
        }
    }
}

/// What to collect in one database.
#[derive(Debug, PartialEq, Eq)]
pub struct DatabaseWork<'a> {
    pub dbname: &'a str,
    pub modules: Vec<&'a DatabaseModule>,
    pub catalogs: Vec<&'a Catalog>,
}

/// The databases to visit, in the order of `dbnames`, each with what to
/// collect there: the modules that cover it, and the catalogs that are not
/// fresh there or whose refresh was asked for. Databases with nothing to
/// collect are left out.
pub fn plan<'a>(
    dbnames: &'a [String],
    modules: &'a [DatabaseModule],
    catalogs: &'a [Catalog],
    refresh: &CatalogRefresh,
) -> Vec<DatabaseWork<'a>> {
    dbnames
        .iter()
        .map(|dbname| DatabaseWork {
            dbname,
            modules: modules.iter().filter(|m| m.covers(dbname)).collect(),
            catalogs: catalogs
                .iter()
                .filter(|c| refresh.covers(dbname) || !c.is_fresh_in(dbname))
                .collect(),
        })
        .filter(|work| !work.modules.is_empty() || !work.catalogs.is_empty())
        .collect()
}

/// What one snapshot's per-database part needs.
pub struct Databases<'a> {
    /// The remote's `now()` at the start of the snapshot.
    pub timestamp: &'a str,
    pub work: Vec<DatabaseWork<'a>>,
}

/// Visits each database of `databases.work`, one connection at a time,
/// closed after use; returns how many connections were opened. A broken
/// repository connection ends the snapshot (`Err`).
pub fn copy_all(
    repo: &mut postgres::Transaction<'_>,
    job: &Job<'_>,
    databases: &Databases<'_>,
    report: &mut SnapshotReport,
    context: &dyn Context,
) -> Result<usize, Error> {
    let mut opened = 0;
    for work in &databases.work {
        super::checkpoint(job, context)?;
        log::debug!("collecting database {}", work.dbname);
        let mut client = match context.connect_database(work.dbname) {
            Ok(client) => client,
            Err(error) => {
                report.error(error.to_string());
                continue;
            }
        };
        opened += 1;
        let outcome = copy_database(&mut client, repo, job, databases, work, report, context);
        drop(client);
        context.closed_database();
        match outcome {
            Ok(()) => {}
            Err(Broken::Remote(error)) => report.error(format!(
                "database {} of the remote server: {error}",
                work.dbname
            )),
            Err(Broken::Repository(error)) => return Err(error),
        }
    }
    Ok(opened)
}

/// Collects one database's modules and catalogs.
fn copy_database(
    client: &mut Client,
    repo: &mut postgres::Transaction<'_>,
    job: &Job<'_>,
    databases: &Databases<'_>,
    work: &DatabaseWork<'_>,
    report: &mut SnapshotReport,
    context: &dyn Context,
) -> Result<(), Broken> {
    let begin_error = |e| Broken::Remote(Error::postgres("cannot begin a transaction", e));
    let mut remote = client.transaction().map_err(begin_error)?;
    remote
        .batch_execute(&super::server_timeout(job))
        .map_err(begin_error)?;
    let srvid = job.srvid;
    let timestamp = quote_literal(databases.timestamp);
    let copies = work
        .modules
        .iter()
        .map(|module| {
            (
                &module.name,
                format!("{srvid} AS srvid, {timestamp}::timestamptz AS ts"),
                &module.query_source,
                &module.tmp_table,
            )
        })
        .chain(work.catalogs.iter().map(|catalog| {
            (
                &catalog.name,
                format!("{srvid} AS srvid"),
                &catalog.query_source,
                &catalog.tmp_table,
            )
        }));
    for (name, tags, query_source, table) in copies {
        if super::checkpoint(job, context).is_err() {
            // The caller sees why at its next checkpoint.
            return Ok(());
        }
        let name = format!("{name} in database {}", work.dbname);
        let copy = Copy {
            name: &name,
            query: format!(
                "SELECT {tags}, d.dbid, src.* FROM ({query_source}) src \
                 CROSS JOIN (SELECT oid AS dbid FROM pg_catalog.pg_database \
                 WHERE datname = pg_catalog.current_database()) d"
            ),
            table,
        };
        match copy::copy(&mut remote, repo, &copy)? {
            Ok(rows) => {
                log::debug!("{name}: {rows} rows");
                report.rows += rows;
            }
            Err(message) => report.error(message),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, dbnames: Option<&[&str]>) -> DatabaseModule {
        DatabaseModule {
            name: name.into(),
            query_source: "SELECT 1".into(),
            tmp_table: format!("\"public\".{name}_tmp"),
            dbnames: dbnames.map(|names| names.iter().map(|n| n.to_string()).collect()),
        }
    }

    fn catalog(name: &str, fresh: &[&str]) -> Catalog {
        Catalog {
            name: name.into(),
            query_source: "SELECT 1".into(),
            tmp_table: format!("\"public\".{name}_tmp"),
            fresh_dbnames: fresh.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    /// (dbname, modules, catalogs) of a plan, for comparisons.
    fn summary(work: &[DatabaseWork<'_>]) -> Vec<(String, Vec<String>, Vec<String>)> {
        work.iter()
            .map(|w| {
                (
                    w.dbname.to_string(),
                    w.modules.iter().map(|m| m.name.clone()).collect(),
                    w.catalogs.iter().map(|c| c.name.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn requests_accumulate_until_served() {
        let mut refresh = CatalogRefresh::default();
        assert!(!refresh.covers("app1"));
        refresh.add(names(&["app1"]));
        refresh.add(names(&["app2"]));
        assert!(refresh.covers("app1") && refresh.covers("app2"));
        assert!(!refresh.covers("app3"));
        refresh.add(Vec::new());
        assert_eq!(refresh, CatalogRefresh::All);
        refresh.add(names(&["app4"]));
        assert_eq!(refresh, CatalogRefresh::All, "all stays all");
        assert!(refresh.covers("anything"));
    }

    #[test]
    fn fresh_catalogs_are_skipped_unless_asked_for() {
        let dbnames = names(&["app1", "app2", "powa"]);
        let catalogs = [catalog("pg_class", &["app1", "app2", "powa"])];
        let nothing = plan(&dbnames, &[], &catalogs, &CatalogRefresh::Nothing);
        assert!(nothing.is_empty(), "{nothing:?}");

        let mut refresh = CatalogRefresh::default();
        refresh.add(names(&["app2"]));
        let asked = plan(&dbnames, &[], &catalogs, &refresh);
        assert_eq!(
            summary(&asked),
            [("app2".into(), vec![], vec!["pg_class".into()])]
        );

        let all = plan(&dbnames, &[], &catalogs, &CatalogRefresh::All);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn stale_catalogs_and_covered_modules_are_collected() {
        let dbnames = names(&["app1", "app2"]);
        let modules = [
            module("pg_stat_all_tables", None),
            module("pg_stat_user_functions", Some(&["app2"])),
        ];
        let catalogs = [catalog("pg_proc", &["app1"]), catalog("pg_class", &[])];
        let work = plan(&dbnames, &modules, &catalogs, &CatalogRefresh::Nothing);
        assert_eq!(
            summary(&work),
            [
                (
                    "app1".into(),
                    vec!["pg_stat_all_tables".into()],
                    vec!["pg_class".into()]
                ),
                (
                    "app2".into(),
                    vec!["pg_stat_all_tables".into(), "pg_stat_user_functions".into()],
                    vec!["pg_proc".into(), "pg_class".into()]
                ),
            ]
        );
    }

    #[test]
    fn databases_no_module_covers_are_left_out() {
        let dbnames = names(&["app1", "app2"]);
        let modules = [module("pg_stat_all_tables", Some(&["app1"]))];
        let catalogs = [catalog("pg_class", &["app1", "app2"])];
        let work = plan(&dbnames, &modules, &catalogs, &CatalogRefresh::Nothing);
        assert_eq!(
            summary(&work),
            [("app1".into(), vec!["pg_stat_all_tables".into()], vec![])]
        );
    }
}
