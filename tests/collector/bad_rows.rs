//! Bad rows in `powa_servers` are errors for that server only: never a
//! crash, never a connection string that says more than the row.

use std::time::Duration;

use postgres::Client;

use crate::fleet::{remote_on_addresses, slow_down_bgwriter_source};
use crate::harness::{Cluster, Collector, repository_with_remote, snapshot_meta, wait_for};

const FREQUENCY: i32 = 5;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A row of `powa_servers`, written as is (with its `powa_snapshot_metas`
/// row), whatever `powa_register_server` would say of it.
struct Row<'a> {
    hostname: &'a str,
    port: i32,
    username: Option<&'a str>,
    dbname: Option<&'a str>,
    alias: Option<&'a str>,
}

impl Default for Row<'_> {
    fn default() -> Self {
        Row {
            hostname: "127.0.0.1",
            port: 5432,
            username: Some("postgres"),
            dbname: Some("powa"),
            alias: None,
        }
    }
}

fn insert(repo: &mut Client, row: &Row<'_>) -> i32 {
    let srvid: i32 = repo
        .query_one(
            "INSERT INTO powa_servers (hostname, port, username, dbname, alias, frequency) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &row.hostname,
                &row.port,
                &row.username,
                &row.dbname,
                &row.alias,
                &FREQUENCY,
            ],
        )
        .expect("insert a powa_servers row")
        .get(0);
    repo.execute(
        "INSERT INTO powa_snapshot_metas (srvid) VALUES ($1)",
        &[&srvid],
    )
    .expect("insert its powa_snapshot_metas row");
    srvid
}

/// Waits until `healthy` has a snapshot and each server of `bad` an error
/// containing its text.
fn wait_for_errors(
    collector: &mut Collector,
    repo: &mut Client,
    healthy: i32,
    bad: &[(i32, &str)],
) {
    collector.wait_for_first_snapshot(repo, healthy, TIMEOUT);
    for &(srvid, expected) in bad {
        collector.wait_for(TIMEOUT, &format!("the error of server {srvid}"), || {
            let meta = snapshot_meta(repo, srvid);
            if meta.has_error_containing(expected) {
                Ok(())
            } else {
                Err(format!("{meta:?}"))
            }
        });
    }
}

/// Starts the collector with a healthy remote and the bad `rows`; waits
/// until the healthy one has a snapshot and each bad one an error
/// containing its expected text.
fn bad_rows_are_reported(prepare: &str, rows: &[(Row<'_>, &str)]) {
    let (repository, _remote, healthy) = repository_with_remote(FREQUENCY);
    let mut repo = repository.connect_powa();
    repo.batch_execute(prepare).expect("prepare the table");
    let bad: Vec<(i32, &str)> = rows
        .iter()
        .map(|(row, expected)| (insert(&mut repo, row), *expected))
        .collect();
    let mut collector = Collector::start(&repository);
    wait_for_errors(&mut collector, &mut repo, healthy, &bad);
    assert!(collector.exit_status().is_none(), "the collector exited");
    collector.stop().assert_exited_zero();
}

#[test]
fn an_empty_hostname_is_an_error_for_that_server() {
    bad_rows_are_reported(
        "",
        &[(
            Row {
                hostname: "",
                ..Row::default()
            },
            "hostname is empty",
        )],
    );
}

#[test]
fn ports_out_of_range_are_errors_for_those_servers() {
    bad_rows_are_reported(
        "",
        &[
            (
                Row {
                    port: 0,
                    ..Row::default()
                },
                "port 0 is not a TCP port",
            ),
            (
                Row {
                    port: 70000,
                    ..Row::default()
                },
                "port 70000 is not a TCP port",
            ),
        ],
    );
}

#[test]
fn null_usernames_and_dbnames_are_errors_for_those_servers() {
    bad_rows_are_reported(
        "ALTER TABLE powa_servers ALTER username DROP NOT NULL, ALTER dbname DROP NOT NULL",
        &[
            (
                Row {
                    username: None,
                    port: 5433,
                    ..Row::default()
                },
                "username is NULL",
            ),
            (
                Row {
                    dbname: None,
                    port: 5434,
                    ..Row::default()
                },
                "dbname is NULL",
            ),
        ],
    );
}

#[test]
fn values_are_never_read_as_connection_string_keys() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(3, 100);
    let healthy = repository.register_remote(&remote, "healthy", FREQUENCY);
    let port = i32::from(remote.port());
    let mut repo = repository.connect_powa();
    let cases = [
        (
            Row {
                hostname: "x dbname=other",
                ..Row::default()
            },
            "x dbname=other",
        ),
        (
            Row {
                hostname: "a'b",
                ..Row::default()
            },
            "a'b",
        ),
        // On the healthy remote's own address: a libpq string pasted from
        // these values would connect to template1 as postgres.
        (
            Row {
                hostname: "127.0.0.2",
                port,
                username: Some("postgres dbname=template1"),
                ..Row::default()
            },
            "role \"postgres dbname=template1\" does not exist",
        ),
        (
            Row {
                hostname: "127.0.0.3",
                port,
                username: Some("a\\ b=c' d"),
                ..Row::default()
            },
            "role \"a\\ b=c' d\" does not exist",
        ),
    ];
    let srvids: Vec<(i32, &str)> = cases
        .iter()
        .map(|(row, expected)| (insert(&mut repo, row), *expected))
        .collect();
    let mut collector = Collector::start(&repository);
    wait_for_errors(&mut collector, &mut repo, healthy, &srvids);
    let template1: i64 = remote
        .connect("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = 'template1' AND application_name LIKE 'PoWA collector%'",
            &[],
        )
        .expect("pg_stat_activity of the remote")
        .get(0);
    assert_eq!(template1, 0, "the collector connected to template1");
    collector.stop().assert_exited_zero();
}

#[test]
fn a_frequency_changed_during_a_snapshot_applies_after_it() {
    let (repository, remote, srvid) = repository_with_remote(FREQUENCY);
    slow_down_bgwriter_source(&remote, 2.0);
    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    collector.wait_for_first_snapshot(&mut repo, srvid, TIMEOUT);
    let before = snapshot_meta(&mut repo, srvid).coalesce_seq;
    // Mid-snapshot: the worker's remote session runs the slow source.
    let mut remote_client = remote.connect("postgres");
    wait_for(TIMEOUT, "a snapshot in flight", || {
        let active: i64 = remote_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%powa_stat_bgwriter_src%' \
                   AND application_name LIKE 'PoWA collector%'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0);
        if active > 0 {
            Ok(())
        } else {
            Err("none".into())
        }
    });
    repo.execute(
        "UPDATE powa_servers SET frequency = 6 WHERE id = $1",
        &[&srvid],
    )
    .expect("change the frequency");
    collector.signal("HUP");
    let meta = collector.wait_for(TIMEOUT, "two more snapshots", || {
        let meta = snapshot_meta(&mut repo, srvid);
        assert_eq!(meta.errors, None, "errors after the change");
        if meta.coalesce_seq >= before + 2 {
            Ok(meta)
        } else {
            Err(format!("{meta:?}"))
        }
    });
    assert!(meta.snapts.is_finite());
    collector.stop().assert_exited_zero();
}

#[test]
fn a_duplicate_alias_names_the_second_server_by_its_address() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(2, 100);
    let mut repo = repository.connect_powa();
    repo.batch_execute("ALTER TABLE powa_servers DROP CONSTRAINT powa_servers_alias_key")
        .expect("allow duplicate aliases");
    let first = repository.register_remote_at(&remote, "127.0.0.1", FREQUENCY);
    let second = repository.register_remote_at(&remote, "127.0.0.2", FREQUENCY);
    repo.execute(
        "UPDATE powa_servers SET alias = 'dup' WHERE id IN ($1, $2)",
        &[&first, &second],
    )
    .expect("give both servers one alias");
    let port = remote.port();
    let config = serde_json::json!({
        "repository": { "dsn": repository.dsn() },
        "debug": true,
        "use_server_alias": true,
    });
    let mut collector = Collector::start_with_config(&config.to_string());
    collector.wait_for_a_snapshot_of_each(&mut repo, &[first, second], TIMEOUT);
    let log = collector.log();
    assert!(
        log.contains(&format!(
            "powa_servers row id {second}: alias \"dup\" is already"
        )),
        "no warning about the duplicate alias"
    );
    let names: Vec<String> = remote
        .connect("postgres")
        .query(
            "SELECT application_name FROM pg_stat_activity \
             WHERE application_name LIKE 'PoWA collector - worker %' ORDER BY 1",
            &[],
        )
        .expect("pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        names,
        [
            format!("PoWA collector - worker 127.0.0.2:{port}"),
            "PoWA collector - worker dup".to_string()
        ]
    );
    collector.stop().assert_exited_zero();
}
