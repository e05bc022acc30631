//! Many remote servers out of one cluster, and what the control-plane tests
//! read off the clusters: the collector's sessions and queries.
//!
//! `powa_servers` is unique on (hostname, port), so one remote cluster
//! listening on 127.0.0.1, 127.0.0.2, ... is registered once per address
//! and counts as that many servers, each with its own worker.
//!
//! Used by the test threads.

use std::collections::BTreeMap;

use postgres::Client;

use crate::harness::{Cluster, Powa, RemoteOptions};

/// Prefix of the `application_name` of a worker's remote connection.
pub const WORKER_SESSION: &str = "PoWA collector - worker ";

/// The `n`-th loopback address, `127.0.0.<n>` (from 1).
pub fn host(n: usize) -> String {
    assert!((1..=254).contains(&n), "no loopback address number {n}");
    format!("127.0.0.{n}")
}

/// A PoWA remote listening on 127.0.0.1 to 127.0.0.`addresses`, accepting
/// `max_connections` sessions.
pub fn remote_on_addresses(addresses: usize, max_connections: u32) -> Cluster {
    remote_on_addresses_of(Powa::V4, addresses, max_connections)
}

/// `remote_on_addresses` with PoWA `version`.
pub fn remote_on_addresses_of(version: Powa, addresses: usize, max_connections: u32) -> Cluster {
    let listen: Vec<String> = (1..=addresses).map(host).collect();
    Cluster::remote(&RemoteOptions {
        settings: vec![
            ("listen_addresses", format!("'{}'", listen.join(","))),
            ("max_connections", max_connections.to_string()),
        ],
        ..RemoteOptions::of(version)
    })
}

/// Registers `remote` once through each of `hosts`, every `frequency`
/// seconds; returns the srvids in the same order.
pub fn register_at(
    repository: &Cluster,
    remote: &Cluster,
    hosts: &[String],
    frequency: i32,
) -> Vec<i32> {
    hosts
        .iter()
        .map(|host| repository.register_remote_at(remote, host, frequency))
        .collect()
}

/// Makes the next snapshot of every registered server a whole period away
/// for a collector started now: their last snapshot is dated now, so the
/// collector keeps that rhythm rather than picking a random first delay.
pub fn postpone_snapshots(repository: &Cluster) {
    repository
        .connect_powa()
        .batch_execute("UPDATE powa_snapshot_metas SET snapts = now() WHERE srvid > 0")
        .expect("date the last snapshots now");
}

/// One session of the collector on a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub pid: i32,
    pub application_name: String,
    /// `backend_start`, in seconds since the epoch.
    pub backend_start: f64,
    pub state: Option<String>,
    pub query: String,
}

/// The collector's sessions on `cluster` (all databases), by pid.
pub fn collector_sessions(client: &mut Client) -> Vec<Session> {
    client
        .query(
            "SELECT pid, application_name, extract(epoch FROM backend_start)::float8, \
             state, coalesce(query, '') \
             FROM pg_stat_activity \
             WHERE application_name LIKE 'PoWA collector%' OR application_name LIKE 'PoWA - %' \
             ORDER BY pid",
            &[],
        )
        .expect("read pg_stat_activity")
        .iter()
        .map(|row| Session {
            pid: row.get(0),
            application_name: row.get(1),
            backend_start: row.get(2),
            state: row.get(3),
            query: row.get(4),
        })
        .collect()
}

/// The workers' remote sessions on `remote`, by server key (`host:port`).
pub fn worker_sessions(client: &mut Client) -> BTreeMap<String, Vec<Session>> {
    let mut by_key: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for session in collector_sessions(client) {
        if let Some(key) = session.application_name.strip_prefix(WORKER_SESSION) {
            by_key.entry(key.to_string()).or_default().push(session);
        }
    }
    by_key
}

/// Makes the remote's datasource `powa_stat_bgwriter_src` sleep `seconds`
/// before answering: the original is kept under another name and a
/// function of the same signature calls it after `pg_sleep`. A snapshot of
/// that remote then stays in flight that long, its other datasources
/// already copied into the repository's open transaction.
pub fn slow_down_bgwriter_source(remote: &Cluster, seconds: f64) {
    remote
        .connect_powa()
        .batch_execute(&format!(
            "ALTER FUNCTION powa_stat_bgwriter_src(integer) \
               RENAME TO powa_stat_bgwriter_src_original; \
             DO $do$ \
             DECLARE arguments text; result text; \
             BEGIN \
               SELECT pg_get_function_arguments(oid), pg_get_function_result(oid) \
                 INTO arguments, result \
                 FROM pg_proc WHERE proname = 'powa_stat_bgwriter_src_original'; \
               EXECUTE format( \
                 'CREATE FUNCTION powa_stat_bgwriter_src(%s) RETURNS %s LANGUAGE plpgsql AS %L', \
                 arguments, result, \
                 'BEGIN PERFORM pg_sleep({seconds}); \
                  RETURN QUERY SELECT * FROM powa_stat_bgwriter_src_original(_srvid); END'); \
             END $do$"
        ))
        .expect("replace powa_stat_bgwriter_src on the remote by a slow one");
}

/// The pids of the workers' remote sessions, by server key.
pub fn worker_pids(client: &mut Client) -> BTreeMap<String, Vec<i32>> {
    worker_sessions(client)
        .into_iter()
        .map(|(key, sessions)| (key, sessions.iter().map(|s| s.pid).collect()))
        .collect()
}
