//! Reload, by SIGHUP or by RELOAD from powa-web: the workers follow the
//! server list within 2 s (deleted and deactivated servers lose their
//! worker, added ones get one, changed ones reconnect, unchanged ones keep
//! their connection), as seen three ways: WORKERS_STATUS, the workers'
//! sessions on the remotes, and the process's threads. A reload that cannot
//! read its configuration keeps everything running as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;

use crate::fleet::{
    host, postpone_snapshots, register_at, remote_on_addresses_of, worker_pids, worker_sessions,
};
use crate::harness::{
    Cluster, Collector, Powa, free_port, repository_with_remote, snapshot_meta, wait_for,
};
use crate::powa_web::{PowaWeb, all_running, start_collector_with_web};

/// How long workers may take to start and connect.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How soon after a reload the workers must follow the server list.
const RELOAD_DEADLINE: Duration = Duration::from_secs(2);

/// Frequency of the servers: no snapshot comes during the test.
const IDLE_FREQUENCY: i32 = 300;

/// Threads of the collector besides its workers: the main thread, the
/// watchdog and the repository pool's reaper. The `postgres` client drives each connection on the thread
/// that uses it and resolves no host name here (servers are IP addresses),
/// and no cancel request runs while no snapshot is due, so nothing else
/// runs.
pub const THREADS_BESIDES_WORKERS: usize = 3;

/// Seconds since the epoch, as `pg_stat_activity` dates sessions.
fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// What the collector should run: server key (`host:port`) by srvid.
type Fleet = BTreeMap<i32, String>;

/// Waits until WORKERS_STATUS, the workers' sessions on the remote and the
/// collector's threads all show exactly `fleet`, at most until `deadline`
/// from `since`; returns how long that took.
fn wait_for_agreement(
    collector: &Collector,
    web: &mut PowaWeb,
    remote: &mut Client,
    fleet: &Fleet,
    since: Instant,
    deadline: Duration,
) -> Duration {
    let srvids: Vec<i32> = fleet.keys().copied().collect();
    let expected_status = all_running(&srvids);
    let expected_keys: BTreeSet<&String> = fleet.values().collect();
    let expected_threads = fleet.len() + THREADS_BESIDES_WORKERS;
    let timeout = deadline.saturating_sub(since.elapsed());
    wait_for(
        timeout,
        &format!("workers, remote sessions and threads to match {fleet:?}"),
        || {
            let status = web.workers_status(None);
            let sessions = worker_pids(remote);
            let threads = collector.threads();
            let one_each = sessions.values().all(|pids| pids.len() == 1);
            let keys: BTreeSet<&String> = sessions.keys().collect();
            if status == expected_status
                && keys == expected_keys
                && one_each
                && threads == expected_threads
            {
                Ok(since.elapsed())
            } else {
                Err(format!(
                    "WORKERS_STATUS {status:?}, remote sessions {sessions:?}, {threads} threads \
                     (expected {expected_threads})"
                ))
            }
        },
    )
}

#[test]
fn workers_follow_the_server_list_on_sighup_and_on_reload() {
    workers_follow_the_server_list(Powa::V4);
}

#[test]
fn powa5_workers_follow_the_server_list_on_sighup_and_on_reload() {
    workers_follow_the_server_list(Powa::V5);
}

fn workers_follow_the_server_list(version: Powa) {
    let repository = Cluster::repository_of(version);
    let remote = remote_on_addresses_of(version, 6, 100);
    let key = |n: usize| format!("{}:{}", host(n), remote.port());
    let initial = register_at(
        &repository,
        &remote,
        &[host(1), host(2), host(3), host(4)],
        IDLE_FREQUENCY,
    );
    let [deleted, updated, deactivated, unchanged] = initial[..] else {
        unreachable!("four servers registered");
    };
    postpone_snapshots(&repository);
    let mut admin = repository.connect_powa();
    let mut remote_client = remote.connect("postgres");

    let (mut collector, mut web) = start_collector_with_web(&repository, &initial, START_TIMEOUT);
    let mut fleet: Fleet = initial
        .iter()
        .zip(1..)
        .map(|(&srvid, n)| (srvid, key(n)))
        .collect();
    wait_for_agreement(
        &collector,
        &mut web,
        &mut remote_client,
        &fleet,
        Instant::now(),
        START_TIMEOUT,
    );
    let before = worker_pids(&mut remote_client);

    // SIGHUP after one server is deleted, one updated, one deactivated and
    // one added.
    admin
        .execute("SELECT powa_delete_and_purge_server($1)", &[&deleted])
        .expect("delete a server");
    admin
        .execute(
            "UPDATE powa_servers SET frequency = 600 WHERE id = $1",
            &[&updated],
        )
        .expect("update a server");
    admin
        .execute("SELECT powa_deactivate_server($1)", &[&deactivated])
        .expect("deactivate a server");
    let added = repository.register_remote_at(&remote, &host(5), IDLE_FREQUENCY);
    postpone_snapshots(&repository);
    fleet.remove(&deleted);
    fleet.remove(&deactivated);
    fleet.insert(added, key(5));

    let signalled = Instant::now();
    let signalled_at = epoch_now();
    collector.signal("HUP");
    let followed = wait_for_agreement(
        &collector,
        &mut web,
        &mut remote_client,
        &fleet,
        signalled,
        RELOAD_DEADLINE,
    );
    let new_session = worker_sessions(&mut remote_client)[&key(5)][0].backend_start;
    eprintln!(
        "MEASURE: SIGHUP to the new worker's first connection on its remote: {:.0} ms",
        (new_session - signalled_at) * 1000.0
    );
    eprintln!(
        "MEASURE: SIGHUP to WORKERS_STATUS, remote sessions and threads all following: {:.0} ms",
        followed.as_secs_f64() * 1000.0
    );
    let after = worker_pids(&mut remote_client);
    assert_ne!(
        after[&key(2)],
        before[&key(2)],
        "the worker of the updated server reconnects"
    );
    assert_eq!(
        after[&key(4)],
        before[&key(4)],
        "the worker of the unchanged server keeps its connection"
    );

    // RELOAD after the updated server is deleted, the unchanged one gets an
    // alias, the added one is deactivated, the deactivated one comes back
    // and another one is added.
    admin
        .execute("SELECT powa_delete_and_purge_server($1)", &[&updated])
        .expect("delete a server");
    admin
        .execute(
            "UPDATE powa_servers SET alias = 'renamed' WHERE id = $1",
            &[&unchanged],
        )
        .expect("give a server an alias");
    admin
        .execute("SELECT powa_deactivate_server($1)", &[&added])
        .expect("deactivate a server");
    admin
        .execute(
            "UPDATE powa_servers SET frequency = $2 WHERE id = $1",
            &[&deactivated, &IDLE_FREQUENCY],
        )
        .expect("activate a server again");
    let added_again = repository.register_remote_at(&remote, &host(6), IDLE_FREQUENCY);
    postpone_snapshots(&repository);
    fleet.remove(&updated);
    fleet.remove(&added);
    fleet.insert(deactivated, key(3));
    fleet.insert(added_again, key(6));

    let asked = Instant::now();
    let asked_at = epoch_now();
    assert_eq!(web.ask("RELOAD", &[]), "RELOAD OK OK");
    let answered = asked.elapsed();
    let followed = wait_for_agreement(
        &collector,
        &mut web,
        &mut remote_client,
        &fleet,
        asked,
        RELOAD_DEADLINE,
    );
    let sessions = worker_sessions(&mut remote_client);
    eprintln!(
        "MEASURE: RELOAD (NOTIFY sent) to the new worker's first connection on its remote: \
         {:.0} ms (RELOAD OK OK after {:.0} ms; the reactivated server's worker connected \
         after {:.0} ms)",
        (sessions[&key(6)][0].backend_start - asked_at) * 1000.0,
        answered.as_secs_f64() * 1000.0,
        (sessions[&key(3)][0].backend_start - asked_at) * 1000.0
    );
    eprintln!(
        "MEASURE: RELOAD to WORKERS_STATUS, remote sessions and threads all following: {:.0} ms",
        followed.as_secs_f64() * 1000.0
    );
    let after_reload = worker_pids(&mut remote_client);
    assert_ne!(
        after_reload[&key(4)],
        after[&key(4)],
        "the worker of the server given an alias reconnects"
    );

    collector.stop().assert_exited_zero();
}

#[test]
fn a_reload_that_cannot_read_its_config_keeps_the_workers_running() {
    const FREQUENCY: i32 = 5;
    let (repository, remote, srvid) = repository_with_remote(FREQUENCY);
    let mut repo = repository.connect_powa();
    let mut remote_client = remote.connect("postgres");

    let (mut collector, mut web) = start_collector_with_web(&repository, &[srvid], START_TIMEOUT);
    let pids = worker_pids(&mut remote_client);
    let threads = collector.threads();
    let config_path = collector.config_path();
    let path = config_path.display().to_string();
    let good = fs::read_to_string(&config_path).expect("read the collector config");

    let unreachable = serde_json::json!({
        "repository": {
            "dsn": format!("host=127.0.0.1 port={} user=postgres dbname=powa", free_port())
        },
        "debug": true,
    })
    .to_string();
    let cases: [(&str, Option<String>, &[&str]); 5] = [
        (
            "truncated JSON",
            Some("{\"repository\": {\"dsn\": ".into()),
            &[&path, "invalid JSON"],
        ),
        (
            "dsn of the wrong type",
            Some(r#"{"repository": {"dsn": 5}}"#.into()),
            &[&path, "repository.dsn"],
        ),
        (
            "no dsn",
            Some(r#"{"repository": {}}"#.into()),
            &[&path, "repository.dsn"],
        ),
        (
            "unreachable repository",
            Some(unreachable),
            &["cannot connect to the repository"],
        ),
        ("no file", None, &[&path, "cannot read"]),
    ];
    for (what, text, needles) in cases {
        match text {
            Some(text) => fs::write(&config_path, text).expect("write the config"),
            None => fs::remove_file(&config_path).expect("remove the config"),
        }
        let answer = web.ask("RELOAD", &[]);
        assert!(answer.starts_with("RELOAD ERROR "), "{what}: {answer:?}");
        for needle in needles {
            assert!(
                answer.contains(needle),
                "{what}: {answer:?} does not name {needle:?}"
            );
        }
        assert_eq!(
            web.workers_status(None),
            all_running(&[srvid]),
            "{what}: workers after the failed reload"
        );
        assert_eq!(
            worker_pids(&mut remote_client),
            pids,
            "{what}: worker sessions after the failed reload"
        );
        assert_eq!(collector.threads(), threads, "{what}: threads");
    }

    // SIGHUP with a bad file: the failure is logged, nothing changes.
    fs::write(&config_path, "{").expect("write the config");
    let failures = collector.log().matches("reload failed").count();
    collector.signal("HUP");
    wait_for(
        Duration::from_secs(5),
        "the failed reload after SIGHUP in the log",
        || {
            let logged = collector.log().matches("reload failed").count();
            if logged > failures {
                Ok(())
            } else {
                Err(format!("{logged} failed reloads logged"))
            }
        },
    );
    assert_eq!(
        web.workers_status(None),
        all_running(&[srvid]),
        "workers after a failed SIGHUP"
    );

    // Snapshots go on with the running configuration.
    let seq = snapshot_meta(&mut repo, srvid).coalesce_seq;
    let meta = collector.wait_for(
        Duration::from_secs(3 * FREQUENCY as u64),
        "a snapshot after the failed reloads",
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            if meta.coalesce_seq > seq {
                Ok(meta)
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );
    assert_eq!(meta.errors, None, "errors of the snapshot");
    assert_eq!(worker_pids(&mut remote_client), pids, "worker sessions");

    // A good file is taken again; `debug` follows the file.
    let quiet = good.replace("\"debug\":true", "\"debug\":false");
    assert_ne!(quiet, good, "the test's config sets debug: {good}");
    fs::write(&config_path, quiet).expect("write the config");
    assert_eq!(web.ask("RELOAD", &[]), "RELOAD OK OK");
    let debug_lines = collector.log().matches(" DEBUG ").count();
    web.workers_status(None);
    assert_eq!(
        collector.log().matches(" DEBUG ").count(),
        debug_lines,
        "debug lines logged after a reload with debug false"
    );
    fs::write(&config_path, &good).expect("write the config");
    assert_eq!(web.ask("RELOAD", &[]), "RELOAD OK OK");
    let debug_lines = collector.log().matches(" DEBUG ").count();
    web.workers_status(None);
    assert!(
        collector.log().matches(" DEBUG ").count() > debug_lines,
        "no debug line logged after a reload with debug true"
    );
    assert_eq!(worker_pids(&mut remote_client), pids, "worker sessions");
}
