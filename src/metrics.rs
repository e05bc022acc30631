//! The optional metrics endpoint: what the collector and its workers count,
//! and the HTTP server that shows it.
//!
//! [`Metrics`] owns the registry (a `prometheus-client` registry): the
//! collector's gauges, set by the main thread once per turn of its loop, and
//! one set of series per worker, labelled `srvid` and `server` (the name the
//! worker logs under, never a connection string). Each worker updates its
//! own series through a [`ServerMetrics`] handle: atomics, and the
//! registry's short internal lock when a label set is looked up, never held
//! across I/O. A worker's series go away when the last handle for its labels
//! is dropped (its thread has ended, and no new worker took its name).
//!
//! [`Endpoint`] is the HTTP server (`tiny_http`), enabled by
//! `metrics_address` in the configuration file. It runs on a thread of its
//! own, named `metrics`, that the main thread starts, and stops and joins
//! at shutdown or when a reload moves or removes it. It serves:
//! - `/metrics`: the registry in the Prometheus text format (0.0.4);
//! - `/healthz`: `200 ok` while the main thread's repository connection is
//!   up, `503` otherwise;
//! - anything else: `404`; a method other than GET or HEAD: `405`.
//!
//! Serving a request reads atomics and the registry's locks only: a scrape
//! never waits for a worker's I/O nor for the main thread.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::worker::WorkerStatus;

/// The prefix of every metric's name.
const PREFIX: &str = "powa_collector";

/// The labels of a worker's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    srvid: i32,
    server: String,
}

/// The labels of a worker's status series: one per status word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    srvid: i32,
    server: String,
    status: &'static str,
}

impl StatusLabels {
    fn of(labels: &ServerLabels, status: WorkerStatus) -> StatusLabels {
        StatusLabels {
            srvid: labels.srvid,
            server: labels.server.clone(),
            status: status.as_str(),
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Everything the endpoint shows.
pub struct Metrics {
    registry: Registry,
    repository_up: Gauge,
    workers: Gauge,
    status: Family<StatusLabels, Gauge>,
    last_success: Family<ServerLabels, FloatGauge>,
    last_duration: Family<ServerLabels, FloatGauge>,
    rows: Family<ServerLabels, Counter>,
    snapshots: Family<ServerLabels, Counter>,
    errors: Family<ServerLabels, Counter>,
    repository_wait: Family<ServerLabels, FloatCounter>,
    /// How many handles use each worker's labels.
    users: Mutex<HashMap<ServerLabels, usize>>,
}

impl Metrics {
    /// A registry with every metric, and no worker yet.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let repository_up = Gauge::default();
        let workers = Gauge::default();
        let status = Family::<StatusLabels, Gauge>::default();
        let last_success = Family::<ServerLabels, FloatGauge>::default();
        let last_duration = Family::<ServerLabels, FloatGauge>::default();
        let rows = Family::<ServerLabels, Counter>::default();
        let snapshots = Family::<ServerLabels, Counter>::default();
        let errors = Family::<ServerLabels, Counter>::default();
        let repository_wait = Family::<ServerLabels, FloatCounter>::default();
        registry.register(
            "build",
            "The collector's version",
            Info::new(vec![("version", crate::VERSION)]),
        );
        registry.register(
            "repository_up",
            "Whether the main thread's repository connection is up (1) or not (0)",
            repository_up.clone(),
        );
        registry.register(
            "workers",
            "Workers the collector runs, one per remote server",
            workers.clone(),
        );
        registry.register(
            "worker_status",
            "A worker's status: 1 for its current status word, 0 for the others",
            status.clone(),
        );
        registry.register(
            "last_snapshot_success_timestamp_seconds",
            "When the last successful snapshot ended, in seconds since the Unix epoch",
            last_success.clone(),
        );
        registry.register(
            "last_snapshot_duration_seconds",
            "How long the last snapshot took, whether it succeeded or failed",
            last_duration.clone(),
        );
        registry.register(
            "snapshot_rows",
            "Rows copied from the remote server into the repository",
            rows.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots that landed in the repository",
            snapshots.clone(),
        );
        registry.register(
            "snapshot_errors",
            "Snapshots that failed, plus the errors of datasources within snapshots that landed",
            errors.clone(),
        );
        registry.register(
            "repository_wait_seconds",
            "Time spent waiting for a repository connection from the pool",
            repository_wait.clone(),
        );
        Arc::new(Metrics {
            registry,
            repository_up,
            workers,
            status,
            last_success,
            last_duration,
            rows,
            snapshots,
            errors,
            repository_wait,
            users: Mutex::new(HashMap::new()),
        })
    }

    /// The main thread's state: its repository connection, its workers.
    pub fn observe_collector(&self, repository_up: bool, workers: usize) {
        self.repository_up.set(i64::from(repository_up));
        self.workers.set(i64::try_from(workers).unwrap_or(i64::MAX));
    }

    fn repository_is_up(&self) -> bool {
        self.repository_up.get() == 1
    }

    /// The handle through which the worker of `srvid`, named `name`,
    /// updates its series.
    pub fn server(self: &Arc<Self>, srvid: i32, name: &str) -> ServerMetrics {
        let labels = ServerLabels {
            srvid,
            server: name.to_string(),
        };
        *self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(labels.clone())
            .or_default() += 1;
        // Each series exists from the start, at zero.
        drop(self.last_duration.get_or_create(&labels));
        drop(self.rows.get_or_create(&labels));
        drop(self.snapshots.get_or_create(&labels));
        drop(self.errors.get_or_create(&labels));
        drop(self.repository_wait.get_or_create(&labels));
        ServerMetrics {
            metrics: Arc::clone(self),
            labels,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_text::encode(&mut text, &self.registry) {
            let _ = writeln!(text, "# encoding failed: {e}");
        }
        text
    }

    fn forget(&self, labels: &ServerLabels) {
        for word in WorkerStatus::ALL {
            self.status.remove(&StatusLabels::of(labels, word));
        }
        self.last_success.remove(labels);
        self.last_duration.remove(labels);
        self.rows.remove(labels);
        self.snapshots.remove(labels);
        self.errors.remove(labels);
        self.repository_wait.remove(labels);
    }
}

/// A worker's end of [`Metrics`]: cheap to call, never blocking on I/O.
pub struct ServerMetrics {
    metrics: Arc<Metrics>,
    labels: ServerLabels,
}

impl ServerMetrics {
    /// The worker's status is now `status`.
    pub fn set_status(&self, status: WorkerStatus) {
        for word in WorkerStatus::ALL {
            self.metrics
                .status
                .get_or_create(&StatusLabels::of(&self.labels, word))
                .set(i64::from(word == status));
        }
    }

    /// A snapshot landed: it took `took`, copied `rows` rows and recorded
    /// `errors` datasource errors.
    pub fn snapshot_done(&self, took: Duration, rows: u64, errors: usize) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let metrics = &self.metrics;
        metrics
            .last_success
            .get_or_create(&self.labels)
            .set(now.as_secs_f64());
        metrics
            .last_duration
            .get_or_create(&self.labels)
            .set(took.as_secs_f64());
        metrics.rows.get_or_create(&self.labels).inc_by(rows);
        metrics.snapshots.get_or_create(&self.labels).inc();
        metrics
            .errors
            .get_or_create(&self.labels)
            .inc_by(u64::try_from(errors).unwrap_or(u64::MAX));
    }

    /// A snapshot failed after `took`.
    pub fn snapshot_failed(&self, took: Duration) {
        self.metrics
            .last_duration
            .get_or_create(&self.labels)
            .set(took.as_secs_f64());
        self.metrics.errors.get_or_create(&self.labels).inc();
    }

    /// The worker waited `waited` for a repository connection.
    pub fn waited(&self, waited: Duration) {
        self.metrics
            .repository_wait
            .get_or_create(&self.labels)
            .inc_by(waited.as_secs_f64());
    }
}

impl Drop for ServerMetrics {
    /// The last handle of a worker's labels removes its series.
    fn drop(&mut self) {
        let mut users = self
            .metrics
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let last = match users.get_mut(&self.labels) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                users.remove(&self.labels);
                true
            }
        };
        if last {
            self.metrics.forget(&self.labels);
        }
    }
}

/// An answer of the endpoint.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(code: u16, body: &str) -> Reply {
        Reply {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

/// What to answer to `method` on `url`.
fn route(method: &str, url: &str, metrics: &Metrics) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if !matches!(path, "/metrics" | "/healthz") {
        return Reply::text(404, "not found; try /metrics or /healthz\n");
    }
    if !matches!(method, "GET" | "HEAD") {
        return Reply::text(405, "method not allowed\n");
    }
    if path == "/healthz" {
        return if metrics.repository_is_up() {
            Reply::text(200, "ok\n")
        } else {
            Reply::text(503, "the repository connection is down\n")
        };
    }
    Reply {
        code: 200,
        content_type: prometheus_text::CONTENT_TYPE,
        body: metrics.render(),
    }
}

/// The HTTP server of `metrics_address`, on its own thread.
pub struct Endpoint {
    address: SocketAddr,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `address` and serves `metrics` there.
    pub fn start(address: SocketAddr, metrics: &Arc<Metrics>) -> Result<Endpoint, Error> {
        let server = tiny_http::Server::http(address).map_err(|e| {
            Error::Listen(format!(
                "cannot serve metrics on {address} (metrics_address): {e}"
            ))
        })?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Arc::clone(&server);
            let stopping = Arc::clone(&stopping);
            let metrics = Arc::clone(metrics);
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&server, &stopping, &metrics))
                .map_err(|e| Error::Listen(format!("cannot start the metrics thread: {e}")))?
        };
        log::info!("serving metrics on http://{address}/metrics");
        Ok(Endpoint {
            address,
            server,
            stopping,
            thread: Some(thread),
        })
    }

    /// Starts the endpoint if `address` is set.
    pub fn start_if(
        address: Option<SocketAddr>,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Endpoint>, Error> {
        address
            .map(|address| Endpoint::start(address, metrics))
            .transpose()
    }

    /// At a reload: moves `endpoint` to `address`, starts or stops it. A
    /// new address that cannot be listened on is logged, and the old
    /// endpoint (or none) kept.
    pub fn follow(
        endpoint: &mut Option<Endpoint>,
        address: Option<SocketAddr>,
        metrics: &Arc<Metrics>,
    ) {
        if endpoint.as_ref().map(|e| e.address) == address {
            return;
        }
        let Some(address) = address else {
            if let Some(old) = endpoint.take() {
                log::info!("metrics endpoint on {} stopped", old.address);
            }
            return;
        };
        match Endpoint::start(address, metrics) {
            Ok(new) => {
                if let Some(old) = endpoint.replace(new) {
                    log::info!("metrics endpoint moved from {} to {address}", old.address);
                }
            }
            Err(error) => match endpoint {
                Some(old) => log::error!("{error}; metrics stay on {}", old.address),
                None => log::error!("{error}; metrics are not served"),
            },
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Endpoint {
    /// Stops the server's thread and waits for it.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the metrics thread panicked");
        }
    }
}

/// The metrics thread: serves requests until the endpoint is dropped.
fn serve(server: &tiny_http::Server, stopping: &AtomicBool, metrics: &Metrics) {
    loop {
        let request = match server.recv() {
            Ok(request) => request,
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::warn!("metrics endpoint: {e}");
                continue;
            }
        };
        let reply = route(request.method().as_str(), request.url(), metrics);
        let header = tiny_http::Header::from_bytes("Content-Type", reply.content_type)
            .expect("a valid header");
        let response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.code)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            log::debug!("metrics endpoint: cannot answer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
    }

    #[test]
    fn collector_gauges_and_version() {
        let metrics = Metrics::new();
        metrics.observe_collector(true, 3);
        let _server = metrics.server(1, "db1");
        let text = metrics.render();
        assert_eq!(
            line_of(&text, "powa_collector_repository_up "),
            "powa_collector_repository_up 1"
        );
        assert_eq!(
            line_of(&text, "powa_collector_workers "),
            "powa_collector_workers 3"
        );
        assert_eq!(
            line_of(&text, "powa_collector_build_info"),
            format!(
                "powa_collector_build_info{{version=\"{}\"}} 1",
                crate::VERSION
            )
        );
        assert!(
            text.contains("# TYPE powa_collector_snapshots_total counter"),
            "{text}"
        );
    }

    #[test]
    fn a_worker_s_series() {
        let metrics = Metrics::new();
        let server = metrics.server(7, "db\"1\\\n");
        server.set_status(WorkerStatus::Running);
        server.snapshot_done(Duration::from_millis(1500), 42, 1);
        server.snapshot_failed(Duration::from_millis(250));
        server.waited(Duration::from_millis(500));
        let text = metrics.render();
        let labels = r#"srvid="7",server="db\"1\\\n""#;
        for (name, value) in [
            ("snapshots_total", "1"),
            ("snapshot_rows_total", "42"),
            ("snapshot_errors_total", "2"),
            ("last_snapshot_duration_seconds", "0.25"),
            ("repository_wait_seconds_total", "0.5"),
        ] {
            assert_eq!(
                line_of(&text, &format!("powa_collector_{name}{{")),
                format!("powa_collector_{name}{{{labels}}} {value}")
            );
        }
        assert!(text.contains(&format!(
            "powa_collector_worker_status{{{labels},status=\"running\"}} 1"
        )));
        assert!(text.contains(&format!(
            "powa_collector_worker_status{{{labels},status=\"stopped\"}} 0"
        )));
        let stamp: f64 = line_of(
            &text,
            "powa_collector_last_snapshot_success_timestamp_seconds{",
        )
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
        assert!(stamp > 1.0e9, "{stamp}");
    }

    #[test]
    fn series_go_with_the_last_handle() {
        let metrics = Metrics::new();
        let first = metrics.server(1, "a");
        first.set_status(WorkerStatus::Running);
        let second = metrics.server(1, "a");
        drop(first);
        assert!(metrics.render().contains("server=\"a\""));
        drop(second);
        assert!(!metrics.render().contains("server=\"a\""));
    }

    #[test]
    fn routes() {
        let metrics = Metrics::new();
        assert_eq!(route("GET", "/healthz", &metrics).code, 503);
        metrics.observe_collector(true, 0);
        assert_eq!(route("GET", "/healthz", &metrics), Reply::text(200, "ok\n"));
        let scrape = route("GET", "/metrics?x=1", &metrics);
        assert_eq!(scrape.code, 200);
        assert_eq!(scrape.content_type, prometheus_text::CONTENT_TYPE);
        assert!(scrape.body.contains("powa_collector_repository_up 1"));
        assert_eq!(route("GET", "/", &metrics).code, 404);
        assert_eq!(route("GET", "/metrics/x", &metrics).code, 404);
        assert_eq!(route("POST", "/metrics", &metrics).code, 405);
    }
}
