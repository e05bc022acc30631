//! `powa_snapshot_metas`: when a server's last snapshot was taken, and the
//! errors powa-web shows for it.

use postgres::GenericClient;

use crate::error::Error;
use crate::powa::Powa;

/// What the repository knows of a server's last snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LastSnapshot {
    /// The server has no `powa_snapshot_metas` row: it was not registered
    /// with `powa_register_server`.
    NotRegistered,
    /// No snapshot was ever taken (`snapts` is `-infinity`).
    Never,
    /// Seconds since the last snapshot, by the repository's clock.
    SecondsAgo(f64),
}

/// Reads `powa_snapshot_metas.snapts` for `srvid`.
pub fn last_snapshot(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
) -> Result<LastSnapshot, postgres::Error> {
    let row = client.query_opt(
        &format!(
            "SELECT CASE WHEN snapts = '-infinity' THEN NULL \
             ELSE EXTRACT(EPOCH FROM (pg_catalog.now() - snapts))::float8 END \
             FROM {} WHERE srvid = $1",
            powa.qualify("powa_snapshot_metas")
        ),
        &[&srvid],
    )?;
    Ok(match row {
        None => LastSnapshot::NotRegistered,
        Some(row) => match row.get::<_, Option<f64>>(0) {
            None => LastSnapshot::Never,
            Some(seconds) => LastSnapshot::SecondsAgo(seconds),
        },
    })
}

/// How errors are written to `powa_snapshot_metas.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReport {
    /// Replace what is there (a connection error: the state of the server).
    Replace,
    /// Append to what is there (errors of one snapshot).
    Append,
}

/// Writes `errors` for `srvid` in a savepoint of its own, so that a failure
/// to report cannot break anything else; returns why it failed, if it did.
pub fn report_errors(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
    errors: &[String],
    mode: ErrorReport,
) -> Result<(), Error> {
    let table = powa.qualify("powa_snapshot_metas");
    let sql = match mode {
        ErrorReport::Replace => format!("UPDATE {table} SET errors = $1 WHERE srvid = $2"),
        ErrorReport::Append => {
            format!("UPDATE {table} SET errors = pg_catalog.array_cat(errors, $1) WHERE srvid = $2")
        }
    };
    let mut savepoint = client
        .transaction()
        .map_err(|e| Error::postgres("cannot report errors", e))?;
    savepoint
        .execute(&sql, &[&errors, &srvid])
        .map_err(|e| Error::postgres(format!("cannot report errors for server {srvid}"), e))?;
    savepoint
        .commit()
        .map_err(|e| Error::postgres(format!("cannot report errors for server {srvid}"), e))
}

/// Clears the errors of `srvid`, as `powa_take_snapshot` would have done
/// had it not failed.
pub fn clear_errors(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
) -> Result<(), postgres::Error> {
    client
        .execute(
            &format!(
                "UPDATE {} SET errors = NULL WHERE srvid = $1",
                powa.qualify("powa_snapshot_metas")
            ),
            &[&srvid],
        )
        .map(drop)
}
