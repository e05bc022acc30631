//! Signals: SIGTERM stops every worker and the process exits 0, promptly.

use std::time::Duration;

use crate::harness::{Cluster, Collector, RemoteOptions, snapshot_meta};

/// The longest a clean stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn sigterm_stops_the_collector_promptly() {
    let repository = Cluster::repository();
    let remotes = [
        Cluster::remote(&RemoteOptions::default()),
        Cluster::remote(&RemoteOptions::default()),
    ];
    let srvids: Vec<i32> = remotes
        .iter()
        .enumerate()
        .map(|(i, remote)| repository.register_remote(remote, &format!("remote-{i}"), 5))
        .collect();
    let mut repo = repository.connect_powa();

    let mut collector = Collector::start(&repository);
    collector.wait_for(Duration::from_secs(20), "a snapshot of each remote", || {
        let metas: Vec<_> = srvids
            .iter()
            .map(|&srvid| snapshot_meta(&mut repo, srvid))
            .collect();
        if metas.iter().all(|meta| meta.coalesce_seq >= 2) {
            Ok(())
        } else {
            Err(format!("{metas:?}"))
        }
    });

    let stopped = collector.stop();
    println!(
        "stopped {:.3} s after SIGTERM with {}",
        stopped.elapsed.as_secs_f64(),
        stopped.status
    );
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "exit status after SIGTERM: {}",
        stopped.status
    );
    assert!(
        stopped.elapsed < STOP_LIMIT,
        "stopping took {:?}, more than {STOP_LIMIT:?}",
        stopped.elapsed
    );
}
