//! Connections to a remote server ([`connect`] to its PoWA database,
//! [`connect_database`] to its other databases), and what the collector
//! asks a remote server about itself, besides the snapshot data: its
//! versions, its databases, its clock.
//!
//! Run by the server's worker (and by `powa-collector check`) on its
//! remote connection; no state.

use std::collections::HashMap;

use postgres::{Client, GenericClient};

use crate::conninfo::{ConnInfo, Tripwire};
use crate::error::{Error, describe_postgres_error};
use crate::powa::{self, Powa};
use crate::servers::ServerSettings;

/// Opens a connection to the PoWA database of `server`, named `name` in
/// messages, and checks PoWA there: missing or unsupported is an
/// [`Error::Powa`]; PoWA 4.0 has its library loaded.
pub fn connect(
    server: &ServerSettings,
    name: &str,
    application_name: &str,
) -> Result<(Client, Tripwire, Powa), Error> {
    let conninfo = server.conninfo();
    let (mut client, tripwire) = conninfo
        .connect_with_tripwire(application_name)
        .map_err(|e| {
            e.into_error(format!(
                "cannot connect to remote server {name} ({conninfo})"
            ))
        })?;
    let place = format!("remote server {name}");
    let powa = powa::prepare(&mut client, &place)?;
    if powa.needs_load() {
        client.batch_execute("LOAD 'powa'").map_err(|e| {
            Error::Powa(format!(
                "cannot load library powa on {place}: {}",
                describe_postgres_error(&e)
            ))
        })?;
    }
    Ok((client, tripwire, powa))
}

/// Opens a connection to database `dbname` of `server` (PoWA 5's
/// per-database modules and catalogs), its `search_path` pinned to
/// `pg_catalog`; returns the settings it was opened with too.
pub fn connect_database(
    server: &ServerSettings,
    dbname: &str,
    application_name: &str,
) -> Result<(ConnInfo, Client, Tripwire), Error> {
    let conninfo = server.conninfo_for_database(dbname);
    let (mut client, tripwire) = conninfo
        .connect_with_tripwire(application_name)
        .map_err(|e| {
            e.into_error(format!(
                "Could not connect to remote database {dbname} ({conninfo})"
            ))
        })?;
    powa::pin_search_path(&mut client)
        .map_err(|e| Error::postgres(format!("cannot set search_path in database {dbname}"), e))?;
    Ok((conninfo, client, tripwire))
}

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
