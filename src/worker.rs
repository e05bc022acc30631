//! One thread per remote server: its connection, its schedule, its status.
//!
//! The main thread owns a [`WorkerHandle`] per server: a channel to send the
//! worker messages, the thread's join handle, and a small state shared with
//! the worker (its status, whether a snapshot runs, and the cancel tokens of
//! that snapshot's connections). The worker sleeps in `recv_timeout` until
//! its next snapshot is due: a timeout means "take a snapshot", a message
//! means "act on it", and a closed channel means the main thread is gone, so
//! the worker exits. A message sent while a snapshot runs waits in the
//! channel and is acted on right after.
//!
//! Stopping is prompt: [`WorkerHandle::request_stop`] marks the worker as
//! stopping (checked between the steps of a snapshot) and cancels the query
//! in flight, so the snapshot's transactions are rolled back and nothing is
//! half-written.
//!
//! The worker keeps a persistent connection to its remote server and opens a
//! repository connection only when it needs one (start-up bookkeeping, a
//! snapshot, an error report), closing it afterwards.

use std::fmt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::{CancelToken, Client};

use crate::conninfo::ConnInfo;
use crate::error::{Error, describe_postgres_error};
use crate::powa::{self, Powa};
use crate::remote;
use crate::repository::metas::{self, ErrorReport, LastSnapshot};
use crate::repository::versions;
use crate::servers::ServerSettings;
use crate::snapshot::databases::CatalogRefresh;
use crate::snapshot::{self, Job};

/// A forced snapshot is refused when the last one started less than this
/// long ago.
pub const FORCED_SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long a forced snapshot request waits to see the snapshot start.
const FORCED_SNAPSHOT_START_WAIT: Duration = Duration::from_millis(100);

/// What a worker is doing, as reported to the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    Running,
    NoRemoteConnection,
    NoRepositoryConnection,
    Stopping,
    Stopped,
}

impl WorkerStatus {
    /// The word powa-web shows (it colours `running` green, anything else
    /// red).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Running => "running",
            WorkerStatus::NoRemoteConnection => "no connection to remote server",
            WorkerStatus::NoRepositoryConnection => "no connection to repository server",
            WorkerStatus::Stopping => "stopping",
            WorkerStatus::Stopped => "stopped",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Messages from the main thread to a worker.
enum Message {
    Stop,
    /// New settings (or the same, to reconnect): reconnect with them.
    Reload {
        server: ServerSettings,
        repository: Box<ConnInfo>,
    },
    /// Save the remote's versions in the repository again.
    RefreshVersions,
    ForceSnapshot,
    /// Refresh these databases' catalogs (all when empty) at the next
    /// snapshot, where the repository has catalogs.
    RefreshCatalogs(Vec<String>),
}

/// State the worker shares with its handle. Locked briefly, never across
/// I/O.
#[derive(Default)]
struct Shared {
    status: Option<WorkerStatus>,
    stopping: bool,
    snapshot_running: bool,
    forced_pending: bool,
    last_snapshot: Option<Instant>,
    /// The in-flight snapshot's connections, to cancel their queries.
    in_flight: Vec<(ConnInfo, CancelToken)>,
}

#[derive(Default)]
struct SharedState {
    state: Mutex<Shared>,
    changed: Condvar,
}

impl SharedState {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, status: WorkerStatus) {
        self.lock().status = Some(status);
    }
}

/// Why a forced snapshot was refused.
pub type Refusal = String;

/// The main thread's end of a worker.
pub struct WorkerHandle {
    server: ServerSettings,
    name: String,
    sender: Sender<Message>,
    shared: Arc<SharedState>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts the worker of `server`, whose snapshots go to `repository`.
    pub fn spawn(
        server: ServerSettings,
        repository: ConnInfo,
        use_server_alias: bool,
    ) -> std::io::Result<WorkerHandle> {
        let name = server.display_name(use_server_alias);
        let (sender, inbox) = mpsc::channel();
        let shared = Arc::new(SharedState::default());
        let worker = Worker {
            server: server.clone(),
            name: name.clone(),
            repository,
            remote: None,
            shared: Arc::clone(&shared),
            inbox,
            catalogs_to_refresh: CatalogRefresh::default(),
        };
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            server,
            name,
            sender,
            shared,
            thread: Some(thread),
        })
    }

    /// The name the worker logs under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings the worker runs with.
    pub fn server(&self) -> &ServerSettings {
        &self.server
    }

    /// Whether the worker's thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// The worker's status; `stopped` once its thread has ended.
    pub fn status(&self) -> WorkerStatus {
        if self.is_finished() {
            return WorkerStatus::Stopped;
        }
        let shared = self.shared.lock();
        if shared.stopping {
            return WorkerStatus::Stopping;
        }
        shared.status.unwrap_or(WorkerStatus::NoRemoteConnection)
    }

    /// Asks the worker to stop, cancelling the query its snapshot runs, if
    /// any. Returns at once; [`WorkerHandle::join`] waits.
    pub fn request_stop(&self) {
        self.shared.lock().stopping = true;
        let _ = self.sender.send(Message::Stop);
        self.cancel_in_flight();
    }

    /// Cancels the queries of the snapshot in flight, if any.
    pub fn cancel_in_flight(&self) {
        let in_flight = self.shared.lock().in_flight.clone();
        for (conninfo, token) in in_flight {
            if let Err(e) = cancel(&conninfo, &token) {
                log::debug!("cancel request to {conninfo} failed: {e}");
            }
        }
    }

    /// Gives the worker new settings (or the same, to make it reconnect).
    pub fn reload(&mut self, server: ServerSettings, repository: ConnInfo) {
        self.server = server.clone();
        let _ = self.sender.send(Message::Reload {
            server,
            repository: Box::new(repository),
        });
    }

    /// Asks the worker to save the remote's versions again.
    pub fn refresh_versions(&self) {
        let _ = self.sender.send(Message::RefreshVersions);
    }

    /// Asks the worker to refresh catalogs at its next snapshot.
    pub fn refresh_catalogs(&self, dbnames: Vec<String>) {
        let _ = self.sender.send(Message::RefreshCatalogs(dbnames));
    }

    /// Asks for a snapshot now. Refused while one runs or is already asked
    /// for, and within [`FORCED_SNAPSHOT_MIN_INTERVAL`] of the last one.
    /// On success, says whether the snapshot has begun.
    pub fn force_snapshot(&self) -> Result<&'static str, Refusal> {
        if self.is_finished() {
            return Err(format!(
                "The worker of server {} is stopped",
                self.server.srvid
            ));
        }
        {
            let mut shared = self.shared.lock();
            if shared.snapshot_running {
                return Err("A snapshot is already in progress".into());
            }
            if shared.forced_pending {
                return Err("A forced snapshot is already scheduled".into());
            }
            if shared
                .last_snapshot
                .is_some_and(|last| last.elapsed() < FORCED_SNAPSHOT_MIN_INTERVAL)
            {
                return Err("Last snapshot was less than 10s. ago".into());
            }
            shared.forced_pending = true;
        }
        if self.sender.send(Message::ForceSnapshot).is_err() {
            self.shared.lock().forced_pending = false;
            return Err(format!(
                "The worker of server {} is stopped",
                self.server.srvid
            ));
        }
        let shared = self.shared.lock();
        let (shared, _) = self
            .shared
            .changed
            .wait_timeout_while(shared, FORCED_SNAPSHOT_START_WAIT, |s| !s.snapshot_running)
            .unwrap_or_else(PoisonError::into_inner);
        Ok(if shared.snapshot_running {
            "Snapshot in progress"
        } else {
            "Snapshot will begin shortly"
        })
    }

    /// Lets the worker's thread go on alone: it ends by itself once it sees
    /// it is stopping. For a worker that would not stop in time.
    pub fn detach(mut self) {
        self.thread.take();
    }

    /// Waits for the worker's thread to end.
    pub fn join(mut self) {
        self.join_thread();
    }

    fn join_thread(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("worker {} panicked", self.name);
        }
    }
}

impl Drop for WorkerHandle {
    /// A worker never outlives its handle.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.request_stop();
            self.join_thread();
        }
    }
}

/// Sends a cancel request for the query running on `token`'s connection.
fn cancel(conninfo: &ConnInfo, token: &CancelToken) -> Result<(), postgres::Error> {
    conninfo.cancel(token)
}

/// When the next snapshot is due.
///
/// Snapshots follow a fixed grid, `frequency` seconds apart, measured from
/// the start of each snapshot: the time a snapshot takes does not push the
/// next one back, so the period does not drift. A worker more than a whole
/// period late (the remote was unreachable, the machine was suspended)
/// starts a new grid rather than catching up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    next: Instant,
    period: Duration,
}

impl Schedule {
    /// A schedule whose first snapshot is `delay` after `now`.
    pub fn new(now: Instant, delay: Duration, period: Duration) -> Schedule {
        Schedule {
            next: now + delay,
            period,
        }
    }

    /// How long to wait, from `now`, for the next snapshot.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// Records that a snapshot started at `at`.
    pub fn started(&mut self, at: Instant) {
        let on_grid = self.next + self.period;
        self.next = if on_grid > at {
            on_grid
        } else {
            at + self.period
        };
    }

    /// Records that an unscheduled (forced) snapshot started at `at`: the
    /// grid starts again from it.
    pub fn restart(&mut self, at: Instant) {
        self.next = at + self.period;
    }

    /// Changes the period; the next snapshot is one new period after the
    /// last one.
    pub fn change_period(&mut self, period: Duration) {
        if period != self.period {
            self.next = self.next.checked_sub(self.period).unwrap_or(self.next) + period;
            self.period = period;
        }
    }
}

/// Delay before the first snapshot of a worker that starts now.
///
/// A recent snapshot (younger than `frequency`) keeps its rhythm. Otherwise
/// (never taken, or long ago, as after the collector was down) the last
/// snapshot is taken to be `pick(frequency)` seconds old, a random number
/// below `frequency`, so that many servers do not all snapshot at once.
pub fn first_delay(last: LastSnapshot, frequency: u32, pick: impl FnOnce(u32) -> u32) -> Duration {
    let frequency_secs = f64::from(frequency);
    let age = match last {
        LastSnapshot::SecondsAgo(age) if (0.0..=frequency_secs).contains(&age) => age,
        _ => f64::from(pick(frequency).min(frequency.saturating_sub(1))),
    };
    Duration::from_secs_f64(frequency_secs - age)
}

/// A live connection to the remote server and where PoWA is there.
struct Remote {
    client: Client,
    powa: Powa,
}

/// Why a worker cannot go on.
enum Fatal {
    PowaUnusable(Error),
    NotRegistered,
}

/// The worker thread's state.
struct Worker {
    server: ServerSettings,
    name: String,
    repository: ConnInfo,
    remote: Option<Remote>,
    shared: Arc<SharedState>,
    inbox: Receiver<Message>,
    /// Catalog refreshes asked for and not yet done.
    catalogs_to_refresh: CatalogRefresh,
}

impl Worker {
    fn run(mut self) {
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
        self.shared.set_status(WorkerStatus::Stopping);
        self.remote = None;
        self.shared.set_status(WorkerStatus::Stopped);
        log::info!("stopped");
    }

    /// The worker's loop: snapshots when due, messages when they come.
    fn serve(&mut self, mut schedule: Schedule) -> Result<(), Fatal> {
        loop {
            match self.inbox.recv_timeout(schedule.wait(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {
                    schedule.started(Instant::now());
                    self.snapshot()?;
                }
                Ok(Message::ForceSnapshot) => {
                    log::info!("forced snapshot");
                    schedule.restart(Instant::now());
                    self.snapshot()?;
                }
                Ok(Message::Reload { server, repository }) => {
                    log::info!("reloading with {server:?}");
                    schedule.change_period(server.period());
                    self.server = server;
                    self.repository = *repository;
                    self.remote = None;
                    self.refresh()?;
                }
                Ok(Message::RefreshVersions) => {
                    self.refresh()?;
                }
                Ok(Message::RefreshCatalogs(dbnames)) => {
                    log::debug!("catalog refresh asked for {dbnames:?}");
                    self.catalogs_to_refresh.add(dbnames);
                }
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Connects, checks PoWA on the remote, saves the versions and works out
    /// when the first snapshot is due.
    fn start(&mut self) -> Result<Schedule, Fatal> {
        let last = match self.refresh()? {
            Some((mut repo, powa)) => {
                match metas::last_snapshot(&mut repo, &powa, self.server.srvid) {
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
    /// the repository: the connection error for the UI, or the remote's
    /// versions. Returns the repository connection, if it could be opened.
    fn refresh(&mut self) -> Result<Option<(Client, Powa)>, Fatal> {
        let remote_error = self.connect_remote()?;
        match self.connect_repository() {
            Ok((mut repo, powa)) => {
                match &remote_error {
                    Some(error) => self.report(&mut repo, &powa, error),
                    None => self.save_versions(&mut repo, &powa),
                }
                Ok(Some((repo, powa)))
            }
            Err(error) => {
                log::error!("{error}");
                Ok(None)
            }
        }
    }

    /// Connects to the remote server if not connected. A connection error is
    /// returned as `Ok(Some(error))` (the worker retries at the next
    /// snapshot); PoWA missing or too old there is fatal.
    fn connect_remote(&mut self) -> Result<Option<Error>, Fatal> {
        if self.remote.is_some() {
            return Ok(None);
        }
        let conninfo = self.server.conninfo();
        let connected = conninfo
            .connect(&self.remote_application_name())
            .map_err(|e| {
                e.into_error(format!(
                    "cannot connect to remote server {} ({conninfo})",
                    self.name
                ))
            });
        let mut client = match connected {
            Ok(client) => client,
            Err(error) => {
                log::error!("{error}");
                self.shared.set_status(WorkerStatus::NoRemoteConnection);
                return Ok(Some(error));
            }
        };
        let place = format!("remote server {}", self.name);
        let powa = match powa::prepare(&mut client, &place) {
            Ok(powa) => powa,
            Err(error @ Error::Powa(_)) => {
                self.report_fatal(&error);
                return Err(Fatal::PowaUnusable(error));
            }
            Err(error) => {
                log::error!("{error}");
                self.shared.set_status(WorkerStatus::NoRemoteConnection);
                return Ok(Some(error));
            }
        };
        if powa.needs_load()
            && let Err(e) = client.batch_execute("LOAD 'powa'")
        {
            let error = Error::postgres(format!("cannot load library powa on {place}"), e);
            self.report_fatal(&error);
            return Err(Fatal::PowaUnusable(error));
        }
        log::debug!("connected to the remote server, PoWA {}", powa.version.text);
        self.remote = Some(Remote { client, powa });
        self.shared.set_status(WorkerStatus::Running);
        Ok(None)
    }

    /// A repository connection for this worker, and where PoWA is there.
    fn connect_repository(&self) -> Result<(Client, Powa), Error> {
        let mut client = self
            .repository
            .connect(&self.repository_application_name())
            .map_err(|e| {
                self.shared.set_status(WorkerStatus::NoRepositoryConnection);
                e.into_error(format!(
                    "cannot connect to the repository ({})",
                    self.repository
                ))
            })?;
        let powa = powa::prepare(&mut client, "the repository")?;
        Ok((client, powa))
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
    fn report(&self, repo: &mut Client, powa: &Powa, error: &Error) {
        let errors = [error.to_string()];
        if let Err(e) =
            metas::report_errors(repo, powa, self.server.srvid, &errors, ErrorReport::Replace)
        {
            log::warn!("{e}");
        }
    }

    /// Reports an error that stops the worker, if the repository is
    /// reachable.
    fn report_fatal(&self, error: &Error) {
        match self.connect_repository() {
            Ok((mut repo, powa)) => self.report(&mut repo, &powa, error),
            Err(e) => log::warn!("cannot report the error: {e}"),
        }
    }

    /// Records the remote's PostgreSQL and extension versions (PoWA 4.1+).
    fn save_versions(&mut self, repo: &mut Client, powa: &Powa) {
        if !powa.saves_versions() {
            return;
        }
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        let saved = remote::versions(&mut remote.client)
            .map_err(|e| Error::postgres("cannot read versions on the remote server", e))
            .and_then(|found| versions::save(repo, powa, self.server.srvid, &found));
        if let Err(error) = saved {
            log::warn!("{error}");
        }
    }

    /// Takes one snapshot, connecting first when needed.
    fn snapshot(&mut self) -> Result<(), Fatal> {
        self.shared.lock().forced_pending = false;
        if let Some(error) = self.connect_remote()? {
            if let Ok((mut repo, powa)) = self.connect_repository() {
                self.report(&mut repo, &powa, &error);
            }
            log::error!("no connection to the remote server, snapshot skipped");
            return Ok(());
        }
        let (mut repo, repo_powa) = match self.connect_repository() {
            Ok(connected) => connected,
            Err(error) => {
                log::error!("{error}; snapshot skipped");
                return Ok(());
            }
        };
        let application_name = self.repository_application_name();
        let database_application_name = self.remote_application_name();
        let Some(remote) = self.remote.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        {
            let mut shared = self.shared.lock();
            if shared.stopping {
                return Ok(());
            }
            shared.status = Some(WorkerStatus::Running);
            shared.snapshot_running = true;
            shared.last_snapshot = Some(started);
            shared.in_flight = vec![
                (self.server.conninfo(), remote.client.cancel_token()),
                (self.repository.clone(), repo.cancel_token()),
            ];
        }
        self.shared.changed.notify_all();
        let job = Job {
            srvid: self.server.srvid,
            remote_powa: &remote.powa,
            repo_powa: &repo_powa,
            application_name: &application_name,
            refresh: &self.catalogs_to_refresh,
        };
        let context = SnapshotContext {
            shared: &self.shared,
            server: &self.server,
            application_name: database_application_name,
        };
        let outcome = snapshot::take(&mut remote.client, &mut repo, &job, &context);
        {
            let mut shared = self.shared.lock();
            shared.snapshot_running = false;
            shared.in_flight.clear();
        }
        let remote_closed = remote.client.is_closed();
        self.after_snapshot(outcome, started, remote_closed, (&mut repo, &repo_powa));
        Ok(())
    }

    /// Logs how a snapshot ended and keeps the worker's state in step: the
    /// catalog refreshes it served, the connections it broke, the error for
    /// the UI.
    fn after_snapshot(
        &mut self,
        outcome: Result<snapshot::SnapshotReport, Error>,
        started: Instant,
        remote_closed: bool,
        (repo, repo_powa): (&mut Client, &Powa),
    ) {
        match outcome {
            Ok(report) => {
                if report.skipped.is_none() {
                    self.catalogs_to_refresh = CatalogRefresh::default();
                }
                log_report(&report, started.elapsed());
            }
            Err(_) if self.shared.lock().stopping => {
                log::info!("snapshot interrupted and rolled back: the worker is stopping");
            }
            Err(error) => {
                log::error!("snapshot failed: {error}");
                if remote_closed {
                    self.shared.set_status(WorkerStatus::NoRemoteConnection);
                }
                // The next snapshot starts from fresh connections.
                self.remote = None;
                if !repo.is_closed() {
                    self.report(repo, repo_powa, &error);
                }
            }
        }
    }
}

/// Logs what a snapshot did.
fn log_report(report: &snapshot::SnapshotReport, elapsed: Duration) {
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
/// the remote's databases whose queries a stop can cancel.
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
        let conninfo = self.server.conninfo_for_database(dbname);
        let mut client = conninfo.connect(&self.application_name).map_err(|e| {
            e.into_error(format!(
                "Could not connect to remote database {dbname} ({conninfo})"
            ))
        })?;
        powa::pin_search_path(&mut client).map_err(|e| {
            Error::postgres(format!("cannot set search_path in database {dbname}"), e)
        })?;
        self.shared
            .lock()
            .in_flight
            .push((conninfo, client.cancel_token()));
        Ok(client)
    }

    fn closed_database(&self) {
        self.shared.lock().in_flight.truncate(SNAPSHOT_CONNECTIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);

    #[test]
    fn status_words_are_the_ui_ones() {
        let words: Vec<&str> = [
            WorkerStatus::Running,
            WorkerStatus::NoRemoteConnection,
            WorkerStatus::NoRepositoryConnection,
            WorkerStatus::Stopping,
            WorkerStatus::Stopped,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(
            words,
            [
                "running",
                "no connection to remote server",
                "no connection to repository server",
                "stopping",
                "stopped"
            ]
        );
    }

    #[test]
    fn snapshot_time_does_not_push_the_next_one() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        let mut starts = Vec::new();
        // Each snapshot starts a little late and lasts a while: the grid holds.
        for late_ms in [3, 40, 7, 250, 1] {
            let start = t0 + schedule.wait(t0) + Duration::from_millis(late_ms);
            starts.push(start);
            schedule.started(start);
        }
        for (k, start) in starts.iter().enumerate() {
            let due = t0 + PERIOD * k as u32;
            assert!(*start - due < Duration::from_millis(300), "snapshot {k}");
        }
        assert_eq!(schedule.wait(t0), PERIOD * 5);
    }

    #[test]
    fn a_snapshot_longer_than_the_period_is_followed_at_once() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        schedule.started(t0);
        let end = t0 + Duration::from_secs(7);
        assert_eq!(schedule.wait(end), Duration::ZERO);
        schedule.started(end);
        assert_eq!(schedule.wait(end), Duration::from_secs(3));
    }

    #[test]
    fn a_worker_far_behind_starts_a_new_grid() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, Duration::ZERO, PERIOD);
        let late = t0 + Duration::from_secs(23);
        schedule.started(late);
        assert_eq!(schedule.wait(late), PERIOD);
    }

    #[test]
    fn forced_snapshots_and_new_periods_move_the_grid() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0, PERIOD, PERIOD);
        let forced = t0 + Duration::from_secs(2);
        schedule.restart(forced);
        assert_eq!(schedule.wait(forced), PERIOD);
        schedule.change_period(Duration::from_secs(60));
        assert_eq!(schedule.wait(forced), Duration::from_secs(60));
        schedule.change_period(Duration::from_secs(60));
        assert_eq!(schedule.wait(forced), Duration::from_secs(60));
    }

    #[test]
    fn first_delay_keeps_a_recent_rhythm() {
        let never_random = |_| panic!("no randomness expected");
        assert_eq!(
            first_delay(LastSnapshot::SecondsAgo(2.0), 5, never_random),
            Duration::from_secs(3)
        );
        assert_eq!(
            first_delay(LastSnapshot::SecondsAgo(5.0), 5, never_random),
            Duration::ZERO
        );
    }

    #[test]
    fn first_delay_spreads_old_and_missing_snapshots() {
        for last in [
            LastSnapshot::Never,
            LastSnapshot::SecondsAgo(3600.0),
            LastSnapshot::SecondsAgo(-4.0),
        ] {
            assert_eq!(first_delay(last, 300, |_| 0), Duration::from_secs(300));
            assert_eq!(first_delay(last, 300, |_| 299), Duration::from_secs(1));
            // An out-of-range pick is clamped: the delay is never zero.
            assert_eq!(first_delay(last, 300, |_| 1000), Duration::from_secs(1));
        }
    }

    #[test]
    fn first_delay_randomness_stays_in_range() {
        for _ in 0..1000 {
            let delay = first_delay(LastSnapshot::Never, 5, |below| fastrand::u32(..below));
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(5));
        }
    }
}
