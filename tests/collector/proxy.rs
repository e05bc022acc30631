//! A TCP proxy of the tests' own, between the collector and a cluster, to
//! make the network fail on purpose:
//! - `Pass`: bytes flow both ways;
//! - `Blackhole`: nothing flows any more, and connections stay open, as
//!   with a peer whose network vanished (new connections are accepted and
//!   left hanging);
//! - `Reset`: every connection is closed, and new ones are closed at once.
//!
//! The proxy owns its threads (one accepting, two per connection); dropping
//! it stops and joins them all.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the proxy's threads look at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Blackhole = 1,
    Reset = 2,
}

struct State {
    mode: AtomicU8,
    stop: AtomicBool,
}

impl State {
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Pass,
            1 => Mode::Blackhole,
            _ => Mode::Reset,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A proxy listening on 127.0.0.1, forwarding to 127.0.0.1:`target`.
pub struct Proxy {
    port: u16,
    state: Arc<State>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn to(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("make the proxy's listener non-blocking");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(State {
            mode: AtomicU8::new(Mode::Pass as u8),
            stop: AtomicBool::new(false),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let state = Arc::clone(&state);
            let threads = Arc::clone(&threads);
            thread::spawn(move || accept(&listener, target, &state, &threads))
        };
        Proxy {
            port,
            state,
            threads,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("proxy threads"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept(
    listener: &TcpListener,
    target: u16,
    state: &Arc<State>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
) {
    while !state.stopping() {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(TICK);
                continue;
            }
            Err(_) => continue,
        };
        if state.mode() == Mode::Reset {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let mut threads = threads.lock().expect("proxy threads");
        threads.retain(|thread| !thread.is_finished());
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (from, to) = (
                from.try_clone().expect("clone a proxied socket"),
                to.try_clone().expect("clone a proxied socket"),
            );
            let state = Arc::clone(state);
            threads.push(thread::spawn(move || pump(from, to, &state)));
        }
    }
}

/// Copies `from` into `to` while the mode lets bytes pass.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buffer = [0u8; 16 * 1024];
    while !state.stopping() {
        match state.mode() {
            Mode::Reset => break,
            Mode::Blackhole => {
                thread::sleep(TICK);
                continue;
            }
            Mode::Pass => {}
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
