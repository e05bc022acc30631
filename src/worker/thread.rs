//! The worker's own thread: its loop, its connections, its snapshots, and
//! the supervision that restarts it after a panic.
//!
//! The status shown to the UI follows the connections: it is computed from
//! whether the repository could last be reached, whether the remote
//! connection is open, and whether the last snapshot timed out.
//!
//! A remote that cannot be reached is retried between snapshots with a
//! capped exponential backoff with jitter (from 1 s up to the period, so
//! that recovery comes within a period and dead servers do not retry in
//! step), and logged and reported when its state changes: the first
//! failure, a new reason, every [`STILL_FAILING_LOG_INTERVAL`] while it
//! lasts (logged only), and the recovery.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use postgres::Client;

use super::schedule::{Backoff, Schedule, first_delay, jitter, snapshot_timeout};
use super::{Message, SharedState, WorkerOptions, WorkerStatus};
use crate::conninfo::Tripwire;
use crate::error::{Error, describe_postgres_error};
use crate::pool::{Lease, PoolHandle};
use crate::powa::Powa;
use crate::remote;
use crate::repository::metas::{self, ErrorReport, LastSnapshot};
use crate::repository::versions;
use crate::servers::ServerSettings;
use crate::snapshot::databases::CatalogRefresh;
use crate::snapshot::{self, Job, SnapshotReport};
use crate::watchdog::{InFlight, WatchdogHandle, Watched};

/// First wait before a worker that panicked starts again; it doubles at
/// each panic, up to [`RESTART_BACKOFF_CAP`].
const RESTART_BACKOFF_BASE: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A worker that ran this long without panicking starts its backoff over.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(600);
/// First wait before reconnecting to an unreachable remote; it doubles at
/// each failure, up to the period (at most [`RECONNECT_BACKOFF_CAP`]).
const RECONNECT_BACKOFF_BASE: Duration = Duration::from_secs(1);
const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// While a remote stays unreachable, how often that is logged again.
pub const STILL_FAILING_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// A live connection to the remote server and where PoWA is there.
struct Remote {
    client: Client,
    tripwire: Tripwire,
    powa: Powa,
}

/// Why a worker cannot go on.
enum Fatal {
    PowaUnusable(Error),
    NotRegistered,
}

/// Whether the worker's loop goes on after a message.
enum Flow {
    Continue,
    Stop,
}

/// A remote that cannot be reached: since when, how often it was tried,
/// when to try again, and what was last said about it.
struct Unreachable {
    since: Instant,
    backoff: Backoff,
    retry_at: Instant,
    last_logged: Instant,
    last_error: String,
}

/// The worker thread's state.
pub(super) struct Worker {
    id: u64,
    server: ServerSettings,
    name: String,
    /// The repository connections, shared with the other workers.
    pool: PoolHandle,
    /// `snapshot_timeout` from the configuration file, if set.
    snapshot_timeout: Option<Duration>,
    watchdog: WatchdogHandle,
    remote: Option<Remote>,
    shared: Arc<SharedState>,
    inbox: Receiver<Message>,
    /// Catalog refreshes asked for and not yet done.
    catalogs_to_refresh: CatalogRefresh,
    /// Whether the last repository connection could be opened.
    repository_reachable: bool,
    /// Whether the last snapshot passed its deadline.
    timed_out: bool,
    /// Set while the remote cannot be reached.
    unreachable: Option<Unreachable>,
    /// Whether the last snapshot started more than a period late because
    /// every repository connection was busy.
    behind: bool,
}

/// Runs `worker` until it stops, starting it again after a panic.
pub(super) fn supervise(mut worker: Worker) {
    let mut restarts = Backoff::new(RESTART_BACKOFF_BASE, RESTART_BACKOFF_CAP);
    loop {
        let started = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| worker.run()));
        let Err(payload) = outcome else {
            break;
        };
        if started.elapsed() >= RESTART_BACKOFF_RESET {
            restarts.succeeded();
        }
        let message = panic_message(payload.as_ref());
        let wait = restarts.failed(jitter());
        log::error!(
            "the worker panicked: {message}; it starts again in {:.1} s",
            wait.as_secs_f64()
        );
        worker.after_panic(&message);
        if worker.wait_for_stop(wait) {
            break;
        }
    }
    worker.finish();
}

/// The text a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl Worker {
    pub(super) fn new(
        id: u64,
        server: ServerSettings,
        name: String,
        options: &WorkerOptions,
        shared: Arc<SharedState>,
        inbox: Receiver<Message>,
    ) -> Worker {
        Worker {
            id,
            server,
            name,
            pool: options.pool.clone(),
            snapshot_timeout: options.snapshot_timeout,
            watchdog: options.watchdog.clone(),
            remote: None,
            shared,
            inbox,
            catalogs_to_refresh: CatalogRefresh::default(),
            repository_reachable: true,
            timed_out: false,
            unreachable: None,
            behind: false,
        }
    }

    fn run(&mut self) {
        log::info!("starting worker for {:?}", self.server);
        let outcome = self.start().and_then(|schedule| self.serve(schedule));
        match outcome {
            Ok(()) => {}
            Err(Fatal::PowaUnusable(error)) => log::error!("{error}; this worker stops"),
            Err(Fatal::NotRegistered) => log::error!(
                "server {} was not correctly registered (no powa_snapshot_metas record); \
                 this worker stops",
                self.server.srvid
            ),
        }
    }

    /// The worker's loop: snapshots when due, reconnection attempts to an
    /// unreachable remote in between, messages when they come.
    fn serve(&mut self, mut schedule: Schedule) -> Result<(), Fatal> {
        loop {
            let now = Instant::now();
            let mut wait = schedule.wait(now);
            if let Some(unreachable) = &self.unreachable {
                wait = wait.min(unreachable.retry_at.saturating_duration_since(now));
            }
            let received = self.inbox.recv_timeout(wait);
            // Nothing queued before a stop runs after it.
            if self.shared.lock().stopping {
                return Ok(());
            }
            let flow = match received {
                Err(RecvTimeoutError::Timeout) if schedule.wait(Instant::now()).is_zero() => {
                    let due = schedule.due();
                    schedule.started(Instant::now());
                    self.snapshot(due)?;
                    Flow::Continue
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.retry_remote()?;
                    Flow::Continue
                }
                Err(RecvTimeoutError::Disconnected) => Flow::Stop,
                Ok(message) => self.handle(message, &mut schedule)?,
            };
            if let Flow::Stop = flow {
                return Ok(());
            }
        }
    }

    fn handle(&mut self, message: Message, schedule: &mut Schedule) -> Result<Flow, Fatal> {
        match message {
            Message::ForceSnapshot => {
                log::info!("forced snapshot");
                let now = Instant::now();
                schedule.restart(now);
                self.snapshot(now)?;
            }
            Message::Reload {
                server,
                snapshot_timeout,
            } => {
                log::info!("reloading with {server:?}");
                schedule.change_period(server.period());
                self.server = server;
                self.snapshot_timeout = snapshot_timeout;
                self.remote = None;
                self.unreachable = None;
                self.refresh()?;
            }
            Message::RefreshVersions => {
                self.refresh()?;
            }
            Message::RefreshCatalogs(dbnames) => {
                log::debug!("catalog refresh asked for {dbnames:?}");
                self.catalogs_to_refresh.add(dbnames);
            }
            Message::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    /// After a panic: no connection or snapshot is kept, and the panic is
    /// reported for the UI.
    fn after_panic(&mut self, message: &str) {
        self.remote = None;
        {
            let mut shared = self.shared.lock();
            shared.snapshot_running = false;
            shared.in_flight.clear();
        }
        self.watchdog.release(self.id);
        self.update_status();
        let error = Error::Powa(format!(
            "the collector's worker for this server failed ({message}) and was restarted"
        ));
        self.report_fatal(&error);
    }

    /// Waits `wait`, or less if a stop is asked for; says whether it was.
    fn wait_for_stop(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            if self.shared.lock().stopping {
                return true;
            }
            match self
                .inbox
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(Message::RefreshCatalogs(dbnames)) => self.catalogs_to_refresh.add(dbnames),
                // Refused, in effect: the next one may be asked for again.
                Ok(Message::ForceSnapshot) => self.shared.lock().forced_pending = false,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    fn finish(&mut self) {
        self.shared.set_status(WorkerStatus::Stopping);
        self.remote = None;
        self.shared.set_status(WorkerStatus::Stopped);
        log::info!("stopped");
    }

    /// Connects, checks PoWA on the remote, saves the versions and works out
    /// when the first snapshot is due.
    fn start(&mut self) -> Result<Schedule, Fatal> {
        let last = match self.refresh()? {
            Some(mut repo) => {
                let repo = repo.connection();
                match metas::last_snapshot(&mut repo.client, &repo.powa, self.server.srvid) {
                    Ok(LastSnapshot::NotRegistered) => return Err(Fatal::NotRegistered),
                    Ok(last) => last,
                    Err(e) => {
                        log::warn!(
                            "cannot read the last snapshot time: {}",
                            describe_postgres_error(&e)
                        );
                        LastSnapshot::Never
                    }
                }
            }
            None => LastSnapshot::Never,
        };
        let delay = first_delay(last, self.server.frequency, |below| fastrand::u32(..below));
        log::debug!("last snapshot: {last:?}; first snapshot in {delay:.1?}");
        Ok(Schedule::new(Instant::now(), delay, self.server.period()))
    }

    /// Connects to the remote server if needed and records the outcome in
    /// the repository: the connection error for the UI (when it is news),
    /// or the remote's versions. Returns the repository connection, if it
    /// could be opened.
    fn refresh(&mut self) -> Result<Option<Lease>, Fatal> {
        let remote_error = self.connect_remote()?;
        match self.connect_repository(Instant::now()) {
            Ok(mut repo) => {
                match &remote_error {
                    Some(error) => self.report(&mut repo, error),
                    None => self.save_versions(&mut repo),
                }
                Ok(Some(repo))
            }
            Err(Error::Interrupted) => Ok(None),
            Err(error) => {
                log::error!("{error}");
                Ok(None)
            }
        }
    }

    /// Tries the unreachable remote again, between snapshots: the UI hears
    /// of a new error, and of the versions once connected.
    fn retry_remote(&mut self) -> Result<(), Fatal> {
        let news = self.connect_remote()?;
        if news.is_none() && self.remote.is_none() {
            return Ok(());
        }
        if let Ok(mut repo) = self.connect_repository(Instant::now()) {
            match &news {
                Some(error) => self.report(&mut repo, error),
                None => self.save_versions(&mut repo),
            }
        }
        Ok(())
    }

    /// The status the UI sees, from the state of the connections.
    fn update_status(&self) {
        let status = if !self.repository_reachable {
            WorkerStatus::NoRepositoryConnection
        } else if self.timed_out {
            WorkerStatus::SnapshotTimedOut
        } else if self.remote.is_none() {
            WorkerStatus::NoRemoteConnection
        } else {
            WorkerStatus::Running
        };
        self.shared.set_status(status);
    }

    /// Connects to the remote server if not connected. A connection error is
    /// returned as `Ok(Some(error))` when it is news for the UI (the worker
    /// retries with backoff); PoWA missing or unsupported there is fatal.
    fn connect_remote(&mut self) -> Result<Option<Error>, Fatal> {
        if self.remote.is_some() {
            return Ok(None);
        }
        if let Some(unreachable) = &self.unreachable
            && Instant::now() < unreachable.retry_at
        {
            log::debug!("the remote server is still unreachable; next attempt later");
            return Ok(None);
        }
        let error = match self.open_remote() {
            Ok(remote) => {
                if let Some(unreachable) = self.unreachable.take() {
                    log::info!(
                        "reconnected to the remote server after {} failed attempts in {:.0} s",
                        unreachable.backoff.failures(),
                        unreachable.since.elapsed().as_secs_f64()
                    );
                }
                self.remote = Some(remote);
                self.update_status();
                return Ok(None);
            }
            Err(Error::Powa(message)) => {
                let error = Error::Powa(message);
                self.report_fatal(&error);
                return Err(Fatal::PowaUnusable(error));
            }
            Err(error) => error,
        };
        self.update_status();
        Ok(self.record_unreachable(error))
    }

    /// Notes a failed attempt to reach the remote; returns the error when
    /// the UI should hear of it (first failure, or a new reason).
    fn record_unreachable(&mut self, error: Error) -> Option<Error> {
        let now = Instant::now();
        let text = error.to_string();
        let cap = self
            .server
            .period()
            .clamp(RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP);
        let unreachable = self.unreachable.get_or_insert_with(|| Unreachable {
            since: now,
            backoff: Backoff::new(RECONNECT_BACKOFF_BASE, cap),
            retry_at: now,
            last_logged: now,
            last_error: String::new(),
        });
        let wait = unreachable.backoff.failed(jitter());
        unreachable.retry_at = now + wait;
        let news = unreachable.last_error != text;
        if news {
            log::error!("{text}; retrying in {:.0} s", wait.as_secs_f64());
            unreachable.last_logged = now;
            unreachable.last_error = text;
        } else if now.duration_since(unreachable.last_logged) >= STILL_FAILING_LOG_INTERVAL {
            log::error!(
                "still cannot connect to the remote server: {} failed attempts in {:.0} s",
                unreachable.backoff.failures(),
                unreachable.since.elapsed().as_secs_f64()
            );
            unreachable.last_logged = now;
        } else {
            log::debug!("{text}");
        }
        news.then_some(error)
    }

    /// Opens the remote connection and checks PoWA there.
    fn open_remote(&self) -> Result<Remote, Error> {
        let (client, tripwire, powa) =
            remote::connect(&self.server, &self.name, &self.remote_application_name())?;
        log::debug!("connected to the remote server, PoWA {}", powa.version.text);
        Ok(Remote {
            client,
            tripwire,
            powa,
        })
    }

    /// A repository connection from the pool for work due at `due`.
    fn connect_repository(&mut self, due: Instant) -> Result<Lease, Error> {
        let shared = Arc::clone(&self.shared);
        let interrupted = move || shared.lock().stopping;
        let leased = self.pool.checkout(
            self.id,
            due,
            &self.repository_application_name(),
            &interrupted,
        );
        match &leased {
            Err(Error::Interrupted) => return leased,
            Ok(lease) => {
                self.shared.metrics.waited(lease.wait().waited);
                self.repository_reachable = true;
            }
            Err(_) => self.repository_reachable = false,
        }
        self.update_status();
        leased
    }

    /// The name of the worker's connections to its remote server (to the
    /// PoWA database and to the others).
    fn remote_application_name(&self) -> String {
        format!("PoWA collector - worker {}", self.name)
    }

    fn repository_application_name(&self) -> String {
        format!("PoWA collector - repo_conn for worker {}", self.name)
    }

    /// Writes `error` as the server's current error for the UI.
    fn report(&self, repo: &mut Lease, error: &Error) {
        let errors = [error.to_string()];
        let repo = repo.connection();
        if let Err(e) = metas::report_errors(
            &mut repo.client,
            &repo.powa,
            self.server.srvid,
            &errors,
            ErrorReport::Replace,
        ) {
            log::warn!("{e}");
        }
    }

    /// Reports an error as the server's current one, if the repository is
    /// reachable.
    fn report_fatal(&mut self, error: &Error) {
        match self.connect_repository(Instant::now()) {
            Ok(mut repo) => self.report(&mut repo, error),
            Err(e) => log::warn!("cannot report the error: {e}"),
        }
    }

    /// Records the remote's PostgreSQL and extension versions (PoWA 4.1+).
    fn save_versions(&mut self, repo: &mut Lease) {
        let repo = repo.connection();
        if !repo.powa.saves_versions() {
            return;
        }
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        let saved = remote::versions(&mut remote.client)
            .map_err(|e| Error::postgres("cannot read versions on the remote server", e))
            .and_then(|found| {
                versions::save(&mut repo.client, &repo.powa, self.server.srvid, &found)
            });
        if let Err(error) = saved {
            log::warn!("{error}");
        }
    }

    /// Takes one snapshot, due at `due`, connecting first when needed.
    /// From the moment it is decided until it is over, a forced snapshot
    /// is refused.
    fn snapshot(&mut self, due: Instant) -> Result<(), Fatal> {
        let started = Instant::now();
        {
            let mut shared = self.shared.lock();
            if shared.stopping {
                return Ok(());
            }
            shared.forced_pending = false;
            shared.snapshot_running = true;
            shared.last_snapshot = Some(started);
        }
        self.shared.changed.notify_all();
        let outcome = self.connect_and_take(due);
        {
            let mut shared = self.shared.lock();
            shared.snapshot_running = false;
            shared.in_flight.clear();
        }
        self.watchdog.release(self.id);
        outcome
    }

    fn connect_and_take(&mut self, due: Instant) -> Result<(), Fatal> {
        #[cfg(feature = "fault-injection")]
        inject_panic(self.server.srvid);
        if let Some(error) = self.connect_remote()?
            && let Ok(mut repo) = self.connect_repository(due)
        {
            self.report(&mut repo, &error);
        }
        if self.remote.is_none() {
            log::debug!("no connection to the remote server, snapshot skipped");
            return Ok(());
        }
        let mut repo = match self.connect_repository(due) {
            Ok(repo) => repo,
            Err(Error::Interrupted) => return Ok(()),
            Err(error) => {
                log::error!("{error}; snapshot skipped");
                return Ok(());
            }
        };
        let started = Instant::now();
        let late = self.lateness(due, &repo);
        let outcome = self.take(started, &mut repo, late.as_deref());
        self.after_snapshot(outcome, started, &mut repo);
        Ok(())
    }

    /// When the snapshot starts more than a period late because every
    /// repository connection was busy, what to tell the UI; logged when
    /// that state changes.
    fn lateness(&mut self, due: Instant, repo: &Lease) -> Option<String> {
        let wait = repo.wait();
        let late = due.elapsed();
        let behind = wait.queued && late > self.server.period();
        let message = behind.then(|| {
            format!(
                "snapshot started {:.0} s late: all {} repository connections of the collector \
                 were busy for {:.0} s (the repository is saturated; see repository.pool_size)",
                late.as_secs_f64(),
                wait.pool_size,
                wait.waited.as_secs_f64()
            )
        });
        if behind != self.behind {
            self.behind = behind;
            match &message {
                Some(message) => log::warn!("falling behind: {message}"),
                None => log::info!("caught up: snapshots start on time again"),
            }
        }
        message
    }

    /// Runs the snapshot itself, watched by the watchdog until its deadline.
    fn take(
        &mut self,
        started: Instant,
        repo: &mut Lease,
        late: Option<&str>,
    ) -> Result<SnapshotReport, Error> {
        let timeout = snapshot_timeout(self.server.period(), self.snapshot_timeout);
        let deadline = started + timeout;
        let application_name = self.repository_application_name();
        let database_application_name = self.remote_application_name();
        let Some(remote) = self.remote.as_mut() else {
            return Err(Error::Connect("no connection to the remote server".into()));
        };
        let repo = repo.connection();
        self.shared.lock().in_flight = vec![
            Watched {
                conninfo: self.server.conninfo(),
                cancel: remote.client.cancel_token(),
                tripwire: remote.tripwire.clone(),
            },
            Watched {
                conninfo: repo.conninfo.clone(),
                cancel: repo.client.cancel_token(),
                tripwire: repo.tripwire.clone(),
            },
        ];
        self.watchdog.watch(
            self.id,
            deadline,
            Arc::clone(&self.shared) as Arc<dyn InFlight>,
        );
        let job = Job {
            srvid: self.server.srvid,
            deadline,
            timeout,
            remote_powa: &remote.powa,
            repo_powa: &repo.powa,
            application_name: &application_name,
            refresh: &self.catalogs_to_refresh,
            late,
        };
        let context = SnapshotContext {
            shared: &self.shared,
            server: &self.server,
            application_name: database_application_name,
        };
        let outcome = snapshot::take(&mut remote.client, &mut repo.client, &job, &context);
        match outcome {
            Err(_) if Instant::now() >= deadline => Err(Error::DeadlineExceeded(timeout)),
            other => other,
        }
    }

    /// Logs how a snapshot ended and keeps the worker's state in step: the
    /// catalog refreshes it served, the connections it broke, the timeout,
    /// the error for the UI.
    fn after_snapshot(
        &mut self,
        outcome: Result<SnapshotReport, Error>,
        started: Instant,
        repo: &mut Lease,
    ) {
        self.timed_out = matches!(outcome, Err(Error::DeadlineExceeded(_)));
        match outcome {
            Ok(report) => {
                if report.skipped.is_none() {
                    self.catalogs_to_refresh = CatalogRefresh::default();
                    self.shared.metrics.snapshot_done(
                        started.elapsed(),
                        report.rows,
                        report.errors.len(),
                    );
                }
                log_report(&report, started.elapsed());
            }
            Err(_) if self.shared.lock().stopping => {
                log::info!("snapshot interrupted and rolled back: the worker is stopping");
            }
            Err(error) => {
                log::error!("snapshot failed: {error}");
                self.shared.metrics.snapshot_failed(started.elapsed());
                // The next snapshot starts from fresh connections.
                self.remote = None;
                repo.discard();
                if !repo.connection().client.is_closed() {
                    self.report(repo, &error);
                } else if let Ok(mut fresh) = self.connect_repository(Instant::now()) {
                    self.report(&mut fresh, &error);
                }
            }
        }
        self.update_status();
    }
}

/// With the `fault-injection` feature (tests only): panics once when the
/// file named by `POWA_COLLECTOR_PANIC_FILE` exists and holds this
/// server's id, removing it first.
#[cfg(feature = "fault-injection")]
fn inject_panic(srvid: i32) {
    let Some(path) = std::env::var_os("POWA_COLLECTOR_PANIC_FILE") else {
        return;
    };
    let asked = std::fs::read_to_string(&path).is_ok_and(|text| text.trim() == srvid.to_string());
    if asked && std::fs::remove_file(&path).is_ok() {
        panic!("panic injected for server {srvid}");
    }
}

/// Logs what a snapshot did.
fn log_report(report: &SnapshotReport, elapsed: Duration) {
    if let Some(why) = &report.skipped {
        log::info!("snapshot skipped: {why}");
        return;
    }
    let databases = if report.databases_visited > 0 {
        format!(
            "; global {} ms, {} databases {} ms",
            report.global_time.as_millis(),
            report.databases_visited,
            report.databases_time.as_millis()
        )
    } else {
        String::new()
    };
    let errors = if report.errors.is_empty() {
        String::new()
    } else {
        format!(", {} errors", report.errors.len())
    };
    log::info!(
        "snapshot done in {} ms (copy {} ms, powa_take_snapshot {} ms, {} rows{errors}{databases})",
        elapsed.as_millis(),
        (report.global_time + report.databases_time).as_millis(),
        report.take_snapshot_time.as_millis(),
        report.rows,
    );
}

/// What a snapshot asks of its worker: whether to stop, and connections to
/// the remote's databases, watched like the others.
struct SnapshotContext<'a> {
    shared: &'a SharedState,
    server: &'a ServerSettings,
    application_name: String,
}

/// How many connections of a snapshot are always in flight: the remote's
/// and the repository's; a database's comes after them.
const SNAPSHOT_CONNECTIONS: usize = 2;

impl snapshot::Context for SnapshotContext<'_> {
    fn interrupted(&self) -> bool {
        self.shared.lock().stopping
    }

    fn connect_database(&self, dbname: &str) -> Result<Client, Error> {
        let (conninfo, client, tripwire) =
            remote::connect_database(self.server, dbname, &self.application_name)?;
        self.shared.lock().in_flight.push(Watched {
            conninfo,
            cancel: client.cancel_token(),
            tripwire,
        });
        Ok(client)
    }

    fn closed_database(&self) {
        self.shared.lock().in_flight.truncate(SNAPSHOT_CONNECTIONS);
    }
}
