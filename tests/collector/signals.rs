//! Signals: SIGTERM stops every worker and the process exits 0, promptly.

use std::time::Duration;

use crate::harness::{Collector, repository_with_two_remotes};

/// The longest a clean stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn sigterm_stops_the_collector_promptly() {
    let (repository, _remotes, srvids) = repository_with_two_remotes(5);
    let mut repo = repository.connect_powa();

    let mut collector = Collector::start(&repository);
    collector.wait_for_a_snapshot_of_each(&mut repo, &srvids, Duration::from_secs(20));

    let stopped = collector.stop();
    println!(
        "stopped {:.3} s after SIGTERM with {}",
        stopped.elapsed.as_secs_f64(),
        stopped.status
    );
    stopped.assert_clean_exit(STOP_LIMIT);
}
