//! PoWA 5 (powa-archivist 5.0 on PostgreSQL 17, in the PoWA 5 chroot):
//! snapshots land and hold what the remote had, per-database modules and
//! catalogs are collected database by database, REFRESH_DB_CAT refreshes
//! what it names, PoWA 5's roles may use the protocol, schemas other than
//! `public` work; and versions that do not match, or are not supported, are
//! refused as they should be.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::Client;

use crate::harness::{
    Cluster, Collector, Powa, RemoteOptions, RepositoryOptions, SnapshotMeta, run_collector,
    snapshot_meta, wait_for,
};
use crate::powa_web::PowaWeb;
use crate::snapshots::{remote_statements, stored_statements};

const FREQUENCY: i32 = 5;
const FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// User databases of the remotes, each with a table, a function and an
/// index, so that every module and catalog has rows there.
const USER_DATABASES: [&str; 2] = ["app1", "app2"];

/// A database that refuses connections (`datallowconn = false`).
const CLOSED_DATABASE: &str = "closed";

/// A database the collector may not connect to (pg_hba.conf rejects it).
const FORBIDDEN_DATABASE: &str = "forbidden";

/// Creates `dbname` on `remote` with a table, an index and a function, and
/// uses them so that the statistics views have rows.
fn create_user_database(remote: &Cluster, dbname: &str) {
    remote
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .unwrap_or_else(|error| panic!("CREATE DATABASE {dbname}: {error}"));
    remote
        .connect(dbname)
        .batch_execute(
            "SET track_functions = 'all'; \
             CREATE TABLE orders (id int PRIMARY KEY, amount numeric); \
             INSERT INTO orders SELECT i, i * 2 FROM generate_series(1, 100) i; \
             CREATE FUNCTION total() RETURNS numeric LANGUAGE sql \
                 AS 'SELECT sum(amount) FROM orders'; \
             SELECT total(); SELECT * FROM orders WHERE id = 3",
        )
        .unwrap_or_else(|error| panic!("fill database {dbname}: {error}"));
}

/// The oid of each database of `remote`, by name.
fn database_oids(remote: &Cluster) -> BTreeMap<String, u32> {
    remote
        .connect("postgres")
        .query("SELECT datname::text, oid FROM pg_database", &[])
        .expect("pg_database of the remote")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The databases (by oid) with rows in `table` for `srvid`.
fn databases_in(repo: &mut Client, table: &str, srvid: i32) -> Vec<u32> {
    repo.query(
        &format!("SELECT DISTINCT dbid FROM {table} WHERE srvid = $1 ORDER BY dbid"),
        &[&srvid],
    )
    .unwrap_or_else(|error| panic!("databases in {table}: {error}"))
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// `last_refresh` of each database's catalogs for `srvid`, as epoch
/// seconds, by database name (`None`: never refreshed).
fn last_refreshes(repo: &mut Client, srvid: i32) -> BTreeMap<String, Option<f64>> {
    repo.query(
        "SELECT datname, extract(epoch FROM last_refresh)::float8 \
         FROM powa_catalog_databases WHERE srvid = $1",
        &[&srvid],
    )
    .expect("powa_catalog_databases")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Waits until `srvid` has had `count` snapshots (`coalesce_seq` at least
/// `count + 1`), whatever its errors, and returns its metas.
fn wait_for_snapshots(
    collector: &mut Collector,
    repo: &mut Client,
    srvid: i32,
    count: i64,
) -> SnapshotMeta {
    collector.wait_for(
        FIRST_SNAPSHOT_TIMEOUT + Duration::from_secs(FREQUENCY as u64) * count as u32,
        &format!("{count} snapshots of server {srvid}"),
        || {
            let meta = snapshot_meta(repo, srvid);
            if meta.coalesce_seq > count {
                Ok(meta)
            } else {
                Err(format!("{meta:?}"))
            }
        },
    )
}

/// A PoWA 5 repository and remote, the remote registered every 5 s.
fn powa5_pair(
    remote_options: &RemoteOptions,
    repository: &RepositoryOptions,
) -> (Cluster, Cluster, i32) {
    let repository = Cluster::repository_for(repository);
    let remote = Cluster::remote(remote_options);
    let srvid = repository.register_remote(&remote, "remote", FREQUENCY);
    (repository, remote, srvid)
}

#[test]
fn powa5_snapshots_collect_global_and_per_database_data() {
    let (repository, remote, srvid) = powa5_pair(
        &RemoteOptions::of(Powa::V5),
        &RepositoryOptions {
            version: Powa::V5,
            ..RepositoryOptions::default()
        },
    );
    for dbname in USER_DATABASES
        .iter()
        .chain(&[CLOSED_DATABASE, FORBIDDEN_DATABASE])
    {
        create_user_database(&remote, dbname);
    }
    remote
        .connect("postgres")
        .batch_execute(&format!(
            "ALTER DATABASE {CLOSED_DATABASE} WITH ALLOW_CONNECTIONS false"
        ))
        .expect("close a database");
    remote.reconfigure(
        &[],
        Some(&format!(
            "host {FORBIDDEN_DATABASE} all 127.0.0.1/32 reject\n\
             host all all 127.0.0.1/32 trust\n\
             local all all trust\n"
        )),
    );
    let mut remote_client = remote.connect_powa();
    let before = remote_statements(&mut remote_client);

    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    let meta = wait_for_snapshots(&mut collector, &mut repo, srvid, 1);

    // The forbidden database is the one error; the others landed.
    let errors = meta.errors.clone().unwrap_or_default();
    assert_eq!(errors.len(), 1, "errors: {errors:?}");
    assert!(
        meta.has_error_containing(&format!("database {FORBIDDEN_DATABASE}")),
        "errors: {errors:?}"
    );

    let stored = stored_statements(&mut repo, srvid);
    let missing: Vec<_> = before
        .keys()
        .filter(|key| !stored.contains_key(key))
        .collect();
    assert!(missing.is_empty(), "statements not stored: {missing:?}");
    for table in [
        "powa_statements_history_current",
        "powa_kcache_metrics_current",
        "pg_track_settings_list",
    ] {
        let rows: i64 = repo
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE srvid = $1"),
                &[&srvid],
            )
            .unwrap_or_else(|error| panic!("count {table}: {error}"))
            .get(0);
        assert!(rows > 0, "no rows in {table}");
    }

    let oids = database_oids(&remote);
    let oid = |name: &str| oids[name];
    for table in [
        "powa_all_tables_history_current",
        "powa_all_indexes_history_current",
        "powa_catalog_class",
        "powa_catalog_proc",
    ] {
        let found = databases_in(&mut repo, table, srvid);
        for dbname in USER_DATABASES.iter().chain(&["powa", "postgres"]) {
            assert!(
                found.contains(&oid(dbname)),
                "{table}: no rows of {dbname} in {found:?}"
            );
        }
        for dbname in [CLOSED_DATABASE, FORBIDDEN_DATABASE, "template0"] {
            assert!(!found.contains(&oid(dbname)), "{table}: rows of {dbname}");
        }
    }
    let functions = databases_in(&mut repo, "powa_user_functions_history_current", srvid);
    assert!(
        functions.contains(&oid("app1")),
        "user functions of app1: {functions:?}"
    );

    // One timestamp for every database of a snapshot.
    let timestamps: i64 = repo
        .query_one(
            "SELECT count(DISTINCT (record).ts) FROM powa_all_tables_history_current \
             WHERE srvid = $1",
            &[&srvid],
        )
        .expect("timestamps of powa_all_tables_history_current")
        .get(0);
    assert_eq!(timestamps, 1, "distinct timestamps of one snapshot");

    // Versions go to powa_extension_config.
    let kcache: Option<String> = repo
        .query_one(
            "SELECT version FROM powa_extension_config \
             WHERE srvid = $1 AND extname = 'pg_stat_kcache'",
            &[&srvid],
        )
        .expect("powa_extension_config")
        .get(0);
    assert!(kcache.is_some(), "pg_stat_kcache version not saved");

    // The per-database connections are closed after use.
    let log = collector.log();
    assert!(
        log.contains("databases") && log.contains("snapshot done in"),
        "no snapshot line with the databases part in the log"
    );
    collector.wait_for(
        Duration::from_secs(10),
        "no per-database session left",
        || {
            let left: i64 = remote
                .connect("postgres")
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name LIKE 'PoWA collector%' AND datname <> 'powa'",
                    &[],
                )
                .expect("pg_stat_activity of the remote")
                .get(0);
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} sessions"))
            }
        },
    );
}

#[test]
fn refresh_db_cat_refreshes_the_named_databases_for_powa5_roles() {
    let (repository, remote, srvid) = powa5_pair(
        &RemoteOptions::of(Powa::V5),
        &RepositoryOptions {
            version: Powa::V5,
            ..RepositoryOptions::default()
        },
    );
    for dbname in USER_DATABASES {
        create_user_database(&remote, dbname);
    }
    repository
        .connect_powa()
        .batch_execute(
            "CREATE ROLE nobody LOGIN; \
             CREATE ROLE ui5 LOGIN IN ROLE powa_signal_backend",
        )
        .expect("create roles");

    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    let first = wait_for_snapshots(&mut collector, &mut repo, srvid, 1);
    assert_eq!(first.errors, None, "errors of the first snapshot");
    let initial = last_refreshes(&mut repo, srvid);
    for dbname in USER_DATABASES {
        assert!(
            initial.get(dbname).is_some_and(Option::is_some),
            "catalogs of {dbname} not refreshed by the first snapshot: {initial:?}"
        );
    }

    let srvid_text = srvid.to_string();
    let mut nobody = PowaWeb::connect_as(&repository, "nobody");
    assert_eq!(
        nobody.ask("REFRESH_DB_CAT", &[&srvid_text, "1", "app1"]),
        "REFRESH_DB_CAT ERROR Permission denied"
    );
    let mut ui = PowaWeb::connect_as(&repository, "ui5");
    let refresh = |ui: &mut PowaWeb, dbname: &str| {
        assert_eq!(
            ui.ask("REFRESH_DB_CAT", &[&srvid_text, "1", dbname]),
            "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot"
        );
    };

    // Only app1 is refreshed. A snapshot in flight when the request came
    // does not serve it: wait for the one after.
    let seq = snapshot_meta(&mut repo, srvid).coalesce_seq;
    refresh(&mut ui, "app1");
    wait_for_snapshots(&mut collector, &mut repo, srvid, seq + 1);
    let after_one = last_refreshes(&mut repo, srvid);
    assert!(
        after_one["app1"] > initial["app1"],
        "app1 not refreshed: {after_one:?}"
    );
    assert_eq!(after_one["app2"], initial["app2"], "app2 refreshed unasked");

    // Two requests in a row both take effect.
    let seq = snapshot_meta(&mut repo, srvid).coalesce_seq;
    refresh(&mut ui, "app2");
    refresh(&mut ui, "app1");
    wait_for_snapshots(&mut collector, &mut repo, srvid, seq + 1);
    let after_two = last_refreshes(&mut repo, srvid);
    assert!(after_two["app1"] > after_one["app1"], "app1: {after_two:?}");
    assert!(after_two["app2"] > after_one["app2"], "app2: {after_two:?}");
    assert_eq!(after_two["powa"], initial["powa"], "powa refreshed unasked");
    assert_eq!(snapshot_meta(&mut repo, srvid).errors, None);
}

#[test]
fn powa5_in_other_schemas_than_public() {
    let (repository, remote, srvid) = powa5_pair(
        &RemoteOptions {
            powa_schema: Some("powa_ext"),
            stats_schema: Some("stats"),
            ..RemoteOptions::of(Powa::V5)
        },
        &RepositoryOptions {
            version: Powa::V5,
            powa_schema: Some("powa_repo"),
            stats_schema: Some("stats"),
            ..RepositoryOptions::default()
        },
    );
    let mut remote_client = remote.connect_powa();
    remote_client
        .batch_execute("CREATE TABLE t (a int); SELECT * FROM t WHERE a = 1")
        .expect("a query with a qual");
    let before = remote_statements(&mut remote_client);

    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    let meta = wait_for_snapshots(&mut collector, &mut repo, srvid, 2);
    assert_eq!(
        meta.errors, None,
        "errors with powa and the stats elsewhere"
    );
    let stored = stored_statements(&mut repo, srvid);
    let missing: Vec<_> = before
        .keys()
        .filter(|key| !stored.contains_key(key))
        .collect();
    assert!(missing.is_empty(), "statements not stored: {missing:?}");
    let settings: i64 = repo
        .query_one(
            "SELECT count(*) FROM stats.pg_track_settings_list WHERE srvid = $1",
            &[&srvid],
        )
        .expect("pg_track_settings_list")
        .get(0);
    assert!(
        settings > 0,
        "no settings of the external pg_track_settings"
    );
    let log = collector.log();
    assert!(
        log.contains("\"stats\".pg_qualstats_reset()"),
        "the qualstats cleanup did not run with the remote's schema"
    );
}

/// A repository of `repository_version` with a remote of `remote_version`:
/// the version error, and nothing else, for that server.
fn mismatch_is_reported(repository_version: Powa, remote_version: Powa, expected: &str) {
    let repository = Cluster::repository_of(repository_version);
    let remote = Cluster::remote(&RemoteOptions::of(remote_version));
    let srvid = repository.register_remote(&remote, "remote", FREQUENCY);
    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    collector.wait_for(FIRST_SNAPSHOT_TIMEOUT, "the version error", || {
        let meta = snapshot_meta(&mut repo, srvid);
        match &meta.errors {
            Some(errors) if !errors.is_empty() => Ok(()),
            _ => Err(format!("{meta:?}")),
        }
    });
    // A second period changes nothing: no other error, no snapshot.
    let seen = snapshot_meta(&mut repo, srvid);
    wait_for(
        Duration::from_secs(FREQUENCY as u64 * 3),
        "a second version check",
        || {
            let checks = collector.log().matches("Incompatible PoWA version").count();
            if checks >= 2 {
                Ok(())
            } else {
                Err(format!("{checks} checks"))
            }
        },
    );
    let meta = snapshot_meta(&mut repo, srvid);
    assert_eq!(meta.errors, Some(vec![expected.to_string()]));
    assert_eq!(
        meta.coalesce_seq, 1,
        "a snapshot was taken: {seen:?} {meta:?}"
    );
    let log = collector.log();
    assert!(
        !log.contains(" ERROR "),
        "errors logged besides the version check:\n{log}"
    );
}

#[test]
fn powa4_repository_with_a_powa5_remote_reports_the_versions() {
    mismatch_is_reported(
        Powa::V4,
        Powa::V5,
        "Incompatible PoWA version between the repository server (4.1) \
         and the remote host (5.0)",
    );
}

#[test]
fn powa5_repository_with_a_powa4_remote_reports_the_versions() {
    mismatch_is_reported(
        Powa::V5,
        Powa::V4,
        "Incompatible PoWA version between the repository server (5.0) \
         and the remote host (4.1)",
    );
}

#[test]
fn unsupported_powa_majors_are_refused_by_name() {
    // A repository claiming PoWA 6: the collector does not start.
    let repository = Cluster::repository();
    repository
        .connect_powa()
        .batch_execute("UPDATE pg_extension SET extversion = '6.0.0' WHERE extname = 'powa'")
        .expect("pretend to be PoWA 6");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("powa-collector.conf");
    std::fs::write(&config, Collector::config_for(&repository).to_string()).expect("config");
    let finished = run_collector(
        &["-c", config.to_str().expect("utf-8 path")],
        dir.path(),
        Duration::from_secs(20),
    );
    assert_eq!(finished.code(), Some(1), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains("found 6.0.0") && finished.stderr.contains("PoWA 4 and PoWA 5"),
        "stderr: {}",
        finished.stderr
    );

    // A remote claiming PoWA 3: its worker stops and says why.
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    remote
        .connect_powa()
        .batch_execute("UPDATE pg_extension SET extversion = '3.2.0' WHERE extname = 'powa'")
        .expect("pretend to be PoWA 3");
    let srvid = repository.register_remote(&remote, "remote", FREQUENCY);
    let mut repo = repository.connect_powa();
    let mut collector = Collector::start(&repository);
    let meta = collector.wait_for(FIRST_SNAPSHOT_TIMEOUT, "the remote's version error", || {
        let meta = snapshot_meta(&mut repo, srvid);
        if meta.errors.is_some() {
            Ok(meta)
        } else {
            Err(format!("{meta:?}"))
        }
    });
    assert!(
        meta.has_error_containing("found 3.2.0, the collector supports PoWA 4 and PoWA 5"),
        "{meta:?}"
    );
}
