//! Shutdown: SIGTERM ends the collector with exit code 0 promptly with 50
//! idle servers, and within a bound with a snapshot in flight, which is
//! rolled back whole; a worker that cannot be stopped holds the exit back
//! at most the collector's shutdown deadline, and a second SIGTERM cuts
//! that short.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::fleet::{
    collector_sessions, host, postpone_snapshots, register_at, remote_on_addresses,
    slow_down_bgwriter_source,
};
use crate::harness::{
    Cluster, Collector, repository_with_remote, snapshot_meta, wait_for, wait_until,
};
use crate::powa_web::start_collector_with_web;
use crate::reload::THREADS_BESIDES_WORKERS;

/// `repository.pool_size` when the configuration file does not set it.
const DEFAULT_POOL_SIZE: usize = 4;

/// How long workers may take to start and connect.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Frequency of the servers: no snapshot comes on its own during the test.
const IDLE_FREQUENCY: i32 = 300;

/// How long the collector's sessions may linger on a server once it exited.
const SESSIONS_GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's own bound on waiting for its workers at shutdown
/// (`collector::SHUTDOWN_DEADLINE`).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Waits until the collector has no session left on `cluster`.
fn wait_for_no_session(cluster: &Cluster, what: &str) {
    let mut client = cluster.connect("postgres");
    wait_for(
        SESSIONS_GONE_TIMEOUT,
        &format!("no session of the collector left on the {what}"),
        || {
            let sessions = collector_sessions(&mut client);
            if sessions.is_empty() {
                Ok(())
            } else {
                Err(format!("{sessions:?}"))
            }
        },
    );
}

#[test]
fn sigterm_with_fifty_idle_servers_exits_within_two_seconds() {
    const SERVERS: usize = 50;
    const LIMIT: Duration = Duration::from_secs(2);
    let repository = Cluster::repository_with(&[("max_connections", "200".to_string())]);
    let remote = remote_on_addresses(SERVERS, 200);
    let hosts: Vec<String> = (1..=SERVERS).map(host).collect();
    let srvids = register_at(&repository, &remote, &hosts, IDLE_FREQUENCY);
    postpone_snapshots(&repository);

    // powa-web stays connected until the end of the test.
    let (mut collector, _web) = start_collector_with_web(&repository, &srvids, START_TIMEOUT);
    // Idle: every worker holds its remote connection, and the repository
    // connections left from their start are the pool's idle ones, all
    // idle.
    let mut remote_client = remote.connect("postgres");
    let mut repo = repository.connect("postgres");
    collector.wait_for(START_TIMEOUT, "every worker idle", || {
        let remote_sessions = collector_sessions(&mut remote_client);
        let idle = remote_sessions
            .iter()
            .filter(|s| s.state.as_deref() == Some("idle"))
            .count();
        let worker_repo_sessions: Vec<_> = collector_sessions(&mut repo)
            .into_iter()
            .filter(|s| {
                !s.application_name
                    .starts_with("PoWA collector - main thread")
            })
            .collect();
        let pooled_idle = worker_repo_sessions.len() <= DEFAULT_POOL_SIZE
            && worker_repo_sessions
                .iter()
                .all(|s| s.state.as_deref() == Some("idle"));
        let worker_repo_sessions = worker_repo_sessions.len();
        if remote_sessions.len() == SERVERS && idle == SERVERS && pooled_idle {
            Ok(())
        } else {
            Err(format!(
                "{} remote sessions ({idle} idle), {worker_repo_sessions} repository sessions \
                 of workers",
                remote_sessions.len()
            ))
        }
    });
    assert_eq!(
        collector.threads(),
        SERVERS + THREADS_BESIDES_WORKERS,
        "threads of the collector"
    );

    let stopped = collector.signal_and_wait("TERM", Duration::from_secs(15));
    eprintln!(
        "MEASURE: SIGTERM to exit with {SERVERS} idle servers: {:.0} ms",
        millis(stopped.elapsed)
    );
    stopped.assert_clean_exit(LIMIT);
    drop(remote_client);
    drop(repo);
    wait_for_no_session(&remote, "remote");
    wait_for_no_session(&repository, "repository");
}

/// Rows of every `*_src_tmp` table of the repository for `srvid`.
fn staged_rows(repo: &mut Client, srvid: i32) -> Vec<(String, i64)> {
    let tables: Vec<String> = repo
        .query(
            "SELECT relname::text FROM pg_class \
             WHERE relname LIKE 'powa%\\_src\\_tmp' AND relkind = 'r' ORDER BY relname",
            &[],
        )
        .expect("list the *_src_tmp tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!tables.is_empty(), "no *_src_tmp table on the repository");
    tables
        .into_iter()
        .map(|table| {
            let rows: i64 = repo
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE srvid = $1"),
                    &[&srvid],
                )
                .unwrap_or_else(|error| panic!("count rows of {table}: {error}"))
                .get(0);
            (table, rows)
        })
        .collect()
}

/// The `*_src_tmp` tables a collector's open transaction on the repository
/// has written into (it holds their RowExclusiveLock).
fn staging_tables_written(repo: &mut Client) -> Vec<String> {
    repo.query(
        "SELECT DISTINCT c.relname::text FROM pg_locks l \
         JOIN pg_class c ON c.oid = l.relation \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE c.relname LIKE 'powa%\\_src\\_tmp' AND l.mode = 'RowExclusiveLock' \
           AND a.application_name LIKE 'PoWA%' \
         ORDER BY 1",
        &[],
    )
    .expect("read pg_locks of the repository")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[test]
fn sigterm_during_a_snapshot_rolls_it_back_and_exits() {
    const LIMIT: Duration = Duration::from_secs(5);
    let (repository, remote, srvid) = repository_with_remote(IDLE_FREQUENCY);
    // The snapshot will hang in this datasource, after the others (of
    // higher priority) were copied into the repository's transaction.
    slow_down_bgwriter_source(&remote, 60.0);
    postpone_snapshots(&repository);
    let mut repo = repository.connect_powa();
    let mut remote_client = remote.connect("postgres");

    let (mut collector, mut web) = start_collector_with_web(&repository, &[srvid], START_TIMEOUT);
    let before = snapshot_meta(&mut repo, srvid);
    let answer = web.ask("FORCE_SNAPSHOT", &[&srvid.to_string()]);
    assert!(
        answer.starts_with("FORCE_SNAPSHOT OK "),
        "FORCE_SNAPSHOT: {answer:?}"
    );
    let staging = collector.wait_for(
        Duration::from_secs(20),
        "the snapshot to reach the slow datasource",
        || {
            let sessions = collector_sessions(&mut remote_client);
            let stuck = sessions.iter().any(|s| {
                s.state.as_deref() == Some("active") && s.query.contains("powa_stat_bgwriter_src")
            });
            let staging = staging_tables_written(&mut repo);
            if stuck && !staging.is_empty() {
                Ok(staging)
            } else {
                Err(format!("{sessions:?}; staging tables written: {staging:?}"))
            }
        },
    );

    let stopped = collector.signal_and_wait("TERM", Duration::from_secs(15));
    eprintln!(
        "MEASURE: SIGTERM to exit with a snapshot in flight: {:.0} ms (its transaction had \
         written into {})",
        millis(stopped.elapsed),
        staging.join(", ")
    );
    stopped.assert_clean_exit(LIMIT);

    // Nothing half-written: no snapshot recorded, nothing left staged.
    let after = snapshot_meta(&mut repo, srvid);
    assert_eq!(
        (after.coalesce_seq, after.snapts),
        (before.coalesce_seq, before.snapts),
        "powa_snapshot_metas after the interrupted snapshot"
    );
    let staged: Vec<_> = staged_rows(&mut repo, srvid)
        .into_iter()
        .filter(|(_, rows)| *rows > 0)
        .collect();
    assert!(
        staged.is_empty(),
        "rows left in *_src_tmp tables: {staged:?}"
    );
    // The remote's query was cancelled, not left sleeping.
    drop(remote_client);
    drop(repo);
    wait_for_no_session(&remote, "remote");
    wait_for_no_session(&repository, "repository");
}

/// A server that accepts connections and never answers: a worker
/// connecting to it waits for the server's first message until its
/// `connect_timeout`, past any stop request.
struct SilentServer {
    listener: TcpListener,
    accepted: Vec<std::net::TcpStream>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a silent server");
        listener
            .set_nonblocking(true)
            .expect("make the silent server non-blocking");
        SilentServer {
            listener,
            accepted: Vec::new(),
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("local address").port()
    }

    /// Takes the connections waiting; returns how many were taken so far.
    fn accept(&mut self) -> usize {
        while let Ok((stream, _)) = self.listener.accept() {
            self.accepted.push(stream);
        }
        self.accepted.len()
    }
}

/// How long a connection attempt may last here (`PGCONNECT_TIMEOUT`):
/// far longer than the collector's shutdown deadline, so that a worker
/// connecting to the silent server is still stuck when it is told to stop.
const STUCK_CONNECT_TIMEOUT: &str = "60";

/// Starts a collector with one server, silent, whose worker is stuck
/// connecting to it.
fn collector_with_a_stuck_worker(repository: &Cluster, silent: &mut SilentServer) -> Collector {
    let port = i32::from(silent.port());
    repository
        .connect_powa()
        .execute(
            "SELECT powa_register_server(hostname => '127.0.0.1', port => $1, \
             username => 'postgres', dbname => 'powa', frequency => $2)",
            &[&port, &IDLE_FREQUENCY],
        )
        .expect("register the silent server");
    let config = Collector::config_for(repository).to_string();
    let mut collector =
        Collector::start_with_env(&config, &[("PGCONNECT_TIMEOUT", STUCK_CONNECT_TIMEOUT)]);
    collector.wait_for(
        Duration::from_secs(20),
        "the worker to connect to the silent server",
        || match silent.accept() {
            0 => Err("no connection yet".to_string()),
            _ => Ok(()),
        },
    );
    collector
}

#[test]
fn a_stuck_worker_delays_exit_by_the_shutdown_deadline_at_most() {
    let repository = Cluster::repository();
    let mut silent = SilentServer::start();
    let mut collector = collector_with_a_stuck_worker(&repository, &mut silent);

    let stopped = collector.signal_and_wait("TERM", SHUTDOWN_DEADLINE * 3);
    eprintln!(
        "MEASURE: SIGTERM to exit with a worker stuck connecting: {:.0} ms",
        millis(stopped.elapsed)
    );
    // The shutdown deadline, and 2 s for the rest of the exit.
    stopped.assert_clean_exit(SHUTDOWN_DEADLINE + Duration::from_secs(2));
    wait_for_no_session(&repository, "repository");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let repository = Cluster::repository();
    let mut silent = SilentServer::start();
    let mut collector = collector_with_a_stuck_worker(&repository, &mut silent);

    let first = Instant::now();
    collector.signal("TERM");
    // Wait until the collector is stopping: it will wait for the stuck
    // worker up to its shutdown deadline.
    let log_before = collector.log().len();
    wait_until(
        Duration::from_secs(5),
        "the collector to start stopping",
        || collector.log()[log_before..].contains("stopping 1 workers"),
    );
    let second = collector.signal_and_wait("TERM", Duration::from_secs(5));
    let total = first.elapsed();
    eprintln!(
        "MEASURE: second SIGTERM to exit: {:.0} ms ({:.0} ms after the first)",
        millis(second.elapsed),
        millis(total)
    );
    second.assert_exited_zero();
    assert!(
        total < SHUTDOWN_DEADLINE,
        "the collector exited {total:?} after the first SIGTERM: it waited for its \
         shutdown deadline instead of exiting at the second"
    );
    assert!(
        second.elapsed < Duration::from_secs(1),
        "exit took {:?} after the second SIGTERM",
        second.elapsed
    );
}
