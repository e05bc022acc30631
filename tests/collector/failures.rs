//! Failures the collector must survive and report in
//! `powa_snapshot_metas.errors`: a remote without PoWA, a datasource that
//! cannot be stored on the repository, a failing `powa_take_snapshot`.

use std::time::Duration;

use postgres::Client;

use crate::harness::{
    Cluster, Collector, Powa, RemoteOptions, SnapshotMeta, count_rows, repository_with_remote_of,
    repository_with_two_remotes, snapshot_meta, wait_until,
};

/// The last snapshot of a server and the history rows it stored.
#[derive(Debug)]
struct SnapshotState {
    meta: SnapshotMeta,
    /// Rows of `powa_statements_history_current` taken by the last snapshot.
    statements_rows: i64,
    /// Rows of `powa_wait_sampling_history_current` taken by the last snapshot.
    wait_sampling_rows: i64,
}

/// Reads the last snapshot of `srvid` and its rows in one statement, so that
/// all of it belongs to one snapshot. A row belongs to the last snapshot when
/// its remote timestamp is less than half a period (of 5 s) older than
/// `snapts`: the rows of the previous snapshot are a whole period older.
fn snapshot_state(repo: &mut Client, srvid: i32) -> SnapshotState {
    let row = repo
        .query_one(
            "SELECT m.coalesce_seq, extract(epoch FROM m.snapts)::float8, m.errors, \
               (SELECT count(*) FROM powa_statements_history_current h \
                 WHERE h.srvid = m.srvid AND (h.record).ts > m.snapts - interval '2.5 s'), \
               (SELECT count(*) FROM powa_wait_sampling_history_current w \
                 WHERE w.srvid = m.srvid AND (w.record).ts > m.snapts - interval '2.5 s') \
             FROM powa_snapshot_metas m WHERE m.srvid = $1",
            &[&srvid],
        )
        .unwrap_or_else(|error| panic!("snapshot state of server {srvid}: {error}"));
    SnapshotState {
        meta: SnapshotMeta {
            coalesce_seq: row.get(0),
            snapts: row.get(1),
            errors: row.get(2),
        },
        statements_rows: row.get(3),
        wait_sampling_rows: row.get(4),
    }
}

/// Sessions of the collector on a cluster.
fn collector_sessions(cluster: &Cluster) -> i64 {
    cluster
        .connect("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'PoWA collector%'",
            &[],
        )
        .expect("pg_stat_activity")
        .get(0)
}

#[test]
fn remote_without_powa_stops_only_its_worker() {
    let repository = Cluster::repository();
    let healthy = Cluster::remote(&RemoteOptions::default());
    let bare = Cluster::remote(&RemoteOptions {
        powa: false,
        ..RemoteOptions::default()
    });
    let good = repository.register_remote(&healthy, "healthy", 5);
    let bad = repository.register_remote(&bare, "without-powa", 5);
    let mut repo = repository.connect_powa();

    let mut collector = Collector::start(&repository);
    collector.wait_for(
        Duration::from_secs(20),
        "\"PoWA extension not found\" in the errors of the remote without powa",
        || {
            let meta = snapshot_meta(&mut repo, bad);
            if meta.has_error_containing("powa extension not found") {
                Ok(())
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );

    let seen_at = snapshot_meta(&mut repo, good).coalesce_seq;
    collector.wait_for(
        Duration::from_secs(20),
        "two more snapshots of the healthy remote",
        || {
            let meta = snapshot_meta(&mut repo, good);
            assert!(
                meta.errors.is_none(),
                "errors on the healthy remote: {:?}",
                meta.errors
            );
            if meta.coalesce_seq >= seen_at + 2 {
                Ok(())
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );

    wait_until(
        Duration::from_secs(10),
        "the collector to leave the remote without powa",
        || collector_sessions(&bare) == 0,
    );
    let meta = snapshot_meta(&mut repo, bad);
    assert_eq!(
        meta.coalesce_seq, 1,
        "the remote without powa got a snapshot"
    );
    assert!(
        meta.has_error_containing("powa extension not found"),
        "the error went away: {meta:?}"
    );
    assert!(
        collector_sessions(&healthy) >= 1,
        "the healthy worker left its remote"
    );
}

/// Makes the COPY into `powa_wait_sampling_src_tmp` fail once the rows are
/// in: a column is missing from them.
const MISSING_COLUMN: Breakage = Breakage {
    break_sql: "ALTER TABLE powa_wait_sampling_src_tmp ADD COLUMN broken int NOT NULL",
    repair_sql: "ALTER TABLE powa_wait_sampling_src_tmp DROP COLUMN broken",
};

/// Makes the COPY into `powa_wait_sampling_src_tmp` fail before any row:
/// the table is not there, while the remote is already sending its rows.
const MISSING_TABLE: Breakage = Breakage {
    break_sql: "ALTER TABLE powa_wait_sampling_src_tmp RENAME TO wait_sampling_away",
    repair_sql: "ALTER TABLE wait_sampling_away RENAME TO powa_wait_sampling_src_tmp",
};

/// How a test breaks a datasource on the repository, and repairs it.
struct Breakage {
    break_sql: &'static str,
    repair_sql: &'static str,
}

#[test]
fn datasource_failing_on_the_repository_is_reported_and_others_land() {
    failing_datasource_is_reported(Powa::V4, &MISSING_COLUMN);
}

#[test]
fn powa5_datasource_failing_on_the_repository_is_reported_and_others_land() {
    failing_datasource_is_reported(Powa::V5, &MISSING_COLUMN);
}

#[test]
fn datasource_whose_table_is_missing_is_reported_and_others_land() {
    failing_datasource_is_reported(Powa::V5, &MISSING_TABLE);
}

fn failing_datasource_is_reported(version: Powa, breakage: &Breakage) {
    let (repository, _remote, srvid) = repository_with_remote_of(version, 5);
    let mut repo = repository.connect_powa();

    let mut collector = Collector::start(&repository);
    collector.wait_for_first_snapshot(&mut repo, srvid, Duration::from_secs(20));

    repo.batch_execute(breakage.break_sql)
        .expect("break powa_wait_sampling_src_tmp");
    let failed = collector.wait_for(
        Duration::from_secs(20),
        "a snapshot with an error about powa_wait_sampling_src",
        || {
            let state = snapshot_state(&mut repo, srvid);
            if state.meta.has_error_containing("powa_wait_sampling_src") {
                Ok(state)
            } else {
                Err(format!("{state:?}"))
            }
        },
    );
    println!("failed snapshot: {failed:?}");
    assert!(
        failed.statements_rows > 0,
        "the statements of the failed snapshot did not land: {failed:?}"
    );
    assert_eq!(
        failed.wait_sampling_rows, 0,
        "wait sampling rows landed although their COPY failed: {failed:?}"
    );

    repo.batch_execute(breakage.repair_sql)
        .expect("repair powa_wait_sampling_src_tmp");
    let fixed_at = snapshot_meta(&mut repo, srvid).coalesce_seq;
    let repaired = collector.wait_for(
        Duration::from_secs(20),
        "a snapshot without errors and with wait sampling rows",
        || {
            let state = snapshot_state(&mut repo, srvid);
            if state.meta.coalesce_seq > fixed_at
                && state.meta.errors.is_none()
                && state.wait_sampling_rows > 0
            {
                Ok(state)
            } else {
                Err(format!("{state:?}"))
            }
        },
    );
    println!("repaired snapshot: {repaired:?}");
    assert!(repaired.statements_rows > 0, "{repaired:?}");
}

#[test]
fn a_failed_powa_take_snapshot_leaves_no_staged_rows() {
    let (repository, _remote, srvid) = repository_with_remote_of(Powa::V4, 5);
    let mut repo = repository.connect_powa();
    // powa_take_snapshot starts by moving coalesce_seq on: make that fail,
    // and only that (the collector's error reports still go through).
    repo.batch_execute(
        "CREATE FUNCTION refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN RAISE EXCEPTION 'snapshot refused by the test'; END$$; \
         CREATE TRIGGER refuse_snapshot BEFORE UPDATE ON powa_snapshot_metas \
           FOR EACH ROW WHEN (NEW.coalesce_seq <> OLD.coalesce_seq) \
           EXECUTE FUNCTION refuse_snapshot()",
    )
    .expect("make powa_take_snapshot fail");

    let mut collector = Collector::start(&repository);
    let meta = collector.wait_for(
        Duration::from_secs(20),
        "the error of powa_take_snapshot",
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            if meta.has_error_containing("snapshot refused by the test") {
                Ok(meta)
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );
    assert_eq!(meta.coalesce_seq, 1, "{meta:?}");
    for table in ["powa_statements_src_tmp", "powa_databases_src_tmp"] {
        let staged = count_rows(&mut repo, table, srvid);
        assert_eq!(staged, 0, "rows of the failed snapshot left in {table}");
    }
}

#[test]
fn a_panicking_worker_is_reported_and_restarted() {
    if !cfg!(feature = "fault-injection") {
        panic!(
            "this test makes a worker panic through the fault-injection feature: \
             run cargo test --features fault-injection (scripts/test does)"
        );
    }
    let (repository, _remotes, srvids) = repository_with_two_remotes(5);
    let [victim, bystander] = srvids[..] else {
        unreachable!("two remotes")
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let trigger = dir.path().join("panic");
    let config = Collector::config_for(&repository).to_string();
    let trigger_path = trigger.to_str().expect("utf-8 path");
    let mut collector =
        Collector::start_with_env(&config, &[("POWA_COLLECTOR_PANIC_FILE", trigger_path)]);
    let mut repo = repository.connect_powa();
    collector.wait_for_a_snapshot_of_each(&mut repo, &srvids, Duration::from_secs(20));

    std::fs::write(&trigger, victim.to_string()).expect("ask for a panic");
    let reported = collector.wait_for(Duration::from_secs(20), "the panic, reported", || {
        let meta = snapshot_meta(&mut repo, victim);
        if meta.has_error_containing("panic injected") && !trigger.exists() {
            Ok(meta.coalesce_seq)
        } else {
            Err(format!("{meta:?}"))
        }
    });
    let bystander_seq = snapshot_meta(&mut repo, bystander).coalesce_seq;
    // Restarted: it snapshots again, and so does the other worker.
    collector.wait_for(Duration::from_secs(20), "snapshots after the panic", || {
        let victim_meta = snapshot_meta(&mut repo, victim);
        let bystander_meta = snapshot_meta(&mut repo, bystander);
        assert_eq!(bystander_meta.errors, None, "the other worker noticed");
        if victim_meta.coalesce_seq > reported && bystander_meta.coalesce_seq > bystander_seq {
            Ok(())
        } else {
            Err(format!("{victim_meta:?} {bystander_meta:?}"))
        }
    });
    let log = collector.log();
    assert!(
        log.contains("the worker panicked: panic injected for server"),
        "no log line for the panic"
    );
    collector.stop().assert_clean_exit(Duration::from_secs(2));
}
