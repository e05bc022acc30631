//! The watchdog: one thread, owned by the collector, that enforces snapshot
//! deadlines and carries out the cancels of stop requests, so that neither
//! the main thread nor a stuck worker ever waits on a peer for them.
//!
//! A worker taking a snapshot is watched until its deadline
//! ([`Watchdog::watch`]). When the deadline passes, the watchdog sends a
//! cancel request for each of the snapshot's connections (a responsive
//! server then rolls back and answers at once); if the snapshot is still
//! running [`TRIP_GRACE`] later, its connections are tripped: their pending
//! operations fail at once, so that a peer that stopped answering (a
//! stopped process, a black-holed network) cannot hold the worker. A stop
//! request ([`Watchdog::stop`]) does the same at once, with a shorter
//! grace.
//!
//! Cancel requests open a connection of their own, bounded by
//! `connect_timeout`: each runs on a short-lived thread that the watchdog
//! joins once it ends (or leaves behind at shutdown, where it ends by
//! itself within that bound).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::CancelToken;

use crate::conninfo::{ConnInfo, Tripwire};

/// How long after its deadline a snapshot still running has its
/// connections dropped.
pub const TRIP_GRACE: Duration = Duration::from_secs(5);
/// How long after a stop request a snapshot still running has its
/// connections dropped.
pub const STOP_GRACE: Duration = Duration::from_millis(500);
/// Longest sleep of the watchdog with nothing due, to reap its cancels.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

/// One connection of a snapshot in flight.
#[derive(Clone)]
pub struct Watched {
    pub conninfo: ConnInfo,
    pub cancel: CancelToken,
    pub tripwire: Tripwire,
}

/// What the watchdog reads to find a worker's connections in flight.
pub trait InFlight: Send + Sync {
    /// The connections of the snapshot running now (none between
    /// snapshots).
    fn connections(&self) -> Vec<Watched>;
}

enum Order {
    Watch {
        worker: u64,
        deadline: Instant,
        in_flight: Arc<dyn InFlight>,
    },
    Release {
        worker: u64,
    },
    Stop {
        worker: u64,
        in_flight: Arc<dyn InFlight>,
    },
    Shutdown,
}

/// The collector's end of the watchdog.
pub struct Watchdog {
    orders: Sender<Order>,
    thread: Option<JoinHandle<()>>,
}

/// What workers and the main thread use to talk to the watchdog; cheap to
/// clone, and never blocks.
#[derive(Clone)]
pub struct WatchdogHandle {
    orders: Sender<Order>,
}

impl Watchdog {
    pub fn spawn() -> std::io::Result<Watchdog> {
        let (orders, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || Guard::default().run(inbox))?;
        Ok(Watchdog {
            orders,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WatchdogHandle {
        WatchdogHandle {
            orders: self.orders.clone(),
        }
    }

    /// Ends the thread and waits for it (its cancels in flight are left to
    /// end by themselves).
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.orders.send(Order::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the watchdog thread panicked");
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl WatchdogHandle {
    /// Watches the snapshot `worker` starts now, until `deadline`.
    pub fn watch(&self, worker: u64, deadline: Instant, in_flight: Arc<dyn InFlight>) {
        let _ = self.orders.send(Order::Watch {
            worker,
            deadline,
            in_flight,
        });
    }

    /// The snapshot of `worker` is over.
    pub fn release(&self, worker: u64) {
        let _ = self.orders.send(Order::Release { worker });
    }

    /// `worker` is stopping: cancel what it runs now, and drop its
    /// connections if that is not enough.
    pub fn stop(&self, worker: u64, in_flight: Arc<dyn InFlight>) {
        let _ = self.orders.send(Order::Stop { worker, in_flight });
    }
}

/// A watched worker: what is due next for it.
struct Entry {
    in_flight: Arc<dyn InFlight>,
    /// When to send cancel requests; `None` once sent.
    cancel_at: Option<Instant>,
    /// When to trip the connections; `None` once tripped.
    trip_at: Option<Instant>,
    /// Why, for the log.
    reason: &'static str,
}

impl Entry {
    fn next_due(&self) -> Option<Instant> {
        match (self.cancel_at, self.trip_at) {
            (Some(cancel), _) => Some(cancel),
            (None, trip) => trip,
        }
    }
}

/// The watchdog thread's state.
#[derive(Default)]
struct Guard {
    entries: HashMap<u64, Entry>,
    cancels: Vec<JoinHandle<()>>,
}

impl Guard {
    fn run(mut self, inbox: Receiver<Order>) {
        loop {
            let now = Instant::now();
            let wait = self
                .entries
                .values()
                .filter_map(Entry::next_due)
                .min()
                .map_or(IDLE_WAKEUP, |due| due.saturating_duration_since(now))
                .min(IDLE_WAKEUP);
            match inbox.recv_timeout(wait) {
                Ok(Order::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(order) => self.take(order),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.act(Instant::now());
            self.cancels.retain(|cancel| !cancel.is_finished());
        }
    }

    fn take(&mut self, order: Order) {
        let now = Instant::now();
        match order {
            Order::Watch {
                worker,
                deadline,
                in_flight,
            } => {
                self.entries.insert(
                    worker,
                    Entry {
                        in_flight,
                        cancel_at: Some(deadline),
                        trip_at: Some(deadline + TRIP_GRACE),
                        reason: "the snapshot deadline passed",
                    },
                );
            }
            Order::Release { worker } => {
                self.entries.remove(&worker);
            }
            Order::Stop { worker, in_flight } => {
                self.entries.insert(
                    worker,
                    Entry {
                        in_flight,
                        cancel_at: Some(now),
                        trip_at: Some(now + STOP_GRACE),
                        reason: "the worker is stopping",
                    },
                );
            }
            Order::Shutdown => {}
        }
    }

    /// Sends the cancels and trips that are due.
    fn act(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            if entry.cancel_at.is_some_and(|at| at <= now) {
                entry.cancel_at = None;
                for watched in entry.in_flight.connections() {
                    log::debug!(
                        "cancelling a query on {}: {}",
                        watched.conninfo,
                        entry.reason
                    );
                    self.cancels.push(spawn_cancel(watched));
                }
            }
            if entry.cancel_at.is_none() && entry.trip_at.is_some_and(|at| at <= now) {
                entry.trip_at = None;
                let connections = entry.in_flight.connections();
                if !connections.is_empty() {
                    log::warn!(
                        "dropping {} connections that did not answer a cancel: {}",
                        connections.len(),
                        entry.reason
                    );
                }
                for watched in connections {
                    watched.tripwire.trip();
                }
            }
        }
        self.entries.retain(|_, entry| entry.next_due().is_some());
    }
}

/// Sends a cancel request on a thread of its own: it connects to the
/// server, which may not answer for `connect_timeout`.
fn spawn_cancel(watched: Watched) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = watched.conninfo.cancel(&watched.cancel) {
            log::debug!("cancel request to {} failed: {e}", watched.conninfo);
        }
    })
}
