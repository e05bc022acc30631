//! The remote's versions as the repository records them for the UI:
//! `powa_servers.version` and the `version` of each extension listed for
//! the server (in the table the [`Generation`](crate::powa::Generation)
//! names).

use postgres::GenericClient;

use crate::error::Error;
use crate::powa::Powa;
use crate::remote::RemoteVersions;

/// Records a remote's versions in the repository. hypopg need not be
/// installed in the remote's PoWA database: its row follows whether the
/// remote has it available. Only changed values are written.
pub fn save(
    client: &mut impl GenericClient,
    powa: &Powa,
    srvid: i32,
    remote: &RemoteVersions,
) -> Result<(), Error> {
    let context = |what: &str| format!("cannot save the {what} of server {srvid}");
    client
        .execute(
            &format!(
                "UPDATE {} SET version = $1 WHERE id = $2 AND version IS DISTINCT FROM $1",
                powa.qualify("powa_servers")
            ),
            &[&remote.server, &srvid],
        )
        .map_err(|e| Error::postgres(context("PostgreSQL version"), e))?;

    let table = powa.qualify(powa.generation.extension_versions_table());
    let listed = client
        .query(
            &format!("SELECT extname, version FROM {table} WHERE srvid = $1"),
            &[&srvid],
        )
        .map_err(|e| Error::postgres(context("extension versions"), e))?;
    let mut saved_hypopg: Option<Option<String>> = None;
    for row in listed {
        let extname: String = row.get(0);
        let saved: Option<String> = row.get(1);
        if extname == "hypopg" {
            saved_hypopg = Some(saved);
            continue;
        }
        let Some(actual) = remote.extensions.get(&extname) else {
            log::debug!("extension {extname} is not installed on server {srvid}");
            continue;
        };
        if saved.as_ref() != Some(actual) {
            client
                .execute(
                    &format!("UPDATE {table} SET version = $1 WHERE srvid = $2 AND extname = $3"),
                    &[actual, &srvid, &extname],
                )
                .map_err(|e| Error::postgres(context(&format!("{extname} version")), e))?;
        }
    }

    let hypopg = match (&saved_hypopg, &remote.hypopg_available) {
        (Some(_), None) => client.execute(
            &format!("DELETE FROM {table} WHERE srvid = $1 AND extname = 'hypopg'"),
            &[&srvid],
        ),
        (None, Some(available)) => client.execute(
            &format!("INSERT INTO {table} (srvid, extname, version) VALUES ($1, 'hypopg', $2)"),
            &[&srvid, available],
        ),
        (Some(saved), Some(available)) if saved.as_ref() != Some(available) => client.execute(
            &format!("UPDATE {table} SET version = $2 WHERE srvid = $1 AND extname = 'hypopg'"),
            &[&srvid, available],
        ),
        _ => Ok(0),
    };
    hypopg.map_err(|e| Error::postgres(context("hypopg version"), e))?;
    Ok(())
}
