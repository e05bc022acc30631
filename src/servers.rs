//! Remote server settings, as registered in the repository's `powa_servers`
//! table, and their validation.
//!
//! A server is identified by its key, `hostname:port`, like in the Python
//! collector; it is shown in logs under its display name (the alias when
//! `use_server_alias` is on and an alias is set). Pure data, no I/O.

use std::fmt;
use std::time::Duration;

use crate::conninfo::ConnInfo;

/// One row of `powa_servers`, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub srvid: i32,
    pub hostname: String,
    pub port: u16,
    pub username: String,
    pub password: Option<String>,
    pub dbname: String,
    /// Seconds between two snapshots; always positive.
    pub frequency: u32,
    /// Empty when the server has no alias.
    pub alias: String,
}

/// A `powa_servers` row as read, before validation.
#[derive(Clone)]
pub struct ServerRow {
    pub srvid: i32,
    pub hostname: String,
    pub port: i32,
    pub username: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub frequency: i32,
    pub alias: String,
}

impl fmt::Debug for ServerRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerRow")
            .field("srvid", &self.srvid)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("frequency", &self.frequency)
            .field("alias", &self.alias)
            .finish()
    }
}

impl TryFrom<ServerRow> for ServerSettings {
    type Error = String;

    /// Refuses a row the collector cannot use, saying which and why.
    fn try_from(row: ServerRow) -> Result<ServerSettings, String> {
        let culprit = |why: String| format!("powa_servers row id {}: {why}", row.srvid);
        if row.hostname.trim().is_empty() {
            return Err(culprit("hostname is empty".into()));
        }
        let port = u16::try_from(row.port)
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| culprit(format!("port {} is not a TCP port", row.port)))?;
        let frequency = u32::try_from(row.frequency)
            .ok()
            .filter(|f| *f > 0)
            .ok_or_else(|| culprit(format!("frequency {} is not positive", row.frequency)))?;
        let username = row
            .username
            .ok_or_else(|| culprit("username is NULL".into()))?;
        let dbname = row.dbname.ok_or_else(|| culprit("dbname is NULL".into()))?;
        Ok(ServerSettings {
            srvid: row.srvid,
            hostname: row.hostname,
            port,
            username,
            password: row.password,
            dbname,
            frequency,
            alias: row.alias,
        })
    }
}

impl ServerSettings {
    /// `hostname:port`, the identity of a server across reloads.
    pub fn key(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }

    /// The name used in logs and `application_name`.
    pub fn display_name(&self, use_server_alias: bool) -> String {
        if use_server_alias && !self.alias.is_empty() {
            self.alias.clone()
        } else {
            self.key()
        }
    }

    /// Time between two snapshots.
    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(self.frequency))
    }

    /// How to connect to this server.
    pub fn conninfo(&self) -> ConnInfo {
        self.conninfo_for_database(&self.dbname)
    }

    /// How to connect to database `dbname` of this server, with the same
    /// host, port, user and password.
    pub fn conninfo_for_database(&self, dbname: &str) -> ConnInfo {
        ConnInfo::for_server(
            &self.hostname,
            self.port,
            &self.username,
            self.password.as_deref(),
            dbname,
        )
    }
}

impl fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server {} ({}, frequency {}s{})",
            self.srvid,
            self.conninfo(),
            self.frequency,
            if self.alias.is_empty() {
                String::new()
            } else {
                format!(", alias {}", self.alias)
            }
        )
    }
}

/// Gives up the alias of every server whose alias an earlier one (by id)
/// already has: two workers must not log under one name. Returns a warning
/// for each.
pub fn dedupe_aliases(servers: &mut [ServerSettings]) -> Vec<String> {
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let mut warnings = Vec::new();
    for server in servers.iter_mut().filter(|server| !server.alias.is_empty()) {
        if let Some(first) = seen.get(&server.alias) {
            warnings.push(format!(
                "powa_servers row id {}: alias {:?} is already the alias of server {first}; \
                 this server is named {} instead",
                server.srvid,
                server.alias,
                server.key()
            ));
            server.alias.clear();
        } else {
            seen.insert(server.alias.clone(), server.srvid);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ServerRow {
        ServerRow {
            srvid: 3,
            hostname: "db1".into(),
            port: 5433,
            username: Some("powa".into()),
            password: Some("s3cret".into()),
            dbname: Some("powa".into()),
            frequency: 300,
            alias: String::new(),
        }
    }

    #[test]
    fn a_good_row_is_accepted() {
        let server = ServerSettings::try_from(row()).unwrap();
        assert_eq!(server.key(), "db1:5433");
        assert_eq!(server.display_name(true), "db1:5433");
        assert_eq!(server.period(), Duration::from_secs(300));
    }

    #[test]
    fn alias_names_the_worker_only_when_asked() {
        let server = ServerSettings::try_from(ServerRow {
            alias: "prod".into(),
            ..row()
        })
        .unwrap();
        assert_eq!(server.display_name(true), "prod");
        assert_eq!(server.display_name(false), "db1:5433");
    }

    #[test]
    fn bad_rows_are_refused_by_id() {
        let cases = [
            (
                ServerRow {
                    port: 70000,
                    ..row()
                },
                "port 70000",
            ),
            (ServerRow { port: 0, ..row() }, "port 0"),
            (
                ServerRow {
                    frequency: -1,
                    ..row()
                },
                "frequency -1",
            ),
            (
                ServerRow {
                    hostname: " ".into(),
                    ..row()
                },
                "hostname is empty",
            ),
            (
                ServerRow {
                    username: None,
                    ..row()
                },
                "username is NULL",
            ),
            (
                ServerRow {
                    dbname: None,
                    ..row()
                },
                "dbname is NULL",
            ),
        ];
        for (bad, expected) in cases {
            let error = ServerSettings::try_from(bad).unwrap_err();
            assert!(error.starts_with("powa_servers row id 3: "), "{error}");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_duplicate_alias_falls_back_to_the_key() {
        let server = |srvid, alias: &str| {
            ServerSettings::try_from(ServerRow {
                srvid,
                port: 5432 + srvid,
                alias: alias.into(),
                ..row()
            })
            .unwrap()
        };
        let mut servers = vec![server(1, "prod"), server(2, ""), server(3, "prod")];
        let warnings = dedupe_aliases(&mut servers);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("powa_servers row id 3: "),
            "{warnings:?}"
        );
        assert_eq!(servers[0].display_name(true), "prod");
        assert_eq!(servers[2].display_name(true), "db1:5435");
    }

    #[test]
    fn debug_hides_the_password() {
        let server = ServerSettings::try_from(row()).unwrap();
        assert!(!format!("{server:?}").contains("s3cret"));
        assert!(!format!("{:?}", row()).contains("s3cret"));
    }
}

/// A running worker, as the reload diff sees it.
#[derive(Debug, Clone)]
pub struct RunningWorker {
    pub server: ServerSettings,
    /// The name it logs under.
    pub name: String,
    /// Its thread has ended (PoWA missing on the remote, for instance).
    pub finished: bool,
    /// Its status is `running`.
    pub healthy: bool,
}

/// What a reload does to one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new server: start a worker.
    Start(ServerSettings),
    /// A server no longer listed: stop its worker.
    Stop(String),
    /// A server whose worker ended, or whose name changed: replace the
    /// worker by a new one.
    Restart(ServerSettings),
    /// Settings changed: the worker takes them and reconnects.
    Update(ServerSettings),
    /// Unchanged but not running well: the worker reconnects.
    Reconnect(ServerSettings),
    /// Unchanged and running: the worker refreshes the saved versions.
    Refresh(String),
}

/// The changes that take the `running` workers to the `listed` servers.
///
/// Servers are matched by key (`hostname:port`). `use_server_alias` is the
/// new configuration's: a worker whose name would change is restarted,
/// since a thread keeps its name for life.
pub fn plan_reload(
    running: &[RunningWorker],
    listed: &[ServerSettings],
    use_server_alias: bool,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for worker in running {
        if !listed.iter().any(|s| s.key() == worker.server.key()) {
            changes.push(Change::Stop(worker.server.key()));
        }
    }
    for server in listed {
        let key = server.key();
        let change = match running.iter().find(|w| w.server.key() == key) {
            None => Change::Start(server.clone()),
            Some(worker)
                if worker.finished || worker.name != server.display_name(use_server_alias) =>
            {
                Change::Restart(server.clone())
            }
            Some(worker) if worker.server != *server => Change::Update(server.clone()),
            Some(worker) if !worker.healthy => Change::Reconnect(server.clone()),
            Some(_) => Change::Refresh(key),
        };
        changes.push(change);
    }
    changes
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn server(srvid: i32, port: u16) -> ServerSettings {
        ServerSettings {
            srvid,
            hostname: "db".into(),
            port,
            username: "powa".into(),
            password: None,
            dbname: "powa".into(),
            frequency: 300,
            alias: String::new(),
        }
    }

    fn running(server: ServerSettings) -> RunningWorker {
        RunningWorker {
            name: server.key(),
            server,
            finished: false,
            healthy: true,
        }
    }

    #[test]
    fn reload_plan() {
        let a = server(1, 5432);
        let b = server(2, 5433);
        type Edit = fn(&mut ServerSettings);
        let edits: &[(&str, Edit)] = &[
            ("username", |s| s.username = "other".into()),
            ("password", |s| s.password = Some("new".into())),
            ("dbname", |s| s.dbname = "postgres".into()),
            ("frequency", |s| s.frequency = 60),
            ("alias", |s| s.alias = "prod".into()),
        ];
        // Each field change is an update of that server only.
        for (field, edit) in edits {
            let mut changed = a.clone();
            edit(&mut changed);
            assert_eq!(
                plan_reload(
                    &[running(a.clone()), running(b.clone())],
                    &[changed.clone(), b.clone()],
                    false
                ),
                [Change::Update(changed), Change::Refresh(b.key())],
                "change of {field}"
            );
        }

        type Case = (
            &'static str,
            Vec<RunningWorker>,
            Vec<ServerSettings>,
            bool,
            Vec<Change>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing running, nothing listed",
                vec![],
                vec![],
                false,
                vec![],
            ),
            (
                "added",
                vec![running(a.clone())],
                vec![a.clone(), b.clone()],
                false,
                vec![Change::Refresh(a.key()), Change::Start(b.clone())],
            ),
            (
                "removed (deleted, or frequency set to -1 and so not listed)",
                vec![running(a.clone()), running(b.clone())],
                vec![b.clone()],
                false,
                vec![Change::Stop(a.key()), Change::Refresh(b.key())],
            ),
            (
                "host:port changed is a removal and an addition",
                vec![running(a.clone())],
                vec![server(1, 6000)],
                false,
                vec![Change::Stop(a.key()), Change::Start(server(1, 6000))],
            ),
            (
                "unchanged but failed",
                vec![RunningWorker {
                    healthy: false,
                    ..running(a.clone())
                }],
                vec![a.clone()],
                false,
                vec![Change::Reconnect(a.clone())],
            ),
            (
                "worker ended",
                vec![RunningWorker {
                    finished: true,
                    healthy: false,
                    ..running(a.clone())
                }],
                vec![a.clone()],
                false,
                vec![Change::Restart(a.clone())],
            ),
            (
                "alias change renames the worker when aliases are used",
                vec![running(a.clone())],
                vec![ServerSettings {
                    alias: "prod".into(),
                    ..a.clone()
                }],
                true,
                vec![Change::Restart(ServerSettings {
                    alias: "prod".into(),
                    ..a.clone()
                })],
            ),
            (
                "use_server_alias turned on without aliases changes nothing",
                vec![running(a.clone())],
                vec![a.clone()],
                true,
                vec![Change::Refresh(a.key())],
            ),
        ];
        for (what, running, listed, use_alias, expected) in cases {
            assert_eq!(
                plan_reload(&running, &listed, use_alias),
                expected,
                "{what}"
            );
        }
    }
}
