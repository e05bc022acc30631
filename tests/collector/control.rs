//! `powa-collector status` and `powa-collector reload`: the command
//! protocol from the command line, through the repository, as powa-web
//! speaks it.

use std::time::Duration;

use crate::harness::{Collector, repository_with_remote, run_with_config as run_with};

#[test]
fn status_and_reload_ask_the_running_collector() {
    let (repository, remote, srvid) = repository_with_remote(5);
    let config = Collector::config_for(&repository).to_string();
    let mut collector = Collector::start_with_config(&config);
    let mut repo = repository.connect_powa();
    collector.wait_for_first_snapshot(&mut repo, srvid, Duration::from_secs(20));

    let (status, _) = run_with(&config, &["status"]);
    assert_eq!(
        status.code(),
        Some(0),
        "status: {}{}",
        status.stdout,
        status.stderr
    );
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert!(lines[0].starts_with("SRVID"), "{}", status.stdout);
    let row = lines
        .iter()
        .find(|line| line.starts_with(&srvid.to_string()))
        .unwrap_or_else(|| panic!("no row for server {srvid}: {}", status.stdout));
    assert!(row.contains("remote") && row.contains("running"), "{row}");
    assert!(!row.contains("never"), "no last snapshot shown: {row}");

    let (one, _) = run_with(&config, &["status", &srvid.to_string()]);
    assert_eq!(one.code(), Some(0), "{}", one.stderr);
    assert_eq!(one.stdout.lines().count(), 2, "{}", one.stdout);

    let (reload, _) = run_with(&config, &["reload"]);
    assert_eq!(reload.code(), Some(0), "{}", reload.stderr);
    assert_eq!(reload.stdout.trim(), "RELOAD OK OK");
    drop(remote);
    collector.stop().assert_exited_zero();
}

#[test]
fn without_a_collector_they_fail_within_their_timeout() {
    let (repository, _remote, srvid) = repository_with_remote(5);
    let config = Collector::config_for(&repository).to_string();
    for args in [
        &["status", "--timeout", "1"][..],
        &["reload", "--timeout", "1"],
    ] {
        let (finished, elapsed) = run_with(&config, args);
        assert_eq!(finished.code(), Some(1), "{args:?}: {}", finished.stderr);
        assert!(
            finished
                .stderr
                .contains("no collector answered within 1.0 s"),
            "{args:?}: {}",
            finished.stderr
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "{args:?} took {elapsed:?}"
        );
    }
    // The table still shows what the repository knows.
    let (status, _) = run_with(&config, &["status", "--timeout", "0.5"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|line| line.starts_with(&srvid.to_string()) && line.contains("no worker")),
        "{}",
        status.stdout
    );
}
