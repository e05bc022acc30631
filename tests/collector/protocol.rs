//! The command protocol, spoken as powa-web speaks it: every command gets
//! its answer; malformed requests get an answer when they name a channel,
//! and change nothing; only roles allowed to signal backends are served;
//! answers stay prompt while snapshots run.

use std::time::{Duration, Instant};

use postgres::Client;

use crate::fleet::{
    host, postpone_snapshots, register_at, remote_on_addresses, slow_down_bgwriter_source,
    worker_pids,
};
use crate::harness::{Cluster, Collector, RemoteOptions, free_port, snapshot_meta, wait_for};
use crate::powa_web::{
    ANSWER_TIMEOUT, PowaWeb, all_running, expected_status_json, start_collector_with_web,
};

/// How long workers may take to start and connect.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a forced snapshot may take to land.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(20);

/// Frequency of the servers whose snapshots must not come on their own
/// during a test: far longer than the test.
const IDLE_FREQUENCY: i32 = 300;

/// The worker refuses a forced snapshot this soon after the last one.
const FORCE_SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(10);

fn is_forced_snapshot_ok(answer: &str) -> bool {
    matches!(
        answer,
        "FORCE_SNAPSHOT OK Snapshot in progress" | "FORCE_SNAPSHOT OK Snapshot will begin shortly"
    )
}

/// Waits until `srvid` has a snapshot newer than `coalesce_seq` and the
/// collector has logged `done` snapshots (so its worker is idle again);
/// returns the new `powa_snapshot_metas` row.
fn wait_for_snapshot(
    collector: &Collector,
    repo: &mut Client,
    srvid: i32,
    coalesce_seq: i64,
    done: usize,
) -> crate::harness::SnapshotMeta {
    wait_for(
        SNAPSHOT_TIMEOUT,
        &format!("snapshot {} of server {srvid}", coalesce_seq + 1),
        || {
            let meta = snapshot_meta(repo, srvid);
            let logged = collector.log().matches("snapshot done in").count();
            if meta.coalesce_seq > coalesce_seq && logged >= done {
                Ok(meta)
            } else {
                Err(format!("{meta:?}, {logged} snapshots logged"))
            }
        },
    )
}

#[test]
fn every_command_gets_its_answer() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(2, 100);
    let srvids = register_at(&repository, &remote, &[host(1), host(2)], IDLE_FREQUENCY);
    let (first, second) = (srvids[0], srvids[1]);
    let (first_arg, second_arg) = (first.to_string(), second.to_string());
    postpone_snapshots(&repository);
    let mut repo = repository.connect_powa();

    let (collector, mut web) = start_collector_with_web(&repository, &srvids, START_TIMEOUT);

    assert_eq!(web.ask("RELOAD", &[]), "RELOAD OK OK");
    assert_eq!(
        web.ask("WORKERS_STATUS", &[]),
        format!(
            "WORKERS_STATUS OK {}",
            expected_status_json(&all_running(&srvids))
        )
    );
    assert_eq!(
        web.ask("WORKERS_STATUS", &[&first_arg]),
        format!("WORKERS_STATUS OK {{\"{first}\": \"running\"}}")
    );
    assert_eq!(web.ask("WORKERS_STATUS", &["999"]), "WORKERS_STATUS OK {}");

    // A forced snapshot lands long before the next scheduled one (a whole
    // period, 300 s, away), and a second one is refused within 10 s.
    let before = snapshot_meta(&mut repo, first);
    let forced_at = Instant::now();
    let answer = web.ask("FORCE_SNAPSHOT", &[&first_arg]);
    assert!(is_forced_snapshot_ok(&answer), "{answer:?}");
    let after = wait_for_snapshot(&collector, &mut repo, first, before.coalesce_seq, 1);
    let landed = forced_at.elapsed();
    eprintln!(
        "forced snapshot of server {first} landed {:.3} s after FORCE_SNAPSHOT",
        landed.as_secs_f64()
    );
    assert!(after.snapts > before.snapts, "{before:?} then {after:?}");
    assert_eq!(after.errors, None, "errors of the forced snapshot");
    let refused = web.ask("FORCE_SNAPSHOT", &[&first_arg]);
    assert!(
        forced_at.elapsed() < FORCE_SNAPSHOT_MIN_INTERVAL,
        "the test was too slow to check the 10 s rule: {:?} since the forced snapshot",
        forced_at.elapsed()
    );
    assert_eq!(
        refused,
        "FORCE_SNAPSHOT ERROR Last snapshot was less than 10s. ago"
    );

    assert_eq!(
        web.ask("FORCE_SNAPSHOT", &["999"]),
        "FORCE_SNAPSHOT ERROR Server id 999 not found"
    );
    assert_eq!(
        web.ask("REFRESH_DB_CAT", &[&first_arg, "0"]),
        "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot"
    );
    assert_eq!(
        web.ask("REFRESH_DB_CAT", &[&first_arg, "2", "db1", "db2"]),
        "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot"
    );
    let answer = web.ask("REFRESH_DB_CAT", &[&first_arg, "2", "db1"]);
    assert!(
        answer.starts_with("REFRESH_DB_CAT ERROR "),
        "wrong database count: {answer:?}"
    );
    assert_eq!(
        web.ask("REFRESH_DB_CAT", &["999", "0"]),
        "REFRESH_DB_CAT ERROR Server id 999 not found"
    );
    assert_eq!(
        web.ask("FOO", &[]),
        "FOO UNKNOWN Message \"FOO\" invalid, command ignored"
    );

    // A server without a snapshot yet: the first request is taken, the one
    // right after is refused (one runs, is scheduled, or just ran).
    let before_second = snapshot_meta(&mut repo, second);
    let answer = web.ask("FORCE_SNAPSHOT", &[&second_arg]);
    assert!(is_forced_snapshot_ok(&answer), "{answer:?}");
    let again = web.ask("FORCE_SNAPSHOT", &[&second_arg]);
    assert!(
        matches!(
            again.as_str(),
            "FORCE_SNAPSHOT ERROR A snapshot is already in progress"
                | "FORCE_SNAPSHOT ERROR A forced snapshot is already scheduled"
                | "FORCE_SNAPSHOT ERROR Last snapshot was less than 10s. ago"
        ),
        "second FORCE_SNAPSHOT right after the first: {again:?}"
    );
    wait_for_snapshot(&collector, &mut repo, second, before_second.coalesce_seq, 2);

    // Ten seconds after the first forced snapshot began, it is taken again.
    let accepted = wait_for(
        FORCE_SNAPSHOT_MIN_INTERVAL + Duration::from_secs(10),
        "FORCE_SNAPSHOT accepted again after 10 s",
        || {
            let answer = web.ask("FORCE_SNAPSHOT", &[&first_arg]);
            if is_forced_snapshot_ok(&answer) {
                Ok(forced_at.elapsed())
            } else {
                assert_eq!(
                    answer, "FORCE_SNAPSHOT ERROR Last snapshot was less than 10s. ago",
                    "refusal while waiting for the 10 s to pass"
                );
                Err(answer)
            }
        },
    );
    eprintln!(
        "FORCE_SNAPSHOT accepted again {:.3} s after the first one",
        accepted.as_secs_f64()
    );
    assert!(
        accepted >= FORCE_SNAPSHOT_MIN_INTERVAL,
        "accepted again after {accepted:?}"
    );
    let third = wait_for_snapshot(&collector, &mut repo, first, after.coalesce_seq, 3);
    assert_eq!(third.errors, None, "errors of the third snapshot");
    assert_eq!(
        web.workers_status(None),
        all_running(&srvids),
        "workers after the forced snapshots"
    );
}

/// What a request must get back.
enum Expected {
    /// No answer anywhere.
    Nothing,
    /// This payload on this channel.
    Exact(String, String),
    /// A payload starting with this on this channel.
    Prefix(String, String),
}

#[test]
fn malformed_requests_are_answered_or_ignored_and_change_nothing() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(3, 100);
    let srvid = repository.register_remote_at(&remote, &host(1), IDLE_FREQUENCY);
    postpone_snapshots(&repository);
    let mut repo = repository.connect_powa();
    let mut remote_client = remote.connect("postgres");

    let (mut collector, mut web) = start_collector_with_web(&repository, &[srvid], START_TIMEOUT);
    let status_json = expected_status_json(&all_running(&[srvid]));
    let status_ok = format!("WORKERS_STATUS OK {status_json}");
    let sessions_before = worker_pids(&mut remote_client);
    let meta_before = snapshot_meta(&mut repo, srvid);
    let servers_before: i64 = repo
        .query_one("SELECT count(*) FROM powa_servers", &[])
        .expect("count powa_servers")
        .get(0);

    let ch = "r4242";
    let exact = |channel: &str, payload: &str| Expected::Exact(channel.into(), payload.into());
    let prefix = |channel: &str, payload: &str| Expected::Prefix(channel.into(), payload.into());
    let error = |channel: &str, command: &str| prefix(channel, &format!("{command} ERROR "));

    // Payloads close to PostgreSQL's 8000-byte limit on NOTIFY payloads.
    let long_srvid = "1".repeat(7900);
    let database_names: Vec<String> = (0..880).map(|i| format!("db_{i:05}")).collect();
    let long_refresh = format!(
        "REFRESH_DB_CAT {ch} {srvid} {} {}",
        database_names.len(),
        database_names.join(" ")
    );
    assert!(
        (7900..8000).contains(&long_refresh.len()),
        "{}",
        long_refresh.len()
    );
    let long_command = "X".repeat(7800);
    let longest_command = "Y".repeat(7999 - 1 - ch.len());
    let long_channel = "c".repeat(100);

    let quote_channel = "r1\"x";
    let apostrophe_channel = "r1'x";
    let semicolon_channel = "r1;x";
    let non_ascii_channel = "canal-é-日本";
    let spaced_channel = "my channel";
    let injection = "x\";DROP/**/TABLE/**/powa_servers;--";
    let quote_injection = "x');DROP/**/TABLE/**/powa_servers;--";
    let spaced_injection = "x\";DROP TABLE powa_servers;--";

    let cases: Vec<(&str, String, Expected)> = vec![
        ("empty payload", String::new(), Expected::Nothing),
        ("only spaces", "     ".into(), Expected::Nothing),
        (
            "repeated spaces",
            format!("WORKERS_STATUS   {ch}    {srvid}  "),
            exact(
                ch,
                &format!("WORKERS_STATUS OK {{\"{srvid}\": \"running\"}}"),
            ),
        ),
        (
            "leading spaces",
            format!("   WORKERS_STATUS {ch}"),
            exact(ch, &status_ok),
        ),
        (
            "trailing space, as powa-web sends",
            format!("RELOAD {ch} "),
            exact(ch, "RELOAD OK OK"),
        ),
        ("no channel", "WORKERS_STATUS".into(), Expected::Nothing),
        ("channel -", "WORKERS_STATUS -".into(), Expected::Nothing),
        (
            "channel - and a srvid",
            format!("WORKERS_STATUS - {srvid}"),
            Expected::Nothing,
        ),
        (
            "unknown command, no channel",
            "FOO".into(),
            Expected::Nothing,
        ),
        (
            "command in lower case",
            format!("workers_status {ch}"),
            exact(
                ch,
                "workers_status UNKNOWN Message \"workers_status\" invalid, command ignored",
            ),
        ),
        (
            "FORCE_SNAPSHOT without srvid",
            format!("FORCE_SNAPSHOT {ch}"),
            error(ch, "FORCE_SNAPSHOT"),
        ),
        (
            "FORCE_SNAPSHOT with two srvids",
            format!("FORCE_SNAPSHOT {ch} 998 999"),
            error(ch, "FORCE_SNAPSHOT"),
        ),
        (
            "REFRESH_DB_CAT without srvid",
            format!("REFRESH_DB_CAT {ch}"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "REFRESH_DB_CAT without database count",
            format!("REFRESH_DB_CAT {ch} {srvid}"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "non-numeric srvid for WORKERS_STATUS",
            format!("WORKERS_STATUS {ch} abc"),
            error(ch, "WORKERS_STATUS"),
        ),
        (
            "non-numeric srvid for FORCE_SNAPSHOT",
            format!("FORCE_SNAPSHOT {ch} abc"),
            error(ch, "FORCE_SNAPSHOT"),
        ),
        (
            "negative srvid",
            format!("FORCE_SNAPSHOT {ch} -{srvid}"),
            error(ch, "FORCE_SNAPSHOT"),
        ),
        (
            "srvid beyond integers",
            format!("FORCE_SNAPSHOT {ch} 99999999999"),
            error(ch, "FORCE_SNAPSHOT"),
        ),
        (
            "non-numeric srvid for REFRESH_DB_CAT",
            format!("REFRESH_DB_CAT {ch} abc 0"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "non-numeric database count",
            format!("REFRESH_DB_CAT {ch} {srvid} x"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "fewer databases than counted",
            format!("REFRESH_DB_CAT {ch} {srvid} 2 db1"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "more databases than counted",
            format!("REFRESH_DB_CAT {ch} {srvid} 0 db1"),
            error(ch, "REFRESH_DB_CAT"),
        ),
        (
            "a 7900-digit srvid",
            format!("WORKERS_STATUS {ch} {long_srvid}"),
            error(ch, "WORKERS_STATUS"),
        ),
        (
            "870 database names",
            long_refresh.clone(),
            exact(
                ch,
                "REFRESH_DB_CAT OK Catalogs will be refreshed during the next snapshot",
            ),
        ),
        (
            "a 7800-byte unknown command: the answer would pass 8000 bytes",
            format!("{long_command} {ch}"),
            exact(ch, &format!("{long_command} KO {{ANSWER TOO LONG}}")),
        ),
        (
            "an unknown command filling the payload",
            format!("{longest_command} {ch}"),
            exact(
                ch,
                &format!("{} KO {{ANSWER TOO LONG}}", &longest_command[..64]),
            ),
        ),
        (
            "channel with a double quote",
            format!("WORKERS_STATUS {quote_channel}"),
            exact(quote_channel, &status_ok),
        ),
        (
            "channel with a single quote",
            format!("WORKERS_STATUS {apostrophe_channel}"),
            exact(apostrophe_channel, &status_ok),
        ),
        (
            "channel with a semicolon",
            format!("WORKERS_STATUS {semicolon_channel}"),
            exact(semicolon_channel, &status_ok),
        ),
        (
            "non-ASCII channel",
            format!("WORKERS_STATUS {non_ascii_channel}"),
            exact(non_ascii_channel, &status_ok),
        ),
        (
            "channel with a space: the first word is the channel",
            format!("RELOAD {spaced_channel}"),
            exact("my", "RELOAD OK OK"),
        ),
        (
            "channel injecting SQL after a double quote",
            format!("WORKERS_STATUS {injection}"),
            exact(injection, &status_ok),
        ),
        (
            "channel injecting SQL after a single quote",
            format!("WORKERS_STATUS {quote_injection}"),
            exact(quote_injection, &status_ok),
        ),
        (
            "SQL injection with spaces: the first word is the channel",
            format!("RELOAD {spaced_injection}"),
            exact("x\";DROP", "RELOAD OK OK"),
        ),
        (
            "channel longer than PostgreSQL identifiers: answered where LISTEN listens",
            format!("WORKERS_STATUS {long_channel}"),
            exact(&long_channel[..63], &status_ok),
        ),
    ];

    web.listen(ch);
    for channel in [
        quote_channel,
        apostrophe_channel,
        semicolon_channel,
        non_ascii_channel,
        spaced_channel,
        "my",
        injection,
        quote_injection,
        "x\";DROP",
        spaced_injection,
        // Where LISTEN on the long channel listens: its name truncated.
        &long_channel[..63],
    ] {
        web.listen(channel);
    }
    for (what, payload, _) in &cases {
        assert!(payload.len() < 8000, "{what}: payload too long for NOTIFY");
        web.send(payload);
    }
    let received = web.answers_until_barrier();

    let expected: Vec<(&str, &Expected)> = cases
        .iter()
        .filter(|(_, _, expected)| !matches!(expected, Expected::Nothing))
        .map(|(what, _, expected)| (*what, expected))
        .collect();
    let shown = |received: &[(String, String)]| -> String {
        received
            .iter()
            .map(|(channel, payload)| {
                let short: String = payload.chars().take(120).collect();
                format!("\n  on {channel:?}: {short:?} ({} bytes)", payload.len())
            })
            .collect()
    };
    assert_eq!(
        received.len(),
        expected.len(),
        "expected {} answers, received {}:{}",
        expected.len(),
        received.len(),
        shown(&received)
    );
    for ((what, expected), (channel, payload)) in expected.iter().zip(&received) {
        assert!(
            payload.len() < 8000,
            "{what}: answer of {} bytes",
            payload.len()
        );
        match expected {
            Expected::Exact(want_channel, want) => {
                assert_eq!(channel, want_channel, "{what}: channel of the answer");
                assert_eq!(payload, want, "{what}: answer");
            }
            Expected::Prefix(want_channel, want) => {
                assert_eq!(channel, want_channel, "{what}: channel of the answer");
                assert!(
                    payload.starts_with(want.as_str()),
                    "{what}: answer {payload:?} does not start with {want:?}"
                );
            }
            Expected::Nothing => unreachable!(),
        }
    }

    // Nothing changed: the table the injections aimed at is whole, the
    // worker kept its connection, no snapshot was taken, and the daemon
    // still answers.
    let servers_after: i64 = repo
        .query_one("SELECT count(*) FROM powa_servers", &[])
        .expect("powa_servers is still there")
        .get(0);
    assert_eq!(servers_after, servers_before, "rows of powa_servers");
    assert_eq!(
        worker_pids(&mut remote_client),
        sessions_before,
        "sessions of the worker on the remote"
    );
    let meta_after = snapshot_meta(&mut repo, srvid);
    assert_eq!(
        (meta_after.coalesce_seq, meta_after.snapts),
        (meta_before.coalesce_seq, meta_before.snapts),
        "snapshots of server {srvid}"
    );
    assert_eq!(web.ask("WORKERS_STATUS", &[]), status_ok);
    assert!(
        collector.exit_status().is_none(),
        "the collector exited: {:?}",
        collector.exit_status()
    );

    // RELOAD needs no channel to reload, whether absent or `-`.
    let added = repository.register_remote_at(&remote, &host(2), IDLE_FREQUENCY);
    web.send("RELOAD");
    assert_eq!(web.answers_until_barrier(), [], "answers to RELOAD");
    let keys: Vec<i32> = web.workers_status(None).into_keys().collect();
    assert_eq!(keys, [srvid, added], "workers after RELOAD without channel");
    let added_too = repository.register_remote_at(&remote, &host(3), IDLE_FREQUENCY);
    web.send("RELOAD -");
    assert_eq!(web.answers_until_barrier(), [], "answers to RELOAD -");
    let keys: Vec<i32> = web.workers_status(None).into_keys().collect();
    assert_eq!(
        keys,
        [srvid, added, added_too],
        "workers after RELOAD with channel -"
    );
}

#[test]
fn only_roles_allowed_to_signal_backends_are_served() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(2, 100);
    let srvids = register_at(&repository, &remote, &[host(1), host(2)], IDLE_FREQUENCY);
    postpone_snapshots(&repository);
    repository
        .connect_powa()
        .batch_execute(
            "CREATE ROLE nobody LOGIN; \
             CREATE ROLE signaller LOGIN IN ROLE pg_signal_backend; \
             CREATE ROLE powa_ui NOLOGIN IN ROLE pg_signal_backend; \
             CREATE ROLE ui_user LOGIN IN ROLE powa_ui",
        )
        .expect("create roles");

    // The collector runs until the end of the test.
    let (_collector, mut admin) = start_collector_with_web(&repository, &srvids, START_TIMEOUT);

    // A server is deleted: a reload would stop its worker.
    repository
        .connect_powa()
        .execute("SELECT powa_delete_and_purge_server($1)", &[&srvids[1]])
        .expect("delete a server");

    let mut nobody = PowaWeb::connect_as(&repository, "nobody");
    let first = srvids[0].to_string();
    for (command, args) in [
        ("RELOAD", vec![]),
        ("WORKERS_STATUS", vec![]),
        ("WORKERS_STATUS", vec![first.as_str()]),
        ("FORCE_SNAPSHOT", vec![first.as_str()]),
        ("REFRESH_DB_CAT", vec![first.as_str(), "0"]),
    ] {
        assert_eq!(
            nobody.ask(command, &args),
            format!("{command} ERROR Permission denied"),
            "{command} {args:?} from a role without privileges"
        );
    }
    // The refused RELOAD did nothing.
    assert_eq!(
        admin.workers_status(None),
        all_running(&srvids),
        "workers after a refused RELOAD"
    );

    let mut signaller = PowaWeb::connect_as(&repository, "signaller");
    assert_eq!(
        signaller.ask("WORKERS_STATUS", &[]),
        format!(
            "WORKERS_STATUS OK {}",
            expected_status_json(&all_running(&srvids))
        ),
        "WORKERS_STATUS from a member of pg_signal_backend"
    );
    assert_eq!(signaller.ask("RELOAD", &[]), "RELOAD OK OK");
    assert_eq!(
        signaller.workers_status(None),
        all_running(&srvids[..1]),
        "workers after the RELOAD of a member of pg_signal_backend"
    );

    // Membership through another role counts too.
    let mut ui_user = PowaWeb::connect_as(&repository, "ui_user");
    assert_eq!(
        ui_user.workers_status(None),
        all_running(&srvids[..1]),
        "WORKERS_STATUS from an indirect member of pg_signal_backend"
    );
}

/// Whether a snapshot is running: a worker's repository connection has a
/// transaction open.
fn snapshot_in_flight(repo: &mut Client) -> bool {
    repo.query_one(
        "SELECT count(*) > 0 FROM pg_stat_activity \
         WHERE (application_name LIKE 'PoWA collector - repo_conn%' \
                OR application_name LIKE 'PoWA - %') \
           AND xact_start IS NOT NULL",
        &[],
    )
    .expect("read pg_stat_activity of the repository")
    .get(0)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[test]
fn answers_stay_prompt_while_snapshots_run() {
    /// Requests to time while a snapshot runs.
    const SAMPLES: usize = 50;
    const FREQUENCY: i32 = 5;
    const COLUMNS: usize = 30;
    const SLOW_DATASOURCE_SECONDS: f64 = 1.0;

    let repository = Cluster::repository();
    let options = RemoteOptions {
        track_all: true,
        ..RemoteOptions::default()
    };
    let remotes = [Cluster::remote(&options), Cluster::remote(&options)];
    // Some statements for the snapshots to carry: one per pair of columns.
    let columns: Vec<String> = (0..COLUMNS).map(|i| format!("c{i} int")).collect();
    for remote in &remotes {
        remote
            .connect_powa()
            .batch_execute(&format!(
                "CREATE TABLE items ({}); \
                 DO $$ BEGIN \
                   FOR i IN 0..{last} LOOP FOR j IN 0..{last} LOOP \
                     EXECUTE format('SELECT c%s, c%s FROM items', i, j); \
                   END LOOP; END LOOP; \
                 END $$",
                columns.join(", "),
                last = COLUMNS - 1
            ))
            .expect("run statements on the remote");
    }
    // A slow datasource keeps each snapshot in flight for a while, so that
    // many requests meet one.
    for remote in &remotes {
        slow_down_bgwriter_source(remote, SLOW_DATASOURCE_SECONDS);
    }
    let srvids = repository.register_remotes(&remotes, FREQUENCY);
    let mut repo = repository.connect_powa();

    let (mut collector, mut web) = start_collector_with_web(&repository, &srvids, START_TIMEOUT);
    collector.wait_for_a_snapshot_of_each(&mut repo, &srvids, START_TIMEOUT);

    let expected = all_running(&srvids);
    let mut all = Vec::new();
    let mut during = Vec::new();
    let started = Instant::now();
    wait_for(
        Duration::from_secs(60),
        &format!("{SAMPLES} requests answered while a snapshot runs"),
        || {
            let in_flight = snapshot_in_flight(&mut repo);
            let (answer, latency) = web.ask_timed("WORKERS_STATUS", &[]);
            assert_eq!(
                crate::powa_web::parse_workers_status(&answer),
                expected,
                "WORKERS_STATUS while snapshots run"
            );
            all.push(latency);
            if in_flight {
                during.push(latency);
            }
            if during.len() >= SAMPLES {
                Ok(())
            } else {
                Err(format!(
                    "{} requests, {} during a snapshot",
                    all.len(),
                    during.len()
                ))
            }
        },
    );
    let metas: Vec<_> = srvids
        .iter()
        .map(|&s| snapshot_meta(&mut repo, s))
        .collect();
    for meta in &metas {
        assert_eq!(meta.errors, None, "errors of the snapshots: {metas:?}");
    }
    all.sort();
    during.sort();
    eprintln!(
        "MEASURE: protocol answer time (WORKERS_STATUS, powa-web client) while snapshots run: \
         median {:.1} ms, worst {:.1} ms over {} requests sent during a snapshot; \
         median {:.1} ms, worst {:.1} ms over all {} requests in {:.1} s",
        millis(median(&during)),
        millis(*during.last().expect("samples")),
        during.len(),
        millis(median(&all)),
        millis(*all.last().expect("samples")),
        all.len(),
        started.elapsed().as_secs_f64()
    );
    // Every answer came within powa-web's timeout (`ask_timed` checks it);
    // the usual one comes well within a quarter of a second.
    assert!(
        median(&during) < Duration::from_millis(250),
        "median answer time while snapshots run: {:?}",
        median(&during)
    );
    assert!(*during.last().expect("samples") < ANSWER_TIMEOUT);
}

#[test]
fn the_forced_snapshot_guard_holds_for_an_unreachable_server() {
    let repository = Cluster::repository();
    let mut admin = repository.connect_powa();
    // Nothing listens there: every connection is refused at once.
    let port = i32::from(free_port());
    admin
        .execute(
            "SELECT powa_register_server(hostname => '127.0.0.1', port => $1, \
             username => 'postgres', dbname => 'powa', frequency => $2)",
            &[&port, &IDLE_FREQUENCY],
        )
        .expect("register an unreachable server");
    let srvid: i32 = admin
        .query_one("SELECT id FROM powa_servers WHERE port = $1", &[&port])
        .expect("srvid")
        .get(0);
    let (_collector, mut web) =
        start_collector_with_web_expecting(&repository, srvid, "no connection to remote server");
    let id = srvid.to_string();
    let first = web.ask("FORCE_SNAPSHOT", &[&id]);
    assert!(is_forced_snapshot_ok(&first), "first request: {first}");
    let second = web.ask("FORCE_SNAPSHOT", &[&id]);
    assert!(
        matches!(
            second.as_str(),
            "FORCE_SNAPSHOT ERROR A snapshot is already in progress"
                | "FORCE_SNAPSHOT ERROR A forced snapshot is already scheduled"
                | "FORCE_SNAPSHOT ERROR Last snapshot was less than 10s. ago"
        ),
        "second request right after: {second}"
    );
}

/// Starts the collector and waits until WORKERS_STATUS shows `srvid` with
/// `status`.
fn start_collector_with_web_expecting(
    repository: &Cluster,
    srvid: i32,
    status: &str,
) -> (Collector, PowaWeb) {
    let mut collector = Collector::start(repository);
    let mut web = PowaWeb::connect(repository);
    web.wait_until_answering(&mut collector, START_TIMEOUT);
    wait_for(START_TIMEOUT, &format!("server {srvid} {status}"), || {
        let statuses = web.workers_status(None);
        if statuses.get(&srvid).map(String::as_str) == Some(status) {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    });
    (collector, web)
}
