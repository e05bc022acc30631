//! What `powa-collector check` found, and how it is shown: the table, the
//! JSON document, the exit decision, and the wording of the fixes (the
//! `GRANT` to run). Pure: no I/O.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// One check that failed: which, what failed and why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which check: `connection`, `powa`, `version`, `registration`,
    /// `privileges`, `protocol`, `extension`, `datasource` or `database`.
    pub check: &'static str,
    pub message: String,
    /// What a DBA can run or change to fix it, when there is more to say
    /// than the message.
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(check: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            check,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    /// A problem whose message is an error's text; when the server said
    /// "permission denied", the hint is the GRANT that `role` lacks.
    pub fn from_error(check: &'static str, message: String, role: &str) -> Problem {
        let hint = grant_for_denial(&message, role);
        Problem {
            check,
            message,
            hint,
        }
    }

    /// The problem of a [`Lack`] of `role`'s, found while checking `what`.
    pub fn from_lack(check: &'static str, what: &str, lack: &Lack, role: &str) -> Problem {
        let role = sql_name(role);
        match lack {
            Lack::Missing(object) => {
                Problem::new(check, format!("{what}: {object} does not exist"))
            }
            Lack::SchemaUsage(schema) => Problem::new(
                check,
                format!("{what}: the role {role} lacks USAGE on schema {schema}"),
            )
            .with_hint(format!("GRANT USAGE ON SCHEMA {schema} TO {role}")),
            Lack::Privileges {
                kind,
                object,
                privileges,
            } => {
                let privileges = privileges.join(", ");
                let on = match kind {
                    ObjectKind::Table => String::new(),
                    ObjectKind::Function => "FUNCTION ".to_string(),
                };
                Problem::new(
                    check,
                    format!(
                        "{what}: the role {role} lacks {privileges} on {} {object}",
                        kind.word()
                    ),
                )
                .with_hint(format!("GRANT {privileges} ON {on}{object} TO {role}"))
            }
        }
    }
}

/// The kinds of objects whose privileges are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Table,
    Function,
}

impl ObjectKind {
    fn word(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Function => "function",
        }
    }
}

/// What a role lacks to use an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lack {
    /// The object does not exist (named as asked for).
    Missing(String),
    /// `USAGE` on the object's schema (named as SQL writes it).
    SchemaUsage(String),
    /// These privileges on the object (named as the server shows it).
    Privileges {
        kind: ObjectKind,
        object: String,
        privileges: Vec<String>,
    },
}

/// The repository's part of the results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryReport {
    /// The collector's role there, once connected.
    pub role: Option<String>,
    pub powa_version: Option<String>,
    pub problems: Vec<Problem>,
}

/// One remote server's part of the results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    pub srvid: i32,
    /// As the daemon names its worker.
    pub name: String,
    /// Whether a connection to it could be opened.
    pub reachable: bool,
    pub powa_version: Option<String>,
    pub problems: Vec<Problem>,
}

impl ServerReport {
    pub fn new(srvid: i32, name: impl Into<String>) -> ServerReport {
        ServerReport {
            srvid,
            name: name.into(),
            reachable: false,
            powa_version: None,
            problems: Vec::new(),
        }
    }
}

/// Everything `check` found, servers in srvid order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub repository: RepositoryReport,
    pub servers: Vec<ServerReport>,
}

impl Report {
    /// Whether every check passed: exit code 0, otherwise 1.
    pub fn passed(&self) -> bool {
        self.repository.problems.is_empty()
            && self.servers.iter().all(|server| server.problems.is_empty())
    }

    /// The JSON document of `check --json` (its fields are documented in
    /// the subcommand's long help).
    pub fn to_json(&self) -> Value {
        let repository = &self.repository;
        json!({
            "ok": self.passed(),
            "repository": {
                "ok": repository.problems.is_empty(),
                "role": repository.role,
                "powa_version": repository.powa_version,
                "problems": problems_json(&repository.problems),
            },
            "servers": self.servers.iter().map(|server| json!({
                "srvid": server.srvid,
                "name": server.name,
                "ok": server.problems.is_empty(),
                "reachable": server.reachable,
                "powa_version": server.powa_version,
                "problems": problems_json(&server.problems),
            })).collect::<Vec<_>>(),
        })
    }

    /// The text `check` prints: a line for the repository, then the table
    /// of the servers, problems under one another in the last column, each
    /// followed by its fix.
    pub fn table(&self) -> String {
        let mut text = repository_lines(&self.repository);
        if self.servers.is_empty() {
            text.push_str("no remote server to check\n");
            return text;
        }
        text.push('\n');
        text.push_str(&servers_table(&self.servers));
        text
    }
}

fn problems_json(problems: &[Problem]) -> Vec<Value> {
    problems
        .iter()
        .map(|problem| {
            json!({
                "check": problem.check,
                "message": problem.message,
                "hint": problem.hint,
            })
        })
        .collect()
}

/// `repository: PoWA 4.1.4, role powa: ok`, and its problems below.
fn repository_lines(repository: &RepositoryReport) -> String {
    let mut what = Vec::new();
    if let Some(version) = &repository.powa_version {
        what.push(format!("PoWA {version}"));
    }
    if let Some(role) = &repository.role {
        what.push(format!("role {role}"));
    }
    let head = if what.is_empty() {
        "repository".to_string()
    } else {
        format!("repository ({})", what.join(", "))
    };
    let mut text = format!("{head}: {}\n", verdict(&repository.problems));
    for line in problem_lines(&repository.problems) {
        let _ = writeln!(text, "  {line}");
    }
    text
}

/// `ok`, or how many problems.
fn verdict(problems: &[Problem]) -> String {
    match problems.len() {
        0 => "ok".to_string(),
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    }
}

/// Each problem on a line, its fix on the next.
fn problem_lines(problems: &[Problem]) -> Vec<String> {
    let mut lines = Vec::new();
    for problem in problems {
        lines.push(format!("{}: {}", problem.check, one_line(&problem.message)));
        if let Some(hint) = &problem.hint {
            lines.push(format!("  fix: {}", one_line(hint)));
        }
    }
    lines
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

const HEADERS: [&str; 5] = ["SRVID", "SERVER", "REACHABLE", "POWA", "PROBLEMS"];

/// The servers' table; a server with several problems takes several lines.
fn servers_table(servers: &[ServerReport]) -> String {
    let rows: Vec<([String; 4], Vec<String>)> = servers
        .iter()
        .map(|server| {
            let cells = [
                server.srvid.to_string(),
                server.name.clone(),
                if server.reachable { "yes" } else { "no" }.to_string(),
                server.powa_version.clone().unwrap_or_else(|| "-".into()),
            ];
            let mut lines = problem_lines(&server.problems);
            if lines.is_empty() {
                lines.push("ok".to_string());
            }
            (cells, lines)
        })
        .collect();
    let mut widths = [0; 4];
    for (i, width) in widths.iter_mut().enumerate() {
        *width = rows
            .iter()
            .map(|(cells, _)| cells[i].chars().count())
            .chain([HEADERS[i].len()])
            .max()
            .unwrap_or(0);
    }
    let line = |cells: [&str; 4], last: &str| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        text.push_str(last);
        text.trim_end().to_string() + "\n"
    };
    let mut table = line([HEADERS[0], HEADERS[1], HEADERS[2], HEADERS[3]], HEADERS[4]);
    for (cells, lines) in &rows {
        table.push_str(&line(cells.each_ref().map(String::as_str), &lines[0]));
        for more in &lines[1..] {
            table.push_str(&line(["", "", "", ""], more));
        }
    }
    table
}

/// A name as SQL writes it: bare when it can be, quoted otherwise.
pub fn sql_name(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        name.to_string()
    } else {
        crate::powa::quote_ident(name)
    }
}

/// The GRANT that lets `role` do what a "permission denied for KIND NAME"
/// error (PostgreSQL's wording) refused; `None` for other errors. Every
/// query of the check only reads, so a table or view needs `SELECT`.
pub fn grant_for_denial(message: &str, role: &str) -> Option<String> {
    const DENIED: &str = "permission denied for ";
    let rest = &message[message.find(DENIED)? + DENIED.len()..];
    let kinds = [
        ("materialized view ", "SELECT", ""),
        ("table ", "SELECT", ""),
        ("view ", "SELECT", ""),
        ("relation ", "SELECT", ""),
        ("sequence ", "USAGE", "SEQUENCE "),
        ("function ", "EXECUTE", "FUNCTION "),
        ("schema ", "USAGE", "SCHEMA "),
        ("database ", "CONNECT", "DATABASE "),
    ];
    let (name, privilege, on) = kinds.iter().find_map(|(kind, privilege, on)| {
        rest.strip_prefix(kind)
            .map(|name| (object_name(name), privilege, on))
    })?;
    if name.is_empty() {
        return None;
    }
    Some(format!(
        "GRANT {privilege} ON {on}{name} TO {}",
        sql_name(role)
    ))
}

/// The object name at the start of `text`: a quoted name (unquoted, then
/// written back as SQL wants it) or the word up to a space or a
/// punctuation mark that ends a message.
fn object_name(text: &str) -> String {
    if let Some(quoted) = text.strip_prefix('"') {
        return quoted.split('"').next().map(sql_name).unwrap_or_default();
    }
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .next()
        .unwrap_or_default()
        .trim_end_matches([':', ')'])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(srvid: i32, name: &str, problems: Vec<Problem>) -> ServerReport {
        ServerReport {
            srvid,
            name: name.into(),
            reachable: true,
            powa_version: Some("4.1.4".into()),
            problems,
        }
    }

    fn report(servers: Vec<ServerReport>) -> Report {
        Report {
            repository: RepositoryReport {
                role: Some("powa".into()),
                powa_version: Some("4.1.4".into()),
                problems: Vec::new(),
            },
            servers,
        }
    }

    #[test]
    fn any_problem_fails_the_check() {
        assert!(report(vec![server(1, "db1", vec![])]).passed());
        assert!(report(vec![]).passed());
        let failing = report(vec![
            server(1, "db1", vec![]),
            server(2, "db2", vec![Problem::new("connection", "refused")]),
        ]);
        assert!(!failing.passed());
        let mut repository_failing = report(vec![server(1, "db1", vec![])]);
        repository_failing
            .repository
            .problems
            .push(Problem::new("protocol", "denied"));
        assert!(!repository_failing.passed());
    }

    #[test]
    fn the_table_lines_up_and_puts_fixes_under_problems() {
        let table = report(vec![
            server(1, "db1", vec![]),
            ServerReport {
                reachable: false,
                powa_version: None,
                ..server(
                    12,
                    "a-much-longer-name:5432",
                    vec![Problem::new("connection", "cannot\nconnect")],
                )
            },
            server(
                13,
                "db3",
                vec![
                    Problem::new("datasource", "no EXECUTE").with_hint("GRANT EXECUTE"),
                    Problem::new("extension", "pg_qualstats missing"),
                ],
            ),
        ])
        .table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0], "repository (PoWA 4.1.4, role powa): ok",
            "{table}"
        );
        assert_eq!(lines[1], "", "{table}");
        let header = lines[2];
        assert!(header.starts_with("SRVID  SERVER"), "{table}");
        let column = header.find("PROBLEMS").unwrap();
        assert_eq!(lines[3].find("ok"), Some(column), "{table}");
        assert!(lines[3].contains(" yes "), "{table}");
        assert!(
            lines[4].ends_with("connection: cannot connect") && lines[4].contains(" no "),
            "{table}"
        );
        assert_eq!(lines[4].find("connection"), Some(column), "{table}");
        assert_eq!(lines[5].find("datasource"), Some(column), "{table}");
        assert_eq!(lines[6].trim_start(), "fix: GRANT EXECUTE", "{table}");
        assert_eq!(lines[6].find("fix"), Some(column + 2), "{table}");
        assert_eq!(lines[7].find("extension"), Some(column), "{table}");
        assert_eq!(lines.len(), 8, "{table}");
    }

    #[test]
    fn repository_problems_come_first() {
        let table = Report {
            repository: RepositoryReport {
                role: None,
                powa_version: None,
                problems: vec![Problem::new("connection", "refused")],
            },
            servers: Vec::new(),
        }
        .table();
        assert_eq!(
            table,
            "repository: 1 problem\n  connection: refused\nno remote server to check\n"
        );
    }

    #[test]
    fn the_json_says_what_the_table_says() {
        let value = report(vec![
            server(1, "db1", vec![]),
            server(
                2,
                "db2",
                vec![Problem::new("datasource", "denied").with_hint("GRANT")],
            ),
        ])
        .to_json();
        assert_eq!(value["ok"], false);
        assert_eq!(value["repository"]["ok"], true);
        assert_eq!(value["repository"]["role"], "powa");
        assert_eq!(value["repository"]["powa_version"], "4.1.4");
        assert_eq!(value["repository"]["problems"], json!([]));
        let servers = value["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            json!({"srvid": 1, "name": "db1", "ok": true, "reachable": true,
                   "powa_version": "4.1.4", "problems": []})
        );
        assert_eq!(
            servers[1]["problems"],
            json!([{"check": "datasource", "message": "denied", "hint": "GRANT"}])
        );
        let unreachable = ServerReport::new(3, "db3");
        let value = report(vec![unreachable]).to_json();
        assert_eq!(value["servers"][0]["powa_version"], Value::Null);
        assert_eq!(value["servers"][0]["reachable"], false);
    }

    #[test]
    fn denials_become_grants() {
        let cases = [
            (
                "ERROR: permission denied for table powa_databases",
                "powa",
                Some("GRANT SELECT ON powa_databases TO powa"),
            ),
            (
                "cannot read: ERROR: permission denied for view pg_stat_statements",
                "collector",
                Some("GRANT SELECT ON pg_stat_statements TO collector"),
            ),
            (
                "ERROR: permission denied for function powa_statements_src",
                "Powa User",
                Some("GRANT EXECUTE ON FUNCTION powa_statements_src TO \"Powa User\""),
            ),
            (
                "ERROR: permission denied for schema powa",
                "powa",
                Some("GRANT USAGE ON SCHEMA powa TO powa"),
            ),
            (
                "FATAL: permission denied for database \"app1\" \
                 (DETAIL: User does not have CONNECT privilege.)",
                "powa",
                Some("GRANT CONNECT ON DATABASE app1 TO powa"),
            ),
            (
                "FATAL: permission denied for database \"App\"",
                "powa",
                Some("GRANT CONNECT ON DATABASE \"App\" TO powa"),
            ),
            (
                "ERROR: permission denied for sequence s1",
                "powa",
                Some("GRANT USAGE ON SEQUENCE s1 TO powa"),
            ),
            ("ERROR: relation \"x\" does not exist", "powa", None),
            ("ERROR: permission denied to create extension", "powa", None),
        ];
        for (message, role, expected) in cases {
            assert_eq!(
                grant_for_denial(message, role).as_deref(),
                expected,
                "{message}"
            );
        }
    }

    #[test]
    fn lacks_name_the_grant() {
        let lack = Lack::Privileges {
            kind: ObjectKind::Function,
            object: "powa_qualstats_src(integer)".into(),
            privileges: vec!["EXECUTE".into()],
        };
        let problem = Problem::from_lack("datasource", "datasource pg_qualstats", &lack, "powa");
        assert_eq!(
            problem.message,
            "datasource pg_qualstats: the role powa lacks EXECUTE on function \
             powa_qualstats_src(integer)"
        );
        assert_eq!(
            problem.hint.as_deref(),
            Some("GRANT EXECUTE ON FUNCTION powa_qualstats_src(integer) TO powa")
        );
        let lack = Lack::Privileges {
            kind: ObjectKind::Table,
            object: "powa_servers".into(),
            privileges: vec!["SELECT".into(), "UPDATE (version)".into()],
        };
        let problem = Problem::from_lack("privileges", "reading servers", &lack, "powa");
        assert_eq!(
            problem.hint.as_deref(),
            Some("GRANT SELECT, UPDATE (version) ON powa_servers TO powa")
        );
        let problem =
            Problem::from_lack("privileges", "x", &Lack::SchemaUsage("powa".into()), "powa");
        assert_eq!(
            problem.hint.as_deref(),
            Some("GRANT USAGE ON SCHEMA powa TO powa")
        );
        let problem = Problem::from_lack("datasource", "x", &Lack::Missing("f()".into()), "p");
        assert_eq!(problem.message, "x: f() does not exist");
        assert_eq!(problem.hint, None);
    }

    #[test]
    fn names_are_quoted_only_when_needed() {
        assert_eq!(sql_name("powa"), "powa");
        assert_eq!(sql_name("powa_2"), "powa_2");
        assert_eq!(sql_name("Powa"), "\"Powa\"");
        assert_eq!(sql_name("2powa"), "\"2powa\"");
        assert_eq!(sql_name("po wa"), "\"po wa\"");
    }
}
