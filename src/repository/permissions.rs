//! Who may use the collector's command protocol.

use postgres::GenericClient;

use crate::powa::Powa;

/// Whether the role of backend `pid` may use the collector's command
/// protocol: a member of `pg_signal_backend` (PostgreSQL 14+) or of the
/// PoWA roles of the repository's generation (PoWA 5: `powa_signal_backend`,
/// `powa_write_all_data`, `powa_admin`); without any of those (PoWA 4 on
/// PostgreSQL < 14), a role allowed to INSERT into `powa_statements`. A
/// backend that is gone is denied.
///
/// The role lists are typed `text[]` parameters, so that an empty list of
/// predefined roles (PostgreSQL < 14) still works.
pub fn may_use_protocol(
    client: &mut impl GenericClient,
    powa: &Powa,
    server_version_num: i32,
    pid: i32,
) -> Result<bool, postgres::Error> {
    let predefined: Vec<&str> = if server_version_num >= 140000 {
        vec!["pg_signal_backend"]
    } else {
        Vec::new()
    };
    let powa_roles = powa.generation.protocol_roles();
    let row = if !powa_roles.is_empty() {
        client.query_opt(
            &format!(
                "WITH s(v) AS (SELECT pg_catalog.unnest($1::text[]) \
                 UNION ALL SELECT rolname FROM {} WHERE powa_role = ANY ($2::text[])) \
                 SELECT pg_catalog.bool_or(pg_catalog.pg_has_role(a.usesysid, s.v, 'USAGE')) \
                 FROM pg_catalog.pg_stat_activity a CROSS JOIN s WHERE a.pid = $3",
                powa.qualify("powa_roles")
            ),
            &[&predefined, &powa_roles, &pid],
        )?
    } else if !predefined.is_empty() {
        client.query_opt(
            "SELECT pg_catalog.bool_or(pg_catalog.pg_has_role(a.usesysid, s.v, 'USAGE')) \
             FROM pg_catalog.pg_stat_activity a CROSS JOIN pg_catalog.unnest($1::text[]) s(v) \
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
