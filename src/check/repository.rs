//! The repository's part of `powa-collector check`: a read-only session,
//! what the collector's role may do there (read the servers and the
//! datasources, write snapshots, use the command protocol), and the
//! servers to check.

use std::time::Duration;

use postgres::Client;

use super::privileges::{self, Wanted};
use super::report::{Problem, RepositoryReport};
use crate::conninfo::ConnInfo;
use crate::error::{Error, describe_postgres_error};
use crate::powa::{Generation, Powa};
use crate::remote;
use crate::repository::{self, permissions};
use crate::servers::{self, ServerSettings};

/// A read-only repository session of the check.
pub struct Repository {
    pub client: Client,
    pub powa: Powa,
    /// The collector's role there (`current_user`).
    pub role: String,
    pub server_version_num: i32,
}

/// The privileges a snapshot needs on the tables it writes.
const WRITE: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// How many tables a privilege problem names before "and N more".
const TABLES_NAMED: usize = 5;

/// Opens a session with `default_transaction_read_only` on, its statements
/// bounded by `statement_timeout`, and finds PoWA there; what failed is
/// the problem to show.
pub fn open(
    conninfo: &ConnInfo,
    application_name: &str,
    statement_timeout: Duration,
) -> Result<Repository, Problem> {
    let (mut client, _, powa) =
        repository::connect(conninfo, application_name).map_err(|error| match error {
            Error::Powa(message) => Problem::new("powa", message)
                .with_hint("CREATE EXTENSION powa CASCADE in the repository database"),
            other => Problem::new("connection", other.to_string()),
        })?;
    let role = read_only_session(&mut client, statement_timeout)
        .map_err(|e| Problem::new("connection", on_repository("cannot set up the session", &e)))?;
    let server_version_num = remote::server_version_num(&mut client)
        .map_err(|e| Problem::new("connection", on_repository("cannot read the version", &e)))?;
    Ok(Repository {
        client,
        powa,
        role,
        server_version_num,
    })
}

/// Makes the session read-only and bounds its statements; returns its
/// role. Used for every session of the check, on every side.
pub fn read_only_session(
    client: &mut Client,
    statement_timeout: Duration,
) -> Result<String, postgres::Error> {
    client.batch_execute(&format!(
        "SET default_transaction_read_only = on; SET statement_timeout = {}",
        statement_timeout.as_millis().max(1)
    ))?;
    Ok(client.query_one("SELECT current_user::text", &[])?.get(0))
}

fn on_repository(what: &str, error: &postgres::Error) -> String {
    format!(
        "{what} on the repository: {}",
        describe_postgres_error(error)
    )
}

impl Repository {
    /// What the repository's part of the report says.
    pub fn report(&mut self) -> RepositoryReport {
        RepositoryReport {
            role: Some(self.role.clone()),
            powa_version: Some(self.powa.version.text.clone()),
            problems: self.problems(),
        }
    }

    /// Everything the role lacks for the collector to work.
    fn problems(&mut self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (table, wanted) in requirements(&self.powa) {
            self.table_problem(&table, &wanted, &mut problems);
        }
        self.snapshot_tables_problem(&mut problems);
        for function in self.powa.generation.snapshot_functions() {
            let schema = self.powa.schema().to_string();
            let what = format!("calling {function}");
            match privileges::on_function(&mut self.client, &schema, function) {
                Ok(None) => {}
                Ok(Some(lack)) => {
                    problems.push(Problem::from_lack("privileges", &what, &lack, &self.role))
                }
                Err(e) => problems.push(self.error_problem(&what, &e)),
            }
        }
        if let Some(problem) = self.protocol_problem() {
            problems.push(problem);
        }
        problems
    }

    fn table_problem(&mut self, table: &str, wanted: &[Wanted<'_>], problems: &mut Vec<Problem>) {
        let what = format!("using {table}");
        match privileges::on_table(&mut self.client, table, wanted) {
            Ok(None) => {}
            Ok(Some(lack)) => {
                problems.push(Problem::from_lack("privileges", &what, &lack, &self.role))
            }
            Err(e) => problems.push(self.error_problem(&what, &e)),
        }
    }

    /// The tables `powa_take_snapshot` writes, all in one problem.
    fn snapshot_tables_problem(&mut self, problems: &mut Vec<Problem>) {
        let generation = self.powa.generation;
        let except: Vec<&str> = generation
            .configuration_tables()
            .iter()
            .copied()
            .chain(["powa_snapshot_metas"])
            .collect();
        let lacking =
            match privileges::on_extension_tables(&mut self.client, "powa", &WRITE, &except) {
                Ok(lacking) => lacking,
                Err(e) => {
                    problems.push(self.error_problem("reading the tables of powa", &e));
                    return;
                }
            };
        if lacking.is_empty() {
            return;
        }
        let role = super::report::sql_name(&self.role);
        problems.push(
            Problem::new(
                "privileges",
                format!(
                    "powa_take_snapshot cannot write {} tables of extension powa: the role {role} \
                     lacks {}",
                    lacking.len(),
                    name_some(&lacking)
                ),
            )
            .with_hint(write_grant(generation, self.powa.schema(), &role)),
        );
    }

    /// Whether the role may use the command protocol (`status`, `reload`).
    fn protocol_problem(&mut self) -> Option<Problem> {
        let pid = match self
            .client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        {
            Ok(row) => row.get::<_, i32>(0),
            Err(e) => return Some(self.error_problem("reading the session's pid", &e)),
        };
        match permissions::may_use_protocol(
            &mut self.client,
            &self.powa,
            self.server_version_num,
            pid,
        ) {
            Ok(true) => None,
            Ok(false) => {
                let role = super::report::sql_name(&self.role);
                Some(
                    Problem::new(
                        "protocol",
                        format!(
                            "the role {role} may not use the collector's command protocol: \
                             powa-collector status and reload are refused with \
                             \"Permission denied\""
                        ),
                    )
                    .with_hint(permissions::protocol_grant(
                        &self.powa,
                        self.server_version_num,
                        &role,
                    )),
                )
            }
            Err(e) => Some(self.error_problem("checking the command protocol's roles", &e)),
        }
    }

    fn error_problem(&self, what: &str, error: &postgres::Error) -> Problem {
        Problem::from_error("privileges", on_repository(what, error), &self.role)
    }

    /// The servers to check, in srvid order: those the daemon collects
    /// (named as its workers are), and the rows it refuses; only `only`
    /// when given, which must be one of them.
    pub fn targets(
        &mut self,
        use_server_alias: bool,
        only: Option<i32>,
    ) -> Result<Vec<Target>, Error> {
        let list = repository::servers::list(&mut self.client, &self.powa)
            .map_err(|e| Error::postgres("cannot read the list of remote servers", e))?;
        let mut servers = list.servers;
        servers::dedupe_aliases(&mut servers);
        let mut targets: Vec<Target> = servers
            .into_iter()
            .map(|server| Target::Server {
                name: server.display_name(use_server_alias),
                server,
            })
            .chain(
                list.refused
                    .into_iter()
                    .map(|(srvid, why)| Target::Refused { srvid, why }),
            )
            .filter(|target| only.is_none_or(|srvid| target.srvid() == srvid))
            .collect();
        targets.sort_by_key(Target::srvid);
        match only {
            Some(srvid) if targets.is_empty() => Err(Error::NotFound(self.not_found(srvid)?)),
            _ => Ok(targets),
        }
    }

    /// Why `srvid` is not a server to check.
    fn not_found(&mut self, srvid: i32) -> Result<String, Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT frequency FROM {} WHERE id = $1 AND id > 0",
                    self.powa.qualify("powa_servers")
                ),
                &[&srvid],
            )
            .map_err(|e| Error::postgres("cannot read the list of remote servers", e))?;
        Ok(match row {
            None => format!("no remote server with id {srvid} in powa_servers"),
            Some(row) => format!(
                "server {srvid} is disabled (frequency {}): the collector does not collect it",
                row.get::<_, i32>(0)
            ),
        })
    }
}

/// A server to check.
pub enum Target {
    Server {
        server: ServerSettings,
        name: String,
    },
    /// A `powa_servers` row the daemon refuses, and why.
    Refused { srvid: i32, why: String },
}

impl Target {
    pub fn srvid(&self) -> i32 {
        match self {
            Target::Server { server, .. } => server.srvid,
            Target::Refused { srvid, .. } => *srvid,
        }
    }
}

/// The tables the collector reads and writes itself, with the privileges
/// it needs there (the version columns only where PoWA has them).
fn requirements(powa: &Powa) -> Vec<(String, Vec<Wanted<'static>>)> {
    let versions = powa.saves_versions();
    let mut servers = vec![("SELECT", None)];
    let mut extensions = vec![("SELECT", None)];
    if versions {
        servers.push(("UPDATE", Some("version")));
        extensions.extend([("INSERT", None), ("UPDATE", None), ("DELETE", None)]);
    }
    vec![
        (powa.qualify("powa_servers"), servers),
        (powa.qualify("powa_functions"), vec![("SELECT", None)]),
        (
            powa.qualify("powa_snapshot_metas"),
            vec![("SELECT", None), ("UPDATE", Some("errors"))],
        ),
        (
            powa.qualify(powa.generation.extension_versions_table()),
            extensions,
        ),
    ]
}

/// `powa_a (INSERT, DELETE), powa_b (DELETE) and 3 more tables`.
fn name_some(lacking: &[(String, Vec<String>)]) -> String {
    let mut named: Vec<String> = lacking
        .iter()
        .take(TABLES_NAMED)
        .map(|(table, privileges)| format!("{} on {table}", privileges.join(", ")))
        .collect();
    if lacking.len() > TABLES_NAMED {
        named.push(format!("{} more tables", lacking.len() - TABLES_NAMED));
    }
    named.join(", ")
}

/// What to grant `role` for snapshots to write every table of `powa`.
fn write_grant(generation: Generation, schema: &str, role: &str) -> String {
    let grant = format!(
        "GRANT {} ON ALL TABLES IN SCHEMA {schema} TO {role}",
        WRITE.join(", ")
    );
    match generation.write_role() {
        Some(write_role) => format!("GRANT {write_role} TO {role} (or {grant})"),
        None => grant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn versions_are_written_only_where_powa_keeps_them() {
        let with = requirements(&Powa::sample("4.1.4", "powa"));
        let servers = &with[0];
        assert_eq!(servers.0, "\"powa\".\"powa_servers\"");
        assert!(servers.1.contains(&("UPDATE", Some("version"))));
        assert!(with[3].0.ends_with("\"powa_extensions\""));
        assert!(with[3].1.contains(&("DELETE", None)));
        let without = requirements(&Powa::sample("4.0.1", "powa"));
        assert_eq!(without[0].1, vec![("SELECT", None)]);
        assert_eq!(without[3].1, vec![("SELECT", None)]);
        let v5 = requirements(&Powa::sample("5.0.2", "powa"));
        assert!(v5[3].0.ends_with("\"powa_extension_config\""));
    }

    #[test]
    fn many_tables_are_summed_up() {
        let lacking: Vec<(String, Vec<String>)> = (0..7)
            .map(|i| (format!("t{i}"), vec!["INSERT".to_string()]))
            .collect();
        let text = name_some(&lacking);
        assert!(text.starts_with("INSERT on t0, INSERT on t1"), "{text}");
        assert!(text.ends_with("INSERT on t4, 2 more tables"), "{text}");
        assert_eq!(name_some(&lacking[..1]), "INSERT on t0");
    }

    #[test]
    fn the_write_grant_names_the_powa_role_where_there_is_one() {
        assert_eq!(
            write_grant(Generation::V4, "\"public\"", "powa"),
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"public\" TO powa"
        );
        assert!(
            write_grant(Generation::V5, "\"powa\"", "powa")
                .starts_with("GRANT powa_write_all_data TO powa (or GRANT SELECT")
        );
    }
}
