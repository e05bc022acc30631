//! The main thread: the repository connection, the workers, the command
//! protocol, reloads and shutdown.
//!
//! [`run`] connects to the repository, checks PoWA there, `LISTEN`s on
//! channel `powa_collector`, reads the remote servers and starts one worker
//! per server, then loops until told to stop.
//!
//! How the loop waits: the synchronous `postgres` client exposes no socket
//! to `select` on, so each turn waits at most [`POLL_INTERVAL`] (500 ms) for
//! a notification on the repository connection, serves every notification
//! that arrived, then looks at the [`Control`] flags that signal handlers
//! set. A request is thus answered as soon as it arrives, a signal is acted
//! on within 500 ms (so SIGTERM, with [`SHUTDOWN_DEADLINE`], exits within
//! 2 s), and an idle collector's main thread wakes twice a second. At least every [`CHECK_INTERVAL`] the
//! repository connection is checked and, if it dropped, re-opened (and
//! `LISTEN` issued again) while the workers go on. Every
//! [`REBALANCE_INTERVAL`] the loop takes this collector's share of the
//! servers when others share the repository ([`sharing`]), and makes the
//! workers follow.
//!
//! Shutdown tells every worker to stop at once (the watchdog cancels the
//! query of a snapshot in flight, which is then rolled back, and drops the
//! connections that do not answer), then joins them, waiting at most
//! [`SHUTDOWN_DEADLINE`] for all of them. Workers a reload removes are told
//! to stop the same way but not waited for: the loop joins them as they
//! end, so a reload answers at once. The main thread itself never sends a
//! cancel request or waits on a worker's peer; its own queries are bounded
//! by [`MAIN_STATEMENT_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::LevelFilter;
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::config::{self, Config};
use crate::conninfo::{ConnInfo, Tripwire};
use crate::error::{Error, describe_postgres_error};
use crate::metrics::{Endpoint, Metrics};
use crate::pool::Pool;
use crate::powa::Powa;
use crate::protocol::{self, Answer, Command, Request};
use crate::repository;
use crate::repository::metas::{self, ErrorReport};
use crate::servers::{self, Change, RunningWorker, ServerSettings};
use crate::sharing::{self, REBALANCE_INTERVAL, Share};
use crate::systemd::Notifier;
use crate::watchdog::Watchdog;
use crate::worker::schedule::{Backoff, jitter};
use crate::worker::{WorkerHandle, WorkerOptions, WorkerStatus};

/// Longest wait for a notification before the loop looks at its flags.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest time between two checks of the repository connection.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait for the workers to end at shutdown; a worker still
/// connecting or stuck past it is left behind.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);
/// `statement_timeout` of the main thread's repository connection.
pub const MAIN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before trying a repository that is down again; it doubles
/// at each failure, up to [`CHECK_INTERVAL`].
const REPOSITORY_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// While the repository stays down, how often that is logged again.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(600);
/// Bound on one check of the repository connection.
const CHECK_TIMEOUT: Duration = Duration::from_millis(750);
/// How often stopping workers are looked at, and their queries cancelled
/// again, while waiting for them.
const JOIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The channel the collector listens on.
pub const CHANNEL: &str = "powa_collector";

/// How the outside world tells a running collector to stop or reload.
///
/// Signal handlers only set these flags; the main loop acts on them. Tests
/// drive a collector in-process through the same methods.
#[derive(Debug, Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Control {
    pub fn new() -> Control {
        Control::default()
    }

    /// Makes SIGTERM and SIGINT request a stop (a second one exits at once,
    /// with code 0: the servers roll back whatever was in flight), and
    /// SIGHUP a reload.
    pub fn register_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for signal in [SIGTERM, SIGINT] {
            signal_hook::flag::register_conditional_shutdown(signal, 0, Arc::clone(&self.stop))?;
            signal_hook::flag::register(signal, Arc::clone(&self.stop))?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&self.reload))?;
        Ok(())
    }

    /// Asks the collector to stop every worker and return.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Asks the collector to reload its configuration.
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }
}

/// The log level a configuration asks for.
pub fn log_level(debug: bool) -> LevelFilter {
    if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    }
}

/// Runs the collector until `control` asks it to stop.
///
/// `force_debug` (the command line's `--debug`) keeps debug logging on
/// whatever the configuration file says, across reloads. Returns an error
/// when the collector cannot start: the repository is unreachable, PoWA is
/// missing there, or the server list cannot be read. Once started, problems
/// are logged and retried, never fatal.
pub fn run(config: Config, force_debug: bool, control: &Control) -> Result<(), Error> {
    let repository = config.repository()?;
    let metrics = Metrics::new();
    let endpoint = Endpoint::start_if(config.metrics_address, &metrics)?;
    let mut main = MainConnection::open(&repository)?;
    let servers = read_servers(&mut main)?;
    let pool = Pool::new(repository.clone(), config.pool_size)
        .map_err(|e| Error::Connect(format!("cannot start the pool's thread: {e}")))?;

    let mut collector = Collector {
        config,
        force_debug,
        repository,
        connection: Some(main),
        last_check: Instant::now(),
        listed: servers,
        share: Share::default(),
        last_rebalance: Instant::now(),
        workers: BTreeMap::new(),
        retiring: Vec::new(),
        notifier: Notifier::from_env(),
        watchdog: Watchdog::spawn()
            .map_err(|e| Error::Connect(format!("cannot start the watchdog thread: {e}")))?,
        pool,
        outage: None,
        reconnecting: None,
        metrics,
        endpoint,
    };
    collector.rebalance();
    collector.follow_ownership();
    collector.log_workers();
    collector.notifier.ready();

    while !control.stop_requested() {
        let (up, workers) = (collector.connection.is_some(), collector.workers.len());
        collector.metrics.observe_collector(up, workers);
        if control.take_reload() {
            let _ = collector.reload();
        }
        collector.serve_notifications();
        collector.reap_retired();
        if collector.connection.is_none() || collector.last_check.elapsed() >= CHECK_INTERVAL {
            collector.check_connection();
        }
        if collector.last_rebalance.elapsed() >= REBALANCE_INTERVAL {
            collector.rebalance();
            collector.follow_ownership();
        }
        collector.notifier.keep_alive();
    }
    collector.notifier.stopping();
    let mut workers: Vec<WorkerHandle> = std::mem::take(&mut collector.workers)
        .into_values()
        .collect();
    log::info!("stopping {} workers", workers.len());
    workers.append(&mut collector.retiring);
    stop_and_join(workers);
    collector.watchdog.shutdown();
    drop(collector.endpoint.take());
    Ok(())
}

/// The main thread's repository connection.
struct MainConnection {
    client: Client,
    tripwire: Tripwire,
    powa: Powa,
    server_version_num: i32,
}

impl Drop for MainConnection {
    /// The driver's close waits for the server to end the session: over a
    /// network that no longer carries packets it would wait for the TCP
    /// timeouts. The connection is tripped first, so that dropping it (lost,
    /// moved, at shutdown) never blocks the main thread.
    fn drop(&mut self) {
        self.tripwire.trip();
    }
}

impl MainConnection {
    /// Connects, checks PoWA and listens.
    fn open(repository: &ConnInfo) -> Result<MainConnection, Error> {
        log::debug!("connecting to the repository ({repository})");
        let (mut client, tripwire, powa) = repository::connect(
            repository,
            &format!("PoWA collector - main thread ({})", crate::VERSION),
        )?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                MAIN_STATEMENT_TIMEOUT.as_millis()
            ))
            .map_err(|e| Error::postgres("cannot set statement_timeout on the repository", e))?;
        let server_version_num = client
            .query_one(
                "SELECT pg_catalog.current_setting('server_version_num')::int",
                &[],
            )
            .map(|row| row.get(0))
            .map_err(|e| Error::postgres("cannot read the repository's version", e))?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| Error::postgres("cannot LISTEN on the repository", e))?;
        sharing::join(&mut client).map_err(|e| {
            Error::postgres(
                "cannot take the collector's advisory lock on the repository",
                e,
            )
        })?;
        log::debug!("connected to the repository, PoWA {}", powa.version.text);
        Ok(MainConnection {
            client,
            tripwire,
            powa,
            server_version_num,
        })
    }
}

/// Reads the server list; unusable rows are logged and left out.
/// Reads the server list. Unusable rows are left out: each is logged and
/// reported for the UI under its own id; a duplicate alias is given up.
fn read_servers(main: &mut MainConnection) -> Result<Vec<ServerSettings>, Error> {
    let list = repository::servers::list(&mut main.client, &main.powa)
        .map_err(|e| Error::postgres("cannot read the list of remote servers", e))?;
    let (mut servers, refused) = (list.servers, list.refused);
    for (srvid, why) in refused {
        let error = format!("{why}; this server is not collected");
        log::error!("{error}");
        if let Err(e) = metas::report_errors(
            &mut main.client,
            &main.powa,
            srvid,
            &[error],
            ErrorReport::Replace,
        ) {
            log::warn!("{e}");
        }
    }
    for warning in servers::dedupe_aliases(&mut servers) {
        log::warn!("{warning}");
    }
    Ok(servers)
}

/// Stops `workers` and waits for them, at most [`SHUTDOWN_DEADLINE`].
fn stop_and_join(workers: Vec<WorkerHandle>) {
    if workers.is_empty() {
        return;
    }
    let started = Instant::now();
    for worker in &workers {
        worker.request_stop();
    }
    let mut pending = workers;
    while !pending.is_empty() && started.elapsed() < SHUTDOWN_DEADLINE {
        let (finished, running): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(WorkerHandle::is_finished);
        for worker in finished {
            let name = worker.name().to_string();
            worker.join();
            log::debug!("worker {name} stopped");
        }
        pending = running;
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(JOIN_POLL_INTERVAL);
    }
    for worker in pending {
        log::warn!(
            "worker {} did not stop within {:.1} s; leaving it behind",
            worker.name(),
            SHUTDOWN_DEADLINE.as_secs_f64()
        );
        worker.detach();
    }
    log::info!("workers stopped in {} ms", started.elapsed().as_millis());
}

/// The main thread's state.
struct Collector {
    config: Config,
    force_debug: bool,
    repository: ConnInfo,
    /// `None` while the repository is unreachable.
    connection: Option<MainConnection>,
    last_check: Instant,
    /// Every server of the last server list read.
    listed: Vec<ServerSettings>,
    /// Which of them this collector snapshots (see [`sharing`]).
    share: Share,
    last_rebalance: Instant,
    /// By server key (`host:port`).
    workers: BTreeMap<String, WorkerHandle>,
    /// Workers told to stop by a reload, joined as they end so that the
    /// main loop never waits for them.
    retiring: Vec<WorkerHandle>,
    notifier: Notifier,
    watchdog: Watchdog,
    /// The workers' repository connections.
    pool: Pool,
    /// Set while the repository cannot be reached.
    outage: Option<Outage>,
    /// An attempt to open the main connection, in flight.
    reconnecting: Option<JoinHandle<Result<MainConnection, Error>>>,
    /// What the metrics endpoint shows, and the endpoint if enabled.
    metrics: Arc<Metrics>,
    endpoint: Option<Endpoint>,
}

/// Opens the main connection on a thread of its own, so that a repository
/// that does not answer cannot hold the main loop for `connect_timeout`.
/// The thread ends by itself within that bound; the main loop joins it
/// once it has.
fn spawn_reconnect(repository: &ConnInfo) -> JoinHandle<Result<MainConnection, Error>> {
    let repository = repository.clone();
    std::thread::spawn(move || MainConnection::open(&repository))
}

/// The repository cannot be reached: since when, and when to try again.
struct Outage {
    since: Instant,
    backoff: Backoff,
    retry_at: Instant,
    last_logged: Instant,
}

impl Collector {
    fn start_worker(&mut self, server: ServerSettings) {
        let key = server.key();
        let options = WorkerOptions {
            use_server_alias: self.config.use_server_alias,
            snapshot_timeout: self.config.snapshot_timeout,
            watchdog: self.watchdog.handle(),
            pool: self.pool.handle(),
            metrics: Arc::clone(&self.metrics),
        };
        match WorkerHandle::spawn(server, &options) {
            Ok(worker) => {
                self.workers.insert(key, worker);
            }
            Err(e) => log::error!("cannot start a worker for {key}: {e}"),
        }
    }

    /// Stops `worker` without waiting for it.
    fn retire(&mut self, worker: WorkerHandle) {
        worker.request_stop();
        self.retiring.push(worker);
    }

    /// Joins the retiring workers that have ended.
    fn reap_retired(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(WorkerHandle::is_finished);
        for worker in finished {
            let name = worker.name().to_string();
            worker.join();
            log::info!("worker {name} stopped");
        }
        self.retiring = running;
    }

    fn log_workers(&self) {
        if self.workers.is_empty() {
            log::info!("no remote server to collect");
            return;
        }
        log::info!("list of workers:");
        for worker in self.workers.values() {
            log::info!(
                "  {}: {} (frequency {}s, {})",
                worker.name(),
                worker.server().conninfo(),
                worker.server().frequency,
                worker.status()
            );
        }
    }

    /// Waits up to [`POLL_INTERVAL`] for requests and serves what arrived.
    fn serve_notifications(&mut self) {
        let Some(main) = self.connection.as_mut() else {
            std::thread::sleep(POLL_INTERVAL);
            return;
        };
        let mut received = Vec::new();
        let mut lost = None;
        {
            let mut notifications = main.client.notifications();
            let first = notifications.timeout_iter(POLL_INTERVAL).next();
            match first {
                Ok(Some(first)) => {
                    received.push(first);
                    let mut pending = notifications.iter();
                    loop {
                        match pending.next() {
                            Ok(Some(notification)) => received.push(notification),
                            Ok(None) => break,
                            Err(e) => {
                                lost = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => lost = Some(e),
            }
        }
        for notification in received {
            if notification.channel() == CHANNEL {
                self.serve(notification.process_id(), notification.payload());
            }
        }
        if let Some(e) = lost {
            self.connection_lost(&e);
        }
    }

    /// The main connection is gone (`error` says why), and with it the
    /// advisory locks that said which servers this collector owns. Alone,
    /// it keeps its workers (nobody else takes its servers); with others,
    /// it stops them, since the others take its servers over, and takes
    /// its share again once reconnected.
    fn connection_lost(&mut self, error: &postgres::Error) {
        log::warn!(
            "connection to the repository lost: {}",
            describe_postgres_error(error)
        );
        self.connection = None;
        self.share.owned.clear();
        if self.share.members > 1 && !self.workers.is_empty() {
            log::warn!(
                "stopping the {} workers: the other collectors take their servers over \
                 until the repository connection is back",
                self.workers.len()
            );
            let workers = std::mem::take(&mut self.workers);
            workers.into_values().for_each(|worker| self.retire(worker));
        }
    }

    /// Takes this collector's fair share of the listed servers (see
    /// [`sharing`]), giving back what it holds beyond it; the workers of
    /// servers given back are told to stop first.
    fn rebalance(&mut self) {
        self.last_rebalance = Instant::now();
        let Some(main) = self.connection.as_mut() else {
            return;
        };
        // A repository that stopped answering would hold the survey until
        // the TCP timeouts: a bounded round trip first.
        if let Err(e) = main.client.is_valid(CHECK_TIMEOUT) {
            self.connection_lost(&e);
            return;
        }
        // That round trip was the connection check too.
        self.last_check = Instant::now();
        match sharing::survey(&mut main.client) {
            Ok((members, held)) => {
                self.share.members = members;
                self.share.held_by_others = held;
            }
            Err(e) => {
                log::warn!(
                    "cannot see which servers the other collectors own: {}",
                    describe_postgres_error(&e)
                );
                return;
            }
        }
        let listed: BTreeSet<i32> = self.listed.iter().map(|s| s.srvid).collect();
        let plan = sharing::plan(
            &listed,
            &self.share.owned,
            &self.share.held_by_others,
            self.share.members,
        );
        self.give_back(&plan.release);
        self.take(&plan.take);
    }

    /// Stops the workers of `srvids`, then releases their locks.
    fn give_back(&mut self, srvids: &[i32]) {
        if srvids.is_empty() {
            return;
        }
        let keys: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| srvids.contains(&w.server().srvid))
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            if let Some(worker) = self.workers.remove(&key) {
                self.retire(worker);
            }
        }
        let Some(main) = self.connection.as_mut() else {
            return;
        };
        match sharing::release(&mut main.client, srvids) {
            Ok(()) => {
                srvids.iter().for_each(|id| {
                    self.share.owned.remove(id);
                });
                if self.share.members > 1 {
                    log::info!(
                        "gave back servers {srvids:?} to the other collectors ({} in all)",
                        self.share.members
                    );
                }
            }
            // Kept, then: the next rebalance tries again.
            Err(e) => log::warn!(
                "cannot give back servers {srvids:?}: {}",
                describe_postgres_error(&e)
            ),
        }
    }

    /// Tries to take `srvids`.
    fn take(&mut self, srvids: &[i32]) {
        let Some(main) = self.connection.as_mut() else {
            return;
        };
        match sharing::take(&mut main.client, srvids) {
            Ok(taken) if taken.is_empty() => {}
            Ok(taken) => {
                self.share.owned.extend(&taken);
                if self.share.members > 1 {
                    log::info!(
                        "took servers {taken:?}: {} of {} servers, shared by {} collectors",
                        self.share.owned.len(),
                        self.listed.len(),
                        self.share.members
                    );
                }
            }
            Err(e) => log::warn!(
                "cannot take servers {srvids:?}: {}",
                describe_postgres_error(&e)
            ),
        }
    }

    /// Makes the workers match the servers owned: a worker for each, and
    /// none for the others.
    fn follow_ownership(&mut self) {
        let unowned: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| !self.share.owned.contains(&w.server().srvid))
            .map(|(key, _)| key.clone())
            .collect();
        for key in unowned {
            if let Some(worker) = self.workers.remove(&key) {
                log::info!("{key} is owned by another collector, stopping its worker");
                self.retire(worker);
            }
        }
        let missing: Vec<ServerSettings> = self
            .listed
            .iter()
            .filter(|s| self.share.owned.contains(&s.srvid) && !self.workers.contains_key(&s.key()))
            .cloned()
            .collect();
        for server in missing {
            self.start_worker(server);
        }
    }

    /// Whether another collector owns `srvid`: it answers requests about
    /// that server, this one stays silent.
    fn owned_elsewhere(&self, srvid: i32) -> bool {
        self.worker_of(srvid).is_none() && self.share.held_by_others.contains(&srvid)
    }

    /// Serves one request from backend `pid`.
    fn serve(&mut self, pid: i32, payload: &str) {
        let request = protocol::parse(payload);
        log::debug!("request from backend {pid}: {payload:?}");
        let allowed = match self.connection.as_mut() {
            Some(main) => repository::permissions::may_use_protocol(
                &mut main.client,
                &main.powa,
                main.server_version_num,
                pid,
            )
            .unwrap_or_else(|e| {
                log::warn!(
                    "cannot check the privileges of backend {pid}: {}",
                    describe_postgres_error(&e)
                );
                false
            }),
            None => false,
        };
        let answer = if allowed {
            self.execute(&request)
        } else {
            log::warn!(
                "request {:?} from backend {pid} refused: its role may not use the collector",
                request.command
            );
            Some(Answer::error("Permission denied"))
        };
        let (Some(answer), Some(channel)) = (answer, &request.channel) else {
            return;
        };
        let payload = answer.payload(&request.command);
        let Some(main) = self.connection.as_mut() else {
            return;
        };
        if let Err(e) = main
            .client
            .execute("SELECT pg_catalog.pg_notify($1, $2)", &[channel, &payload])
        {
            log::warn!(
                "cannot answer {:?} on channel {channel:?}: {}",
                request.command,
                describe_postgres_error(&e)
            );
        }
    }

    /// Carries out a permitted request; `None` when there is nothing to
    /// answer.
    fn execute(&mut self, request: &Request) -> Option<Answer> {
        let command = match &request.parsed {
            Ok(command) => command,
            Err(refusal) => {
                log::warn!("request {:?} refused: {}", request.command, refusal.data);
                return Some(refusal.clone());
            }
        };
        Some(match command {
            Command::Reload => match self.reload() {
                Ok(()) => Answer::ok("OK"),
                Err(error) => Answer::error(error.to_string()),
            },
            Command::WorkersStatus { srvid } => {
                // Nobody to tell: nothing to do.
                request.channel.as_ref()?;
                if srvid.is_some_and(|id| self.owned_elsewhere(id)) {
                    return None;
                }
                Answer::ok(self.workers_status(*srvid))
            }
            Command::ForceSnapshot { srvid } | Command::RefreshDbCat { srvid, .. }
                if self.owned_elsewhere(*srvid) =>
            {
                return None;
            }
            Command::ForceSnapshot { srvid } => match self.worker_of(*srvid) {
                None => Answer::error(format!("Server id {srvid} not found")),
                Some(worker) => match worker.force_snapshot() {
                    Ok(state) => Answer::ok(state),
                    Err(refusal) => Answer::error(refusal),
                },
            },
            Command::RefreshDbCat { srvid, dbnames } => match self.worker_of(*srvid) {
                None => Answer::error(format!("Server id {srvid} not found")),
                Some(worker) => {
                    worker.refresh_catalogs(dbnames.clone());
                    Answer::ok("Catalogs will be refreshed during the next snapshot")
                }
            },
        })
    }

    fn worker_of(&self, srvid: i32) -> Option<&WorkerHandle> {
        self.workers.values().find(|w| w.server().srvid == srvid)
    }

    /// `{"1": "running", "2": "stopped"}`, formatted as the Python
    /// collector formats it.
    fn workers_status(&self, srvid: Option<i32>) -> String {
        let mut statuses: Vec<(i32, WorkerStatus)> = self
            .workers
            .values()
            .filter(|w| srvid.is_none_or(|id| w.server().srvid == id))
            .map(|w| (w.server().srvid, w.status()))
            .collect();
        statuses.sort_by_key(|(id, _)| *id);
        let entries: Vec<String> = statuses
            .iter()
            .map(|(id, status)| format!("\"{id}\": \"{status}\""))
            .collect();
        format!("{{{}}}", entries.join(", "))
    }

    /// Reloads, telling systemd; on failure the running configuration stays.
    fn reload(&mut self) -> Result<(), Error> {
        log::info!("reloading");
        self.notifier.reloading();
        let result = self.apply_reload();
        self.notifier.ready();
        match &result {
            Ok(()) => {
                log::info!("reload done");
                self.log_workers();
            }
            Err(error) => log::error!("reload failed, keeping the running configuration: {error}"),
        }
        result
    }

    /// Re-reads the configuration file and the server list, then makes the
    /// workers follow. Nothing changes unless both could be read.
    fn apply_reload(&mut self) -> Result<(), Error> {
        let config = config::load(Some(&self.config.path))?;
        for key in &config.unknown_keys {
            log::warn!("{}: unknown key {key} ignored", config.path.display());
        }
        let repository = config.repository()?;
        let dsn_changed = config.repository_dsn != self.config.repository_dsn;
        let mut moved = None;
        if dsn_changed || self.connection.is_none() {
            moved = Some(MainConnection::open(&repository)?);
        }
        let servers = match (&mut moved, &mut self.connection) {
            (Some(main), _) | (None, Some(main)) => read_servers(main)?,
            (None, None) => unreachable!("a connection was just opened"),
        };

        if let Some(main) = moved {
            if dsn_changed {
                log::info!("moving to the repository at {repository}");
            }
            self.connection = Some(main);
            self.last_check = Instant::now();
            // A new session holds none of the old one's locks.
            self.share.owned.clear();
        }
        self.listed = servers.clone();
        self.rebalance();
        let servers: Vec<ServerSettings> = servers
            .into_iter()
            .filter(|s| self.share.owned.contains(&s.srvid))
            .collect();
        self.pool.reconfigure(repository.clone(), config.pool_size);
        Endpoint::follow(&mut self.endpoint, config.metrics_address, &self.metrics);
        self.repository = repository;
        log::set_max_level(log_level(config.debug || self.force_debug));

        let running: Vec<RunningWorker> = self
            .workers
            .values()
            .map(|w| RunningWorker {
                server: w.server().clone(),
                name: w.name().to_string(),
                finished: w.is_finished(),
                healthy: w.status() == WorkerStatus::Running,
            })
            .collect();
        let plan = servers::plan_reload(&running, &servers, config.use_server_alias);
        let snapshot_timeout = config.snapshot_timeout;
        let timeout_changed = snapshot_timeout != self.config.snapshot_timeout;
        self.config = config;

        let mut starting = Vec::new();
        for change in plan {
            match change {
                Change::Stop(key) => {
                    log::info!("{key} is no longer listed, stopping its worker");
                    if let Some(worker) = self.workers.remove(&key) {
                        self.retire(worker);
                    }
                }
                Change::Start(server) => {
                    log::info!("{} was added, starting its worker", server.key());
                    starting.push(server);
                }
                Change::Restart(server) => {
                    log::info!("restarting the worker of {}", server.key());
                    if let Some(worker) = self.workers.remove(&server.key()) {
                        self.retire(worker);
                    }
                    starting.push(server);
                }
                Change::Update(server) | Change::Reconnect(server) => {
                    if let Some(worker) = self.workers.get_mut(&server.key()) {
                        worker.reload(server, snapshot_timeout);
                    }
                }
                Change::Refresh(key) => {
                    if let Some(worker) = self.workers.get_mut(&key) {
                        if dsn_changed || timeout_changed {
                            let server = worker.server().clone();
                            worker.reload(server, snapshot_timeout);
                        } else {
                            worker.refresh_versions();
                        }
                    }
                }
            }
        }
        for server in starting {
            self.start_worker(server);
        }
        Ok(())
    }

    /// Checks the repository connection, re-opening it when it dropped,
    /// with a capped exponential backoff while the repository is down; the
    /// outage is logged when it starts, every [`OUTAGE_LOG_INTERVAL`] while
    /// it lasts, and when it ends.
    fn check_connection(&mut self) {
        self.last_check = Instant::now();
        if let Some(main) = self.connection.as_mut()
            && let Err(e) = main.client.is_valid(CHECK_TIMEOUT)
        {
            self.connection_lost(&e);
        }
        if self.connection.is_some() {
            return;
        }
        let now = Instant::now();
        let Some(attempt) = self.reconnecting.take() else {
            if self
                .outage
                .as_ref()
                .is_none_or(|outage| now >= outage.retry_at)
            {
                self.reconnecting = Some(spawn_reconnect(&self.repository));
            }
            return;
        };
        if !attempt.is_finished() {
            self.reconnecting = Some(attempt);
            return;
        }
        let opened = attempt.join().unwrap_or_else(|_| {
            Err(Error::Connect(
                "the thread opening the repository connection panicked".into(),
            ))
        });
        match opened {
            Ok(main) => {
                match self.outage.take() {
                    Some(outage) => log::info!(
                        "reconnected to the repository after {:.0} s ({} failed attempts)",
                        outage.since.elapsed().as_secs_f64(),
                        outage.backoff.failures()
                    ),
                    None => log::info!("reconnected to the repository"),
                }
                self.connection = Some(main);
                self.rebalance();
                self.follow_ownership();
            }
            Err(error) => self.record_outage(&error),
        }
    }

    fn record_outage(&mut self, error: &Error) {
        let now = Instant::now();
        let first = self.outage.is_none();
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: now,
            backoff: Backoff::new(REPOSITORY_BACKOFF_BASE, CHECK_INTERVAL),
            retry_at: now,
            last_logged: now,
        });
        let wait = outage.backoff.failed(jitter());
        outage.retry_at = now + wait;
        if first {
            log::error!("{error}; retrying in {:.0} s", wait.as_secs_f64());
        } else if now.duration_since(outage.last_logged) >= OUTAGE_LOG_INTERVAL {
            log::error!(
                "the repository is still unreachable after {:.0} s: {error}",
                outage.since.elapsed().as_secs_f64()
            );
            outage.last_logged = now;
        } else {
            log::debug!("{error}");
        }
    }
}
