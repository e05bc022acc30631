//! Two collectors on one repository share its servers: each server has
//! one worker in all, each collector about half, and when one dies the
//! other takes its servers over.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::Client;

use crate::fleet::{host, register_at, remote_on_addresses, worker_pids};
use crate::harness::{Cluster, Collector, snapshot_meta, wait_for};

const SERVERS: usize = 6;

/// Server locks held, by the pid of the collector session holding them.
fn server_locks_by_holder(repo: &mut Client) -> BTreeMap<i32, usize> {
    repo.query(
        "SELECT pid, count(*)::int8 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND classid::int8 = $1 GROUP BY pid",
        &[&(0x706f_7761_i64 + 1)],
    )
    .expect("read pg_locks")
    .iter()
    .map(|row| (row.get(0), row.get::<_, i64>(1) as usize))
    .collect()
}

#[test]
fn two_collectors_share_the_servers_and_one_takes_over_when_the_other_dies() {
    let repository = Cluster::repository();
    let remote = remote_on_addresses(SERVERS, 100);
    let hosts: Vec<String> = (1..=SERVERS).map(host).collect();
    let srvids = register_at(&repository, &remote, &hosts, 5);
    let config = Collector::config_for(&repository).to_string();
    let mut first = Collector::start_with_config(&config);
    let mut repo = repository.connect_powa();
    let mut remote_client = remote.connect("postgres");
    first.wait_for(
        Duration::from_secs(30),
        "the first collector to own all",
        || {
            let locks = server_locks_by_holder(&mut repo);
            let one_each = worker_pids(&mut remote_client).len() == SERVERS;
            if locks.values().sum::<usize>() == SERVERS && locks.len() == 1 && one_each {
                Ok(())
            } else {
                Err(format!("{locks:?}"))
            }
        },
    );

    let mut second = Collector::start_with_config(&config);
    second.wait_for(Duration::from_secs(30), "an even share", || {
        let locks = server_locks_by_holder(&mut repo);
        let sessions = worker_pids(&mut remote_client);
        let one_each = sessions.len() == SERVERS && sessions.values().all(|p| p.len() == 1);
        let even = locks.len() == 2 && locks.values().all(|&n| n == SERVERS / 2);
        if even && one_each {
            Ok(())
        } else {
            Err(format!("locks {locks:?}, worker sessions {sessions:?}"))
        }
    });
    assert!(first.exit_status().is_none(), "the first collector exited");
    assert!(second.log().contains("took servers"), "{}", second.log());

    // The first dies: its servers go to the second within a period or so.
    let before: Vec<i64> = srvids
        .iter()
        .map(|&id| snapshot_meta(&mut repo, id).coalesce_seq)
        .collect();
    first.signal("KILL");
    second.wait_for(Duration::from_secs(30), "the takeover", || {
        let locks = server_locks_by_holder(&mut repo);
        let sessions = worker_pids(&mut remote_client);
        let all = locks.len() == 1 && locks.values().sum::<usize>() == SERVERS;
        if all && sessions.len() == SERVERS && sessions.values().all(|p| p.len() == 1) {
            Ok(())
        } else {
            Err(format!("locks {locks:?}, worker sessions {sessions:?}"))
        }
    });
    wait_for(
        Duration::from_secs(30),
        "a new snapshot of every server",
        || {
            let now: Vec<i64> = srvids
                .iter()
                .map(|&id| snapshot_meta(&mut repo, id).coalesce_seq)
                .collect();
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                Ok(())
            } else {
                Err(format!("before {before:?}, now {now:?}"))
            }
        },
    );
    second.stop().assert_exited_zero();
}
