//! What the session's role may do with a table or a function, on the
//! repository or on a remote, read from the catalogs with
//! `has_*_privilege`: nothing is tried, nothing changes.

use postgres::GenericClient;

use super::report::{Lack, ObjectKind};

/// A privilege wanted on a table: `("UPDATE", Some("version"))` for one
/// column, `("SELECT", None)` for the table.
pub type Wanted<'a> = (&'a str, Option<&'a str>);

/// What the role lacks of `wanted` on `table` (a qualified, quoted name);
/// `None` when it has it all.
pub fn on_table(
    client: &mut impl GenericClient,
    table: &str,
    wanted: &[Wanted<'_>],
) -> Result<Option<Lack>, postgres::Error> {
    let privileges: Vec<&str> = wanted.iter().map(|(privilege, _)| *privilege).collect();
    let columns: Vec<Option<&str>> = wanted.iter().map(|(_, column)| *column).collect();
    let row = client.query_opt(
        "SELECT c.oid::pg_catalog.regclass::text, n.nspname::text, \
           pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
           coalesce((SELECT pg_catalog.array_agg(CASE WHEN w.col IS NULL THEN w.p \
                       ELSE w.p || ' (' || w.col || ')' END ORDER BY w.o) \
                     FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) \
                       WITH ORDINALITY w(p, col, o) \
                     WHERE NOT CASE WHEN w.col IS NULL \
                       THEN pg_catalog.has_table_privilege(c.oid, w.p) \
                       ELSE pg_catalog.has_column_privilege(c.oid, w.col, w.p) END), '{}') \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass($1)",
        &[&table, &privileges, &columns],
    )?;
    let Some(row) = row else {
        return Ok(Some(Lack::Missing(format!("table {table}"))));
    };
    Ok(lack(
        ObjectKind::Table,
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
    ))
}

/// What the role lacks to call function `name` of `schema` (quoted), of
/// whatever arguments; `None` when it may call it.
pub fn on_function(
    client: &mut impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<Option<Lack>, postgres::Error> {
    let rows = client.query(
        "SELECT p.oid::pg_catalog.regprocedure::text, n.nspname::text, \
           pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
           CASE WHEN pg_catalog.has_function_privilege(p.oid, 'EXECUTE') \
             THEN '{}'::text[] ELSE '{EXECUTE}' END \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.oid = $1::text::pg_catalog.regnamespace AND p.proname = $2 \
         ORDER BY 1",
        &[&schema, &name],
    )?;
    if rows.is_empty() {
        return Ok(Some(Lack::Missing(format!("function {schema}.{name}"))));
    }
    Ok(rows.iter().find_map(|row| {
        lack(
            ObjectKind::Function,
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
        )
    }))
}

/// The tables of extension `extension` (but those named in `except` and
/// the `*_src_tmp` ones), each with what the role lacks of `privileges`
/// there; only those lacking something.
pub fn on_extension_tables(
    client: &mut impl GenericClient,
    extension: &str,
    privileges: &[&str],
    except: &[&str],
) -> Result<Vec<(String, Vec<String>)>, postgres::Error> {
    let rows = client.query(
        "SELECT c.oid::pg_catalog.regclass::text, \
           pg_catalog.array_agg(w.p ORDER BY w.o) \
         FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
         JOIN pg_catalog.pg_class c ON c.oid = d.objid \
         CROSS JOIN pg_catalog.unnest($2::text[]) WITH ORDINALITY w(p, o) \
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
           AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
           AND e.extname = $1 AND c.relkind IN ('r', 'p') \
           AND c.relname::text <> ALL ($3::text[]) \
           AND c.relname::text NOT LIKE '%\\_src\\_tmp' \
           AND NOT pg_catalog.has_table_privilege(c.oid, w.p) \
         GROUP BY c.oid ORDER BY 1",
        &[&extension, &privileges, &except],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// The first thing lacking: the schema, then the privileges.
fn lack(
    kind: ObjectKind,
    object: String,
    schema: String,
    schema_usage: bool,
    missing: Vec<String>,
) -> Option<Lack> {
    if !schema_usage {
        return Some(Lack::SchemaUsage(super::report::sql_name(&schema)));
    }
    (!missing.is_empty()).then_some(Lack::Privileges {
        kind,
        object,
        privileges: missing,
    })
}
