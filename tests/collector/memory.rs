//! Memory: the collector streams each datasource from the remote to the
//! repository, so its peak RSS must not grow with the number of statements.

use std::time::Duration;

use postgres::Client;

use crate::harness::{Cluster, Collector, RemoteOptions, count_rows, snapshot_meta};

/// Columns of table `wide`; `SELECT c{i}, c{j} FROM wide` is one distinct
/// statement per (i, j).
const COLUMNS: u32 = 200;
/// Values of j per column i.
const PAIRS_PER_COLUMN: u32 = 100;
/// Columns i of phase A (1,000 statements); phase B takes the rest (20,000).
const PHASE_A_COLUMNS: u32 = 10;
/// A comment making each statement's text longer, so that a collector
/// holding a whole datasource in memory shows it clearly.
const PADDING: usize = 300;
/// The most the peak RSS may grow between the two phases.
const MAX_GROWTH_KIB: u64 = 8 * 1024;

/// Runs `SELECT c{i}, c{j} FROM wide` for i in `columns` and j in
/// 1..=PAIRS_PER_COLUMN, nested in one DO block (tracked with track = all).
fn run_wide_statements(remote: &mut Client, columns: std::ops::RangeInclusive<u32>) {
    let padding = "x".repeat(PADDING);
    remote
        .batch_execute(&format!(
            "DO $$BEGIN \
               FOR i IN {}..{} LOOP \
                 FOR j IN 1..{PAIRS_PER_COLUMN} LOOP \
                   EXECUTE format('SELECT c%s, c%s FROM wide /* {padding} */', i, j); \
                 END LOOP; \
               END LOOP; \
             END$$",
            columns.start(),
            columns.end()
        ))
        .expect("run the statements on wide");
}

/// Distinct statements on `wide` in the remote's pg_stat_statements.
fn wide_statements(remote: &mut Client) -> i64 {
    remote
        .query_one(
            "SELECT count(DISTINCT queryid) FROM pg_stat_statements \
             WHERE query LIKE 'SELECT c%FROM wide%'",
            &[],
        )
        .expect("count statements on wide")
        .get(0)
}

/// Waits until a snapshot stored at least `statements` statements of
/// `srvid`, then one more snapshot, and returns the collector's peak RSS.
fn peak_rss_after_snapshot_of(
    collector: &mut Collector,
    repo: &mut Client,
    srvid: i32,
    statements: i64,
) -> u64 {
    let stored_at = collector.wait_for(
        Duration::from_secs(120),
        &format!("a snapshot storing {statements} statements"),
        || {
            let meta = snapshot_meta(repo, srvid);
            assert!(meta.errors.is_none(), "errors: {:?}", meta.errors);
            let stored = count_rows(repo, "powa_statements", srvid);
            if stored >= statements {
                Ok(meta.coalesce_seq)
            } else {
                Err(format!("{stored} statements stored, {meta:?}"))
            }
        },
    );
    // The next snapshot carries every statement too.
    collector.wait_for(Duration::from_secs(60), "one more snapshot", || {
        let meta = snapshot_meta(repo, srvid);
        assert!(meta.errors.is_none(), "errors: {:?}", meta.errors);
        if meta.coalesce_seq > stored_at {
            Ok(())
        } else {
            Err(format!("{meta:?}"))
        }
    });
    collector.peak_rss_kib()
}

#[test]
fn peak_memory_does_not_grow_with_statements() {
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions {
        pgss_max: Some(25_000),
        track_all: true,
        ..RemoteOptions::default()
    });
    let srvid = repository.register_remote(&remote, "remote", 5);
    let mut repo = repository.connect_powa();
    let mut remote_client = remote.connect_powa();

    let columns = (1..=COLUMNS)
        .map(|i| format!("c{i} int"))
        .collect::<Vec<_>>()
        .join(", ");
    remote_client
        .batch_execute(&format!("CREATE TABLE wide ({columns})"))
        .expect("create table wide");

    let phase_a = i64::from(PHASE_A_COLUMNS * PAIRS_PER_COLUMN);
    run_wide_statements(&mut remote_client, 1..=PHASE_A_COLUMNS);
    assert_eq!(wide_statements(&mut remote_client), phase_a);

    let mut collector = Collector::start(&repository);
    let peak_a = peak_rss_after_snapshot_of(&mut collector, &mut repo, srvid, phase_a);

    let phase_b = i64::from(COLUMNS * PAIRS_PER_COLUMN);
    run_wide_statements(&mut remote_client, PHASE_A_COLUMNS + 1..=COLUMNS);
    assert_eq!(wide_statements(&mut remote_client), phase_b);
    let peak_b = peak_rss_after_snapshot_of(&mut collector, &mut repo, srvid, phase_b);

    let growth = peak_b.saturating_sub(peak_a);
    println!(
        "peak RSS: {peak_a} KiB after snapshots of {phase_a} statements, \
         {peak_b} KiB after snapshots of {phase_b} statements (growth {growth} KiB)"
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak RSS grew by {growth} KiB (from {peak_a} to {peak_b} KiB), limit {MAX_GROWTH_KIB} KiB"
    );
}
