//! Queries about PoWA itself, run against the repository and the remotes:
//! where extension `powa` lives and which version it is, the list of remote
//! servers, the last snapshot time, the versions saved for each server, and
//! the errors shown to the UI in `powa_snapshot_metas.errors`.
//!
//! Every object is qualified with the schema of extension `powa`, read from
//! `pg_extension`, rather than assumed to be `public`. Called from the main
//! thread and from the workers; these functions hold no state.

use std::collections::HashMap;
use std::fmt;

use postgres::GenericClient;

use crate::error::Error;
use crate::servers::{ServerRow, ServerSettings};

/// A version of extension `powa`, such as `4.1.4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowaVersion {
    pub major: u32,
    pub minor: u32,
    /// As `pg_extension.extversion` has it.
    pub text: String,
}

impl PowaVersion {
    /// Reads the leading `major.minor` of an `extversion`; `None` when it has
    /// no leading number.
    pub fn parse(text: &str) -> Option<PowaVersion> {
        let mut parts = text.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        Some(PowaVersion {
            major,
            minor,
            text: text.to_string(),
        })
    }

    /// Whether snapshots from a remote at `other` can go into a repository
    /// at `self`: both must share major.minor.
    pub fn compatible_with(&self, other: &PowaVersion) -> bool {
        self.major == other.major && self.minor == other.minor
    }

    /// PoWA 4.1 added the version columns the collector keeps up to date.
    pub fn saves_versions(&self) -> bool {
        (self.major, self.minor) >= (4, 1)
    }
}

impl fmt::Display for PowaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Where extension `powa` is installed on a server, and which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowaInstall {
    /// The schema name, quoted for use in SQL text.
    pub schema: String,
    pub version: PowaVersion,
}

impl PowaInstall {
    /// `name` qualified with the schema of `powa`, both quoted.
    pub fn qualify(&self, name: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(name))
    }
}

/// Quotes an SQL identifier, always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Finds extension `powa`: `Ok(None)` when it is not installed.
pub fn find_powa(client: &mut impl GenericClient) -> Result<Option<PowaInstall>, postgres::Error> {
    let row = client.query_opt(
        "SELECT n.nspname::text, e.extversion::text \
         FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'powa'",
        &[],
    )?;
    Ok(row.and_then(|row| {
        let schema: String = row.get(0);
        let version: String = row.get(1);
        PowaVersion::parse(&version).map(|version| PowaInstall {
            schema: quote_ident(&schema),
            version,
        })
    }))
}

/// Finds extension `powa` and checks it is PoWA 4 or later; `place` names
/// the server in the error ("the repository", "remote server db1:5432").
pub fn require_powa(client: &mut impl GenericClient, place: &str) -> Result<PowaInstall, Error> {
    let install = find_powa(client)
        .map_err(|e| Error::postgres(format!("cannot look for extension powa on {place}"), e))?
        .ok_or_else(|| Error::Powa(format!("PoWA extension not found on {place}")))?;
    if install.version.major < 4 {
        return Err(Error::Powa(format!(
            "incompatible PoWA version on {place}: found {}, requires at least 4.0.0",
            install.version.text
        )));
    }
    Ok(install)
}

/// The remote servers to collect, in id order.
///
/// Rows that cannot be used (a port out of range, for instance) are returned
/// apart, each with a message naming it, so that one bad row does not hide
/// the others.
pub fn list_servers(
    client: &mut impl GenericClient,
    powa: &PowaInstall,
) -> Result<(Vec<ServerSettings>, Vec<String>), postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT id, hostname, port, username, password, dbname, frequency, \
             coalesce(alias, '') \
             FROM {} WHERE id > 0 AND frequency > 0 ORDER BY id",
            powa.qualify("powa_servers")
        ),
        &[],
    )?;
    let mut servers = Vec::new();
    let mut refused = Vec::new();
    for row in rows {
        let row = ServerRow {
            srvid: row.get(0),
            hostname: row.get(1),
            port: row.get(2),
            username: row.get(3),
            password: row.get(4),
            dbname: row.get(5),
            frequency: row.get(6),
            alias: row.get(7),
        };
        match ServerSettings::try_from(row) {
            Ok(server) => servers.push(server),
            Err(why) => refused.push(why),
        }
    }
    Ok((servers, refused))
}

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
    powa: &PowaInstall,
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
    powa: &PowaInstall,
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
pub fn remote_versions(client: &mut impl GenericClient) -> Result<RemoteVersions, postgres::Error> {
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

/// Records a remote's versions in the repository: `powa_servers.version`,
/// and the `version` of each extension listed for the server
/// (`powa_extensions` in PoWA 4, `powa_extension_config` in PoWA 5). hypopg
/// need not be installed in the remote's PoWA database: its row follows
/// whether the remote has it available. Only changed values are written.
pub fn save_versions(
    client: &mut impl GenericClient,
    powa: &PowaInstall,
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

    let table = powa.qualify(if powa.version.major >= 5 {
        "powa_extension_config"
    } else {
        "powa_extensions"
    });
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

/// Whether the role of backend `pid` may use the collector's command
/// protocol: a member of `pg_signal_backend` (PostgreSQL 14+) or of PoWA 5's
/// `powa_signal_backend`, `powa_write_all_data` or `powa_admin` roles; on
/// older setups, a role allowed to INSERT into `powa_statements`. A backend
/// that is gone is denied.
pub fn may_use_protocol(
    client: &mut impl GenericClient,
    powa: &PowaInstall,
    server_version_num: i32,
    pid: i32,
) -> Result<bool, postgres::Error> {
    let predefined: Vec<&str> = if server_version_num >= 140000 {
        vec!["pg_signal_backend"]
    } else {
        Vec::new()
    };
    let row = if powa.version.major >= 5 {
        let powa_roles = ["powa_signal_backend", "powa_write_all_data", "powa_admin"];
        client.query_opt(
            &format!(
                "WITH s(v) AS (SELECT unnest($1::text[]) \
                 UNION ALL SELECT rolname FROM {} WHERE powa_role = ANY ($2::text[])) \
                 SELECT bool_or(pg_catalog.pg_has_role(a.usesysid, s.v, 'USAGE')) \
                 FROM pg_catalog.pg_stat_activity a CROSS JOIN s WHERE a.pid = $3",
                powa.qualify("powa_roles")
            ),
            &[&predefined, &&powa_roles[..], &pid],
        )?
    } else if !predefined.is_empty() {
        client.query_opt(
            "SELECT bool_or(pg_catalog.pg_has_role(a.usesysid, s.v, 'USAGE')) \
             FROM pg_catalog.pg_stat_activity a CROSS JOIN unnest($1::text[]) s(v) \
             WHERE a.pid = $2",
            &[&predefined, &pid],
        )?
    } else {
        client.query_opt(
            "SELECT pg_catalog.has_table_privilege(a.usesysid, $1, 'INSERT') \
             FROM pg_catalog.pg_stat_activity a WHERE a.pid = $2",
            &[&powa.qualify("powa_statements"), &pid],
        )?
    };
    Ok(row.and_then(|row| row.get::<_, Option<bool>>(0)) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        let cases = [
            ("4.1.4", Some((4, 1))),
            ("5.0.0", Some((5, 0))),
            ("4.2", Some((4, 2))),
            ("5", Some((5, 0))),
            ("5.0dev", Some((5, 0))),
            ("dev", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let parsed = PowaVersion::parse(text).map(|v| (v.major, v.minor));
            assert_eq!(parsed, expected, "{text}");
        }
    }

    #[test]
    fn compatibility_is_major_minor() {
        let v = |t| PowaVersion::parse(t).unwrap();
        assert!(v("4.1.4").compatible_with(&v("4.1.2")));
        assert!(!v("4.1.4").compatible_with(&v("4.2.0")));
        assert!(!v("4.1.4").compatible_with(&v("5.1.4")));
        assert!(!v("4.0.1").saves_versions());
        assert!(v("4.1.0").saves_versions());
        assert!(v("5.0.0").saves_versions());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let install = PowaInstall {
            schema: quote_ident("powa"),
            version: PowaVersion::parse("5.0.0").unwrap(),
        };
        assert_eq!(install.qualify("powa_servers"), "\"powa\".\"powa_servers\"");
    }
}
