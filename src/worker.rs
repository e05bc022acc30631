//! One thread per remote server: its connection, its schedule, its status.
//!
//! The main thread owns a [`WorkerHandle`] per server: a channel to send the
//! worker messages, the thread's join handle, and the status it reports. The
//! worker sleeps in `recv_timeout` until its next snapshot is due: a timeout
//! means "take a snapshot", a message means "act on it", and a closed
//! channel means the main thread is gone, so the worker exits.
//!
//! The worker keeps a persistent connection to its remote server and opens a
//! repository connection only when it needs one (start-up bookkeeping, a
//! snapshot, an error report), closing it afterwards.

use std::fmt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::conninfo::ConnInfo;
use crate::error::Error;
use crate::repository::{self, ErrorReport, LastSnapshot, PowaInstall};
use crate::servers::ServerSettings;
use crate::snapshot;

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
#[derive(Debug)]
enum Message {
    Stop,
}

/// The main thread's end of a worker.
pub struct WorkerHandle {
    server: ServerSettings,
    name: String,
    sender: Sender<Message>,
    status: Arc<Mutex<WorkerStatus>>,
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
        let status = Arc::new(Mutex::new(WorkerStatus::NoRemoteConnection));
        let worker = Worker {
            server: server.clone(),
            name: name.clone(),
            repository,
            remote: None,
            status: Arc::clone(&status),
            inbox,
        };
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker.run())?;
        Ok(WorkerHandle {
            server,
            name,
            sender,
            status,
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

    /// The worker's status; `stopped` once its thread has ended.
    pub fn status(&self) -> WorkerStatus {
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return WorkerStatus::Stopped;
        }
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the worker to stop; it does so as soon as its current snapshot,
    /// if any, is over.
    pub fn request_stop(&self) {
        if self.sender.send(Message::Stop).is_ok() {
            set_status(&self.status, WorkerStatus::Stopping);
        }
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

fn set_status(status: &Mutex<WorkerStatus>, value: WorkerStatus) {
    *status.lock().unwrap_or_else(PoisonError::into_inner) = value;
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
    powa: PowaInstall,
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
    status: Arc<Mutex<WorkerStatus>>,
    inbox: Receiver<Message>,
}

impl Worker {
    fn run(mut self) {
        log::info!("starting worker for {:?}", self.server);
        let mut schedule = match self.start() {
            Ok(schedule) => schedule,
            Err(Fatal::PowaUnusable(error)) => {
                log::error!("{error}; this worker stops");
                self.stopped();
                return;
            }
            Err(Fatal::NotRegistered) => {
                log::error!(
                    "server {} was not correctly registered (no powa_snapshot_metas record); \
                     this worker stops",
                    self.server.srvid
                );
                self.stopped();
                return;
            }
        };
        // Any message (only Stop for now) or a closed channel ends the loop.
        while let Err(RecvTimeoutError::Timeout) =
            self.inbox.recv_timeout(schedule.wait(Instant::now()))
        {
            schedule.started(Instant::now());
            if let Err(Fatal::PowaUnusable(error)) = self.snapshot() {
                log::error!("{error}; this worker stops");
                break;
            }
        }
        self.stopped();
    }

    fn stopped(&mut self) {
        set_status(&self.status, WorkerStatus::Stopping);
        self.remote = None;
        set_status(&self.status, WorkerStatus::Stopped);
        log::info!("stopped");
    }

    /// Connects, checks PoWA on the remote, saves the versions and works out
    /// when the first snapshot is due.
    fn start(&mut self) -> Result<Schedule, Fatal> {
        let remote_error = self.connect_remote()?;
        let last = match self.connect_repository() {
            Ok((mut repo, powa)) => {
                if let Some(error) = &remote_error {
                    self.report(&mut repo, &powa, error);
                }
                self.save_versions(&mut repo, &powa);
                match repository::last_snapshot(&mut repo, &powa, self.server.srvid) {
                    Ok(LastSnapshot::NotRegistered) => return Err(Fatal::NotRegistered),
                    Ok(last) => last,
                    Err(e) => {
                        log::warn!(
                            "cannot read the last snapshot time: {}",
                            crate::error::describe_postgres_error(&e)
                        );
                        LastSnapshot::Never
                    }
                }
            }
            Err(error) => {
                log::error!("{error}");
                LastSnapshot::Never
            }
        };
        let delay = first_delay(last, self.server.frequency, |below| fastrand::u32(..below));
        log::debug!("last snapshot: {last:?}; first snapshot in {delay:.1?}");
        Ok(Schedule::new(Instant::now(), delay, self.server.period()))
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
            .connect(&format!("PoWA collector - worker {}", self.name))
            .map_err(|e| {
                Error::postgres(
                    format!("cannot connect to remote server {} ({conninfo})", self.name),
                    e,
                )
            });
        let mut client = match connected {
            Ok(client) => client,
            Err(error) => {
                log::error!("{error}");
                set_status(&self.status, WorkerStatus::NoRemoteConnection);
                return Ok(Some(error));
            }
        };
        let place = format!("remote server {}", self.name);
        let powa = match repository::require_powa(&mut client, &place) {
            Ok(powa) => powa,
            Err(error @ Error::Powa(_)) => {
                self.report_fatal(&error);
                return Err(Fatal::PowaUnusable(error));
            }
            Err(error) => {
                log::error!("{error}");
                set_status(&self.status, WorkerStatus::NoRemoteConnection);
                return Ok(Some(error));
            }
        };
        // PoWA 4.0 needs its library loaded for its settings to exist.
        if (powa.version.major, powa.version.minor) == (4, 0)
            && let Err(e) = client.batch_execute("LOAD 'powa'")
        {
            let error = Error::postgres(format!("cannot load library powa on {place}"), e);
            self.report_fatal(&error);
            return Err(Fatal::PowaUnusable(error));
        }
        log::debug!("connected to the remote server, PoWA {}", powa.version.text);
        self.remote = Some(Remote { client, powa });
        set_status(&self.status, WorkerStatus::Running);
        Ok(None)
    }

    /// A repository connection for this worker, and where PoWA is there.
    fn connect_repository(&self) -> Result<(Client, PowaInstall), Error> {
        let mut client = self
            .repository
            .connect(&self.repository_application_name())
            .map_err(|e| {
                set_status(&self.status, WorkerStatus::NoRepositoryConnection);
                Error::postgres(
                    format!("cannot connect to the repository ({})", self.repository),
                    e,
                )
            })?;
        let powa = repository::require_powa(&mut client, "the repository")?;
        Ok((client, powa))
    }

    fn repository_application_name(&self) -> String {
        format!("PoWA collector - repo_conn for worker {}", self.name)
    }

    /// Writes `error` as the server's current error for the UI.
    fn report(&self, repo: &mut Client, powa: &PowaInstall, error: &Error) {
        let errors = [error.to_string()];
        if let Err(e) =
            repository::report_errors(repo, powa, self.server.srvid, &errors, ErrorReport::Replace)
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
    fn save_versions(&mut self, repo: &mut Client, powa: &PowaInstall) {
        if !powa.version.saves_versions() {
            return;
        }
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        let saved = repository::remote_versions(&mut remote.client)
            .map_err(|e| Error::postgres("cannot read versions on the remote server", e))
            .and_then(|versions| {
                repository::save_versions(repo, powa, self.server.srvid, &versions)
            });
        if let Err(error) = saved {
            log::warn!("{error}");
        }
    }

    /// Takes one snapshot, connecting first when needed.
    fn snapshot(&mut self) -> Result<(), Fatal> {
        if let Some(error) = self.connect_remote()? {
            if let Ok((mut repo, powa)) = self.connect_repository() {
                self.report(&mut repo, &powa, &error);
            }
            log::error!("no connection to the remote server, snapshot skipped");
            return Ok(());
        }
        let (mut repo, _) = match self.connect_repository() {
            Ok(connected) => connected,
            Err(error) => {
                log::error!("{error}; snapshot skipped");
                return Ok(());
            }
        };
        set_status(&self.status, WorkerStatus::Running);
        let application_name = self.repository_application_name();
        let Some(remote) = self.remote.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        match snapshot::take(
            &mut remote.client,
            &mut repo,
            &remote.powa,
            self.server.srvid,
            &application_name,
        ) {
            Ok(report) => match report.skipped {
                Some(why) => log::info!("snapshot skipped: {why}"),
                None => log::info!(
                    "snapshot done in {} ms (copy {} ms, powa_take_snapshot {} ms, {} rows{})",
                    started.elapsed().as_millis(),
                    report.copy_time.as_millis(),
                    report.take_snapshot_time.as_millis(),
                    report.rows,
                    if report.errors.is_empty() {
                        String::new()
                    } else {
                        format!(", {} errors", report.errors.len())
                    }
                ),
            },
            Err(error) => {
                log::error!("snapshot failed: {error}");
                if remote.client.is_closed() {
                    set_status(&self.status, WorkerStatus::NoRemoteConnection);
                }
                // The next snapshot starts from fresh connections.
                self.remote = None;
                if !repo.is_closed()
                    && let Ok(Some(powa)) = repository::find_powa(&mut repo)
                {
                    self.report(&mut repo, &powa, &error);
                }
            }
        }
        Ok(())
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
