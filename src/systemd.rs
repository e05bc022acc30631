//! Life under systemd: service notifications (`Type=notify`: readiness,
//! reloads, shutdown and the watchdog, sent as datagrams to
//! `$NOTIFY_SOCKET`), and whether stderr is the journal (for log lines with
//! syslog priorities).
//!
//! Without `NOTIFY_SOCKET` nothing is sent. Used by the main thread only.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// The main thread's link to systemd.
#[derive(Debug)]
pub struct Notifier {
    link: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Watchdog>,
}

#[derive(Debug)]
struct Watchdog {
    interval: Duration,
    last: Instant,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the
    /// environment.
    pub fn from_env() -> Notifier {
        let link = std::env::var_os("NOTIFY_SOCKET")
            .filter(|path| !path.is_empty())
            .and_then(|path| match connect(&path) {
                Ok(link) => Some(link),
                Err(e) => {
                    log::warn!("cannot use NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
                    None
                }
            });
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && watchdog_for_us && link.is_some())
            .map(|usec| Watchdog {
                interval: Duration::from_micros(usec) / 2,
                last: Instant::now(),
            });
        Notifier { link, watchdog }
    }

    /// The collector is up: its workers are started.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload starts; [`Notifier::ready`] says it ended.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// The collector is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Tells the watchdog the main loop is alive, at half its timeout.
    pub fn keep_alive(&mut self) {
        let due = match &mut self.watchdog {
            Some(watchdog) if watchdog.last.elapsed() >= watchdog.interval => {
                watchdog.last = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            self.send("WATCHDOG=1");
        }
    }

    fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.link
            && let Err(e) = socket.send_to_addr(state.as_bytes(), address)
        {
            log::warn!("cannot notify systemd of {state}: {e}");
        }
    }
}

fn connect(path: &std::ffi::OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, address))
}

/// Whether stderr is connected to the journal: systemd sets
/// `JOURNAL_STREAM` to the `device:inode` of the stream it gives a service,
/// and it is stderr's when they match (a service that redirects stderr
/// elsewhere keeps the variable, so both are compared).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = value.to_str().and_then(|text| text.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}

/// The syslog priority of a log level, for the journal's `<N>` prefix.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier {
            link: Some(connect(path.as_os_str()).unwrap()),
            watchdog: None,
        };
        notifier.ready();
        notifier.reloading();
        notifier.ready();
        notifier.stopping();
        let mut received = Vec::new();
        let mut buffer = [0u8; 64];
        for _ in 0..4 {
            let length = receiver.recv(&mut buffer).unwrap();
            received.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
        assert_eq!(
            received,
            ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
        );
    }

    #[test]
    fn abstract_socket_names_are_understood() {
        let (_, address) = connect(std::ffi::OsStr::new("@powa-collector-test")).unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(
            address.as_abstract_name(),
            Some(&b"powa-collector-test"[..])
        );
    }

    #[test]
    fn watchdog_waits_for_half_its_timeout() {
        let mut notifier = Notifier {
            link: None,
            watchdog: Some(Watchdog {
                interval: Duration::from_secs(3600),
                last: Instant::now(),
            }),
        };
        notifier.keep_alive();
        assert!(notifier.watchdog.as_ref().unwrap().last.elapsed() < Duration::from_secs(60));
    }
}
