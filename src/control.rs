//! `powa-collector status` and `powa-collector reload`: the command
//! protocol spoken from the command line, through the repository, exactly
//! as powa-web speaks it, so that they work from any machine that reaches
//! the repository.
//!
//! A request is `NOTIFY powa_collector, 'COMMAND CHANNEL ARGS'` after
//! `LISTEN CHANNEL` on a channel of its own; the first answer on that
//! channel within the timeout is the collector's. `status` adds, for each
//! server, the last snapshot time and the errors the repository shows.
//! Runs on the caller's thread; one connection, closed at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::config::Config;
use crate::error::{Error, describe_postgres_error};
use crate::powa::Powa;
use crate::repository;

/// How long to wait for the collector's answer unless told.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// The collector's answer: `COMMAND STATUS DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: String,
    pub data: String,
}

/// What a request came to: the answer, or none within the timeout.
pub enum Outcome {
    Answered(Answer),
    NoAnswer,
}

/// One server as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerState {
    pub srvid: i32,
    pub name: String,
    /// What the collector said of its worker; `None` when it has none.
    pub worker: Option<String>,
    /// When the last snapshot was taken, as the repository has it.
    pub last_snapshot: Option<String>,
    pub errors: Vec<String>,
}

/// A connection to the repository that speaks the protocol.
pub struct ControlClient {
    client: Client,
    powa: Powa,
    channel: String,
}

impl ControlClient {
    /// Connects to the repository of `config` and listens on a channel of
    /// its own.
    pub fn connect(config: &Config) -> Result<ControlClient, Error> {
        let repository = config.repository()?;
        let (mut client, _, powa) = repository::connect(
            &repository,
            &format!("powa-collector {} (command line)", crate::VERSION),
        )?;
        let channel = format!("powa_collector_cli_{}", fastrand::u32(1..1_000_000));
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .map_err(|e| Error::postgres("cannot LISTEN on the repository", e))?;
        Ok(ControlClient {
            client,
            powa,
            channel,
        })
    }

    /// Sends `command args` and waits at most `timeout` for the answer.
    pub fn ask(
        &mut self,
        command: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<Outcome, Error> {
        let payload = format!("{command} {} {}", self.channel, args.join(" "));
        self.client
            .execute(
                "SELECT pg_catalog.pg_notify('powa_collector', $1)",
                &[&payload],
            )
            .map_err(|e| Error::postgres("cannot send the request", e))?;
        let deadline = Instant::now() + timeout;
        let mut notifications = self.client.notifications();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = notifications.timeout_iter(left).next().map_err(|e| {
                Error::Connect(format!(
                    "lost the repository while waiting for the answer: {}",
                    describe_postgres_error(&e)
                ))
            })?;
            let Some(notification) = next else {
                return Ok(Outcome::NoAnswer);
            };
            if notification.channel() != self.channel {
                continue;
            }
            if let Some(answer) = parse_answer(command, notification.payload()) {
                return Ok(Outcome::Answered(answer));
            }
        }
    }

    /// Each registered server with what the repository knows of it and
    /// what `workers` (the collector's WORKERS_STATUS) says.
    pub fn servers(
        &mut self,
        workers: &BTreeMap<i32, String>,
        only: Option<i32>,
    ) -> Result<Vec<ServerState>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT s.id, CASE WHEN coalesce(s.alias, '') = '' \
                       THEN s.hostname || ':' || s.port ELSE s.alias END, \
                     CASE WHEN m.snapts = '-infinity' THEN NULL \
                       ELSE pg_catalog.to_char(m.snapts, 'YYYY-MM-DD HH24:MI:SS TZ') END, \
                     coalesce(m.errors, '{{}}') \
                     FROM {} s LEFT JOIN {} m ON m.srvid = s.id \
                     WHERE s.id > 0 AND ($1::int IS NULL OR s.id = $1) ORDER BY s.id",
                    self.powa.qualify("powa_servers"),
                    self.powa.qualify("powa_snapshot_metas")
                ),
                &[&only],
            )
            .map_err(|e| Error::postgres("cannot read the servers", e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let srvid: i32 = row.get(0);
                ServerState {
                    srvid,
                    name: row.get(1),
                    worker: workers.get(&srvid).cloned(),
                    last_snapshot: row.get(2),
                    errors: row.get(3),
                }
            })
            .collect())
    }
}

/// `powa-collector status [SRVID]`: prints the table of the servers with
/// what the running collector says of their workers; returns whether it
/// answered within `timeout`.
pub fn status(config: &Config, srvid: Option<i32>, timeout: Duration) -> Result<bool, Error> {
    let mut control = ControlClient::connect(config)?;
    let args: Vec<String> = srvid.iter().map(i32::to_string).collect();
    let (workers, answered) = match control.ask("WORKERS_STATUS", &args, timeout)? {
        Outcome::Answered(answer) if answer.status == "OK" => {
            (parse_workers(&answer.data).map_err(Error::Connect)?, true)
        }
        Outcome::Answered(answer) => {
            eprintln!("the collector answered {} {}", answer.status, answer.data);
            (BTreeMap::new(), false)
        }
        Outcome::NoAnswer => {
            eprintln!(
                "no collector answered within {:.1} s: is one running against this repository?",
                timeout.as_secs_f64()
            );
            (BTreeMap::new(), false)
        }
    };
    print!("{}", format_table(&control.servers(&workers, srvid)?));
    Ok(answered)
}

/// `powa-collector reload`: asks the running collector to reload and
/// prints its answer; returns whether it answered `OK` within `timeout`.
pub fn reload(config: &Config, timeout: Duration) -> Result<bool, Error> {
    let mut control = ControlClient::connect(config)?;
    match control.ask("RELOAD", &[], timeout)? {
        Outcome::Answered(answer) => {
            println!("RELOAD {} {}", answer.status, answer.data);
            Ok(answer.status == "OK")
        }
        Outcome::NoAnswer => {
            eprintln!(
                "no collector answered within {:.1} s: is one running against this repository?",
                timeout.as_secs_f64()
            );
            Ok(false)
        }
    }
}

/// `COMMAND STATUS DATA` as an answer to `command`; `None` for anything
/// else.
pub fn parse_answer(command: &str, payload: &str) -> Option<Answer> {
    let rest = payload.strip_prefix(command)?.strip_prefix(' ')?;
    let (status, data) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Answer {
        status: status.to_string(),
        data: data.to_string(),
    })
}

/// The workers of a `WORKERS_STATUS OK` answer's data, by srvid.
pub fn parse_workers(data: &str) -> Result<BTreeMap<i32, String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "the answer is not a JSON object".to_string())?;
    object
        .iter()
        .map(|(key, status)| {
            let srvid = key
                .parse()
                .map_err(|_| format!("the answer names server {key:?}"))?;
            let status = status
                .as_str()
                .ok_or_else(|| format!("the status of server {key} is not a string"))?;
            Ok((srvid, status.to_string()))
        })
        .collect()
}

/// The table `status` prints.
pub fn format_table(servers: &[ServerState]) -> String {
    let headers = ["SRVID", "SERVER", "WORKER", "LAST SNAPSHOT", "ERRORS"];
    let rows: Vec<[String; 5]> = servers
        .iter()
        .map(|server| {
            [
                server.srvid.to_string(),
                server.name.clone(),
                server.worker.clone().unwrap_or_else(|| "no worker".into()),
                server
                    .last_snapshot
                    .clone()
                    .unwrap_or_else(|| "never".into()),
                if server.errors.is_empty() {
                    "-".into()
                } else {
                    server.errors.join("; ").replace('\n', " ")
                },
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut table = line(headers);
    for row in &rows {
        table.push_str(&line(row.each_ref().map(String::as_str)));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_powa_web_reads_them() {
        assert_eq!(
            parse_answer("RELOAD", "RELOAD OK OK"),
            Some(Answer {
                status: "OK".into(),
                data: "OK".into()
            })
        );
        assert_eq!(
            parse_answer("WORKERS_STATUS", "WORKERS_STATUS OK {\"1\": \"running\"}")
                .map(|a| a.data),
            Some("{\"1\": \"running\"}".into())
        );
        assert_eq!(parse_answer("RELOAD", "WORKERS_STATUS OK {}"), None);
        assert_eq!(parse_answer("RELOAD", "RELOADED OK"), None);
    }

    #[test]
    fn workers_parse_by_srvid() {
        let workers = parse_workers("{\"1\": \"running\", \"12\": \"stopped\"}").unwrap();
        assert_eq!(workers[&1], "running");
        assert_eq!(workers[&12], "stopped");
        assert!(parse_workers("[1]").is_err());
        assert!(parse_workers("{\"x\": \"running\"}").is_err());
    }

    #[test]
    fn the_table_lines_up() {
        let table = format_table(&[
            ServerState {
                srvid: 1,
                name: "db1".into(),
                worker: Some("running".into()),
                last_snapshot: Some("2026-12-01 10:00:00 UTC".into()),
                errors: Vec::new(),
            },
            ServerState {
                srvid: 12,
                name: "a-much-longer-name:5432".into(),
                worker: None,
                last_snapshot: None,
                errors: vec!["cannot\nconnect".into()],
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let column = lines[0].find("WORKER").unwrap();
        assert_eq!(lines[1].find("running"), Some(column), "{table}");
        assert_eq!(lines[2].find("no worker"), Some(column), "{table}");
        assert!(lines[2].ends_with("cannot connect"), "{table}");
    }
}
