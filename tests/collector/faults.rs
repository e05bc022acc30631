//! Faults of the peers, each injected while a snapshot is in flight (the
//! remote's `powa_stat_bgwriter_src` is slowed down so that one always is):
//! a remote backend stopped with SIGSTOP, a remote or the repository whose
//! network no longer carries anything (the harness's proxy in blackhole
//! mode), a remote killed, the repository down for 20 s. For each: nothing
//! partial lands, no collector session stays in a transaction past the
//! deadline, the error is shown where the repository can be reached,
//! WORKERS_STATUS is answered within 1 s wherever the repository can be
//! reached, the other servers keep their schedule, the faulty one recovers
//! within 2 periods once the fault is over, and SIGTERM exits within 2 s
//! while the fault is on. Times to detection and recovery are printed as
//! `MEASURE:` lines.

use std::process::Command;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::fleet::slow_down_bgwriter_source;
use crate::harness::{Cluster, Collector, RemoteOptions, count_rows, snapshot_meta, wait_for};
use crate::powa_web::PowaWeb;
use crate::proxy::{Mode, Proxy};

const FREQUENCY: i32 = 5;
const PERIOD: Duration = Duration::from_secs(FREQUENCY as u64);
/// `snapshot_timeout` of the collector under test.
const TIMEOUT: Duration = Duration::from_secs(4);
/// How long after its deadline a snapshot's connections are dropped
/// (`watchdog::TRIP_GRACE`), and some slack for the server to notice.
const AFTER_DEADLINE: Duration = Duration::from_secs(7);
/// How long the slowed-down datasource takes.
const SLOW_SOURCE_SECONDS: f64 = 2.0;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest answer to WORKERS_STATUS allowed during a fault.
const ANSWER_LIMIT: Duration = Duration::from_secs(1);
/// The longest exit after SIGTERM allowed during a fault.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

fn config(dsn: &str) -> String {
    serde_json::json!({
        "repository": { "dsn": dsn },
        "debug": true,
        "snapshot_timeout": TIMEOUT.as_secs(),
    })
    .to_string()
}

/// Registers the remote reached on 127.0.0.1:`port` (a proxy's, or its own).
fn register(repository: &Cluster, port: u16) -> i32 {
    repository.register_address("127.0.0.1", port, FREQUENCY)
}

/// The pid of the worker's session on `remote` while it copies
/// `powa_stat_bgwriter_src` (a snapshot is then in flight), other than
/// `except`.
fn wait_for_slow_copy(remote: &Cluster, except: &[i32]) -> i32 {
    let mut client = remote.connect("postgres");
    wait_for(
        PERIOD * 3,
        "a snapshot copying powa_stat_bgwriter_src",
        || {
            client
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE application_name LIKE 'PoWA collector - worker %' \
                       AND state = 'active' AND query LIKE '%powa_stat_bgwriter_src%' \
                       AND pid <> ALL ($1) LIMIT 1",
                    &[&except],
                )
                .expect("pg_stat_activity of the remote")
                .map(|row| row.get(0))
                .ok_or_else(|| "no such session".to_string())
        },
    )
}

/// Sessions of the collector on the repository in a transaction older than
/// `limit`.
fn long_transactions(repository: &Cluster, limit: Duration) -> i64 {
    repository
        .connect_powa()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE (application_name LIKE 'PoWA collector%' OR application_name LIKE 'PoWA - %') \
               AND xact_start < now() - make_interval(secs => $1)",
            &[&limit.as_secs_f64()],
        )
        .expect("pg_stat_activity of the repository")
        .get(0)
}

/// Asks WORKERS_STATUS and checks the answer came within [`ANSWER_LIMIT`].
fn status_promptly(web: &mut PowaWeb) -> String {
    let (answer, latency) = web.ask_timed("WORKERS_STATUS", &[]);
    assert!(
        latency < ANSWER_LIMIT,
        "WORKERS_STATUS answered after {latency:?}: {answer}"
    );
    answer
}

/// Sends SIGCONT to a process stopped by the test, when dropped (the
/// cluster cannot shut down with a stopped backend).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: i32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid}");
}

/// A repository, a healthy remote and a faulty one, the faulty one slowed
/// down, with the collector running and a first snapshot of each landed.
struct Fleet {
    repository: Cluster,
    faulty: Cluster,
    _healthy: Cluster,
    faulty_srvid: i32,
    healthy_srvid: i32,
    repo: Client,
}

impl Fleet {
    /// `remote_port` maps the faulty remote's port to the one registered
    /// (a proxy's); `dsn` maps the repository's DSN to the one the
    /// collector uses.
    fn new(remote_port: impl FnOnce(&Cluster) -> u16) -> Fleet {
        let repository = Cluster::repository();
        let faulty = Cluster::remote(&RemoteOptions::default());
        let healthy = Cluster::remote(&RemoteOptions::default());
        slow_down_bgwriter_source(&faulty, SLOW_SOURCE_SECONDS);
        let faulty_srvid = register(&repository, remote_port(&faulty));
        let healthy_srvid = register(&repository, healthy.port());
        let repo = repository.connect_powa();
        Fleet {
            repository,
            faulty,
            _healthy: healthy,
            faulty_srvid,
            healthy_srvid,
            repo,
        }
    }

    /// Starts the collector, waits for a first snapshot of each server, and
    /// connects a powa-web client.
    fn start_collector(&mut self) -> (Collector, PowaWeb) {
        let mut collector = Collector::start_with_config(&config(&self.repository.dsn()));
        self.wait_for_first_snapshots(&mut collector);
        let web = PowaWeb::connect(&self.repository);
        (collector, web)
    }

    fn seq(&mut self, srvid: i32) -> i64 {
        snapshot_meta(&mut self.repo, srvid).coalesce_seq
    }

    fn wait_for_first_snapshots(&mut self, collector: &mut Collector) {
        let srvids = [self.faulty_srvid, self.healthy_srvid];
        collector.wait_for_a_snapshot_of_each(&mut self.repo, &srvids, START_TIMEOUT);
    }

    /// Waits until the faulty server shows an error containing `needle`,
    /// checking WORKERS_STATUS all along; returns when it came.
    fn wait_for_error(&mut self, web: &mut PowaWeb, needle: &str, since: Instant) -> Duration {
        let srvid = self.faulty_srvid;
        let repo = &mut self.repo;
        wait_for(
            TIMEOUT + AFTER_DEADLINE * 2,
            &format!("an error about {needle}"),
            || {
                status_promptly(web);
                let meta = snapshot_meta(repo, srvid);
                if meta.has_error_containing(needle) {
                    Ok(since.elapsed())
                } else {
                    Err(format!("{meta:?}"))
                }
            },
        )
    }

    /// Waits until the faulty server has a snapshot after `seq`; returns
    /// how long that took from `since`, and checks it is within 2 periods
    /// (plus the snapshot's own time).
    fn wait_for_recovery(&mut self, seq: i64, since: Instant) -> Duration {
        let srvid = self.faulty_srvid;
        let limit = PERIOD * 2 + TIMEOUT;
        let repo = &mut self.repo;
        wait_for(limit, "a snapshot of the faulty server", || {
            let meta = snapshot_meta(repo, srvid);
            if meta.coalesce_seq > seq {
                Ok(since.elapsed())
            } else {
                Err(format!("{meta:?}"))
            }
        })
    }

    /// Nothing of an abandoned snapshot is left staged, and no collector
    /// session is in a transaction older than the deadline allows.
    fn assert_nothing_partial(&mut self) {
        for table in ["powa_statements_src_tmp", "powa_stat_bgwriter_src_tmp"] {
            let staged = count_rows(&mut self.repo, table, self.faulty_srvid);
            assert_eq!(staged, 0, "rows of an abandoned snapshot in {table}");
        }
        let long = long_transactions(&self.repository, TIMEOUT + AFTER_DEADLINE);
        assert_eq!(
            long, 0,
            "collector sessions in a transaction past the deadline"
        );
    }
}

#[test]
fn a_stopped_remote_backend_is_dropped_at_the_deadline() {
    let mut fleet = Fleet::new(Cluster::port);
    let (mut collector, mut web) = fleet.start_collector();

    let pid = wait_for_slow_copy(&fleet.faulty, &[]);
    let healthy_before = fleet.seq(fleet.healthy_srvid);
    let faulty_before = fleet.seq(fleet.faulty_srvid);
    let fault = Instant::now();
    let stopped = Stopped::stop(pid);
    let detected = fleet.wait_for_error(&mut web, "deadline", fault);
    assert_eq!(
        fleet.seq(fleet.faulty_srvid),
        faulty_before,
        "the stuck snapshot landed"
    );
    fleet.assert_nothing_partial();
    // Until the next snapshot (at least the slowed-down source's time).
    wait_for(Duration::from_secs(2), "the timed-out status", || {
        let answer = status_promptly(&mut web);
        if answer.contains("last snapshot timed out") {
            Ok(())
        } else {
            Err(answer)
        }
    });
    assert!(
        fleet.seq(fleet.healthy_srvid) > healthy_before,
        "the healthy server kept its schedule"
    );
    // The stopped backend stays stopped; the worker goes on without it.
    let recovered = fleet.wait_for_recovery(faulty_before, fault);
    eprintln!(
        "MEASURE: SIGSTOPped remote backend: detected after {:.1} s, a new snapshot after {:.1} s",
        detected.as_secs_f64(),
        recovered.as_secs_f64()
    );
    wait_for_slow_copy(&fleet.faulty, &[pid]);
    collector.stop().assert_clean_exit(EXIT_LIMIT);
    drop(stopped);
}

#[test]
fn a_black_holed_remote_is_dropped_at_the_deadline() {
    let mut proxy = None;
    let mut fleet = Fleet::new(|remote| {
        let through = Proxy::to(remote.port());
        let port = through.port();
        proxy = Some(through);
        port
    });
    let proxy = proxy.expect("the proxy");
    let (mut collector, mut web) = fleet.start_collector();

    wait_for_slow_copy(&fleet.faulty, &[]);
    let healthy_before = fleet.seq(fleet.healthy_srvid);
    let faulty_before = fleet.seq(fleet.faulty_srvid);
    let fault = Instant::now();
    proxy.set(Mode::Blackhole);
    let detected = fleet.wait_for_error(&mut web, "deadline", fault);
    fleet.assert_nothing_partial();
    assert!(
        fleet.seq(fleet.healthy_srvid) > healthy_before,
        "the healthy server kept its schedule"
    );
    let ended = Instant::now();
    proxy.set(Mode::Pass);
    let recovered = fleet.wait_for_recovery(faulty_before, ended);
    eprintln!(
        "MEASURE: black-holed remote: detected after {:.1} s, recovered {:.1} s after the network came back",
        detected.as_secs_f64(),
        recovered.as_secs_f64()
    );
    wait_for_slow_copy(&fleet.faulty, &[]);
    proxy.set(Mode::Blackhole);
    collector.stop().assert_clean_exit(EXIT_LIMIT);
}

#[test]
fn a_black_holed_repository_leaves_no_transaction_behind() {
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    slow_down_bgwriter_source(&remote, SLOW_SOURCE_SECONDS);
    let srvid = register(&repository, remote.port());
    let proxy = Proxy::to(repository.port());
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=powa",
        proxy.port()
    );
    let mut repo = repository.connect_powa();
    let mut collector = Collector::start_with_config(&config(&dsn));
    collector.wait_for_a_snapshot_of_each(&mut repo, &[srvid], START_TIMEOUT);

    wait_for_slow_copy(&remote, &[]);
    let before = snapshot_meta(&mut repo, srvid).coalesce_seq;
    let fault = Instant::now();
    proxy.set(Mode::Blackhole);
    // The repository ends the stuck transaction itself (statement_timeout,
    // idle_in_transaction_session_timeout).
    let cleared = wait_for(
        TIMEOUT + AFTER_DEADLINE * 2,
        "no collector transaction",
        || {
            let open = long_transactions(&repository, Duration::ZERO);
            if open == 0 {
                Ok(fault.elapsed())
            } else {
                Err(format!("{open} collector sessions in a transaction"))
            }
        },
    );
    assert_eq!(
        snapshot_meta(&mut repo, srvid).coalesce_seq,
        before,
        "a partial snapshot landed"
    );
    assert_eq!(count_rows(&mut repo, "powa_statements_src_tmp", srvid), 0);
    let ended = Instant::now();
    proxy.set(Mode::Pass);
    let recovered = wait_for(
        PERIOD * 2 + TIMEOUT + AFTER_DEADLINE,
        "a snapshot after the fault",
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            if meta.coalesce_seq > before {
                Ok(ended.elapsed())
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );
    eprintln!(
        "MEASURE: black-holed repository: its transactions ended after {:.1} s, recovered {:.1} s after the network came back",
        cleared.as_secs_f64(),
        recovered.as_secs_f64()
    );
    // Black-holed again until the main thread finds its connection lost
    // and tries to open another, which hangs: SIGTERM still exits at once.
    wait_for_slow_copy(&remote, &[]);
    proxy.set(Mode::Blackhole);
    wait_for(
        Duration::from_secs(15),
        "the main thread to notice the lost repository",
        || {
            if collector
                .log()
                .contains("connection to the repository lost")
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    collector.stop().assert_clean_exit(EXIT_LIMIT);
}

#[test]
fn a_killed_remote_is_reported_and_recovers() {
    let mut fleet = Fleet::new(Cluster::port);
    let (mut collector, mut web) = fleet.start_collector();

    wait_for_slow_copy(&fleet.faulty, &[]);
    let healthy_before = fleet.seq(fleet.healthy_srvid);
    let faulty_before = fleet.seq(fleet.faulty_srvid);
    let fault = Instant::now();
    fleet.faulty.stop_now();
    let detected = fleet.wait_for_error(&mut web, "remote", fault);
    fleet.assert_nothing_partial();
    let ended = Instant::now();
    fleet.faulty.start_again();
    let recovered = fleet.wait_for_recovery(faulty_before, ended);
    assert!(
        fleet.seq(fleet.healthy_srvid) > healthy_before,
        "the healthy server kept its schedule"
    );
    eprintln!(
        "MEASURE: killed remote: detected after {:.1} s, recovered {:.1} s after its restart",
        detected.as_secs_f64(),
        recovered.as_secs_f64()
    );
    fleet.faulty.stop_now();
    collector.stop().assert_clean_exit(EXIT_LIMIT);
    fleet.faulty.start_again();
}

#[test]
fn a_repository_down_for_twenty_seconds_is_caught_up_with() {
    const DOWN: Duration = Duration::from_secs(20);
    let mut fleet = Fleet::new(Cluster::port);
    let mut collector = Collector::start_with_config(&config(&fleet.repository.dsn()));
    fleet.wait_for_first_snapshots(&mut collector);

    let before = fleet.seq(fleet.healthy_srvid);
    fleet.repository.stop_now();
    let down = Instant::now();
    // The collector lives through the outage.
    collector.wait_for(
        DOWN + Duration::from_secs(5),
        "the end of the outage",
        || {
            if down.elapsed() >= DOWN {
                Ok(())
            } else {
                Err("the repository is down".into())
            }
        },
    );
    fleet.repository.start_again();
    let ended = Instant::now();
    let mut repo = fleet.repository.connect_powa();
    let srvid = fleet.healthy_srvid;
    let recovered = wait_for(PERIOD * 2 + TIMEOUT, "a snapshot after the outage", || {
        let meta = snapshot_meta(&mut repo, srvid);
        if meta.coalesce_seq > before {
            Ok(ended.elapsed())
        } else {
            Err(format!("{meta:?}"))
        }
    });
    let mut web = PowaWeb::connect(&fleet.repository);
    let answered = wait_for(
        Duration::from_secs(15),
        "the main thread listening again",
        || {
            let reply = web.notify_collector("WORKERS_STATUS", &[]);
            if reply.answers.is_empty() {
                Err("no answer".into())
            } else {
                Ok(ended.elapsed())
            }
        },
    );
    eprintln!(
        "MEASURE: repository down {} s: a snapshot landed {:.1} s after its restart, WORKERS_STATUS answered after {:.1} s",
        DOWN.as_secs(),
        recovered.as_secs_f64(),
        answered.as_secs_f64()
    );
    fleet.repository.stop_now();
    collector.stop().assert_clean_exit(EXIT_LIMIT);
    fleet.repository.start_again();
}
