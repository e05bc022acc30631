//! Connection settings and connection set-up, with libpq's semantics, for
//! the repository and for the remote servers alike.
//!
//! A connection string (URI or `key=value`, `dsn`) or a `powa_servers`
//! row becomes a [`ConnInfo`] the way libpq builds a connection: the
//! service file, the `PG*` environment and the built-in defaults fill in
//! what is missing (`settings`, `service`, `env`); at each connection
//! the password comes from the string, `PGPASSWORD` or the password file
//! (`pgpass`); TLS follows `sslmode` and the `ssl*` keys (`tls`).
//! Every key libpq knows is honoured or refused by name. [`ConnInfo`]'s
//! `Display` and `Debug`, and every message of this module, leave
//! passwords out.
//!
//! [`ConnInfo::connect`] runs libpq's connection loop: each host of the
//! list in turn (shuffled with `load_balance_hosts=random`), each address
//! of a host name, the `allow` / `prefer` retries with or without TLS,
//! `target_session_attrs`, and the collector's session settings at the end.
//!
//! # Deadlines
//!
//! `connect_timeout` (libpq's meaning: per host address; at least 2 s; 0
//! waits forever) bounds the whole attempt on an address; without one, the
//! collector uses [`DEFAULT_CONNECT_TIMEOUT`]. The `postgres` driver's own
//! `connect_timeout` only bounds the TCP connect, and its synchronous
//! client can only be built by its own `Config::connect`, which opens the
//! socket itself. So each attempt tells the driver to use "direct" TLS:
//! the driver then hands the raw socket to our TLS connector
//! (`tls::Connector`) before sending a byte, and everything after the
//! TCP connect goes through the stream that connector returns. That stream
//! carries the attempt's deadline (a timer of the driver's own runtime):
//! the `SSLRequest` answer, the TLS handshake, the authentication exchange,
//! `target_session_attrs` and the session settings all fail with "timeout
//! expired" once it passes, and the TCP connect is bounded by the time
//! left. When the connection is set up the deadline is switched off
//! (`tls::AttemptState::disarm`); nothing else is left behind: no thread,
//! no timer that outlives the connection. Host names are resolved on a
//! short-lived thread waited for no longer than the timeout (it ends when
//! the resolver answers). Over a Unix-domain socket the driver uses no TLS
//! hook, so there the deadline bounds the socket connect only; the local
//! server's `authentication_timeout` bounds the rest.
//!
//! TCP keepalives are on for every connection (30 s idle, then 3 probes
//! 10 s apart, unless the `keepalives*` keys say otherwise), and
//! `tcp_user_timeout` is 60 s unless set, so that a vanished peer is
//! noticed within about a minute, whether the collector is waiting or
//! sending. A [`Tripwire`] breaks a connection at once from another thread.
//!
//! Runs on the thread that connects (the main thread, a worker).

mod dsn;
mod env;
mod pgpass;
mod service;
mod settings;
mod tls;

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use postgres::config::{SslMode as DriverSslMode, SslNegotiation};
use postgres::{CancelToken, Client, SimpleQueryMessage};

use crate::error::Error;
pub use env::Env;
use settings::{Address, Host, Settings, Target};
use tls::{AttemptState, Connector, Deadline, Plan, SslMode};

/// Deadline for establishing a connection when neither the connection
/// string nor `PGCONNECT_TIMEOUT` sets one (`connect_timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix socket directory used when neither the connection string nor
/// `PGHOST` names a host (Debian's libpq default).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Session settings applied to every connection.
///
/// `lock_timeout` is only set when the server's is 0 (no limit), so that a
/// snapshot cannot wait forever on a lock. The date, interval and float
/// formats make COPY text round-trip exactly between a remote and the
/// repository whatever their defaults are.
const SESSION_SETUP: &str = "SELECT pg_catalog.set_config('lock_timeout', '2s', false) \
     FROM pg_catalog.pg_settings WHERE name = 'lock_timeout' AND setting = '0'; \
     SET DateStyle = 'ISO'; \
     SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3";

/// SQLSTATE of "the database system is starting up": try the next host.
const CANNOT_CONNECT_NOW: &str = "57P03";
/// SQLSTATE of a failed password authentication.
const INVALID_PASSWORD: &str = "28P01";

/// How to reach one server.
#[derive(Clone)]
pub struct ConnInfo {
    /// The resolved settings, or why they cannot be used: a `powa_servers`
    /// row is always accepted, and a problem with the environment it is
    /// combined with is reported when connecting.
    settings: Result<Arc<Settings>, String>,
    summary: Summary,
}

/// What `Display` shows.
#[derive(Clone)]
struct Summary {
    hosts: String,
    ports: String,
    user: String,
    dbname: String,
}

impl ConnInfo {
    /// Parses a libpq connection string, URI or `key=value` list, with the
    /// process environment for what it leaves out.
    ///
    /// The error says what is wrong without quoting the string, which may
    /// hold a password.
    pub fn parse(dsn: &str) -> Result<ConnInfo, String> {
        ConnInfo::parse_with(dsn, &Env::from_process())
    }

    /// [`ConnInfo::parse`] with a given environment.
    pub fn parse_with(dsn: &str, env: &Env) -> Result<ConnInfo, String> {
        let options = dsn::parse(dsn)?;
        Ok(ConnInfo::from_settings(settings::resolve(options, env)?))
    }

    /// Settings for a remote server registered in `powa_servers`: the same
    /// as a connection string naming that host, port, user, password and
    /// database, so the `PG*` environment, the service file, the password
    /// file and the TLS files apply as libpq applies them.
    pub fn for_server(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        dbname: &str,
    ) -> ConnInfo {
        ConnInfo::for_server_with(host, port, user, password, dbname, &Env::from_process())
    }

    /// [`ConnInfo::for_server`] with a given environment.
    pub fn for_server_with(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        dbname: &str,
        env: &Env,
    ) -> ConnInfo {
        let mut options = dsn::Options::default();
        let port_text = port.to_string();
        let mut values = vec![
            ("host", host),
            ("port", port_text.as_str()),
            ("user", user),
            ("dbname", dbname),
        ];
        if let Some(password) = password {
            values.push(("password", password));
        }
        for (name, value) in values {
            // All five are libpq keywords.
            let _ = options.set(name, value);
        }
        match settings::resolve(options, env) {
            Ok(settings) => ConnInfo::from_settings(settings),
            Err(reason) => ConnInfo {
                settings: Err(reason),
                summary: Summary {
                    hosts: host.to_string(),
                    ports: port_text,
                    user: user.to_string(),
                    dbname: dbname.to_string(),
                },
            },
        }
    }

    fn from_settings(settings: Settings) -> ConnInfo {
        let hosts: Vec<&str> = settings.hosts.iter().map(Host::shown).collect();
        let mut ports: Vec<String> = settings.hosts.iter().map(|h| h.port.to_string()).collect();
        if ports.iter().all(|port| *port == ports[0]) {
            ports.truncate(1);
        }
        let summary = Summary {
            hosts: hosts.join(","),
            ports: ports.join(","),
            user: settings.user.clone(),
            dbname: settings.dbname.clone(),
        };
        ConnInfo {
            settings: Ok(Arc::new(settings)),
            summary,
        }
    }

    /// Opens a connection named `application_name` and applies the
    /// collector's session settings, trying the hosts, addresses and TLS
    /// modes as libpq does, each attempt within `connect_timeout`.
    pub fn connect(&self, application_name: &str) -> Result<Client, ConnectError> {
        self.connect_with_tripwire(application_name)
            .map(|(client, _)| client)
    }

    /// [`ConnInfo::connect`], with the [`Tripwire`] that can break the
    /// connection from another thread.
    pub fn connect_with_tripwire(
        &self,
        application_name: &str,
    ) -> Result<(Client, Tripwire), ConnectError> {
        let settings = self
            .settings
            .as_ref()
            .map_err(|reason| ConnectError(Kind::Refused(reason.clone())))?;
        let mut hosts: Vec<&Host> = settings.hosts.iter().collect();
        if settings.load_balance {
            fastrand::shuffle(&mut hosts);
        }
        let passes: &[Target] = match settings.target {
            Target::PreferStandby => &[Target::Standby, Target::Any],
            _ => std::slice::from_ref(&settings.target),
        };
        let mut failures = Vec::new();
        for &pass in passes {
            'host: for host in &hosts {
                let password = password_for(settings, host);
                let endpoints = match endpoints(host, settings.connect_timeout) {
                    Ok(mut endpoints) => {
                        if settings.load_balance {
                            fastrand::shuffle(&mut endpoints);
                        }
                        endpoints
                    }
                    Err(reason) => {
                        failures.push(Failure {
                            target: format!("connection to server at \"{}\"", host.shown()),
                            cause: Cause::Message(reason),
                            hint: None,
                        });
                        continue;
                    }
                };
                for endpoint in &endpoints {
                    let mut plan = match endpoint {
                        Endpoint::Unix(_) => Plan::Plain,
                        Endpoint::Tcp(_) => Plan::first(settings.tls.mode),
                    };
                    loop {
                        let attempt = Attempt {
                            settings,
                            host,
                            endpoint,
                            plan,
                            password: &password,
                            pass,
                        };
                        match attempt.run(application_name) {
                            Ok(connected) => return Ok(connected),
                            Err((failure, next)) => {
                                log::debug!("{failure}");
                                failures.push(failure);
                                match next {
                                    Next::Retry(retry) => plan = retry,
                                    Next::Address => break,
                                    Next::Host => continue 'host,
                                }
                            }
                        }
                    }
                }
            }
        }
        Err(ConnectError(Kind::Failed(failures)))
    }

    /// Sends a cancel request for the query running on `token`'s
    /// connection, with the TLS settings and the deadline of
    /// [`ConnInfo::connect`].
    pub fn cancel(&self, token: &CancelToken) -> Result<(), postgres::Error> {
        let (tls, timeout) = match &self.settings {
            Ok(settings) => (settings.tls.clone(), settings.connect_timeout),
            Err(_) => (
                Arc::new(tls::TlsSettings::disabled()),
                Some(DEFAULT_CONNECT_TIMEOUT),
            ),
        };
        let plan = Plan::first(tls.mode);
        let connector = Connector::new(
            tls,
            None,
            plan,
            timeout.map(Deadline::after),
            AttemptState::new(),
        );
        token.cancel_query(connector)
    }
}

/// Breaks a connection from another thread: its pending and later
/// operations fail at once, for a peer that stopped answering. Over a
/// Unix-domain socket (where the driver's stream is not ours) it does
/// nothing; the local server's own timeouts apply there.
#[derive(Clone, Default)]
pub struct Tripwire(Option<Arc<AttemptState>>);

impl Tripwire {
    pub fn trip(&self) {
        if let Some(state) = &self.0 {
            state.trip();
        }
    }
}

/// Where one attempt connects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Tcp(IpAddr),
    Unix(PathBuf),
}

/// The addresses of a host, as libpq's `pg_getaddrinfo_all`.
fn endpoints(host: &Host, timeout: Option<Duration>) -> Result<Vec<Endpoint>, String> {
    match &host.address {
        Address::Ip(ip) => Ok(vec![Endpoint::Tcp(*ip)]),
        Address::Unix(dir) => Ok(vec![Endpoint::Unix(dir.clone())]),
        Address::Name(name) => {
            let mut addresses = lookup(name, host.port, timeout)?;
            let mut seen = Vec::new();
            addresses.retain(|ip| {
                let new = !seen.contains(ip);
                seen.push(*ip);
                new
            });
            Ok(addresses.into_iter().map(Endpoint::Tcp).collect())
        }
    }
}

/// Resolves a host name on a helper thread, waiting at most `timeout`.
/// The thread ends by itself when the resolver answers, even after the
/// wait was given up.
fn lookup(name: &str, port: u16, timeout: Option<Duration>) -> Result<Vec<IpAddr>, String> {
    let (sender, receiver) = mpsc::channel();
    let owned = name.to_string();
    std::thread::Builder::new()
        .name("resolver".to_string())
        .spawn(move || {
            let result = (owned.as_str(), port)
                .to_socket_addrs()
                .map(|addresses| addresses.map(|a| a.ip()).collect::<Vec<_>>());
            let _ = sender.send(result);
        })
        .map_err(|e| format!("could not start a thread to resolve \"{name}\": {e}"))?;
    let answer = match timeout {
        Some(timeout) => receiver.recv_timeout(timeout).map_err(|_| {
            format!(
                "could not translate host name \"{name}\" to address: timeout expired after {} s",
                timeout.as_secs()
            )
        })?,
        None => receiver
            .recv()
            .map_err(|_| format!("could not translate host name \"{name}\" to address"))?,
    };
    match answer {
        Ok(addresses) if !addresses.is_empty() => Ok(addresses),
        Ok(_) => Err(format!(
            "could not translate host name \"{name}\" to address: no address"
        )),
        Err(e) => Err(format!(
            "could not translate host name \"{name}\" to address: {e}"
        )),
    }
}

/// The password for `host`: from the settings, else from the password file
/// (with the file's name, for the hint when the server refuses it).
fn password_for(settings: &Settings, host: &Host) -> Password {
    if let Some(password) = &settings.password {
        return Password {
            value: Some(password.clone()),
            file: None,
        };
    }
    let Some(file) = &settings.passfile else {
        return Password::default();
    };
    let key = pgpass::Key {
        host: host.password_file_host(),
        port: &host.port_text,
        dbname: &settings.dbname,
        user: &settings.user,
    };
    let value = pgpass::lookup(file, &key);
    Password {
        file: value.is_some().then(|| file.clone()),
        value,
    }
}

/// A password and the file it came from, if it did.
#[derive(Default)]
struct Password {
    value: Option<String>,
    file: Option<PathBuf>,
}

/// What to do after a failed attempt, as libpq decides.
enum Next {
    /// Again on the same address, with another TLS plan (`allow`, `prefer`).
    Retry(Plan),
    Address,
    Host,
}

/// One connection attempt: one address, one TLS plan.
struct Attempt<'a> {
    settings: &'a Settings,
    host: &'a Host,
    endpoint: &'a Endpoint,
    plan: Plan,
    password: &'a Password,
    /// The `target_session_attrs` of this pass.
    pass: Target,
}

impl Attempt<'_> {
    fn run(&self, application_name: &str) -> Result<(Client, Tripwire), (Failure, Next)> {
        let settings = self.settings;
        let deadline = settings.connect_timeout.map(Deadline::after);
        let state = AttemptState::new();
        let mut config = postgres::Config::new();
        config
            .user(&settings.user)
            .dbname(&settings.dbname)
            .application_name(application_name)
            .channel_binding(settings.channel_binding);
        if let Some(options) = &settings.options {
            config.options(options);
        }
        if let Some(password) = &self.password.value {
            config.password(password);
        }
        match self.endpoint {
            Endpoint::Tcp(ip) => {
                // The driver hands the socket to our connector only when it
                // has a host name; libpq's own `host` (possibly empty) is
                // what the connector checks certificates against.
                let name = if self.host.host.is_empty() {
                    ip.to_string()
                } else {
                    self.host.host.clone()
                };
                config
                    .host(&name)
                    .hostaddr(*ip)
                    .ssl_mode(DriverSslMode::Require)
                    .ssl_negotiation(SslNegotiation::Direct);
                match settings.keepalives {
                    Some(keepalives) => config
                        .keepalives(true)
                        .keepalives_idle(keepalives.idle)
                        .keepalives_interval(keepalives.interval)
                        .keepalives_retries(keepalives.count),
                    None => config.keepalives(false),
                };
                if let Some(timeout) = settings.tcp_user_timeout {
                    config.tcp_user_timeout(timeout);
                }
            }
            Endpoint::Unix(dir) => {
                // libpq never asks for TLS over a Unix socket.
                config.host_path(dir).ssl_mode(DriverSslMode::Disable);
            }
        }
        config.port(self.host.port);
        if let Some(deadline) = &deadline {
            config.connect_timeout(deadline.remaining().max(Duration::from_millis(1)));
        }
        let connector = Connector::new(
            settings.tls.clone(),
            Some(self.host.host.clone()),
            self.plan,
            deadline,
            state.clone(),
        );

        let mut client = config
            .connect(connector)
            .map_err(|e| self.connect_failed(e, &state))?;
        match session_mismatch(&mut client, self.pass) {
            Ok(None) => {}
            Ok(Some(mismatch)) => return Err((self.failure(Cause::Message(mismatch)), Next::Host)),
            Err(e) => return Err((self.failure(Cause::Postgres(e)), Next::Host)),
        }
        client
            .batch_execute(SESSION_SETUP)
            .map_err(|e| (self.failure(Cause::Postgres(e)), Next::Address))?;
        state.disarm();
        let tripwire = match self.endpoint {
            Endpoint::Tcp(_) => Tripwire(Some(state)),
            Endpoint::Unix(_) => Tripwire(None),
        };
        Ok((client, tripwire))
    }

    /// libpq's `connection to server ... failed` prefix.
    fn target(&self) -> String {
        match self.endpoint {
            Endpoint::Unix(dir) => format!(
                "connection to server on socket \"{}\"",
                dir.join(format!(".s.PGSQL.{}", self.host.port)).display()
            ),
            Endpoint::Tcp(ip) => {
                let shown = self.host.shown();
                let ip = ip.to_string();
                if shown == ip || matches!(self.host.address, Address::Ip(_)) {
                    format!(
                        "connection to server at \"{shown}\", port {}",
                        self.host.port
                    )
                } else {
                    format!(
                        "connection to server at \"{shown}\" ({ip}), port {}",
                        self.host.port
                    )
                }
            }
        }
    }

    fn failure(&self, cause: Cause) -> Failure {
        Failure {
            target: self.target(),
            cause,
            hint: None,
        }
    }

    /// Records a failed connect and decides what comes next, as libpq's
    /// `PQconnectPoll`.
    fn connect_failed(&self, error: postgres::Error, state: &AttemptState) -> (Failure, Next) {
        let code = error.as_db_error().map(|db| db.code().code().to_string());
        let server_refused = code.is_some();
        let hint = match (&self.password.file, code.as_deref()) {
            (Some(file), Some(INVALID_PASSWORD)) => Some(format!(
                "password retrieved from file \"{}\"",
                file.display()
            )),
            // The driver's "password missing", said the way a DBA looks for it.
            (None, None)
                if self.password.value.is_none()
                    && error.to_string().ends_with("password missing") =>
            {
                Some(match &self.settings.passfile {
                    Some(file) => format!(
                        "the server asks for a password and none was found (connection string, \
                         PGPASSWORD, password file \"{}\")",
                        file.display()
                    ),
                    None => "the server asks for a password and none was given".to_string(),
                })
            }
            _ => None,
        };
        let mode = self.settings.tls.mode;
        let next = if code.as_deref() == Some(CANNOT_CONNECT_NOW) {
            Next::Host
        } else if mode == SslMode::Allow && self.plan == Plan::Plain && server_refused {
            Next::Retry(Plan::Tls { required: false })
        } else if mode == SslMode::Prefer
            && matches!(self.plan, Plan::Tls { .. })
            && (state.tls_failed() || (state.tls_started() && server_refused))
        {
            Next::Retry(Plan::Plain)
        } else {
            Next::Address
        };
        let failure = Failure {
            target: self.target(),
            cause: Cause::Postgres(error),
            hint,
        };
        (failure, next)
    }
}

/// Whether the server is what `target_session_attrs` asks for; `Some`
/// says why not.
fn session_mismatch(
    client: &mut Client,
    target: Target,
) -> Result<Option<String>, postgres::Error> {
    let first_value = |client: &mut Client, query: &str| -> Result<String, postgres::Error> {
        let messages = client.simple_query(query)?;
        Ok(messages
            .iter()
            .find_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default())
    };
    Ok(match target {
        Target::Any | Target::PreferStandby => None,
        Target::ReadWrite | Target::ReadOnly => {
            let read_only = first_value(client, "SHOW transaction_read_only")?.starts_with("on");
            match (target, read_only) {
                (Target::ReadWrite, true) => Some("session is read-only".to_string()),
                (Target::ReadOnly, false) => Some("session is not read-only".to_string()),
                _ => None,
            }
        }
        Target::Primary | Target::Standby => {
            let standby =
                first_value(client, "SELECT pg_catalog.pg_is_in_recovery()")?.starts_with('t');
            match (target, standby) {
                (Target::Primary, true) => Some("server is in hot standby mode".to_string()),
                (Target::Standby, false) => Some("server is not in hot standby mode".to_string()),
                _ => None,
            }
        }
    })
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub struct ConnectError(Kind);

#[derive(Debug)]
enum Kind {
    /// The settings cannot be used (a value refused, a bad environment).
    Refused(String),
    /// Every attempt failed; in order.
    Failed(Vec<Failure>),
}

/// One failed attempt.
#[derive(Debug)]
struct Failure {
    /// `connection to server at "host" (address), port N`.
    target: String,
    cause: Cause,
    /// `password retrieved from file "..."`.
    hint: Option<String>,
}

#[derive(Debug)]
enum Cause {
    Postgres(postgres::Error),
    Message(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Postgres(e) => f.write_str(&crate::error::describe_postgres_error(e)),
            Cause::Message(message) => f.write_str(message),
        }
    }
}

impl Failure {
    /// `target failed (hint)`, without the cause.
    fn prefix(&self) -> String {
        match &self.hint {
            Some(hint) => format!("{} failed ({hint})", self.target),
            None => format!("{} failed", self.target),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.prefix(), self.cause)
    }
}

impl ConnectError {
    /// The collector's error, with `context` (what was being connected to)
    /// in front. A setting that cannot be used is a configuration error;
    /// otherwise the last error of the driver is kept as the source, after
    /// the attempts that came before it.
    pub fn into_error(self, context: impl Into<String>) -> Error {
        let context = context.into();
        match self.0 {
            Kind::Refused(reason) => Error::Config(format!("{context}: {reason}")),
            Kind::Failed(mut failures) => {
                let last_driver_error = failures
                    .iter()
                    .rposition(|failure| matches!(failure.cause, Cause::Postgres(_)));
                let Some(index) = last_driver_error else {
                    return Error::Connect(format!("{context}: {}", join(&failures)));
                };
                let failure = failures.remove(index);
                let mut text = context;
                text.push_str(": ");
                if !failures.is_empty() {
                    text.push_str(&join(&failures));
                    text.push_str("; ");
                }
                text.push_str(&failure.prefix());
                match failure.cause {
                    Cause::Postgres(source) => Error::postgres(text, source),
                    Cause::Message(_) => unreachable!("a driver error was found"),
                }
            }
        }
    }
}

fn join(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return "no host to connect to".to_string();
    }
    failures
        .iter()
        .map(Failure::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Refused(reason) => f.write_str(reason),
            Kind::Failed(failures) => f.write_str(&join(failures)),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            Kind::Failed(failures) => failures.iter().rev().find_map(|f| match &f.cause {
                Cause::Postgres(e) => Some(e as &(dyn std::error::Error + 'static)),
                Cause::Message(_) => None,
            }),
            Kind::Refused(_) => None,
        }
    }
}

impl fmt::Display for ConnInfo {
    /// `host=... port=... user=... dbname=...`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Summary {
            hosts,
            ports,
            user,
            dbname,
        } = &self.summary;
        write!(
            f,
            "host={} port={} user={} dbname={}",
            conninfo_value(hosts),
            conninfo_value(ports),
            conninfo_value(user),
            conninfo_value(dbname)
        )
    }
}

/// A value as a libpq `key=value` string writes it: quoted, with `'` and
/// `\` escaped, when it is empty or holds a space, a quote or a backslash,
/// so that what is shown reads back as what is used.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn shown_values_read_back_as_themselves() {
        assert_eq!(conninfo_value("powa"), "powa");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(
            conninfo_value("postgres dbname=template1"),
            "'postgres dbname=template1'"
        );
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
    }
    use std::net::TcpListener;
    use std::time::Instant;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_pairs(vars.iter().copied(), Some("/nonexistent/home"), Some("me"))
    }

    fn connect_error(info: &ConnInfo) -> ConnectError {
        match info.connect("test") {
            Ok(_) => panic!("{info} connected"),
            Err(error) => error,
        }
    }

    #[test]
    fn both_forms_parse() {
        let e = env(&[]);
        let uri =
            ConnInfo::parse_with("postgresql://powa:s3cret@db.example:5433/powa", &e).unwrap();
        assert_eq!(
            uri.to_string(),
            "host=db.example port=5433 user=powa dbname=powa"
        );
        let kv = ConnInfo::parse_with(
            "host=db.example port=5433 user=powa password=s3cret dbname=powa",
            &e,
        )
        .unwrap();
        assert_eq!(kv.to_string(), uri.to_string());
        let defaults = ConnInfo::parse_with("", &e).unwrap();
        assert_eq!(
            defaults.to_string(),
            "host=/var/run/postgresql port=5432 user=me dbname=me"
        );
        let several = ConnInfo::parse_with("host=a,b port=1,2 user=u", &e).unwrap();
        assert_eq!(several.to_string(), "host=a,b port=1,2 user=u dbname=u");
    }

    #[test]
    fn servers_take_the_environment() {
        let e = env(&[("PGSSLMODE", "verify-full"), ("PGCONNECT_TIMEOUT", "3")]);
        let info = ConnInfo::for_server_with("db", 5433, "powa", None, "powa", &e);
        let settings = info.settings.as_ref().unwrap();
        assert_eq!(settings.tls.mode, SslMode::VerifyFull);
        assert_eq!(settings.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(settings.password, None);
        assert_eq!(info.to_string(), "host=db port=5433 user=powa dbname=powa");
        // A bad environment is reported when connecting, by name.
        let bad = ConnInfo::for_server_with(
            "db",
            5433,
            "powa",
            None,
            "powa",
            &env(&[("PGSSLMODE", "bogus")]),
        );
        assert_eq!(bad.to_string(), "host=db port=5433 user=powa dbname=powa");
        let error = connect_error(&bad);
        assert!(
            error.to_string().contains("invalid sslmode value"),
            "{error}"
        );
        let error = error.into_error("cannot connect");
        assert!(matches!(error, Error::Config(_)), "{error}");
    }

    #[test]
    fn password_never_shown() {
        let e = env(&[("PGPASSWORD", "envs3cret")]);
        let infos = [
            ConnInfo::parse_with("postgresql://powa:s3cret@db/powa", &e).unwrap(),
            ConnInfo::parse_with("postgresql://powa@db/powa?password=s3cret", &e).unwrap(),
            ConnInfo::parse_with("host=db password=s3cret sslpassword=s3cret", &e).unwrap(),
            ConnInfo::parse_with("host=db", &e).unwrap(),
            ConnInfo::for_server_with("db", 5432, "powa", Some("s3cret"), "powa", &e),
        ];
        for info in infos {
            for shown in [
                info.to_string(),
                format!("{info:?}"),
                format!("{:?}", info.settings),
            ] {
                assert!(!shown.contains("s3cret"), "{shown}");
            }
        }
        let error = ConnInfo::parse_with("host=db password=s3cret port=x", &e).unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("port"), "{error}");
    }

    #[test]
    fn a_deadline_is_always_set() {
        let e = env(&[]);
        let timeout = |dsn: &str| {
            ConnInfo::parse_with(dsn, &e)
                .unwrap()
                .settings
                .unwrap()
                .connect_timeout
        };
        assert_eq!(timeout("host=db"), Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(
            timeout("host=db connect_timeout=3"),
            Some(Duration::from_secs(3))
        );
    }

    /// A listener that accepts connections and never says a word.
    fn silent_listener() -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Hold the connection until the client gives up.
            let mut buf = [0; 64];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
        (port, handle)
    }

    #[test]
    fn a_silent_server_times_out() {
        for sslmode in ["disable", "prefer", "require"] {
            let (port, listener) = silent_listener();
            let info = ConnInfo::parse_with(
                &format!(
                    "host=127.0.0.1 port={port} user=u password=s3cret connect_timeout=2 sslmode={sslmode}"
                ),
                &env(&[]),
            )
            .unwrap();
            let started = Instant::now();
            let error = connect_error(&info);
            let elapsed = started.elapsed();
            assert!(
                elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(3),
                "{sslmode}: {elapsed:?}"
            );
            let message = error.into_error("cannot connect").to_string();
            assert!(message.contains("timeout expired"), "{message}");
            assert!(
                message.contains(&format!(
                    "connection to server at \"127.0.0.1\", port {port} failed"
                )),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
            listener.join().unwrap();
        }
    }

    #[test]
    fn a_server_without_tls_is_refused_or_used_as_sslmode_says() {
        // Answers 'N' to the SSLRequest, then an error to the startup.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut startups = 0;
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0; 8];
                stream.read_exact(&mut request).unwrap();
                if request == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    stream.write_all(b"N").unwrap();
                    let mut length = [0; 4];
                    if stream.read_exact(&mut length).is_err() {
                        continue;
                    }
                }
                startups += 1;
                let fields = b"SFATAL\0C28000\0Mno entry for you\0\0";
                let mut message = vec![b'E'];
                message.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
                message.extend_from_slice(fields);
                let _ = stream.write_all(&message);
            }
            startups
        });
        let connect = |sslmode: &str| {
            connect_error(
                &ConnInfo::parse_with(
                    &format!("host=127.0.0.1 port={port} user=u sslmode={sslmode}"),
                    &env(&[]),
                )
                .unwrap(),
            )
            .to_string()
        };
        let required = connect("require");
        assert!(
            required.contains("server does not support SSL, but SSL was required"),
            "{required}"
        );
        let preferred = connect("prefer");
        assert!(preferred.contains("no entry for you"), "{preferred}");
        assert_eq!(server.join().unwrap(), 1);
    }

    #[test]
    fn unresolvable_hosts_are_reported() {
        let info =
            ConnInfo::parse_with("host=nonexistent.invalid connect_timeout=5", &env(&[])).unwrap();
        let error = connect_error(&info).into_error("cannot connect");
        let message = error.to_string();
        assert!(
            message.contains("could not translate host name \"nonexistent.invalid\""),
            "{message}"
        );
    }
}
