//! One remote server's part of `powa-collector check`, run on a thread of
//! its own: the daemon's connection to it, PoWA there and its version
//! against the repository's, its registration, its extensions, each
//! datasource's source function, and on PoWA 5 each database the
//! per-database modules and catalogs need.
//!
//! Every session is read-only (`default_transaction_read_only`), bounded
//! by the daemon's deadlines (the connection's `connect_timeout`, and the
//! server's snapshot deadline as `statement_timeout`), and what it runs on
//! the remote runs in a transaction that is rolled back: nothing changes.

use std::collections::BTreeSet;
use std::time::Duration;

use postgres::{Client, Transaction};

use super::privileges;
use super::report::{Problem, ServerReport};
use super::repository::{self as check_repository, Repository};
use crate::conninfo::ConnInfo;
use crate::error::{Error, describe_postgres_error};
use crate::powa::{Powa, quote_ident};
use crate::remote;
use crate::repository::datasources::{self, Datasource};
use crate::repository::metas::{self, LastSnapshot};
use crate::servers::ServerSettings;
use crate::snapshot::{self, databases};
use crate::worker::schedule::snapshot_timeout;

/// What every server's check shares.
pub struct Context {
    pub repository: ConnInfo,
    /// PoWA on the repository.
    pub repo_powa: Powa,
    /// `snapshot_timeout` from the configuration file.
    pub snapshot_timeout: Option<Duration>,
}

/// A remote session of the check.
struct Remote {
    client: Client,
    powa: Powa,
    role: String,
}

/// The checks of one server that need both sides.
struct Probe<'a> {
    server: &'a ServerSettings,
    name: &'a str,
    remote: Remote,
    repo: Repository,
    timeout: Duration,
    problems: Vec<Problem>,
}

/// Checks `server`, named `name` as the daemon names its worker.
pub fn check(server: &ServerSettings, name: &str, context: &Context) -> ServerReport {
    let mut report = ServerReport::new(server.srvid, name);
    let timeout = snapshot_timeout(server.period(), context.snapshot_timeout);
    let remote = match open_remote(server, name, timeout) {
        Ok(remote) => remote,
        Err((reachable, problem)) => {
            report.reachable = reachable;
            report.problems.push(problem);
            return report;
        }
    };
    report.reachable = true;
    report.powa_version = Some(remote.powa.version.text.clone());
    if let Some(mismatch) = snapshot::incompatible_versions(&context.repo_powa, &remote.powa) {
        report
            .problems
            .push(Problem::new("version", mismatch).with_hint(
                "install the same powa major.minor version on both, then \
                 ALTER EXTENSION powa UPDATE on each",
            ));
    }
    let application_name = format!("PoWA collector - check repo_conn for {name}");
    let repo = match check_repository::open(&context.repository, &application_name, timeout) {
        Ok(repo) => repo,
        Err(problem) => {
            report.problems.push(problem);
            return report;
        }
    };
    let mut probe = Probe {
        server,
        name,
        remote,
        repo,
        timeout,
        problems: report.problems,
    };
    probe.run();
    report.problems = probe.problems;
    report
}

/// The daemon's connection to the server, made read-only; the error says
/// whether the server could be reached.
fn open_remote(
    server: &ServerSettings,
    name: &str,
    timeout: Duration,
) -> Result<Remote, (bool, Problem)> {
    let application_name = format!("PoWA collector - check {name}");
    let (mut client, _, powa) =
        remote::connect(server, name, &application_name).map_err(|error| match error {
            Error::Powa(message) => (
                true,
                Problem::new("powa", message).with_hint(format!(
                    "CREATE EXTENSION powa CASCADE in database {} of the remote server",
                    server.dbname
                )),
            ),
            other => (false, Problem::new("connection", other.to_string())),
        })?;
    let role = check_repository::read_only_session(&mut client, timeout).map_err(|e| {
        (
            true,
            Problem::new(
                "connection",
                format!(
                    "cannot set up the session on the remote server: {}",
                    describe_postgres_error(&e)
                ),
            ),
        )
    })?;
    Ok(Remote { client, powa, role })
}

impl Probe<'_> {
    fn run(&mut self) {
        self.registration();
        self.extensions();
        if let Some(sources) = self.datasources() {
            self.sources(&sources);
        }
        if self.repo.powa.generation.snapshots_databases() {
            self.databases();
        }
    }

    /// A problem from a failed query on the repository.
    fn on_repository(&mut self, what: &str, error: &postgres::Error) {
        let message = format!(
            "{what} on the repository: {}",
            describe_postgres_error(error)
        );
        self.problems
            .push(Problem::from_error("privileges", message, &self.repo.role));
    }

    /// A problem from a failed query on the remote.
    fn on_remote(&mut self, check: &'static str, what: &str, error: &postgres::Error) {
        let message = format!("{what}: {}", describe_postgres_error(error));
        self.problems
            .push(Problem::from_error(check, message, &self.remote.role));
    }

    /// The server has its `powa_snapshot_metas` row, or its worker stops.
    fn registration(&mut self) {
        let srvid = self.server.srvid;
        match metas::last_snapshot(&mut self.repo.client, &self.repo.powa, srvid) {
            Ok(LastSnapshot::NotRegistered) => self.problems.push(
                Problem::new(
                    "registration",
                    format!(
                        "server {srvid} has no powa_snapshot_metas row: it was not registered \
                         correctly, and the collector does not collect it"
                    ),
                )
                .with_hint("remove it and register it again with powa_register_server"),
            ),
            Ok(_) => {}
            Err(e) => self.on_repository("cannot read powa_snapshot_metas", &e),
        }
    }

    /// Each extension registered for the server is installed on it.
    fn extensions(&mut self) {
        let powa = &self.repo.powa;
        let table = powa.qualify(powa.generation.extension_versions_table());
        let sql = powa.generation.registered_extensions_sql(&table);
        let registered: Vec<String> = match self.repo.client.query(&sql, &[&self.server.srvid]) {
            Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
            Err(e) => return self.on_repository("cannot read the registered extensions", &e),
        };
        let installed = match remote::versions(&mut self.remote.client) {
            Ok(versions) => versions.extensions,
            Err(e) => return self.on_remote("extension", "cannot read the extensions", &e),
        };
        let dbname = &self.server.dbname;
        for extension in registered {
            // hypopg need not be in the PoWA database: its row follows
            // whether the remote has it available.
            if extension == "hypopg" || installed.contains_key(&extension) {
                continue;
            }
            self.problems.push(
                Problem::new(
                    "extension",
                    format!(
                        "extension {extension} is registered for this server but not \
                         installed in database {dbname} of the remote server"
                    ),
                )
                .with_hint(format!(
                    "CREATE EXTENSION {extension} in database {dbname} of the remote server \
                     (with {extension} in its shared_preload_libraries), or disable it for \
                     this server in {table}"
                )),
            );
        }
    }

    fn datasources(&mut self) -> Option<Vec<Datasource>> {
        match datasources::global(&mut self.repo.client, &self.repo.powa, self.server.srvid) {
            Ok(sources) => Some(sources),
            Err(e) => {
                self.on_repository("cannot read the datasources", &e);
                None
            }
        }
    }

    /// Each datasource's source function may be called, and answers, on
    /// the remote, and its `*_src_tmp` table takes rows on the repository.
    fn sources(&mut self, sources: &[Datasource]) {
        let mut remote = match self
            .remote
            .client
            .build_transaction()
            .read_only(true)
            .start()
        {
            Ok(transaction) => transaction,
            Err(e) => {
                let message = format!(
                    "cannot begin a transaction: {}",
                    describe_postgres_error(&e)
                );
                self.problems.push(Problem::new("datasource", message));
                return;
            }
        };
        let mut problems = Vec::new();
        for source in sources {
            let Some(query_source) = &source.query_source else {
                continue;
            };
            let what = format!("{} ({query_source})", source.name);
            let side = Side {
                powa: &self.remote.powa,
                role: &self.remote.role,
            };
            problems.extend(call_source(&mut remote, side, source, query_source, &what));
            let repo = Side {
                powa: &self.repo.powa,
                role: &self.repo.role,
            };
            let what = format!("{what} on the repository");
            problems.extend(tmp_table(
                &mut self.repo.client,
                repo,
                source,
                query_source,
                &what,
            ));
        }
        // Nothing the calls did stays.
        let _ = remote.rollback();
        self.problems.extend(problems);
    }

    /// PoWA 5: each database the modules and catalogs need can be reached
    /// and answers their queries, and their tables take rows on the
    /// repository.
    fn databases(&mut self) {
        let Some(needs) = self.database_needs() else {
            return;
        };
        let repo = Side {
            powa: &self.repo.powa,
            role: &self.repo.role,
        };
        let tables: BTreeSet<&str> = needs
            .modules
            .iter()
            .map(|module| module.tmp_table.as_str())
            .chain(
                needs
                    .catalogs
                    .iter()
                    .map(|catalog| catalog.tmp_table.as_str()),
            )
            .collect();
        let mut problems = Vec::new();
        for table in tables {
            let what = format!("per-database data on the repository ({table})");
            problems.extend(insert_into(&mut self.repo.client, repo, table, &what));
        }
        let work = databases::plan(
            &needs.dbnames,
            &needs.modules,
            &needs.catalogs,
            &databases::CatalogRefresh::All,
        );
        for database in &work {
            problems.extend(self.database(database));
        }
        self.problems.extend(problems);
    }

    /// What the databases need: the remote's databases, modules and catalogs.
    fn database_needs(&mut self) -> Option<DatabaseNeeds> {
        let remote = &mut self.remote.client;
        let read = remote::server_version_num(remote)
            .and_then(|version| Ok((version, remote::databases(remote)?)));
        let (version, dbnames) = match read {
            Ok(read) => read,
            Err(e) => {
                self.on_remote("database", "cannot list the databases", &e);
                return None;
            }
        };
        let (client, powa, srvid) = (&mut self.repo.client, &self.repo.powa, self.server.srvid);
        let read =
            datasources::database_modules(client, powa, srvid, version).and_then(|modules| {
                Ok((
                    modules,
                    datasources::catalogs(client, powa, srvid, version)?,
                ))
            });
        match read {
            Ok((modules, catalogs)) => Some(DatabaseNeeds {
                dbnames,
                modules,
                catalogs,
            }),
            Err(e) => {
                self.on_repository("cannot read the database modules and catalogs", &e);
                None
            }
        }
    }

    /// One database: the daemon's connection to it, and its queries.
    fn database(&self, work: &databases::DatabaseWork<'_>) -> Vec<Problem> {
        let dbname = work.dbname;
        let application_name = format!("PoWA collector - check {}", self.name);
        let opened = remote::connect_database(self.server, dbname, &application_name);
        let mut client = match opened {
            Ok((_, client, _)) => client,
            Err(error) => {
                let message = error.to_string();
                return vec![Problem::from_error("database", message, &self.remote.role)];
            }
        };
        let setup = check_repository::read_only_session(&mut client, self.timeout);
        let queries = work
            .modules
            .iter()
            .map(|m| (&m.name, &m.query_source))
            .chain(work.catalogs.iter().map(|c| (&c.name, &c.query_source)));
        let run = setup.and_then(|_| {
            let mut transaction = client.build_transaction().read_only(true).start()?;
            let mut problems = Vec::new();
            for (name, query) in queries {
                let what = format!("{name} in database {dbname}");
                let sql = format!("SELECT pg_catalog.count(*) FROM ({query}) src");
                if let Some(problem) =
                    try_query(&mut transaction, &sql, &what, self.remote.role.as_str())?
                {
                    problems.push(Problem {
                        check: "database",
                        ..problem
                    });
                }
            }
            Ok(problems)
        });
        run.unwrap_or_else(|e| {
            let message = format!("database {dbname}: {}", describe_postgres_error(&e));
            vec![Problem::from_error("database", message, &self.remote.role)]
        })
    }
}

/// What the per-database part of a snapshot reads.
struct DatabaseNeeds {
    dbnames: Vec<String>,
    modules: Vec<datasources::DatabaseModule>,
    catalogs: Vec<datasources::Catalog>,
}

/// PoWA and the role on one side.
#[derive(Clone, Copy)]
struct Side<'a> {
    powa: &'a Powa,
    role: &'a str,
}

/// The source function of `source` on the remote: it exists, the role may
/// call it, and it answers (in a savepoint, rolled back).
fn call_source(
    remote: &mut Transaction<'_>,
    side: Side<'_>,
    source: &Datasource,
    query_source: &str,
    what: &str,
) -> Option<Problem> {
    let schema = match schema_of(side, source, "remote") {
        Ok(schema) => schema,
        Err(problem) => return Some(problem),
    };
    match privileges::on_function(remote, schema, query_source) {
        Ok(None) => {}
        Ok(Some(lack)) => return Some(Problem::from_lack("datasource", what, &lack, side.role)),
        Err(e) => return Some(failed(what, &e, side.role)),
    }
    let sql = format!(
        "SELECT pg_catalog.count(*) FROM {schema}.{}(0)",
        quote_ident(query_source)
    );
    match try_query(remote, &sql, what, side.role) {
        Ok(problem) => problem,
        Err(e) => Some(failed(what, &e, side.role)),
    }
}

/// Runs `sql` in a savepoint, rolled back; its error is the problem (the
/// transaction stays usable).
fn try_query(
    transaction: &mut Transaction<'_>,
    sql: &str,
    what: &str,
    role: &str,
) -> Result<Option<Problem>, postgres::Error> {
    let mut savepoint = transaction.savepoint("powa_check")?;
    let outcome = savepoint.batch_execute(sql);
    savepoint.rollback()?;
    match outcome {
        Ok(()) => Ok(None),
        Err(e) if e.as_db_error().is_some() => Ok(Some(failed(what, &e, role))),
        Err(e) => Err(e),
    }
}

/// The `*_src_tmp` table of `source` on the repository takes rows.
fn tmp_table(
    client: &mut Client,
    side: Side<'_>,
    source: &Datasource,
    query_source: &str,
    what: &str,
) -> Option<Problem> {
    match schema_of(side, source, "repository") {
        Ok(schema) => {
            let table = format!("{schema}.{}", quote_ident(&format!("{query_source}_tmp")));
            insert_into(client, side, &table, what)
        }
        Err(problem) => Some(problem),
    }
}

/// The role may INSERT into `table` on the repository.
fn insert_into(client: &mut Client, side: Side<'_>, table: &str, what: &str) -> Option<Problem> {
    match privileges::on_table(client, table, &[("INSERT", None)]) {
        Ok(None) => None,
        Ok(Some(lack)) => Some(Problem::from_lack("datasource", what, &lack, side.role)),
        Err(e) => Some(failed(what, &e, side.role)),
    }
}

fn failed(what: &str, error: &postgres::Error, role: &str) -> Problem {
    Problem::from_error(
        "datasource",
        format!("{what}: {}", describe_postgres_error(error)),
        role,
    )
}

/// Where `source`'s objects are on `side` (`remote` or `repository`); the
/// problem when its extension is not installed there.
fn schema_of<'a>(side: Side<'a>, source: &Datasource, name: &str) -> Result<&'a str, Problem> {
    side.powa
        .datasource_schema(&source.name, source.external)
        .ok_or_else(|| {
            let extension = &source.name;
            Problem::new(
                "datasource",
                format!("Extension {extension} is not installed on the {name} server"),
            )
            .with_hint(format!("CREATE EXTENSION {extension} on the {name} server"))
        })
}
