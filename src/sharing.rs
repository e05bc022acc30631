//! Several collectors on one repository: which of the listed servers this
//! collector snapshots, decided in the repository itself with session
//! advisory locks held on each collector's main connection. Run by the main
//! thread.
//!
//! Every collector holds one lock that says it is a member (class
//! [`MEMBER_CLASS`], key its backend pid) and one per server it owns (class
//! [`SERVER_CLASS`], key the server's id). A lock can have one holder only,
//! so a server is snapshotted by one collector; and a lock ends with the
//! session that holds it, so the servers of a collector that stops, dies or
//! loses its main connection are free for the others. Every
//! [`REBALANCE_INTERVAL`] each collector counts the members and takes its
//! fair share of the servers, `ceil(servers / members)`: free servers up to
//! it, and gives back what it holds beyond it (when a collector joins). A
//! collector alone owns every server, as before.

use std::collections::BTreeSet;
use std::time::Duration;

use postgres::Client;

/// The first key of a member's lock ("powa" in ASCII).
pub const MEMBER_CLASS: i32 = 0x706f_7761;
/// The first key of a server's lock.
pub const SERVER_CLASS: i32 = MEMBER_CLASS + 1;
/// How often ownership is looked at again: a dead collector's servers are
/// picked up within this, plus their own period's rhythm.
pub const REBALANCE_INTERVAL: Duration = Duration::from_secs(5);

/// What to change in the servers this collector owns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Servers to try to take, in order.
    pub take: Vec<i32>,
    /// Servers to give back: no longer listed, or beyond the fair share.
    pub release: Vec<i32>,
}

/// This collector's share: the servers it owns, and what it last saw of
/// the others.
#[derive(Debug, Default)]
pub struct Share {
    pub owned: BTreeSet<i32>,
    /// Servers other collectors held at the last survey.
    pub held_by_others: BTreeSet<i32>,
    /// Collectors counted at the last survey, this one included.
    pub members: usize,
}

/// Each collector's fair share of `servers` among `members`.
pub fn fair_share(servers: usize, members: usize) -> usize {
    servers.div_ceil(members.max(1))
}

/// Which servers to take and give back, given the `listed` servers, those
/// this collector `owned`, those `held_by_others`, and the number of
/// `members`. Beyond the fair share, the highest ids are given back.
pub fn plan(
    listed: &BTreeSet<i32>,
    owned: &BTreeSet<i32>,
    held_by_others: &BTreeSet<i32>,
    members: usize,
) -> Plan {
    let fair = fair_share(listed.len(), members);
    let mut release: Vec<i32> = owned.difference(listed).copied().collect();
    let kept: Vec<i32> = owned.intersection(listed).copied().collect();
    if kept.len() > fair {
        release.extend(&kept[fair..]);
    }
    let keeping = kept.len().min(fair);
    let take = listed
        .iter()
        .filter(|id| !owned.contains(id) && !held_by_others.contains(id))
        .take(fair - keeping)
        .copied()
        .collect();
    Plan { take, release }
}

/// Says this collector is a member.
pub fn join(client: &mut Client) -> Result<(), postgres::Error> {
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_lock($1, pg_catalog.pg_backend_pid())",
            &[&MEMBER_CLASS],
        )
        .map(drop)
}

/// Counts the members and lists the servers others hold, in this database.
pub fn survey(client: &mut Client) -> Result<(usize, BTreeSet<i32>), postgres::Error> {
    let rows = client.query(
        "SELECT l.classid::int8, l.objid::int8 FROM pg_catalog.pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
           AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                             WHERE datname = pg_catalog.current_database()) \
           AND (l.classid::int8 = $1 \
                OR (l.classid::int8 = $2 AND l.pid <> pg_catalog.pg_backend_pid()))",
        &[&i64::from(MEMBER_CLASS), &i64::from(SERVER_CLASS)],
    )?;
    let mut members = 0;
    let mut held = BTreeSet::new();
    for row in rows {
        let (class, key): (i64, i64) = (row.get(0), row.get(1));
        if class == i64::from(MEMBER_CLASS) {
            members += 1;
        } else if let Ok(srvid) = i32::try_from(key) {
            held.insert(srvid);
        }
    }
    Ok((members.max(1), held))
}

/// Tries to take `srvids`; returns those taken.
pub fn take(client: &mut Client, srvids: &[i32]) -> Result<Vec<i32>, postgres::Error> {
    if srvids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client.query(
        "SELECT id FROM pg_catalog.unnest($2::int4[]) AS id \
         WHERE pg_catalog.pg_try_advisory_lock($1, id)",
        &[&SERVER_CLASS, &srvids],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Gives `srvids` back.
pub fn release(client: &mut Client, srvids: &[i32]) -> Result<(), postgres::Error> {
    if srvids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock($1, id) \
             FROM pg_catalog.unnest($2::int4[]) AS id",
            &[&SERVER_CLASS, &srvids],
        )
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[i32]) -> BTreeSet<i32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn alone_a_collector_takes_every_server() {
        let listed = set(&[1, 2, 3, 4, 5]);
        let plan = plan(&listed, &set(&[]), &set(&[]), 1);
        assert_eq!(plan.take, [1, 2, 3, 4, 5]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn the_share_is_rounded_up() {
        assert_eq!(fair_share(5, 2), 3);
        assert_eq!(fair_share(4, 2), 2);
        assert_eq!(fair_share(0, 3), 0);
        assert_eq!(fair_share(3, 0), 3);
    }

    #[test]
    fn a_joining_collector_takes_only_free_servers_up_to_its_share() {
        let listed = set(&[1, 2, 3, 4, 5, 6]);
        let plan = plan(&listed, &set(&[]), &set(&[1, 2, 3, 4]), 2);
        assert_eq!(plan.take, [5, 6]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn beyond_the_share_the_highest_ids_are_given_back() {
        let listed = set(&[1, 2, 3, 4, 5, 6]);
        let plan = plan(&listed, &set(&[1, 2, 3, 4, 5, 6]), &set(&[]), 3);
        assert_eq!(plan.release, [3, 4, 5, 6]);
        assert!(plan.take.is_empty());
    }

    #[test]
    fn servers_no_longer_listed_are_given_back() {
        let listed = set(&[1, 2]);
        let plan = plan(&listed, &set(&[1, 2, 9]), &set(&[]), 1);
        assert_eq!(plan.release, [9]);
        assert!(plan.take.is_empty());
    }

    #[test]
    fn a_dead_collectors_servers_are_taken_over() {
        let listed = set(&[1, 2, 3, 4]);
        // The other collector is gone: one member, nothing held by others.
        let plan = plan(&listed, &set(&[1, 2]), &set(&[]), 1);
        assert_eq!(plan.take, [3, 4]);
        assert!(plan.release.is_empty());
    }
}
