//! A fuzzer of the command protocol: 10,000 payloads (random text within
//! NOTIFY's limits, every command with the wrong number of arguments, long
//! tokens, quotes, SQL fragments) sent to a running collector. It must not
//! crash, must run nothing on the repository but the answers (and what a
//! RELOAD reads), and every answer must be well-formed.

use std::time::{Duration, Instant};

use crate::harness::{Cluster, Collector, wait_for};
use crate::powa_web::PowaWeb;

const PAYLOADS: usize = 10_000;
/// The channel the fuzzer listens on, named by some of its payloads.
const CHANNEL: &str = "fz";
/// How long the collector may take to serve them all. This test is about
/// what the payloads change, not about speed: each one costs the main
/// thread two statements on a repository that logs every statement, and
/// 10,000 took from 20 s to over 50 s on a 2-core machine, depending on
/// what ran beside them. The deadline only catches a collector that stopped
/// serving.
const SERVE_TIMEOUT: Duration = Duration::from_secs(180);
/// NOTIFY's payload limit, in bytes, less one.
const MAX_PAYLOAD: usize = 7_999;

const COMMANDS: [&str; 5] = [
    "RELOAD",
    "WORKERS_STATUS",
    "FORCE_SNAPSHOT",
    "REFRESH_DB_CAT",
    "DROP",
];

const FRAGMENTS: [&str; 16] = [
    "'",
    "''",
    "\"",
    "\\",
    "$$",
    "';",
    "'; DROP TABLE powa_servers; --",
    "1); SELECT pg_sleep(10); --",
    "$$ || pg_terminate_backend(pg_backend_pid()) || $$",
    "%s%s%n",
    "{powa}",
    "-1",
    "2147483648",
    "99999999999999999999",
    "1e9",
    "NaN",
];

/// One random payload.
fn payload(rng: &mut fastrand::Rng) -> String {
    match rng.u8(0..4) {
        // Random text, sometimes long.
        0 => {
            let length = if rng.u8(0..10) == 0 {
                rng.usize(1000..MAX_PAYLOAD)
            } else {
                rng.usize(0..200)
            };
            let text: String = (0..length)
                .map(|_| match rng.u8(0..8) {
                    0 => ' ',
                    1 => rng
                        .choice(['é', 'ß', '€', '中', '\'', '\\', '"'])
                        .unwrap_or('x'),
                    _ => rng.char('!'..='~'),
                })
                .collect();
            truncate(text)
        }
        // A command with any number of arguments, on our channel or another.
        1 | 2 => {
            let command = *rng.choice(&COMMANDS).expect("commands");
            let channel = match rng.u8(0..4) {
                0 => "-".to_string(),
                1 => rng.choice(FRAGMENTS).expect("fragments").to_string(),
                _ => CHANNEL.to_string(),
            };
            let arguments: Vec<String> = (0..rng.usize(0..6))
                .map(|_| match rng.u8(0..3) {
                    0 => rng.i64(-5..5).to_string(),
                    1 => rng.choice(FRAGMENTS).expect("fragments").to_string(),
                    _ => "db".repeat(rng.usize(1..20)),
                })
                .collect();
            truncate(format!("{command} {channel} {}", arguments.join(" ")))
        }
        // One long token.
        _ => "X".repeat(rng.usize(100..MAX_PAYLOAD)),
    }
}

/// At most [`MAX_PAYLOAD`] bytes, on a character boundary.
fn truncate(mut text: String) -> String {
    while text.len() > MAX_PAYLOAD {
        text.pop();
    }
    text
}

/// Whether `answer` is `COMMAND STATUS DATA` with a known status.
fn well_formed(answer: &str) -> bool {
    let mut words = answer.splitn(3, ' ');
    let (Some(command), Some(status)) = (words.next(), words.next()) else {
        return false;
    };
    !command.is_empty() && matches!(status, "OK" | "KO" | "ERROR" | "UNKNOWN")
}

/// Statements the main thread may run on the repository: the permission
/// check, the answers, what a reload reads, and the advisory locks that
/// share the servers among collectors; besides the empty query of its
/// connection check.
const ALLOWED_STATEMENTS: [&str; 10] = [
    "WITH s(v) AS",
    "SELECT pg_catalog.bool_or(",
    "SELECT pg_catalog.has_table_privilege(",
    "SELECT pg_catalog.pg_notify(",
    "SELECT id, hostname, port, username",
    "SELECT e.extname::text, n.nspname::text",
    "SELECT extversion::text FROM pg_catalog.pg_extension",
    "SELECT pg_catalog.current_setting('server_version_num')",
    "SELECT l.classid::int8, l.objid::int8 FROM pg_catalog.pg_locks",
    "SELECT id FROM pg_catalog.unnest($2::int4[]) AS id",
];

/// The statements of the collector's main thread in the repository's log
/// (`log_statement = 'all'`), from byte `from` on.
fn main_thread_statements(repository: &Cluster, from: usize) -> Vec<String> {
    let log = repository.log();
    log[from.min(log.len())..]
        .lines()
        .filter(|line| line.contains("PoWA collector - main thread"))
        .filter_map(|line| {
            if let Some((_, statement)) = line.split_once("LOG:  statement: ") {
                return Some(statement.to_string());
            }
            // `execute <name>: <statement>` for the extended protocol.
            let (_, named) = line.split_once("LOG:  execute ")?;
            let (_, statement) = named.split_once(": ")?;
            Some(statement.to_string())
        })
        .collect()
}

#[test]
fn ten_thousand_hostile_payloads_change_nothing() {
    let repository = Cluster::repository_with(&[("log_statement", "'all'".to_string())]);
    let mut repo = repository.connect_powa();
    let servers_before: i64 = repo
        .query_one("SELECT count(*) FROM powa_servers", &[])
        .expect("count powa_servers")
        .get(0);
    let mut collector = Collector::start(&repository);
    let mut web = PowaWeb::connect(&repository);
    web.wait_until_answering(&mut collector, Duration::from_secs(20));
    let log_from = repository.log().len();

    let seed = fastrand::u64(..);
    eprintln!("fuzzer seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    web.listen(CHANNEL);
    let started = Instant::now();
    for _ in 0..PAYLOADS {
        web.send(&payload(&mut rng));
    }
    let answers = web.answers_until_barrier_within(SERVE_TIMEOUT);
    let elapsed = started.elapsed();
    eprintln!(
        "MEASURE: {PAYLOADS} payloads served in {:.1} s, {} answers on {CHANNEL}",
        elapsed.as_secs_f64(),
        answers
            .iter()
            .filter(|(channel, _)| channel == CHANNEL)
            .count()
    );

    assert!(collector.exit_status().is_none(), "the collector exited");
    for (channel, answer) in &answers {
        assert!(
            well_formed(answer),
            "malformed answer on {channel}: {answer:?}"
        );
    }
    let statements = main_thread_statements(&repository, log_from);
    // Every request is checked against the sender's role: the log holds
    // them, or it is not read right.
    assert!(
        statements.len() >= PAYLOADS,
        "only {} statements of the main thread found in the repository's log",
        statements.len()
    );
    let unexpected: Vec<String> = statements
        .into_iter()
        .filter(|statement| {
            !statement.trim().is_empty()
                && !ALLOWED_STATEMENTS
                    .iter()
                    .any(|allowed| statement.trim_start().starts_with(allowed))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "statements the fuzz made the collector run: {unexpected:?}"
    );
    let servers_after: i64 = repo
        .query_one("SELECT count(*) FROM powa_servers", &[])
        .expect("count powa_servers")
        .get(0);
    assert_eq!(servers_after, servers_before, "powa_servers changed");
    // Still serving as before.
    wait_for(Duration::from_secs(5), "a WORKERS_STATUS answer", || {
        let answer = web.ask("WORKERS_STATUS", &[]);
        if answer == "WORKERS_STATUS OK {}" {
            Ok(())
        } else {
            Err(answer)
        }
    });
    collector.stop().assert_exited_zero();
}
