//! The workers' repository connections: one small pool that every worker
//! borrows from, whose size bounds what the collector does to the
//! repository at once.
//!
//! A worker asks for a connection with the time its work was due
//! ([`PoolHandle::checkout`]); while every connection is busy, it waits in a
//! queue ordered by that time, so the most overdue server goes first and
//! none starves. A returned connection goes straight to the first waiter, or
//! joins the idle ones; a connection idle for [`IDLE_TIMEOUT`] is closed by
//! the pool's reaper thread, which [`Pool`] owns and joins, and one idle for
//! a couple of seconds is checked with a bounded round trip before it is
//! lent, so a broken one is replaced rather than failing a snapshot. Each
//! checkout
//! names the connection after the worker it serves (`application_name`), so
//! the repository's `pg_stat_activity` stays meaningful. A connection is
//! closed on return when its user says it is not to be trusted
//! ([`Lease::discard`]: a snapshot failed on it), when it broke, or when its
//! user panicked.
//!
//! Waiting never outlives a stop: [`PoolHandle::withdraw`] (called by the
//! main thread when a worker is told to stop) takes the worker out of the
//! queue, and its wait ends with [`Error::Interrupted`]. The pool's lock is
//! held only to move connections and tickets, never across I/O.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::conninfo::{ConnInfo, Tripwire};
use crate::error::Error;
use crate::powa::Powa;
use crate::repository;

/// The default number of pooled connections.
pub const DEFAULT_SIZE: usize = 4;
/// A pooled connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the reaper looks for idle connections.
const REAP_INTERVAL: Duration = Duration::from_secs(10);
/// An idle connection unused this long is checked before it is lent.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(2);
/// Bound on that check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `statement_timeout` of a pooled connection outside snapshots (error
/// reports, versions), which set their own.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A repository connection and where PoWA is there.
pub struct Connection {
    pub client: Client,
    pub tripwire: Tripwire,
    pub powa: Powa,
    /// Where it goes, for a cancel.
    pub conninfo: ConnInfo,
    /// The configuration it was opened with.
    generation: u64,
    application_name: String,
    idle_since: Instant,
}

impl Connection {
    /// Closes the connection without waiting on the server: a peer that
    /// stopped answering cannot hold the caller.
    fn close(self) {
        self.tripwire.trip();
        drop(self.client);
    }
}

/// What a waiter is handed.
enum Grant {
    /// An open connection.
    Idle(Box<Connection>),
    /// Room to open one.
    Open,
}

/// A worker waiting for a connection.
struct Waiter {
    worker: u64,
    grant: Sender<Grant>,
}

/// The pool's state, behind its lock.
struct State {
    conninfo: ConnInfo,
    /// Bumped when the configuration changes: older connections are closed
    /// when they come back.
    generation: u64,
    size: usize,
    /// Connections open or being opened, leased or idle.
    open: usize,
    /// Idle connections, the most recently used last.
    idle: Vec<Connection>,
    /// Waiters by (due time, ticket): the first is the most overdue.
    queue: BTreeMap<(Instant, u64), Waiter>,
    next_ticket: u64,
}

impl State {
    /// Hands what is free to the first waiters; returns the connections to
    /// close (outside the lock).
    fn dispatch(&mut self) -> Vec<Connection> {
        let mut surplus = Vec::new();
        while self.open > self.size {
            match self.idle.pop() {
                Some(connection) => {
                    self.open -= 1;
                    surplus.push(connection);
                }
                None => break,
            }
        }
        while let Some(entry) = self.queue.first_entry() {
            let grant = if let Some(connection) = self.idle.pop() {
                Grant::Idle(Box::new(connection))
            } else if self.open < self.size {
                self.open += 1;
                Grant::Open
            } else {
                break;
            };
            if let Err(mpsc::SendError(unsent)) = entry.remove().grant.send(grant) {
                self.take_back(unsent);
            }
        }
        surplus
    }

    fn take_back(&mut self, grant: Grant) {
        match grant {
            Grant::Idle(connection) => self.idle.push(*connection),
            Grant::Open => self.open -= 1,
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pool, owned by the main thread: dropping it stops its reaper and
/// closes the idle connections.
pub struct Pool {
    shared: Arc<Shared>,
    stop_reaper: Option<Sender<()>>,
    reaper: Option<JoinHandle<()>>,
}

/// A worker's end of the pool.
#[derive(Clone)]
pub struct PoolHandle(Arc<Shared>);

impl Pool {
    /// A pool of at most `size` connections to `conninfo`; none is opened
    /// before it is asked for.
    pub fn new(conninfo: ConnInfo, size: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                conninfo,
                generation: 0,
                size: size.max(1),
                open: 0,
                idle: Vec::new(),
                queue: BTreeMap::new(),
                next_ticket: 0,
            }),
        });
        let (stop_reaper, stopped) = mpsc::channel();
        let reaper = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("repository pool".into())
                .spawn(move || reap(&shared, &stopped))?
        };
        Ok(Pool {
            shared,
            stop_reaper: Some(stop_reaper),
            reaper: Some(reaper),
        })
    }

    pub fn handle(&self) -> PoolHandle {
        PoolHandle(Arc::clone(&self.shared))
    }

    /// Settings read again (a reload): the connections opened before are
    /// closed, the idle ones now and the leased ones when they come back,
    /// so that the next ones use the new settings (and a new password).
    pub fn reconfigure(&self, conninfo: ConnInfo, size: usize) {
        let closing = {
            let mut state = self.shared.lock();
            state.size = size.max(1);
            state.conninfo = conninfo;
            state.generation += 1;
            let mut closing = std::mem::take(&mut state.idle);
            state.open -= closing.len();
            closing.extend(state.dispatch());
            closing
        };
        closing.into_iter().for_each(|c| c.close());
    }

    /// How many connections are open, leased or idle.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_reaper.take();
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
        let idle = {
            let mut state = self.shared.lock();
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        idle.into_iter().for_each(|c| c.close());
    }
}

/// The reaper's loop: closes connections idle for [`IDLE_TIMEOUT`] until
/// the pool is dropped.
fn reap(shared: &Shared, stopped: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REAP_INTERVAL) {
        let expired: Vec<Connection> = {
            let mut state = shared.lock();
            let (expired, kept) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|c| c.idle_since.elapsed() >= IDLE_TIMEOUT);
            state.idle = kept;
            state.open -= expired.len();
            expired
        };
        if !expired.is_empty() {
            log::debug!("closing {} idle repository connections", expired.len());
        }
        expired.into_iter().for_each(|c| c.close());
    }
}

/// How a checkout went: whether it had to queue, for how long, and the
/// pool's size then.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub queued: bool,
    pub waited: Duration,
    pub pool_size: usize,
}

impl PoolHandle {
    /// A connection for `worker`, named `application_name`, whose work was
    /// due at `due`: waits while every connection is busy, behind the
    /// waiters due earlier, unless `interrupted` (the worker is stopping:
    /// [`Error::Interrupted`]).
    pub fn checkout(
        &self,
        worker: u64,
        due: Instant,
        application_name: &str,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Lease, Error> {
        let started = Instant::now();
        let (grant, queued, pool_size) = self.wait_for_grant(worker, due, interrupted)?;
        let wait = Wait {
            queued,
            waited: started.elapsed(),
            pool_size,
        };
        let connection = match grant {
            Grant::Idle(connection) => match self.still_open(*connection) {
                Some(connection) => self.rename(connection, application_name),
                None => self.open(application_name),
            },
            Grant::Open => self.open(application_name),
        };
        match connection {
            Ok(connection) => Ok(Lease {
                pool: self.clone(),
                connection: Some(connection),
                keep: true,
                wait,
            }),
            Err(error) => {
                self.give_back(None);
                Err(error)
            }
        }
    }

    /// Takes what is free at once, or queues and waits for a grant; says
    /// whether it had to wait, and the pool's size.
    fn wait_for_grant(
        &self,
        worker: u64,
        due: Instant,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(Grant, bool, usize), Error> {
        let (receiver, size) = {
            let mut state = self.0.lock();
            let size = state.size;
            if state.queue.is_empty() {
                if let Some(connection) = state.idle.pop() {
                    return Ok((Grant::Idle(Box::new(connection)), false, size));
                }
                if state.open < size {
                    state.open += 1;
                    return Ok((Grant::Open, false, size));
                }
            }
            let (grant, receiver) = mpsc::channel();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.queue.insert((due, ticket), Waiter { worker, grant });
            log::debug!("all {size} repository connections busy; waiting for one");
            (receiver, size)
        };
        // A stop asked for before the ticket was queued did not withdraw
        // it: withdraw it now. A grant already sent is still received.
        if interrupted() {
            self.withdraw(worker);
        }
        match receiver.recv() {
            Ok(grant) => Ok((grant, true, size)),
            Err(_) => Err(Error::Interrupted),
        }
    }

    /// Ends the waits of `worker`, which is stopping.
    pub fn withdraw(&self, worker: u64) {
        self.0
            .lock()
            .queue
            .retain(|_, waiter| waiter.worker != worker);
    }

    /// Opens a new connection with the pool's current settings.
    fn open(&self, application_name: &str) -> Result<Connection, Error> {
        let (conninfo, generation) = {
            let state = self.0.lock();
            (state.conninfo.clone(), state.generation)
        };
        let (mut client, tripwire, powa) = repository::connect(&conninfo, application_name)?;
        let prepared = client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            ))
            .map_err(|e| Error::postgres("cannot set statement_timeout on the repository", e));
        match prepared {
            Ok(()) => Ok(Connection {
                client,
                tripwire,
                powa,
                conninfo,
                generation,
                application_name: application_name.to_string(),
                idle_since: Instant::now(),
            }),
            Err(error) => {
                tripwire.trip();
                Err(error)
            }
        }
    }

    /// An idle connection unused for [`CHECK_AFTER_IDLE`] is checked with a
    /// bounded round trip before it is lent: one that broke meanwhile (a
    /// repository restarted, a network that stopped carrying packets) is
    /// closed, and its room serves a new one.
    fn still_open(&self, mut connection: Connection) -> Option<Connection> {
        if connection.idle_since.elapsed() < CHECK_AFTER_IDLE {
            return Some(connection);
        }
        match connection.client.is_valid(CHECK_TIMEOUT) {
            Ok(()) => Some(connection),
            Err(e) => {
                log::debug!(
                    "an idle repository connection broke ({}); opening another",
                    crate::error::describe_postgres_error(&e)
                );
                connection.close();
                None
            }
        }
    }

    /// Gives an idle connection the name of its new user.
    fn rename(
        &self,
        mut connection: Connection,
        application_name: &str,
    ) -> Result<Connection, Error> {
        if connection.application_name != application_name {
            let renamed = connection
                .client
                .execute(
                    "SELECT pg_catalog.set_config('application_name', $1, false)",
                    &[&application_name],
                )
                .map_err(|e| Error::postgres("cannot set application_name on the repository", e));
            if let Err(error) = renamed {
                connection.close();
                return Err(error);
            }
            connection.application_name = application_name.to_string();
        }
        Ok(connection)
    }

    /// A connection comes back: kept for the next user when `healthy` and
    /// still of the current settings, closed otherwise; `None` gives back
    /// the room of one that could not be opened.
    fn give_back(&self, healthy: Option<Connection>) {
        let closing = {
            let mut state = self.0.lock();
            match healthy {
                Some(mut connection) if connection.generation == state.generation => {
                    connection.idle_since = Instant::now();
                    state.idle.push(connection);
                    state.dispatch()
                }
                stale => {
                    state.open -= 1;
                    let mut closing = state.dispatch();
                    closing.extend(stale);
                    closing
                }
            }
        };
        closing.into_iter().for_each(|c| c.close());
    }
}

/// A connection lent to a worker; it goes back to the pool when dropped,
/// to serve another worker unless [`Lease::discard`] was called, the
/// connection closed, or the thread is panicking.
pub struct Lease {
    pool: PoolHandle,
    connection: Option<Connection>,
    keep: bool,
    wait: Wait,
}

impl Lease {
    pub fn connection(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection")
    }

    /// How long the checkout waited.
    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// The connection is not to be trusted (an error broke its session).
    pub fn discard(&mut self) {
        self.keep = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let healthy = self.keep && !std::thread::panicking() && !connection.client.is_closed();
        if healthy {
            self.pool.give_back(Some(connection));
        } else {
            self.pool.give_back(None);
            connection.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_of(size: usize) -> Pool {
        Pool::new(ConnInfo::parse("host=127.0.0.1 dbname=powa").unwrap(), size).unwrap()
    }

    fn queued(pool: &Pool) -> usize {
        pool.shared.lock().queue.len()
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn takes_room_at_once_until_the_size() {
        let pool = pool_of(2);
        let handle = pool.handle();
        let now = Instant::now();
        for _ in 0..2 {
            let (grant, queued, size) = handle.wait_for_grant(1, now, &|| false).unwrap();
            assert!(matches!(grant, Grant::Open));
            assert!(!queued);
            assert_eq!(size, 2);
        }
        assert_eq!(pool.open_connections(), 2);
        handle.give_back(None);
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn the_most_overdue_waiter_goes_first() {
        let pool = pool_of(1);
        let handle = pool.handle();
        let now = Instant::now();
        handle.wait_for_grant(0, now, &|| false).unwrap();
        let (served, order) = mpsc::channel();
        let waiters: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|late| {
                let handle = handle.clone();
                let served = served.clone();
                let due = now - Duration::from_secs(late);
                std::thread::spawn(move || {
                    let (_, queued, _) = handle.wait_for_grant(late, due, &|| false).unwrap();
                    assert!(queued);
                    served.send(late).unwrap();
                })
            })
            .collect();
        wait_until("three waiters", || queued(&pool) == 3);
        let mut seen = Vec::new();
        for _ in 0..3 {
            handle.give_back(None);
            seen.push(order.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        assert_eq!(seen, [30, 20, 10]);
        waiters.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn a_withdrawn_waiter_is_interrupted_and_takes_nothing() {
        let pool = pool_of(1);
        let handle = pool.handle();
        handle.wait_for_grant(0, Instant::now(), &|| false).unwrap();
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.wait_for_grant(7, Instant::now(), &|| false))
        };
        wait_until("the waiter", || queued(&pool) == 1);
        handle.withdraw(7);
        assert!(matches!(waiter.join().unwrap(), Err(Error::Interrupted)));
        assert_eq!(queued(&pool), 0);
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn a_stop_before_queueing_is_seen() {
        let pool = pool_of(1);
        let handle = pool.handle();
        handle.wait_for_grant(0, Instant::now(), &|| false).unwrap();
        let outcome = handle.wait_for_grant(3, Instant::now(), &|| true);
        assert!(matches!(outcome, Err(Error::Interrupted)));
        assert_eq!(queued(&pool), 0);
    }

    #[test]
    fn a_smaller_size_applies_as_connections_come_back() {
        let pool = pool_of(2);
        let handle = pool.handle();
        let now = Instant::now();
        handle.wait_for_grant(0, now, &|| false).unwrap();
        handle.wait_for_grant(0, now, &|| false).unwrap();
        pool.reconfigure(ConnInfo::parse("host=127.0.0.2").unwrap(), 1);
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.wait_for_grant(5, now, &|| false))
        };
        wait_until("the waiter", || queued(&pool) == 1);
        handle.give_back(None);
        // Two were open and the size is now one: no room yet.
        assert_eq!(queued(&pool), 1);
        handle.give_back(None);
        assert!(waiter.join().unwrap().is_ok());
        assert_eq!(pool.open_connections(), 1);
    }
}
