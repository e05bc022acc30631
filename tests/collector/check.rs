//! `powa-collector check`: the repository and every server checked once,
//! changing nothing; a table or JSON, exit 0 when everything passes, 1
//! when something fails, 78 for a configuration error.

use std::net::TcpListener;
use std::time::Duration;

use postgres::Client;
use serde_json::Value;

use crate::harness::{
    Cluster, Collector, Finished, Powa, free_port, repository_with_remote,
    repository_with_remote_of, run_with_config,
};

/// Runs `check` with `config` and `args`; the outcome, with stdout and
/// stderr in assertion messages.
fn check(config: &str, args: &[&str]) -> Finished {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    run_with_config(config, &all).0
}

fn output(finished: &Finished) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        finished.code(),
        finished.stdout,
        finished.stderr
    )
}

/// `check --json`'s document.
fn check_json(config: &str, args: &[&str]) -> (Finished, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let finished = check(config, &all);
    let value = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", output(&finished)));
    (finished, value)
}

/// The line of the table that starts with `srvid`.
fn row(finished: &Finished, srvid: i32) -> &str {
    let prefix = format!("{srvid} ");
    finished
        .stdout
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row for server {srvid}: {}", output(finished)))
}

/// The configuration for `repository` with `use_server_alias` on.
fn config_with_aliases(repository: &Cluster) -> String {
    let mut config = Collector::config_for(repository);
    config["use_server_alias"] = Value::Bool(true);
    config.to_string()
}

#[test]
fn check_passes_for_a_powa4_repository_and_remote() {
    let (repository, remote, srvid) = repository_with_remote(300);
    let config = config_with_aliases(&repository);

    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));
    let first = finished.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("repository (PoWA 4.") && first.ends_with("role postgres): ok"),
        "{}",
        output(&finished)
    );
    let line = row(&finished, srvid);
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], "remote", "named by its alias: {line}");
    assert_eq!(cells[2], "yes", "{line}");
    assert!(cells[3].starts_with("4."), "{line}");
    assert_eq!(cells[4], "ok", "{line}");

    let (finished, json) = check_json(&config, &[]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));
    assert_eq!(json["ok"], true, "{json:#}");
    assert_eq!(json["repository"]["ok"], true, "{json:#}");
    assert_eq!(json["repository"]["role"], "postgres", "{json:#}");
    let servers = json["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{json:#}");
    let server = &servers[0];
    assert_eq!(server["srvid"], srvid, "{json:#}");
    assert_eq!(server["name"], "remote", "{json:#}");
    assert_eq!(server["reachable"], true, "{json:#}");
    assert_eq!(server["ok"], true, "{json:#}");
    assert_eq!(server["problems"], serde_json::json!([]), "{json:#}");
    assert_eq!(server["powa_version"], cells[3], "{json:#}");

    // Without use_server_alias, the worker's name: host:port.
    let plain = Collector::config_for(&repository).to_string();
    let (_, json) = check_json(&plain, &[]);
    assert_eq!(
        json["servers"][0]["name"],
        format!("127.0.0.1:{}", remote.port()),
        "{json:#}"
    );
}

#[test]
fn unreachable_servers_fail_the_check_each_within_its_own_deadline() {
    let (repository, _remote, good) = repository_with_remote(300);
    let refused = repository.register_address("127.0.0.1", free_port(), 300);
    // Listeners that accept connections and never answer: each check waits
    // for the connection deadline (10 s); in parallel, not one after the
    // other.
    let silent: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a silent listener"))
        .collect();
    let silent_ids: Vec<i32> = silent
        .iter()
        .map(|listener| {
            let port = listener.local_addr().expect("its address").port();
            repository.register_address("127.0.0.1", port, 300)
        })
        .collect();
    repository
        .connect_powa()
        .execute(
            "UPDATE powa_servers SET password = 's3cret-pw' WHERE id = $1",
            &[&refused],
        )
        .expect("set a password");
    let config = Collector::config_for(&repository).to_string();

    let (finished, elapsed) = run_with_config(&config, &["check"]);
    assert!(
        !finished.stdout.contains("s3cret") && !finished.stderr.contains("s3cret"),
        "a password is shown: {}",
        output(&finished)
    );
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    assert!(
        elapsed < Duration::from_secs(18),
        "4 unreachable servers took {elapsed:?}: not checked in parallel? {}",
        output(&finished)
    );
    assert!(
        row(&finished, good).ends_with(" ok"),
        "{}",
        output(&finished)
    );
    let line = row(&finished, refused);
    assert!(
        line.contains(" no ")
            && line.contains("connection: cannot connect to remote server")
            && line.contains("Connection refused"),
        "{}",
        output(&finished)
    );
    for srvid in &silent_ids {
        let line = row(&finished, *srvid);
        assert!(
            line.contains(" no ") && line.contains("timeout expired"),
            "{}",
            output(&finished)
        );
    }
    // In srvid order.
    let ids: Vec<i32> = finished
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "{}", output(&finished));
    assert_eq!(ids.len(), 5, "{}", output(&finished));

    let (finished, json) = check_json(&config, &["--server", &refused.to_string()]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    assert_eq!(json["ok"], false, "{json:#}");
    let server = &json["servers"][0];
    assert_eq!(server["reachable"], false, "{json:#}");
    assert_eq!(server["powa_version"], Value::Null, "{json:#}");
    assert_eq!(server["problems"][0]["check"], "connection", "{json:#}");
    drop(silent);
}

/// Makes `role` a login role on `cluster` that is not a superuser, and runs
/// `sql` there as postgres in database powa.
fn limited_role(cluster: &Cluster, role: &str, sql: &str) {
    cluster
        .connect("postgres")
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap_or_else(|e| panic!("CREATE ROLE {role}: {e}"));
    cluster
        .connect_powa()
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("grants for {role}: {e}"));
}

/// Makes the collector connect to server `srvid` as `role`.
fn collect_as(repository: &Cluster, srvid: i32, role: &str) {
    repository
        .connect_powa()
        .execute(
            "UPDATE powa_servers SET username = $2 WHERE id = $1",
            &[&srvid, &role],
        )
        .expect("change the server's username");
}

/// The hints of a `check --json` document, deduplicated: those to run on
/// the repository (its own problems, and the servers' that say so), and
/// those to run on the remote.
fn hints(json: &Value) -> (Vec<String>, Vec<String>) {
    let problems = |value: &Value| value["problems"].as_array().cloned().unwrap_or_default();
    let mut on_repository: Vec<String> = problems(&json["repository"])
        .iter()
        .filter_map(|problem| problem["hint"].as_str().map(str::to_string))
        .collect();
    let mut on_remote = Vec::new();
    for server in json["servers"].as_array().into_iter().flatten() {
        for problem in problems(server) {
            let Some(hint) = problem["hint"].as_str().map(str::to_string) else {
                continue;
            };
            let message = problem["message"].as_str().unwrap_or_default();
            if message.contains("on the repository") {
                on_repository.push(hint);
            } else {
                on_remote.push(hint);
            }
        }
    }
    for list in [&mut on_repository, &mut on_remote] {
        list.sort();
        list.dedup();
    }
    (on_repository, on_remote)
}

#[test]
fn missing_grants_are_named_and_granting_them_is_enough() {
    let (repository, remote, srvid) = repository_with_remote(300);
    // What Debian's README grants the collector, and pg_signal_backend for
    // the protocol, less INSERT on one *_src_tmp table and DELETE on one
    // history table.
    limited_role(
        &repository,
        "collector",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO collector; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO collector; \
         GRANT pg_signal_backend TO collector; \
         REVOKE INSERT ON powa_statements_src_tmp FROM collector; \
         REVOKE DELETE ON powa_statements_history FROM collector",
    );
    // A remote where the role has only what PUBLIC has, and nobody but the
    // owner may call one source function.
    limited_role(
        &remote,
        "collector",
        "REVOKE EXECUTE ON FUNCTION powa_qualstats_src(integer) FROM PUBLIC",
    );
    collect_as(&repository, srvid, "collector");
    let config = serde_json::json!({
        "repository": {
            "dsn": format!("host=127.0.0.1 port={} user=collector dbname=powa", repository.port())
        },
    })
    .to_string();

    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    let text = &finished.stdout;
    for expected in [
        "the role collector lacks DELETE on powa_statements_history",
        "fix: GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"public\" TO collector",
        "datasource: pg_qualstats (powa_qualstats_src): the role collector lacks EXECUTE",
        "fix: GRANT EXECUTE ON FUNCTION powa_qualstats_src(integer) TO collector",
        "permission denied for table powa_databases",
        "fix: GRANT SELECT ON powa_databases TO collector",
        "fix: GRANT INSERT ON powa_statements_src_tmp TO collector",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not in {}",
            output(&finished)
        );
    }

    let (_, json) = check_json(&config, &[]);
    assert_eq!(
        json["repository"]["problems"][0]["check"], "privileges",
        "{json:#}"
    );
    let (on_repository, on_remote) = hints(&json);
    assert_eq!(on_repository.len(), 2, "{json:#}");
    assert_eq!(on_remote.len(), 2, "{json:#}");
    // Running the hints, as the DBA would, is all it takes: a function
    // that may now be called can show what it reads in turn, so a few
    // rounds may be needed.
    let (mut on_repository, mut on_remote) = (on_repository, on_remote);
    for round in 1..=3 {
        for (cluster, hints) in [(&repository, &on_repository), (&remote, &on_remote)] {
            if !hints.is_empty() {
                cluster
                    .connect_powa()
                    .batch_execute(&hints.join("; "))
                    .unwrap_or_else(|e| panic!("{hints:?}: {e}"));
            }
        }
        let (finished, json) = check_json(&config, &[]);
        if finished.code() == Some(0) {
            return;
        }
        (on_repository, on_remote) = hints(&json);
        assert!(
            !on_repository.is_empty() || !on_remote.is_empty(),
            "round {round}: a failure without a hint: {json:#}"
        );
    }
    panic!(
        "still failing after 3 rounds of hints: {}",
        output(&check(&config, &[]))
    );
}

#[test]
fn server_checks_only_that_server_and_names_an_unknown_one() {
    let (repository, _remote, good) = repository_with_remote(300);
    let unreachable = repository.register_address("127.0.0.1", free_port(), 300);
    let config = Collector::config_for(&repository).to_string();

    let finished = check(&config, &["--server", &good.to_string()]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));
    assert!(
        row(&finished, good).ends_with(" ok"),
        "{}",
        output(&finished)
    );
    assert!(
        !finished.stdout.contains(&format!("\n{unreachable} ")),
        "{}",
        output(&finished)
    );
    let (_, json) = check_json(&config, &["--server", &good.to_string()]);
    assert_eq!(
        json["servers"].as_array().map(Vec::len),
        Some(1),
        "{json:#}"
    );
    assert_eq!(json["servers"][0]["srvid"], good, "{json:#}");

    for (srvid, expected) in [
        ("999", "no remote server with id 999 in powa_servers"),
        ("0", "no remote server with id 0 in powa_servers"),
    ] {
        let finished = check(&config, &["--server", srvid]);
        assert_eq!(finished.code(), Some(1), "{}", output(&finished));
        assert!(finished.stderr.contains(expected), "{}", output(&finished));
        assert_eq!(finished.stdout, "", "{}", output(&finished));
    }

    // A disabled server is not checked, and is said to be disabled when
    // asked for.
    repository
        .connect_powa()
        .execute(
            "UPDATE powa_servers SET frequency = -1 WHERE id = $1",
            &[&unreachable],
        )
        .expect("disable a server");
    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));
    let finished = check(&config, &["--server", &unreachable.to_string()]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    assert!(
        finished
            .stderr
            .contains(&format!("server {unreachable} is disabled (frequency -1)")),
        "{}",
        output(&finished)
    );
}

#[test]
fn configuration_errors_exit_78_and_an_unreachable_repository_1() {
    for (config, expected) in [
        ("{ \"repository\": ", "invalid JSON"),
        ("{ \"debug\": true }", "repository.dsn"),
        (
            "{ \"repository\": { \"dsn\": \"host=127.0.0.1 sslmode=sometimes\" } }",
            "repository.dsn is invalid",
        ),
    ] {
        for args in [&[][..], &["--json"]] {
            let finished = check(config, args);
            assert_eq!(finished.code(), Some(78), "{config}: {}", output(&finished));
            assert!(
                finished.stderr.contains(expected),
                "{config}: {}",
                output(&finished)
            );
        }
    }

    let port = free_port();
    let config = serde_json::json!({
        "repository": {
            "dsn": format!("host=127.0.0.1 port={port} user=powa password=hunter2 dbname=powa")
        },
    })
    .to_string();
    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    assert!(
        finished
            .stdout
            .starts_with("repository: 1 problem\n  connection: cannot connect to the repository"),
        "{}",
        output(&finished)
    );
    assert!(
        !finished.stdout.contains("hunter2"),
        "{}",
        output(&finished)
    );
    let (finished, json) = check_json(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    assert_eq!(json["repository"]["ok"], false, "{json:#}");
    assert_eq!(json["repository"]["role"], Value::Null, "{json:#}");
    assert_eq!(json["servers"], serde_json::json!([]), "{json:#}");
}

#[test]
fn powa5_repository_and_remote_pass_and_a_database_without_connect_is_named() {
    let (repository, remote, srvid) = repository_with_remote_of(Powa::V5, 300);
    remote
        .connect("postgres")
        .batch_execute("CREATE DATABASE app1")
        .expect("CREATE DATABASE app1");
    remote
        .connect("app1")
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .expect("a table in app1");
    let config = Collector::config_for(&repository).to_string();

    let (finished, json) = check_json(&config, &[]);
    assert_eq!(finished.code(), Some(0), "{json:#}");
    assert!(
        json["repository"]["powa_version"]
            .as_str()
            .is_some_and(|version| version.starts_with("5.")),
        "{json:#}"
    );
    let server = &json["servers"][0];
    assert_eq!(server["srvid"], srvid, "{json:#}");
    assert!(
        server["powa_version"]
            .as_str()
            .is_some_and(|version| version.starts_with("5.")),
        "{json:#}"
    );
    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));
    assert!(
        row(&finished, srvid).ends_with(" ok"),
        "{}",
        output(&finished)
    );

    // The collector's role may not connect to app1: the database is named,
    // with the GRANT.
    remote
        .connect("postgres")
        .batch_execute(
            "CREATE ROLE collector LOGIN IN ROLE pg_read_all_stats, pg_read_all_data; \
             REVOKE CONNECT ON DATABASE app1 FROM PUBLIC",
        )
        .expect("a role without CONNECT on app1");
    collect_as(&repository, srvid, "collector");
    let (finished, json) = check_json(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{json:#}");
    let problems = json["servers"][0]["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let app1 = problems
        .iter()
        .find(|problem| problem["check"] == "database")
        .unwrap_or_else(|| panic!("no database problem: {json:#}"));
    assert!(
        app1["message"]
            .as_str()
            .is_some_and(|message| message.contains("app1")),
        "{json:#}"
    );
    assert_eq!(
        app1["hint"], "GRANT CONNECT ON DATABASE app1 TO collector",
        "{json:#}"
    );
}

/// Every row of every table of extension powa on the repository, by table.
fn repository_state(client: &mut Client) -> Vec<(String, i64, Option<String>)> {
    let tables: Vec<String> = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_depend d \
             JOIN pg_extension e ON e.oid = d.refobjid \
             JOIN pg_class c ON c.oid = d.objid \
             WHERE d.refclassid = 'pg_extension'::regclass \
               AND d.classid = 'pg_class'::regclass \
               AND e.extname = 'powa' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .expect("the tables of powa")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.len() > 20, "{tables:?}");
    tables
        .into_iter()
        .map(|table| {
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) \
                         FROM {table} t"
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("rows of {table}: {e}"));
            (table, row.get(0), row.get(1))
        })
        .collect()
}

#[test]
fn check_changes_nothing_in_the_repository() {
    let (repository, _remote, srvid) = repository_with_remote(5);
    let unreachable = repository.register_address("127.0.0.1", free_port(), 5);
    let mut repo = repository.connect_powa();
    // A snapshot and an error for the UI first, so that there is something
    // to change.
    let mut collector = Collector::start(&repository);
    collector.wait_for_first_snapshot(&mut repo, srvid, Duration::from_secs(40));
    collector.wait_for(
        Duration::from_secs(20),
        "the unreachable server's error",
        || {
            let meta = crate::harness::snapshot_meta(&mut repo, unreachable);
            if meta.has_error_containing("cannot connect") {
                Ok(())
            } else {
                Err(format!("{:?}", meta.errors))
            }
        },
    );
    collector.stop().assert_exited_zero();
    let before = repository_state(&mut repo);
    let history = before
        .iter()
        .find(|(table, ..)| table == "powa_statements_history_current")
        .map(|(_, rows, _)| *rows);
    assert!(history.is_some_and(|rows| rows > 0), "{before:?}");

    let config = Collector::config_for(&repository).to_string();
    let finished = check(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    let (finished, _) = check_json(&config, &[]);
    assert_eq!(finished.code(), Some(1), "{}", output(&finished));
    let finished = check(&config, &["--server", &srvid.to_string()]);
    assert_eq!(finished.code(), Some(0), "{}", output(&finished));

    let after = repository_state(&mut repo);
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| format!("{b:?} -> {a:?}"))
        .collect();
    assert!(changed.is_empty(), "check changed: {changed:#?}");
    assert_eq!(before.len(), after.len());
}
