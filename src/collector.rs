//! The main thread: the repository connection, the workers, and the loop
//! that waits for requests and signals.
//!
//! [`run`] connects to the repository, checks PoWA there, `LISTEN`s on
//! channel `powa_collector`, reads the remote servers and starts one worker
//! per server, then loops until told to stop. Each turn of the loop waits
//! at most [`POLL_INTERVAL`] for a notification on the repository
//! connection (the synchronous client exposes no socket to select on, so a
//! bounded wait is how notifications and signals are served together), then
//! looks at the [`Control`] flags that signal handlers set. At least every
//! [`CHECK_INTERVAL`] the repository connection is checked and, if it
//! dropped, re-opened (and `LISTEN` issued again) while the workers go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::config::Config;
use crate::conninfo::ConnInfo;
use crate::error::{Error, describe_postgres_error};
use crate::repository::{self, PowaInstall};
use crate::worker::WorkerHandle;

/// Longest wait for a notification before the loop looks at its flags.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest time between two checks of the repository connection.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on one check of the repository connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
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

    /// Makes SIGTERM and SIGINT request a stop, and SIGHUP a reload.
    pub fn register_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::flag::register(SIGTERM, Arc::clone(&self.stop))?;
        signal_hook::flag::register(SIGINT, Arc::clone(&self.stop))?;
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

/// Runs the collector until `control` asks it to stop.
///
/// Returns an error when the collector cannot start: the repository is
/// unreachable, PoWA is missing there, or the server list cannot be read.
/// Once started, problems are logged and retried, never fatal.
pub fn run(config: Config, control: &Control) -> Result<(), Error> {
    let repository = config.repository()?;
    let (mut connection, powa) = connect(&repository)?;
    let (servers, refused) = repository::list_servers(&mut connection, &powa)
        .map_err(|e| Error::postgres("cannot read the list of remote servers", e))?;
    for why in refused {
        log::error!("{why}; this server is not collected");
    }

    let mut collector = Collector {
        config,
        repository,
        connection: Some(connection),
        last_check: Instant::now(),
        workers: BTreeMap::new(),
    };
    for server in servers {
        collector.start_worker(server);
    }
    collector.log_workers();

    while !control.stop_requested() {
        if control.take_reload() {
            log::info!("reload requested");
        }
        collector.serve_notifications();
        if collector.last_check.elapsed() >= CHECK_INTERVAL {
            collector.check_connection();
        }
    }
    collector.stop_workers();
    Ok(())
}

/// Opens the main repository connection, checks PoWA and listens.
fn connect(repository: &ConnInfo) -> Result<(Client, PowaInstall), Error> {
    log::debug!("connecting to the repository ({repository})");
    let mut client = repository
        .connect(&format!(
            "PoWA collector - main thread ({})",
            crate::VERSION
        ))
        .map_err(|e| {
            Error::postgres(
                format!("cannot connect to the repository ({repository})"),
                e,
            )
        })?;
    let powa = repository::require_powa(&mut client, "the repository")?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| Error::postgres("cannot LISTEN on the repository", e))?;
    log::debug!("connected to the repository, PoWA {}", powa.version.text);
    Ok((client, powa))
}

/// The main thread's state.
struct Collector {
    config: Config,
    repository: ConnInfo,
    /// `None` while the repository is unreachable.
    connection: Option<Client>,
    last_check: Instant,
    /// By server key (`host:port`).
    workers: BTreeMap<String, WorkerHandle>,
}

impl Collector {
    fn start_worker(&mut self, server: crate::servers::ServerSettings) {
        let key = server.key();
        match WorkerHandle::spawn(
            server,
            self.repository.clone(),
            self.config.use_server_alias,
        ) {
            Ok(worker) => {
                self.workers.insert(key, worker);
            }
            Err(e) => log::error!("cannot start a worker for {key}: {e}"),
        }
    }

    fn log_workers(&self) {
        if self.workers.is_empty() {
            log::info!("no remote server to collect");
            return;
        }
        log::info!("list of workers:");
        for worker in self.workers.values() {
            log::info!(
                "  {}: {} (frequency {}s)",
                worker.name(),
                worker.server().conninfo(),
                worker.server().frequency
            );
        }
    }

    /// Waits up to [`POLL_INTERVAL`] for requests and serves what arrived.
    fn serve_notifications(&mut self) {
        let Some(client) = self.connection.as_mut() else {
            std::thread::sleep(POLL_INTERVAL);
            return;
        };
        let mut received = Vec::new();
        let mut lost = None;
        {
            let mut notifications = client.notifications();
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
            log::debug!(
                "request from backend {} ignored: {:?}",
                notification.process_id(),
                notification.payload()
            );
        }
        if let Some(e) = lost {
            log::warn!(
                "connection to the repository lost: {}",
                describe_postgres_error(&e)
            );
            self.connection = None;
        }
    }

    /// Checks the repository connection, re-opening it when it dropped.
    fn check_connection(&mut self) {
        self.last_check = Instant::now();
        if let Some(client) = self.connection.as_mut()
            && let Err(e) = client.is_valid(CHECK_TIMEOUT)
        {
            log::warn!(
                "connection to the repository lost: {}",
                describe_postgres_error(&e)
            );
            self.connection = None;
        }
        if self.connection.is_none() {
            match connect(&self.repository) {
                Ok((client, _)) => {
                    log::info!("reconnected to the repository");
                    self.connection = Some(client);
                }
                Err(error) => log::error!("{error}; retrying in {}s", CHECK_INTERVAL.as_secs()),
            }
        }
    }

    /// Tells every worker to stop, then waits for each.
    fn stop_workers(&mut self) {
        log::info!("stopping all workers");
        let started = Instant::now();
        for worker in self.workers.values() {
            worker.request_stop();
        }
        for (_, worker) in std::mem::take(&mut self.workers) {
            let name = worker.name().to_string();
            worker.join();
            log::debug!("worker {name} joined");
        }
        log::info!(
            "all workers stopped in {} ms",
            started.elapsed().as_millis()
        );
    }
}
