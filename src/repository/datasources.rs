//! What a snapshot copies for a server, as the repository configures it:
//! the global datasources (`powa_functions`) and, on PoWA 5, the
//! per-database modules (`powa_db_functions`) and catalogs
//! (`powa_catalog_functions`).

use postgres::GenericClient;

use crate::powa::Powa;

/// A global datasource: a `powa_functions` row with `operation =
/// 'snapshot'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datasource {
    /// The extension or module it belongs to.
    pub name: String,
    /// Whether its objects live in the schema of extension `name` rather
    /// than in that of `powa` (PoWA 5's external extensions).
    pub external: bool,
    /// The source function (`powa_statements_src`); its rows go to the
    /// table of the same name suffixed `_tmp`.
    pub query_source: Option<String>,
    /// SQL run on the remote after the copy, such as `pg_qualstats_reset()`.
    pub query_cleanup: Option<String>,
    pub function_name: String,
}

/// Reads the global datasources enabled for `srvid`, in priority order.
pub fn global(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
) -> Result<Vec<Datasource>, postgres::Error> {
    let sql = powa
        .generation
        .datasources_sql(&powa.qualify("powa_functions"));
    Ok(client
        .query(&sql, &[&srvid])?
        .into_iter()
        .map(|row| Datasource {
            name: row.get(0),
            external: row.get(1),
            query_source: row.get(2),
            query_cleanup: row.get(3),
            function_name: row.get(4),
        })
        .collect())
}

/// A per-database module (PoWA 5): a query run in each database it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseModule {
    pub name: String,
    /// The query producing the rows, for the remote's PostgreSQL version.
    pub query_source: String,
    /// Where the rows go on the repository, already qualified.
    pub tmp_table: String,
    /// The databases it covers; `None` for all of them.
    pub dbnames: Option<Vec<String>>,
}

impl DatabaseModule {
    pub fn covers(&self, dbname: &str) -> bool {
        self.dbnames
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == dbname))
    }
}

/// Reads the per-database modules enabled for `srvid`, in priority order,
/// with the queries that fit a remote at `server_version_num`. Modules
/// without a query for that version are left out.
pub fn database_modules(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
    server_version_num: i32,
) -> Result<Vec<DatabaseModule>, postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT db_module, query_source, tmp_table, dbnames FROM {}($1, $2) \
             WHERE operation = 'snapshot' AND enabled ORDER BY priority, db_module",
            powa.qualify("powa_db_functions")
        ),
        &[&srvid, &server_version_num],
    )?;
    let mut modules = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let (Some(query_source), Some(tmp_table)) = (row.get(1), row.get(2)) else {
            log::debug!("database module {name} has no query for this server version");
            continue;
        };
        modules.push(DatabaseModule {
            name,
            query_source,
            tmp_table,
            dbnames: row.get(3),
        });
    }
    Ok(modules)
}

/// A catalog (PoWA 5): a copy of one system catalog of each database,
/// refreshed once a year or on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub name: String,
    pub query_source: String,
    /// Where the rows go on the repository, already qualified.
    pub tmp_table: String,
    /// The databases whose copy is recent enough.
    pub fresh_dbnames: Vec<String>,
}

impl Catalog {
    pub fn is_fresh_in(&self, dbname: &str) -> bool {
        self.fresh_dbnames.iter().any(|name| name == dbname)
    }
}

/// How long a catalog copy stays fresh.
const CATALOG_REFRESH_INTERVAL: &str = "1 year";

/// Reads the catalogs for `srvid`, with the queries that fit a remote at
/// `server_version_num`, `pg_class` last, as the repository imports them.
pub fn catalogs(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
    server_version_num: i32,
) -> Result<Vec<Catalog>, postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT f.catname, f.query_source, f.tmp_table, f.excluded_dbnames \
             FROM {}($1, $2, $3::text::interval) f \
             ORDER BY f.catname = 'pg_class', f.catname",
            powa.qualify("powa_catalog_functions"),
        ),
        &[&srvid, &server_version_num, &CATALOG_REFRESH_INTERVAL],
    )?;
    let mut catalogs = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let Some(query_source) = row.get(1) else {
            log::debug!("catalog {name} has no query for this server version");
            continue;
        };
        catalogs.push(Catalog {
            name,
            query_source,
            tmp_table: row.get(2),
            fresh_dbnames: row.get::<_, Option<Vec<String>>>(3).unwrap_or_default(),
        });
    }
    Ok(catalogs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_without_dbnames_covers_every_database() {
        let mut module = DatabaseModule {
            name: "pg_stat_all_tables".into(),
            query_source: "SELECT 1".into(),
            tmp_table: "\"public\".powa_all_tables_src_tmp".into(),
            dbnames: None,
        };
        assert!(module.covers("app1"));
        module.dbnames = Some(vec!["app2".into()]);
        assert!(!module.covers("app1"));
        assert!(module.covers("app2"));
    }
}
