//! systemd notifications: with `NOTIFY_SOCKET` set, the collector says
//! READY=1 once its workers are started, RELOADING=1 then READY=1 around
//! every reload (SIGHUP, RELOAD, and a reload that fails), STOPPING=1 on
//! SIGTERM, and WATCHDOG=1 every half `WATCHDOG_USEC` meanwhile.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fleet::postpone_snapshots;
use crate::harness::{Collector, repository_with_remote};
use crate::powa_web::PowaWeb;

const WATCHDOG: &str = "WATCHDOG=1";

/// `WATCHDOG_USEC` given to the collector: one second.
const WATCHDOG_USEC: u64 = 1_000_000;

/// The datagrams the collector sends to its `NOTIFY_SOCKET`, with when the
/// test read them.
struct NotifySocket {
    socket: UnixDatagram,
    received: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|error| panic!("bind {}: {error}", path.display()));
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    /// Reads datagrams until `done` holds for what was received, at most
    /// `timeout`.
    fn read_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        while !done(&self.messages()) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            assert!(
                !remaining.is_zero(),
                "timed out after {timeout:?} waiting for {what} on NOTIFY_SOCKET; received: {:?}",
                self.messages()
            );
            self.socket
                .set_read_timeout(Some(remaining))
                .expect("set a read timeout");
            match self.socket.recv(&mut buffer) {
                Ok(length) => self.received.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buffer[..length]).into_owned(),
                )),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => panic!("read NOTIFY_SOCKET: {error}"),
            }
        }
    }

    fn messages(&self) -> Vec<String> {
        self.received.iter().map(|(_, text)| text.clone()).collect()
    }

    /// The messages other than WATCHDOG=1, in order.
    fn states(&self) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|text| text != WATCHDOG)
            .collect()
    }
}

fn count_of(messages: &[String], text: &str) -> usize {
    messages.iter().filter(|m| *m == text).count()
}

#[test]
fn notify_socket_hears_ready_reloading_stopping_and_the_watchdog() {
    let (repository, _remote, srvid) = repository_with_remote(300);
    postpone_snapshots(&repository);

    let dir = tempfile::Builder::new()
        .prefix("powa-collector-notify-")
        .tempdir()
        .expect("create a temporary directory");
    let path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&path);
    let path_text = path.to_str().expect("a UTF-8 socket path").to_string();
    let watchdog_usec = WATCHDOG_USEC.to_string();
    let config = Collector::config_for(&repository).to_string();
    let mut collector = Collector::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", &path_text),
            ("WATCHDOG_USEC", &watchdog_usec),
        ],
    );

    notify.read_until(Duration::from_secs(30), "READY=1", |m| {
        count_of(m, "READY=1") == 1
    });
    // Ready means the workers are started.
    let mut web = PowaWeb::connect(&repository);
    web.wait_until_answering(&mut collector, Duration::from_secs(5));
    let workers: Vec<i32> = web.workers_status(None).into_keys().collect();
    assert_eq!(workers, [srvid], "workers once READY=1 was sent");

    // The watchdog, every half WATCHDOG_USEC, read as it comes.
    let ready_count = notify.received.len();
    notify.read_until(Duration::from_secs(10), "five WATCHDOG=1", |m| {
        count_of(&m[ready_count..], WATCHDOG) >= 5
    });
    let beats: Vec<Instant> = notify.received[ready_count..]
        .iter()
        .filter(|(_, text)| text == WATCHDOG)
        .map(|(at, _)| *at)
        .collect();
    let intervals: Vec<Duration> = beats.windows(2).map(|pair| pair[1] - pair[0]).collect();
    eprintln!(
        "MEASURE: WATCHDOG=1 intervals with WATCHDOG_USEC=1000000 (ms): {}",
        intervals
            .iter()
            .map(|interval| format!("{:.0}", interval.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let timeout = Duration::from_micros(WATCHDOG_USEC);
    for interval in &intervals {
        assert!(
            *interval >= timeout / 2 - Duration::from_millis(100) && *interval < timeout,
            "WATCHDOG=1 interval {interval:?} (expected from half of {timeout:?} to under it): \
             {intervals:?}"
        );
    }

    // SIGHUP, RELOAD, and a RELOAD that fails: each between RELOADING=1 and
    // READY=1.
    collector.signal("HUP");
    notify.read_until(Duration::from_secs(5), "READY=1 after SIGHUP", |m| {
        count_of(m, "READY=1") == 2
    });
    assert_eq!(web.ask("RELOAD", &[]), "RELOAD OK OK");
    notify.read_until(Duration::from_secs(5), "READY=1 after RELOAD", |m| {
        count_of(m, "READY=1") == 3
    });
    fs::write(collector.config_path(), "{").expect("break the config");
    let answer = web.ask("RELOAD", &[]);
    assert!(answer.starts_with("RELOAD ERROR "), "{answer:?}");
    notify.read_until(
        Duration::from_secs(5),
        "READY=1 after a failed RELOAD",
        |m| count_of(m, "READY=1") == 4,
    );

    collector.stop().assert_exited_zero();
    notify.read_until(Duration::from_secs(5), "STOPPING=1", |m| {
        m.iter().any(|text| text == "STOPPING=1")
    });
    // Whatever else was sent before the exit is in the socket by now.
    notify
        .socket
        .set_nonblocking(true)
        .expect("make the socket non-blocking");
    let mut buffer = [0u8; 4096];
    while let Ok(length) = notify.socket.recv(&mut buffer) {
        notify.received.push((
            Instant::now(),
            String::from_utf8_lossy(&buffer[..length]).into_owned(),
        ));
    }

    assert_eq!(
        notify.states(),
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ],
        "notifications other than WATCHDOG=1, in order"
    );
    let messages = notify.messages();
    assert_eq!(
        messages.last().map(String::as_str),
        Some("STOPPING=1"),
        "nothing is sent after STOPPING=1: {messages:?}"
    );
}

#[test]
fn log_lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    let repository = crate::harness::Cluster::repository();
    // A server that cannot be reached: an error line.
    repository
        .connect_powa()
        .execute(
            "SELECT powa_register_server(hostname => '127.0.0.1', port => $1, \
             username => 'postgres', dbname => 'powa', frequency => 5)",
            &[&i32::from(crate::harness::free_port())],
        )
        .expect("register an unreachable server");
    let mut collector =
        Collector::start_as_journald_service(&Collector::config_for(&repository).to_string());
    crate::harness::wait_for(Duration::from_secs(20), "an error line", || {
        let log = collector_log_lines(&collector);
        if log.iter().any(|line| line.starts_with("<3>ERROR")) {
            Ok(())
        } else {
            Err(format!("{log:?}"))
        }
    });
    let log = collector_log_lines(&collector);
    for line in &log {
        // `<N>LEVEL`: the priority, then the level, and no time of its own.
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .unwrap_or_else(|| panic!("a line without a syslog priority: {line:?}"));
        let expected = match rest.split(' ').next() {
            Some("ERROR") => "3",
            Some("WARN") => "4",
            Some("INFO") => "6",
            Some("DEBUG" | "TRACE") => "7",
            _ => panic!("a line that does not start with its level: {line:?}"),
        };
        assert_eq!(priority, expected, "{line:?}");
    }
    assert!(
        log.iter().any(|line| line.starts_with("<6>INFO  [main] ")),
        "no info line of the main thread: {log:?}"
    );
    collector.stop().assert_exited_zero();
}

fn collector_log_lines(collector: &Collector) -> Vec<String> {
    collector.log().lines().map(str::to_string).collect()
}
