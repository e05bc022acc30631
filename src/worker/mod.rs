//! One thread per remote server: its connection, its schedule, its status.
//!
//! The main thread owns a [`WorkerHandle`] per server: a channel to send the
//! worker messages, the thread's join handle, and a small state shared with
//! the worker (its status, whether a snapshot runs, and that snapshot's
//! connections, for the [watchdog](crate::watchdog)). The worker
//! ([`thread`]) sleeps in `recv_timeout` until its next snapshot is due
//! ([`schedule`]): a timeout means "take a snapshot", a message means "act
//! on it", and a closed channel means the main thread is gone, so the
//! worker exits. A message sent while a snapshot runs waits in the channel
//! and is acted on right after, unless the worker is stopping by then.
//!
//! Stopping is prompt and never blocks the caller:
//! [`WorkerHandle::request_stop`] marks the worker as stopping (checked
//! between the steps of a snapshot) and hands the cancel of its query in
//! flight to the watchdog, so the snapshot's transactions are rolled back
//! and nothing is half-written.
//!
//! A panic in a worker is caught on its own thread, logged and reported
//! for the UI, and the worker starts again after a capped exponential
//! backoff; the main thread and the other workers do not notice.

pub mod schedule;
mod thread;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, ServerMetrics};
use crate::pool::PoolHandle;
use crate::servers::ServerSettings;
use crate::watchdog::{InFlight, WatchdogHandle, Watched};
use thread::Worker;

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
    /// The last snapshot passed its deadline and was rolled back.
    SnapshotTimedOut,
    Stopping,
    Stopped,
}

impl WorkerStatus {
    /// Every status, in the order of the words powa-web knows first.
    pub const ALL: [WorkerStatus; 6] = [
        WorkerStatus::Running,
        WorkerStatus::NoRemoteConnection,
        WorkerStatus::NoRepositoryConnection,
        WorkerStatus::SnapshotTimedOut,
        WorkerStatus::Stopping,
        WorkerStatus::Stopped,
    ];

    /// The word powa-web shows (it colours `running` green, anything else
    /// red).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Running => "running",
            WorkerStatus::NoRemoteConnection => "no connection to remote server",
            WorkerStatus::NoRepositoryConnection => "no connection to repository server",
            WorkerStatus::SnapshotTimedOut => "last snapshot timed out",
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
        snapshot_timeout: Option<Duration>,
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
    /// The in-flight snapshot's connections, for the watchdog.
    in_flight: Vec<Watched>,
}

struct SharedState {
    state: Mutex<Shared>,
    changed: Condvar,
    /// The worker's series on the metrics endpoint.
    metrics: ServerMetrics,
}

impl InFlight for SharedState {
    fn connections(&self) -> Vec<Watched> {
        self.lock().in_flight.clone()
    }
}

impl SharedState {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new(metrics: ServerMetrics) -> SharedState {
        metrics.set_status(WorkerStatus::NoRemoteConnection);
        SharedState {
            state: Mutex::default(),
            changed: Condvar::new(),
            metrics,
        }
    }

    /// Sets the status; the metrics show what [`WorkerHandle::status`]
    /// would.
    fn set_status(&self, status: WorkerStatus) {
        let mut shared = self.lock();
        shared.status = Some(status);
        let shown = if shared.stopping && status != WorkerStatus::Stopped {
            WorkerStatus::Stopping
        } else {
            status
        };
        self.metrics.set_status(shown);
    }
}

/// Why a forced snapshot was refused.
pub type Refusal = String;

/// The main thread's end of a worker.
pub struct WorkerHandle {
    /// Unique among the collector's workers, for the watchdog.
    id: u64,
    server: ServerSettings,
    name: String,
    sender: Sender<Message>,
    shared: Arc<SharedState>,
    watchdog: WatchdogHandle,
    pool: PoolHandle,
    thread: Option<JoinHandle<()>>,
}

/// What a worker takes from the collector's configuration.
#[derive(Clone)]
pub struct WorkerOptions {
    pub use_server_alias: bool,
    /// `snapshot_timeout` from the configuration file, if set.
    pub snapshot_timeout: Option<Duration>,
    pub watchdog: WatchdogHandle,
    /// The repository connections the workers share.
    pub pool: PoolHandle,
    /// What the metrics endpoint shows.
    pub metrics: Arc<Metrics>,
}

/// Where worker ids come from.
static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

impl WorkerHandle {
    /// Starts the worker of `server`.
    pub fn spawn(server: ServerSettings, options: &WorkerOptions) -> std::io::Result<WorkerHandle> {
        let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        let name = server.display_name(options.use_server_alias);
        let (sender, inbox) = mpsc::channel();
        let shared = Arc::new(SharedState::new(
            options.metrics.server(server.srvid, &name),
        ));
        let worker = Worker::new(
            id,
            server.clone(),
            name.clone(),
            options,
            Arc::clone(&shared),
            inbox,
        );
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || thread::supervise(worker))?;
        Ok(WorkerHandle {
            id,
            server,
            name,
            sender,
            shared,
            watchdog: options.watchdog.clone(),
            pool: options.pool.clone(),
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

    /// Asks the worker to stop; the watchdog cancels the query its snapshot
    /// runs, if any, and drops its connections if that is not enough; a
    /// wait for a repository connection ends. Returns at once, without
    /// I/O; [`WorkerHandle::join`] waits.
    pub fn request_stop(&self) {
        {
            let mut shared = self.shared.lock();
            shared.stopping = true;
            if shared.status != Some(WorkerStatus::Stopped) {
                self.shared.metrics.set_status(WorkerStatus::Stopping);
            }
        }
        self.pool.withdraw(self.id);
        let _ = self.sender.send(Message::Stop);
        self.watchdog
            .stop(self.id, Arc::clone(&self.shared) as Arc<dyn InFlight>);
    }

    /// Gives the worker new settings (or the same, to make it reconnect).
    pub fn reload(&mut self, server: ServerSettings, snapshot_timeout: Option<Duration>) {
        self.server = server.clone();
        let _ = self.sender.send(Message::Reload {
            server,
            snapshot_timeout,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_are_the_ui_ones() {
        let words: Vec<&str> = WorkerStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            words,
            [
                "running",
                "no connection to remote server",
                "no connection to repository server",
                "last snapshot timed out",
                "stopping",
                "stopped"
            ]
        );
    }
}
