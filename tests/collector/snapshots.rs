//! Snapshots of healthy remotes: they land every `frequency` seconds, without
//! errors, and store what the remote's pg_stat_statements held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::harness::{
    Collector, Powa, count_rows, repository_with_remote, repository_with_remote_of,
    repository_with_two_remotes, snapshot_meta,
};

/// What powa_statements_src leaves out of pg_stat_statements.
const PGSS_IGNORED: &str =
    "'^[[:space:]]*(DEALLOCATE|BEGIN|PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED)'";

/// A statement as powa_statements keys it: (queryid, dbid, userid).
pub type StatementKey = (i64, u32, u32);

/// The statements of the remote's pg_stat_statements that a snapshot takes,
/// with their text.
pub fn remote_statements(remote: &mut Client) -> BTreeMap<StatementKey, String> {
    remote
        .query(
            &format!(
                "SELECT s.queryid, s.dbid, s.userid, s.query \
                 FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 JOIN pg_roles r ON r.oid = s.userid \
                 WHERE s.query !~* {PGSS_IGNORED}"
            ),
            &[],
        )
        .expect("read pg_stat_statements on the remote")
        .iter()
        .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
        .collect()
}

/// The statements stored for `srvid` in the repository, with their text.
pub fn stored_statements(repo: &mut Client, srvid: i32) -> BTreeMap<StatementKey, String> {
    repo.query(
        "SELECT queryid, dbid, userid, query FROM powa_statements WHERE srvid = $1",
        &[&srvid],
    )
    .expect("read powa_statements")
    .iter()
    .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
    .collect()
}

#[test]
fn two_remotes_get_snapshots_every_frequency() {
    let (repository, remotes, srvids) = repository_with_two_remotes(5);
    let mut repo = repository.connect_powa();
    for &srvid in &srvids {
        assert_eq!(snapshot_meta(&mut repo, srvid).coalesce_seq, 1);
    }

    let mut collector = Collector::start(&repository);
    collector.wait_for(
        Duration::from_secs(20),
        "two snapshots of each remote",
        || {
            let metas: Vec<_> = srvids
                .iter()
                .map(|&srvid| (srvid, snapshot_meta(&mut repo, srvid)))
                .collect();
            for (srvid, meta) in &metas {
                assert!(
                    meta.errors.is_none(),
                    "server {srvid} has errors: {:?}",
                    meta.errors
                );
            }
            if metas.iter().all(|(_, meta)| meta.coalesce_seq >= 3) {
                Ok(())
            } else {
                Err(format!("{metas:?}"))
            }
        },
    );

    for (remote, &srvid) in remotes.iter().zip(&srvids) {
        let meta = snapshot_meta(&mut repo, srvid);
        assert_eq!(meta.errors, None, "errors of server {srvid}");
        for table in [
            "powa_statements_history_current",
            "powa_kcache_metrics_current",
        ] {
            let rows = count_rows(&mut repo, table, srvid);
            assert!(rows > 0, "no rows in {table} for server {srvid}");
        }

        // The worker keeps its connection to the remote, named after it.
        let name = format!("PoWA collector - worker 127.0.0.1:{}", remote.port());
        let sessions: i64 = remote
            .connect("postgres")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .expect("pg_stat_activity of the remote")
            .get(0);
        assert!(sessions >= 1, "no session named {name:?} on the remote");
    }

    let main_thread = format!(
        "PoWA collector - main thread ({})",
        env!("CARGO_PKG_VERSION")
    );
    let sessions: i64 = repo
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&main_thread],
        )
        .expect("pg_stat_activity of the repository")
        .get(0);
    assert_eq!(
        sessions, 1,
        "sessions named {main_thread:?} on the repository"
    );

    let log = collector.log();
    assert!(
        log.contains("snapshot done in"),
        "no \"snapshot done in\" line in the collector log"
    );
}

#[test]
fn snapshot_stores_what_the_remote_had() {
    stores_what_the_remote_had(Powa::V4);
}

#[test]
fn powa5_snapshot_stores_what_the_remote_had() {
    stores_what_the_remote_had(Powa::V5);
}

fn stores_what_the_remote_had(version: Powa) {
    let (repository, remote, srvid) = repository_with_remote_of(version, 5);

    // Distinct statements: each pair of columns is its own query.
    let mut remote_client = remote.connect_powa();
    remote_client
        .batch_execute("CREATE TABLE items (c1 int, c2 int, c3 int, c4 int, c5 int)")
        .expect("create table items");
    for i in 1..=5 {
        for j in 1..=5 {
            remote_client
                .batch_execute(&format!("SELECT c{i}, c{j} FROM items"))
                .expect("query items");
        }
    }

    // No collector runs yet, so the first snapshot starts after this.
    let before = remote_statements(&mut remote_client);
    let generated = before
        .values()
        .filter(|query| query.starts_with("SELECT c") && query.ends_with("FROM items"))
        .count();
    assert_eq!(
        generated, 25,
        "distinct generated statements in pg_stat_statements"
    );

    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    collector.wait_for_first_snapshot(&mut repo, srvid, Duration::from_secs(20));
    let stored = stored_statements(&mut repo, srvid);
    let after = remote_statements(&mut remote_client);

    let missing: Vec<_> = before
        .iter()
        .filter(|(key, _)| !stored.contains_key(key))
        .collect();
    assert!(
        missing.is_empty(),
        "{} statements the remote had before the snapshot are not stored: {missing:?}",
        missing.len()
    );
    let unknown: Vec<_> = stored
        .iter()
        .filter(|(key, _)| !after.contains_key(key))
        .collect();
    assert!(
        unknown.is_empty(),
        "{} stored statements the remote never had: {unknown:?}",
        unknown.len()
    );
    let different: Vec<_> = before
        .iter()
        .filter(|(key, query)| stored.get(key).is_some_and(|stored| stored != *query))
        .collect();
    assert!(
        different.is_empty(),
        "statements stored with another text: {different:?}"
    );
    println!(
        "{} statements before, {} stored, {} after",
        before.len(),
        stored.len(),
        after.len()
    );
}

#[test]
fn snapshots_follow_the_frequency() {
    const FREQUENCY: i32 = 5;
    const TOLERANCE: f64 = 0.05;
    const SNAPSHOTS: usize = 6;
    let frequency = f64::from(FREQUENCY);

    let (repository, _remote, srvid) = repository_with_remote(FREQUENCY);
    let mut repo = repository.connect_powa();

    let mut collector = Collector::start(&repository);
    let start = Instant::now();
    let mut snapts: Vec<f64> = Vec::new();
    collector.wait_for(
        Duration::from_secs_f64(15.0 + SNAPSHOTS as f64 * frequency),
        &format!("{SNAPSHOTS} snapshots"),
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            assert!(meta.errors.is_none(), "errors: {:?}", meta.errors);
            if meta.snapts.is_finite() && snapts.last() != Some(&meta.snapts) {
                if let Some(last) = snapts.last() {
                    assert!(
                        meta.snapts - last < 2.0 * frequency,
                        "a snapshot was missed between {last} and {}",
                        meta.snapts
                    );
                }
                snapts.push(meta.snapts);
            }
            if snapts.len() >= SNAPSHOTS {
                Ok(())
            } else {
                Err(format!("{} snapshots seen: {snapts:?}", snapts.len()))
            }
        },
    );
    let intervals: Vec<f64> = snapts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    println!(
        "snapshot intervals (s) over {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        intervals
            .iter()
            .map(|interval| format!("{interval:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (low, high) = (frequency * (1.0 - TOLERANCE), frequency * (1.0 + TOLERANCE));
    for interval in &intervals {
        assert!(
            (low..=high).contains(interval),
            "interval {interval:.3} s is not within {low}..{high} s: {intervals:?}"
        );
    }
}
