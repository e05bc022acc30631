//! A client of the collector's command protocol that behaves like powa-web
//! 4.2.1 (`powa/framework.py: notify_collector`): on its own connection to
//! the repository it listens on a random channel `rNNNNN`, sends
//! `NOTIFY powa_collector, 'COMMAND rNNNNN ARGS'` (with a trailing space
//! when there is no argument, as powa-web does) and waits at most 3 s for
//! the answers on that channel.
//!
//! For what powa-web cannot check (that requests got exactly the answers
//! expected, on exactly the channels expected, and nothing else), the same
//! client can listen on any channels, send raw payloads, and close a series
//! of requests with a barrier: the collector serves the requests of a
//! session in order and sends its answers in that order, so once the
//! barrier's answer is in, every answer to the earlier requests is too.
//!
//! Used by the test threads, one client per test.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::harness::{Cluster, Collector};

/// How long powa-web waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a barrier's answer may take (more than powa-web's timeout: a
/// barrier may wait behind a reload).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// Quotes an SQL identifier, always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection to the repository speaking the collector's protocol.
pub struct PowaWeb {
    client: Client,
    role: String,
}

/// The answers to one request, and how long the first one took.
pub struct Reply {
    pub answers: Vec<String>,
    pub latency: Option<Duration>,
}

impl PowaWeb {
    /// A client connected to the repository's database `powa` as `postgres`.
    pub fn connect(repository: &Cluster) -> PowaWeb {
        PowaWeb::connect_as(repository, "postgres")
    }

    /// A client connected to the repository's database `powa` as `role`.
    pub fn connect_as(repository: &Cluster, role: &str) -> PowaWeb {
        let dsn = format!(
            "host=127.0.0.1 port={} user={role} dbname=powa application_name=powa-web",
            repository.port()
        );
        let client = Client::connect(&dsn, NoTls)
            .unwrap_or_else(|error| panic!("connect to the repository as {role}: {error}"));
        PowaWeb {
            client,
            role: role.to_string(),
        }
    }

    /// powa-web's `notify_collector(command, args)`: every payload received
    /// on its channel, empty when nothing came within 3 s.
    pub fn notify_collector(&mut self, command: &str, args: &[&str]) -> Reply {
        // Leftovers of an earlier request are not answers to this one.
        self.discard_buffered();
        self.execute("UNLISTEN *");
        let channel = format!("r{}", fastrand::u32(1..=99999));
        self.execute(&format!("LISTEN {channel}"));
        let payload = format!("{command} {channel} {}", args.join(" "));
        let started = Instant::now();
        self.send(&payload);

        // Like powa-web's select() on the connection: wait for the first
        // answer, then take what else is already there.
        let deadline = started + ANSWER_TIMEOUT;
        let mut answers = Vec::new();
        let mut latency = None;
        {
            let mut notifications = self.client.notifications();
            while latency.is_none() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let next = notifications
                    .timeout_iter(remaining)
                    .next()
                    .unwrap_or_else(|error| panic!("wait for the answer to {payload:?}: {error}"));
                let Some(notification) = next else {
                    break;
                };
                if notification.channel() == channel {
                    latency = Some(started.elapsed());
                    answers.push(notification.payload().to_string());
                }
            }
            if latency.is_some() {
                let mut pending = notifications.iter();
                while let Some(next) = pending
                    .next()
                    .unwrap_or_else(|error| panic!("read the answers to {payload:?}: {error}"))
                {
                    if next.channel() == channel {
                        answers.push(next.payload().to_string());
                    }
                }
            }
        }
        self.execute("UNLISTEN *");
        Reply { answers, latency }
    }

    fn discard_buffered(&mut self) {
        let mut notifications = self.client.notifications();
        let mut pending = notifications.iter();
        while let Ok(Some(_)) = pending.next() {}
    }

    /// The one answer to `command args`, with its latency; panics when
    /// there is none within 3 s, or several.
    pub fn ask_timed(&mut self, command: &str, args: &[&str]) -> (String, Duration) {
        let reply = self.notify_collector(command, args);
        let request = format!("{command} {}", args.join(" "));
        match (reply.answers.as_slice(), reply.latency) {
            ([answer], Some(latency)) => (answer.clone(), latency),
            ([], _) => panic!(
                "no answer within {ANSWER_TIMEOUT:?} to {request:?} sent as {}",
                self.role
            ),
            (answers, _) => panic!("several answers to {request:?}: {answers:?}"),
        }
    }

    /// The one answer to `command args`; panics when there is none within
    /// 3 s, or several.
    pub fn ask(&mut self, command: &str, args: &[&str]) -> String {
        self.ask_timed(command, args).0
    }

    /// The workers' status, by srvid, from `WORKERS_STATUS` (all of them,
    /// or `srvid` only).
    pub fn workers_status(&mut self, srvid: Option<i32>) -> BTreeMap<i32, String> {
        let args: Vec<String> = srvid.iter().map(i32::to_string).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = self.ask("WORKERS_STATUS", &args);
        parse_workers_status(&answer)
    }

    /// Waits until the collector answers: a request sent before it listens
    /// on `powa_collector` is lost, as it would be for powa-web.
    pub fn wait_until_answering(&mut self, collector: &mut Collector, timeout: Duration) {
        const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
        let probe = format!("probe{}", fastrand::u32(1..=99999));
        self.listen(&probe);
        collector.wait_for(timeout, "the collector to answer requests", || {
            self.send(&format!("WORKERS_STATUS {probe}"));
            let answered = self
                .client
                .notifications()
                .timeout_iter(PROBE_TIMEOUT)
                .next()
                .unwrap_or_else(|error| panic!("wait for the probe's answer: {error}"))
                .is_some();
            if answered {
                Ok(())
            } else {
                Err("no answer yet".to_string())
            }
        });
        // Answers to earlier probes may still come: let them in, then drop
        // them with the channel.
        self.answers_until_barrier();
        self.execute(&format!("UNLISTEN {}", quote_ident(&probe)));
        self.discard_buffered();
    }

    /// Waits until `WORKERS_STATUS` reports exactly `srvids`, all running.
    pub fn wait_until_running(
        &mut self,
        collector: &mut Collector,
        srvids: &[i32],
        timeout: Duration,
    ) {
        self.wait_until_answering(collector, timeout);
        let expected = all_running(srvids);
        collector.wait_for(timeout, &format!("workers {srvids:?} running"), || {
            let status = self.workers_status(None);
            if status == expected {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        });
    }

    /// `LISTEN` on `channel`, quoted: any text is a channel.
    pub fn listen(&mut self, channel: &str) {
        self.execute(&format!("LISTEN {}", quote_ident(channel)));
    }

    /// `NOTIFY powa_collector, '<payload>'`, quoted as powa-web quotes it.
    pub fn send(&mut self, payload: &str) {
        self.execute(&format!(
            "NOTIFY powa_collector, '{}'",
            payload.replace('\'', "''")
        ));
    }

    /// Sends a barrier request and returns every notification received
    /// before its answer, as (channel, payload), in order.
    pub fn answers_until_barrier(&mut self) -> Vec<(String, String)> {
        self.answers_until_barrier_within(BARRIER_TIMEOUT)
    }

    /// [`PowaWeb::answers_until_barrier`], waiting at most `timeout` for the
    /// barrier's answer.
    pub fn answers_until_barrier_within(&mut self, timeout: Duration) -> Vec<(String, String)> {
        let barrier = format!("barrier{}", fastrand::u32(1..=99999));
        self.listen(&barrier);
        self.send(&format!("WORKERS_STATUS {barrier} 0"));
        let deadline = Instant::now() + timeout;
        let mut received = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let next = self
                .client
                .notifications()
                .timeout_iter(remaining)
                .next()
                .unwrap_or_else(|error| panic!("wait for notifications: {error}"));
            let Some(notification) = next else {
                panic!(
                    "the barrier got no answer within {timeout:?}; received before: \
                     {received:?}"
                );
            };
            if notification.channel() == barrier {
                assert_eq!(
                    notification.payload(),
                    "WORKERS_STATUS OK {}",
                    "answer to the barrier"
                );
                break;
            }
            received.push((
                notification.channel().to_string(),
                notification.payload().to_string(),
            ));
        }
        self.execute(&format!("UNLISTEN {}", quote_ident(&barrier)));
        received
    }

    fn execute(&mut self, sql: &str) {
        self.client
            .batch_execute(sql)
            .unwrap_or_else(|error| panic!("{sql} as {}: {error}", self.role));
    }
}

/// Starts the collector against `repository` and connects a powa-web client
/// as `postgres`, then waits until `WORKERS_STATUS` reports exactly
/// `srvids`, all running (see `PowaWeb::wait_until_running`).
pub fn start_collector_with_web(
    repository: &Cluster,
    srvids: &[i32],
    timeout: Duration,
) -> (Collector, PowaWeb) {
    let mut collector = Collector::start(repository);
    let mut web = PowaWeb::connect(repository);
    web.wait_until_running(&mut collector, srvids, timeout);
    (collector, web)
}

/// The status by srvid in a `WORKERS_STATUS OK {...}` answer.
pub fn parse_workers_status(answer: &str) -> BTreeMap<i32, String> {
    let json = answer
        .strip_prefix("WORKERS_STATUS OK ")
        .unwrap_or_else(|| panic!("not a WORKERS_STATUS OK answer: {answer:?}"));
    let value: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|error| panic!("WORKERS_STATUS data is not JSON ({error}): {json:?}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("WORKERS_STATUS data is not a JSON object: {json:?}"));
    object
        .iter()
        .map(|(key, status)| {
            let srvid = key
                .parse()
                .unwrap_or_else(|_| panic!("WORKERS_STATUS key {key:?} is not a srvid: {json:?}"));
            let status = status
                .as_str()
                .unwrap_or_else(|| panic!("WORKERS_STATUS value is not a string: {json:?}"));
            (srvid, status.to_string())
        })
        .collect()
}

/// `{"1": "running", "2": "running"}`, as powa-collector formats it.
pub fn expected_status_json(statuses: &BTreeMap<i32, String>) -> String {
    let entries: Vec<String> = statuses
        .iter()
        .map(|(srvid, status)| format!("\"{srvid}\": \"{status}\""))
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// A status map with every srvid of `srvids` running.
pub fn all_running(srvids: &[i32]) -> BTreeMap<i32, String> {
    srvids
        .iter()
        .map(|&srvid| (srvid, "running".to_string()))
        .collect()
}
