//! What the collector asks a remote server about itself, besides the
//! snapshot data: its versions, its databases, its clock.
//!
//! Run by the server's worker on its remote connection; no state.

use std::collections::HashMap;

use postgres::GenericClient;

/// What a remote server runs, as the repository records it for the UI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteVersions {
    /// `server_version`.
    pub server: String,
    /// `pg_extension.extversion` by extension name.
    pub extensions: HashMap<String, String>,
    /// `pg_available_extensions.default_version` of hypopg, if available.
    pub hypopg_available: Option<String>,
}

/// Reads a remote server's versions.
pub fn versions(client: &mut impl GenericClient) -> Result<RemoteVersions, postgres::Error> {
    let server: String = client
        .query_one("SELECT pg_catalog.current_setting('server_version')", &[])?
        .get(0);
    let extensions = client
        .query(
            "SELECT extname::text, extversion FROM pg_catalog.pg_extension",
            &[],
        )?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let hypopg_available = client
        .query_opt(
            "SELECT default_version FROM pg_catalog.pg_available_extensions \
             WHERE name = 'hypopg'",
            &[],
        )?
        .and_then(|row| row.get(0));
    Ok(RemoteVersions {
        server,
        extensions,
        hypopg_available,
    })
}

/// `server_version_num`, which picks the per-database queries that fit.
pub fn server_version_num(client: &mut impl GenericClient) -> Result<i32, postgres::Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )?
        .get(0))
}

/// The remote's `now()`, as text in the session's ISO DateStyle: the one
/// timestamp of every database's rows in a snapshot.
pub fn now(client: &mut impl GenericClient) -> Result<String, postgres::Error> {
    Ok(client
        .query_one("SELECT pg_catalog.now()::text", &[])?
        .get(0))
}

/// The databases that accept connections, by name.
pub fn databases(client: &mut impl GenericClient) -> Result<Vec<String>, postgres::Error> {
    Ok(client
        .query(
            "SELECT datname::text FROM pg_catalog.pg_database \
             WHERE datallowconn ORDER BY datname",
            &[],
        )?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}
