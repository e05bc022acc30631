//! The workers' shared repository connections: however many servers, the
//! repository sees no more collector sessions than the pool's size plus
//! the main connection, and every server still gets its snapshots.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::fleet::{
    collector_sessions, host, register_at, remote_on_addresses, slow_down_bgwriter_source,
};
use crate::harness::{Cluster, Collector, repository_with_two_remotes, snapshot_meta};

const SERVERS: usize = 20;
const POOL_SIZE: usize = 2;

#[test]
fn twenty_servers_share_two_repository_connections() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(SERVERS, 100);
    let hosts: Vec<String> = (1..=SERVERS).map(host).collect();
    let srvids = register_at(&repository, &remote, &hosts, 5);
    let mut config = Collector::config_for(&repository);
    config["repository"]["pool_size"] = POOL_SIZE.into();
    let mut collector = Collector::start_with_config(&config.to_string());

    let mut repo = repository.connect_powa();
    let mut peak = 0;
    let mut pids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sessions = collector_sessions(&mut repo);
        peak = peak.max(sessions.len());
        pids.extend(sessions.iter().map(|s| s.pid));
        let done = srvids
            .iter()
            .all(|&srvid| snapshot_meta(&mut repo, srvid).coalesce_seq >= 3);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every server got two snapshots within 60 s"
        );
        assert!(collector.exit_status().is_none(), "the collector exited");
        std::thread::sleep(Duration::from_millis(20));
    }

    assert!(
        peak <= POOL_SIZE + 1,
        "the repository saw {peak} collector sessions at once, \
         above the pool's {POOL_SIZE} and the main connection"
    );
    // Pooled connections are reused, not opened per snapshot: 40 snapshots
    // and 20 version saves went through at most these sessions.
    assert!(
        pids.len() <= POOL_SIZE + 1,
        "the repository saw {} distinct collector sessions: {pids:?}",
        pids.len()
    );
    let log = collector.log();
    assert!(!log.contains("falling behind"), "{log}");
    collector.stop().assert_exited_zero();
}

/// With one pooled connection held 12 s by a slow snapshot, a server due
/// every 5 s waits more than a period: the collector says it is falling
/// behind, in its log and in that server's errors for the UI.
#[test]
fn a_saturated_pool_is_named_in_the_log_and_for_the_ui() {
    let (repository, remotes, srvids) = repository_with_two_remotes(5);
    slow_down_bgwriter_source(&remotes[0], 12.0);
    let mut config = Collector::config_for(&repository);
    config["repository"]["pool_size"] = 1.into();
    let mut collector = Collector::start_with_config(&config.to_string());

    let mut repo = repository.connect_powa();
    let fast = srvids[1];
    let meta = collector.wait_for(Duration::from_secs(60), "a late snapshot reported", || {
        let meta = snapshot_meta(&mut repo, fast);
        if meta.has_error_containing("repository connections of the collector were busy") {
            Ok(meta)
        } else {
            Err(format!("{meta:?}"))
        }
    });
    assert!(
        meta.has_error_containing("repository.pool_size"),
        "{meta:?}"
    );
    let log = collector.log();
    assert!(log.contains("falling behind: snapshot started"), "{log}");
    collector.stop().assert_exited_zero();
}
