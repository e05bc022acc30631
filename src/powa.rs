//! Extension `powa` on one connection, repository or remote: which version
//! it is, where every extension lives, and, in one place, what differs
//! between PoWA 4 and PoWA 5 ([`Generation`]).
//!
//! [`prepare`] is run once on each new connection: it reads the schema of
//! every installed extension from `pg_extension` / `pg_namespace` (quoted,
//! so that a schema other than `public`, or one needing quotes, works),
//! checks that PoWA is a version the collector supports and, on PoWA 5,
//! pins the session's `search_path` to `pg_catalog`, so that every object
//! the collector names must be, and is, qualified. No other module looks at
//! a PoWA version number: they ask the [`Generation`].
//!
//! Called from the main thread and from the workers; holds no state of its
//! own.

use std::collections::HashMap;
use std::fmt;

use postgres::GenericClient;

use crate::error::Error;

/// The PoWA majors the collector supports, as said in error messages.
pub const SUPPORTED: &str = "PoWA 4 and PoWA 5";

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
    /// at `self`: both must share major.minor, since COPY has no column
    /// list and minor versions add columns to the `*_src_tmp` tables.
    pub fn compatible_with(&self, other: &PowaVersion) -> bool {
        self.major == other.major && self.minor == other.minor
    }
}

impl fmt::Display for PowaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A PoWA major the collector supports. Everything that differs between
/// them is decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// powa-archivist 4.x: every object in the schema of `powa`.
    V4,
    /// powa-archivist 5.x: objects in each extension's schema, external
    /// extensions, per-database modules and catalogs, PoWA roles.
    V5,
}

impl Generation {
    /// The generation of `version`; `None` for a major the collector does
    /// not support.
    pub fn of(version: &PowaVersion) -> Option<Generation> {
        match version.major {
            4 => Some(Generation::V4),
            5 => Some(Generation::V5),
            _ => None,
        }
    }

    /// The query listing the global datasources of server `$1`, in
    /// priority order, as `(name, external, query_source, query_cleanup,
    /// function_name)`; `powa_functions` is the table or view in the
    /// repository.
    pub fn datasources_sql(self, powa_functions: &str) -> String {
        let columns = match self {
            Generation::V4 => "module, false",
            Generation::V5 => "name, external",
        };
        format!(
            "SELECT {columns}, query_source, query_cleanup, function_name \
             FROM {powa_functions} \
             WHERE operation = 'snapshot' AND enabled AND srvid = $1 \
             ORDER BY priority"
        )
    }

    /// The repository table holding the extensions' versions per server.
    pub fn extension_versions_table(self) -> &'static str {
        match self {
            Generation::V4 => "powa_extensions",
            Generation::V5 => "powa_extension_config",
        }
    }

    /// The query listing the extensions registered for server `$1` (the
    /// enabled ones, where the generation can disable one), in `table`, the
    /// qualified [`Generation::extension_versions_table`].
    pub fn registered_extensions_sql(self, table: &str) -> String {
        let enabled = match self {
            Generation::V4 => "",
            Generation::V5 => " AND enabled",
        };
        format!("SELECT extname FROM {table} WHERE srvid = $1{enabled} ORDER BY extname")
    }

    /// The tables of extension `powa` that the collector and
    /// `powa_take_snapshot` only read (the configuration); snapshots write
    /// the others.
    pub fn configuration_tables(self) -> &'static [&'static str] {
        match self {
            Generation::V4 => &["powa_servers", "powa_functions", "powa_extensions"],
            // As powa_grant() of powa-archivist 5 lists them.
            Generation::V5 => &[
                "powa_roles",
                "powa_servers",
                "powa_extensions",
                "powa_extension_functions",
                "powa_extension_config",
                "powa_modules",
                "powa_module_config",
                "powa_module_functions",
                "powa_db_modules",
                "powa_db_module_config",
                "powa_db_module_functions",
                "powa_db_module_src_queries",
                "powa_catalogs",
                "powa_catalog_src_queries",
            ],
        }
    }

    /// The repository functions a snapshot calls.
    pub fn snapshot_functions(self) -> &'static [&'static str] {
        match self {
            Generation::V4 => &["powa_take_snapshot"],
            Generation::V5 => &[
                "powa_take_snapshot",
                "powa_db_functions",
                "powa_catalog_functions",
            ],
        }
    }

    /// The PoWA role that gives its members everything a snapshot writes,
    /// where the generation has one.
    pub fn write_role(self) -> Option<&'static str> {
        match self {
            Generation::V4 => None,
            Generation::V5 => Some("powa_write_all_data"),
        }
    }

    /// Whether snapshots also collect per-database modules and catalogs,
    /// connecting to each database of the remote.
    pub fn snapshots_databases(self) -> bool {
        self == Generation::V5
    }

    /// Whether sessions run with `search_path` set to `pg_catalog`, every
    /// object qualified.
    pub fn pins_search_path(self) -> bool {
        self == Generation::V5
    }

    /// Whether `query_cleanup` texts carry `{extension}` placeholders for
    /// the schema of that extension on the remote.
    pub fn cleanup_has_placeholders(self) -> bool {
        self == Generation::V5
    }

    /// The PoWA roles (`powa_roles.powa_role`) whose members may use the
    /// command protocol, besides PostgreSQL's `pg_signal_backend`.
    pub fn protocol_roles(self) -> &'static [&'static str] {
        match self {
            Generation::V4 => &[],
            Generation::V5 => &["powa_signal_backend", "powa_write_all_data", "powa_admin"],
        }
    }
}

/// The quoted schema of every extension installed in one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schemas {
    by_extension: HashMap<String, String>,
}

impl Schemas {
    /// Reads them from `pg_extension` / `pg_namespace`.
    pub fn read(client: &mut impl GenericClient) -> Result<Schemas, postgres::Error> {
        let rows = client.query(
            "SELECT e.extname::text, n.nspname::text \
             FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace",
            &[],
        )?;
        Ok(Schemas::from_pairs(rows.iter().map(|row| {
            (row.get::<_, String>(0), row.get::<_, String>(1))
        })))
    }

    /// From `(extension, schema)` pairs, schemas unquoted.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Schemas {
        Schemas {
            by_extension: pairs
                .into_iter()
                .map(|(extension, schema)| (extension, quote_ident(&schema)))
                .collect(),
        }
    }

    /// The quoted schema of `extension`, if it is installed.
    pub fn of(&self, extension: &str) -> Option<&str> {
        self.by_extension.get(extension).map(String::as_str)
    }

    /// Replaces each `{extension}` of `template` with that extension's
    /// quoted schema. An unknown or unterminated placeholder is an error
    /// naming it.
    pub fn expand(&self, template: &str) -> Result<String, String> {
        let mut expanded = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            expanded.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated placeholder in {template:?}"))?;
            let extension = &after[..end];
            let schema = self.of(extension).ok_or_else(|| {
                format!("placeholder {{{extension}}}: extension {extension} is not installed")
            })?;
            expanded.push_str(schema);
            rest = &after[end + 1..];
        }
        expanded.push_str(rest);
        Ok(expanded)
    }
}

/// PoWA as found on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Powa {
    pub version: PowaVersion,
    pub generation: Generation,
    pub schemas: Schemas,
}

impl Powa {
    /// The quoted schema of extension `powa`.
    pub fn schema(&self) -> &str {
        self.schemas
            .of("powa")
            .expect("a Powa is only built when extension powa is installed")
    }

    /// `name` qualified with the schema of `powa`, both quoted.
    pub fn qualify(&self, name: &str) -> String {
        format!("{}.{}", self.schema(), quote_ident(name))
    }

    /// The schema of a datasource's objects: that of extension `name` when
    /// the datasource is external, that of `powa` otherwise; `None` when
    /// that extension is not installed.
    pub fn datasource_schema(&self, name: &str, external: bool) -> Option<&str> {
        if external {
            self.schemas.of(name)
        } else {
            Some(self.schema())
        }
    }

    /// A PoWA of version `text`, in `schema`, for unit tests.
    #[cfg(test)]
    pub fn sample(text: &str, schema: &str) -> Powa {
        let version = PowaVersion::parse(text).expect("a version");
        Powa {
            generation: Generation::of(&version).expect("a supported version"),
            version,
            schemas: Schemas::from_pairs([("powa".to_string(), schema.to_string())]),
        }
    }

    /// PoWA 4.1 added the version columns the collector keeps up to date.
    pub fn saves_versions(&self) -> bool {
        (self.version.major, self.version.minor) >= (4, 1)
    }

    /// PoWA 4.0 must have its library loaded for its settings to exist.
    pub fn needs_load(&self) -> bool {
        (self.version.major, self.version.minor) == (4, 0)
    }
}

/// Quotes an SQL identifier, always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What was found of PoWA on a connection.
pub enum Found {
    /// Extension `powa` is not installed.
    Missing,
    /// It is, at a version the collector does not support.
    Unsupported(PowaVersion),
    Supported(Powa),
}

/// Looks for extension `powa` and the schemas of all extensions.
pub fn find(client: &mut impl GenericClient) -> Result<Found, postgres::Error> {
    let schemas = Schemas::read(client)?;
    let version = client
        .query_opt(
            "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'powa'",
            &[],
        )?
        .map(|row| row.get::<_, String>(0));
    let Some(text) = version else {
        return Ok(Found::Missing);
    };
    let version = PowaVersion::parse(&text).unwrap_or(PowaVersion {
        major: 0,
        minor: 0,
        text,
    });
    Ok(match Generation::of(&version) {
        None => Found::Unsupported(version),
        Some(generation) => Found::Supported(Powa {
            version,
            generation,
            schemas,
        }),
    })
}

/// Finds PoWA on a new connection and prepares the session for it (on
/// PoWA 5, `search_path` is set to `pg_catalog`). `place` names the server
/// in errors ("the repository", "remote server db1:5432"): PoWA missing, or
/// a version other than 4 or 5, is an [`Error::Powa`].
pub fn prepare(client: &mut impl GenericClient, place: &str) -> Result<Powa, Error> {
    let found = find(client)
        .map_err(|e| Error::postgres(format!("cannot look for extension powa on {place}"), e))?;
    let powa = match found {
        Found::Missing => {
            return Err(Error::Powa(format!("PoWA extension not found on {place}")));
        }
        Found::Unsupported(version) => {
            return Err(Error::Powa(format!(
                "incompatible PoWA version on {place}: found {}, the collector supports {SUPPORTED}",
                version.text
            )));
        }
        Found::Supported(powa) => powa,
    };
    if powa.generation.pins_search_path() {
        pin_search_path(client)
            .map_err(|e| Error::postgres(format!("cannot set search_path on {place}"), e))?;
    }
    Ok(powa)
}

/// `SET search_path TO pg_catalog`, for a session that qualifies every
/// object it names.
pub fn pin_search_path(client: &mut impl GenericClient) -> Result<(), postgres::Error> {
    client.batch_execute("SET search_path TO pg_catalog")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(text: &str) -> PowaVersion {
        PowaVersion::parse(text).unwrap()
    }

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
        assert!(version("4.1.4").compatible_with(&version("4.1.2")));
        assert!(!version("4.1.4").compatible_with(&version("4.2.0")));
        assert!(!version("4.1.4").compatible_with(&version("5.1.4")));
        assert!(!version("5.0.2").compatible_with(&version("5.2.0")));
    }

    #[test]
    fn only_4_and_5_are_supported() {
        assert_eq!(Generation::of(&version("4.1.4")), Some(Generation::V4));
        assert_eq!(Generation::of(&version("5.0.2")), Some(Generation::V5));
        for unsupported in ["3.2.0", "6.0.0", "0.1"] {
            assert_eq!(Generation::of(&version(unsupported)), None, "{unsupported}");
        }
    }

    #[test]
    fn generations_read_their_own_datasource_columns() {
        let v4 = Generation::V4.datasources_sql("\"public\".\"powa_functions\"");
        assert!(v4.starts_with("SELECT module, false, query_source"), "{v4}");
        let v5 = Generation::V5.datasources_sql("\"powa\".\"powa_functions\"");
        assert!(
            v5.starts_with("SELECT name, external, query_source"),
            "{v5}"
        );
        assert!(v5.contains("FROM \"powa\".\"powa_functions\""), "{v5}");
        assert_eq!(
            Generation::V5.extension_versions_table(),
            "powa_extension_config"
        );
        assert_eq!(Generation::V4.extension_versions_table(), "powa_extensions");
        let v4 = Generation::V4.registered_extensions_sql("t");
        assert!(!v4.contains("enabled"), "{v4}");
        let v5 = Generation::V5.registered_extensions_sql("t");
        assert!(v5.contains("AND enabled"), "{v5}");
        for generation in [Generation::V4, Generation::V5] {
            let read_only = generation.configuration_tables();
            assert!(read_only.contains(&"powa_servers"));
            assert!(!read_only.contains(&"powa_snapshot_metas"));
            assert!(
                generation
                    .snapshot_functions()
                    .contains(&"powa_take_snapshot")
            );
        }
        assert_eq!(Generation::V5.write_role(), Some("powa_write_all_data"));
        assert_eq!(Generation::V4.write_role(), None);
        assert!(Generation::V4.protocol_roles().is_empty());
        assert!(
            Generation::V5
                .protocol_roles()
                .contains(&"powa_signal_backend")
        );
    }

    fn schemas() -> Schemas {
        Schemas::from_pairs([
            ("powa".to_string(), "powa".to_string()),
            ("pg_qualstats".to_string(), "stats".to_string()),
            ("pg_track_settings".to_string(), "we\"ird".to_string()),
        ])
    }

    #[test]
    fn placeholders_expand_to_quoted_schemas() {
        let schemas = schemas();
        assert_eq!(
            schemas.expand("SELECT {pg_qualstats}.pg_qualstats_reset()"),
            Ok("SELECT \"stats\".pg_qualstats_reset()".to_string())
        );
        assert_eq!(
            schemas.expand("SELECT {pg_track_settings}.f(), {powa}.g()"),
            Ok("SELECT \"we\"\"ird\".f(), \"powa\".g()".to_string())
        );
        assert_eq!(schemas.expand("SELECT 1"), Ok("SELECT 1".to_string()));
    }

    #[test]
    fn unknown_placeholders_are_errors_naming_them() {
        let schemas = schemas();
        let unknown = schemas.expand("SELECT {hypopg}.reset()").unwrap_err();
        assert!(unknown.contains("{hypopg}"), "{unknown}");
        let open = schemas.expand("SELECT {pg_qualstats.reset()").unwrap_err();
        assert!(open.contains("unterminated"), "{open}");
    }

    #[test]
    fn datasources_live_in_their_extension_schema_when_external() {
        let powa = Powa {
            version: version("5.0.2"),
            generation: Generation::V5,
            schemas: schemas(),
        };
        assert_eq!(powa.qualify("powa_servers"), "\"powa\".\"powa_servers\"");
        assert_eq!(
            powa.datasource_schema("pg_track_settings", true),
            Some("\"we\"\"ird\"")
        );
        assert_eq!(
            powa.datasource_schema("pg_stat_statements", false),
            Some("\"powa\"")
        );
        assert_eq!(powa.datasource_schema("pg_stat_kcache", true), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
