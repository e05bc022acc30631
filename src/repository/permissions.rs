//! Who may use the collector's command protocol, and what to grant a
//! role that may not.

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
    let predefined = predefined_roles(server_version_num);
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

/// The predefined roles of PostgreSQL whose members may use the protocol:
/// `pg_signal_backend` from PostgreSQL 14 on.
fn predefined_roles(server_version_num: i32) -> Vec<&'static str> {
    if server_version_num >= 140000 {
        vec!["pg_signal_backend"]
    } else {
        Vec::new()
    }
}

/// The statement that lets `role` (already quoted as needed) use the
/// protocol, by the rule of [`may_use_protocol`].
pub fn protocol_grant(powa: &Powa, server_version_num: i32, role: &str) -> String {
    let predefined = predefined_roles(server_version_num);
    let powa_roles = powa.generation.protocol_roles();
    match predefined.iter().chain(powa_roles).next() {
        Some(granted) => format!("GRANT {granted} TO {role}"),
        None => format!(
            "GRANT INSERT ON {} TO {role}",
            powa.qualify("powa_statements")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_grant_follows_the_rule_of_the_protocol() {
        let v4 = Powa::sample("4.1.4", "public");
        let v5 = Powa::sample("5.0.2", "public");
        assert_eq!(
            protocol_grant(&v4, 150000, "powa"),
            "GRANT pg_signal_backend TO powa"
        );
        assert_eq!(
            protocol_grant(&v4, 130000, "powa"),
            "GRANT INSERT ON \"public\".\"powa_statements\" TO powa"
        );
        assert_eq!(
            protocol_grant(&v5, 130000, "powa"),
            "GRANT powa_signal_backend TO powa"
        );
    }
}
