//! TLS with libpq's meaning, and the deadline of a connection attempt.
//!
//! [`TlsSettings`] holds the `ssl*` keywords once resolved (default files
//! under `~/.postgresql/`). [`Connector`] is what the driver is given for
//! one attempt: tokio-postgres calls it on the freshly connected socket, and
//! it does what libpq does there: nothing (`disable`, and the first try of
//! `allow`), or the `SSLRequest` exchange and the handshake (`prefer`,
//! `require`, `verify-ca`, `verify-full`; `sslnegotiation=direct` skips the
//! request and uses ALPN). Certificates are checked as libpq checks them:
//! against `sslrootcert` only (or the system's roots with
//! `sslrootcert=system`), with the CRLs of `sslcrl` / `sslcrldir`, and with
//! libpq's own host name rules for `verify-full` (subject alternative names,
//! then the common name; one leading `*.` wildcard label). `require` with a
//! root certificate file present verifies the chain like `verify-ca`.
//!
//! The OpenSSL stack is OpenSSL itself, through `postgres-openssl` (the
//! `postgres` crate's own TLS adapter, kept in the same repository), so that
//! certificates, keys and CRLs that work with `psql` (libpq is built on
//! OpenSSL) work here too.
//!
//! The driver is always told to use "direct" TLS on TCP connections, which
//! makes it hand the raw socket to [`Connector`] before sending anything;
//! the SSL negotiation is then ours, and the stream we return to it,
//! [`Stream`], carries the attempt's deadline: until the attempt ends, a
//! read or a write still pending at the deadline fails with "timeout
//! expired". That is how `connect_timeout` bounds the TLS handshake and the
//! authentication exchange, which the driver's own `connect_timeout` does
//! not. See the module documentation of [`super`] for the whole picture.
//!
//! Runs on the thread that connects, inside the driver's current-thread
//! runtime.

use std::fs;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{ConnectConfiguration, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509VerifyResult};
use postgres::Socket;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::dsn::Options;

/// Errors handed back to the driver, which wraps them.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// At least `require`: a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// Where the trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A file (given, or the default `~/.postgresql/root.crt`); used when it
    /// exists.
    File(PathBuf),
    /// `sslrootcert=system`: OpenSSL's default locations.
    System,
    /// No file was given and there is no home directory.
    Unknown,
}

/// The resolved `ssl*` settings of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslnegotiation=direct`: TLS from the first byte, with ALPN.
    pub direct: bool,
    pub root_cert: RootCert,
    /// `sslcrl`, or the default `~/.postgresql/root.crl` when neither it nor
    /// `sslcrldir` is given.
    pub crl: Option<PathBuf>,
    pub crl_dir: Option<PathBuf>,
    /// The client certificate (given or `~/.postgresql/postgresql.crt`),
    /// used when it exists; `None` with `sslcertmode=disable`.
    pub cert: Option<PathBuf>,
    /// Its private key (given or `~/.postgresql/postgresql.key`).
    pub key: Option<PathBuf>,
    /// `sslpassword`, to decrypt the key.
    pub key_password: Option<String>,
    /// Send the host name (SNI), `sslsni=1`.
    pub sni: bool,
    pub min_version: Option<SslVersion>,
    pub max_version: Option<SslVersion>,
}

/// The default directory of the client's certificate files, under the home
/// directory.
const CERT_DIR: &str = ".postgresql";

impl TlsSettings {
    /// No TLS at all (`sslmode=disable`).
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            direct: false,
            root_cert: RootCert::Unknown,
            crl: None,
            crl_dir: None,
            cert: None,
            key: None,
            key_password: None,
            sni: false,
            min_version: None,
            max_version: None,
        }
    }

    /// Reads and checks the `ssl*` keywords (defaults already applied).
    pub fn from_options(options: &Options, home: Option<&Path>) -> Result<TlsSettings, String> {
        let sslmode = options.get("sslmode").unwrap_or("prefer");
        let mode = SslMode::parse(sslmode)
            .ok_or_else(|| format!("invalid sslmode value: \"{sslmode}\""))?;
        let default_file = |name: &str| home.map(|home| home.join(CERT_DIR).join(name));

        let root_cert = match options.non_empty("sslrootcert") {
            Some("system") => {
                if mode != SslMode::VerifyFull {
                    return Err(format!(
                        "weak sslmode \"{sslmode}\" may not be used with sslrootcert=system (use \"verify-full\")"
                    ));
                }
                RootCert::System
            }
            Some(file) => RootCert::File(PathBuf::from(file)),
            None => default_file("root.crt").map_or(RootCert::Unknown, RootCert::File),
        };

        let crl = options.non_empty("sslcrl").map(PathBuf::from);
        let crl_dir = options.non_empty("sslcrldir").map(PathBuf::from);
        let crl = match (&crl, &crl_dir) {
            (None, None) => default_file("root.crl"),
            _ => crl,
        };

        let direct = match options.get("sslnegotiation").unwrap_or("postgres") {
            "postgres" => false,
            "direct" => {
                if !mode.requires_tls() {
                    return Err(format!(
                        "weak sslmode \"{sslmode}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", or \"verify-full\")"
                    ));
                }
                true
            }
            other => return Err(format!("invalid sslnegotiation value: \"{other}\"")),
        };

        let cert = match options.get("sslcertmode").unwrap_or("allow") {
            "disable" => None,
            "allow" => options
                .non_empty("sslcert")
                .map(PathBuf::from)
                .or_else(|| default_file("postgresql.crt")),
            "require" => {
                return Err(
                    "sslcertmode value \"require\" is not supported: the TLS stack \
                            cannot tell whether the server asked for a certificate"
                        .to_string(),
                );
            }
            other => return Err(format!("invalid sslcertmode value: \"{other}\"")),
        };
        let key = match options.non_empty("sslkey") {
            Some(key) if key.contains(':') => {
                return Err("OpenSSL engine keys (sslkey=engine:key) are not supported".to_string());
            }
            Some(key) => Some(PathBuf::from(key)),
            None => default_file("postgresql.key"),
        };

        let min_version = protocol_version(options, "ssl_min_protocol_version")?;
        let max_version = protocol_version(options, "ssl_max_protocol_version")?;
        if let (Some((min_name, min)), Some((max_name, max))) = (&min_version, &max_version)
            && !min_name.eq_ignore_ascii_case("TLSv1")
            && (max_name.eq_ignore_ascii_case("TLSv1") || protocol_rank(*min) > protocol_rank(*max))
        {
            return Err("invalid SSL protocol version range".to_string());
        }

        Ok(TlsSettings {
            mode,
            direct,
            root_cert,
            crl,
            crl_dir,
            cert,
            key,
            key_password: options.non_empty("sslpassword").map(str::to_string),
            sni: options.get("sslsni").unwrap_or("1").starts_with('1'),
            min_version: min_version.map(|(_, version)| version),
            max_version: max_version.map(|(_, version)| version),
        })
    }
}

fn protocol_version(options: &Options, key: &str) -> Result<Option<(String, SslVersion)>, String> {
    let Some(value) = options.non_empty(key) else {
        return Ok(None);
    };
    let version = match value.to_ascii_lowercase().as_str() {
        "tlsv1" => SslVersion::TLS1,
        "tlsv1.1" => SslVersion::TLS1_1,
        "tlsv1.2" => SslVersion::TLS1_2,
        "tlsv1.3" => SslVersion::TLS1_3,
        _ => return Err(format!("invalid {key} value: \"{value}\"")),
    };
    Ok(Some((value.to_string(), version)))
}

fn protocol_rank(version: SslVersion) -> u8 {
    match version {
        v if v == SslVersion::TLS1 => 0,
        v if v == SslVersion::TLS1_1 => 1,
        v if v == SslVersion::TLS1_2 => 2,
        _ => 3,
    }
}

/// What one attempt does about TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No TLS (`disable`, the first try of `allow`, the retry of `prefer`,
    /// and every Unix-socket connection).
    Plain,
    /// Ask for TLS; without `required`, a server that says no gets a plain
    /// connection (`prefer`).
    Tls { required: bool },
}

impl Plan {
    /// The first plan libpq tries for a TCP connection in `mode`.
    pub fn first(mode: SslMode) -> Plan {
        match mode {
            SslMode::Disable | SslMode::Allow => Plan::Plain,
            SslMode::Prefer => Plan::Tls { required: false },
            _ => Plan::Tls { required: true },
        }
    }
}

/// What the driver's calls into [`Connector`] tell the connection loop, the
/// switch that ends the deadline once the connection is set up, and the
/// tripwire that can break the connection later from another thread.
#[derive(Default)]
pub struct AttemptState {
    /// The deadline still applies to the stream.
    armed: AtomicBool,
    /// The server accepted TLS (or direct TLS was started).
    tls_started: AtomicBool,
    /// Setting up TLS or the handshake failed.
    tls_failed: AtomicBool,
    /// Why the server certificate was refused, when we refused it.
    refusal: Mutex<Option<String>>,
    /// Set by [`AttemptState::trip`]: every operation on the stream fails.
    tripped: AtomicBool,
    /// The task waiting on the stream, woken by a trip.
    waiting: Mutex<Option<Waker>>,
}

impl AttemptState {
    pub fn new() -> Arc<AttemptState> {
        Arc::new(AttemptState {
            armed: AtomicBool::new(true),
            ..AttemptState::default()
        })
    }

    /// Ends the deadline: the connection is set up and lives on.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }

    /// Breaks the connection: the operation pending on its stream, if any,
    /// and every later one fail at once, whatever the peer does. For a peer
    /// that no longer answers, where a cancel request cannot help.
    pub fn trip(&self) {
        self.tripped.store(true, Ordering::Release);
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    pub fn tls_started(&self) -> bool {
        self.tls_started.load(Ordering::Acquire)
    }

    pub fn tls_failed(&self) -> bool {
        self.tls_failed.load(Ordering::Acquire)
    }
}

/// A deadline and the limit it comes from (for the message).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: Instant,
    pub limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "timeout expired: no complete answer from the server within connect_timeout ({} s)",
                self.limit.as_secs()
            ),
        )
    }
}

/// The TLS side of one connection attempt (or of one cancel request).
pub struct Connector {
    settings: Arc<TlsSettings>,
    /// libpq's `host` for this attempt (for `verify-full` and SNI); `None`
    /// means "the name the driver passes" (cancel requests).
    host: Option<String>,
    plan: Plan,
    deadline: Option<Deadline>,
    state: Arc<AttemptState>,
}

impl Connector {
    pub fn new(
        settings: Arc<TlsSettings>,
        host: Option<String>,
        plan: Plan,
        deadline: Option<Deadline>,
        state: Arc<AttemptState>,
    ) -> Connector {
        Connector {
            settings,
            host,
            plan,
            deadline,
            state,
        }
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = BoxError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, BoxError> {
        let host = self.host.clone().unwrap_or_else(|| domain.to_string());
        Ok(Handshake {
            settings: self.settings.clone(),
            host,
            plan: self.plan,
            deadline: self.deadline,
            state: self.state.clone(),
        })
    }
}

/// The negotiation on one socket.
pub struct Handshake {
    settings: Arc<TlsSettings>,
    host: String,
    plan: Plan,
    deadline: Option<Deadline>,
    state: Arc<AttemptState>,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let negotiation = self.negotiate(socket);
            let inner = match self.deadline {
                Some(deadline) => {
                    let at = tokio::time::Instant::from_std(deadline.at);
                    match tokio::time::timeout_at(at, negotiation).await {
                        Ok(inner) => inner?,
                        // A timeout moves on to the next address, without
                        // the plain-text retry of `prefer` (libpq's rule).
                        Err(_) => return Err(deadline.error().into()),
                    }
                }
                None => negotiation.await?,
            };
            Ok(Stream {
                inner,
                deadline: self
                    .deadline
                    .map(|d| (Box::pin(tokio::time::sleep_until(d.at.into())), d)),
                state: self.state,
            })
        })
    }
}

/// `SSLRequest`: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl Handshake {
    async fn negotiate(&self, mut socket: Socket) -> Result<Inner, BoxError> {
        let Plan::Tls { required } = self.plan else {
            return Ok(Inner::Plain(socket));
        };
        if !self.settings.direct {
            socket.write_all(&SSL_REQUEST).await?;
            socket.flush().await?;
            match socket.read_u8().await? {
                b'S' => {}
                b'N' if required => {
                    return Err("server does not support SSL, but SSL was required".into());
                }
                b'N' => return Ok(Inner::Plain(socket)),
                b'E' => return Err(read_error_response(&mut socket).await.into()),
                other => {
                    return Err(format!(
                        "received invalid response to SSL negotiation: {}",
                        char::from(other).escape_default()
                    )
                    .into());
                }
            }
        }
        self.state.tls_started.store(true, Ordering::Release);
        match self.handshake(socket).await {
            Ok(stream) => Ok(Inner::Tls(Box::new(stream))),
            Err(error) => {
                self.state.tls_failed.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    async fn handshake(
        &self,
        socket: Socket,
    ) -> Result<postgres_openssl::TlsStream<Socket>, BoxError> {
        let config = ssl_configuration(&self.settings, &self.host, &self.state)?;
        let connector = postgres_openssl::TlsConnector::new(config, &self.host);
        match connector.connect(socket).await {
            Ok(stream) => Ok(stream),
            Err(error) => {
                let refusal = self
                    .state
                    .refusal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(match refusal {
                    Some(refusal) => refusal.into(),
                    None => format!("SSL error: {error}").into(),
                })
            }
        }
    }
}

/// The server's error message sent instead of an answer to `SSLRequest`
/// (it could not start a session, for instance).
async fn read_error_response(socket: &mut Socket) -> String {
    let read = async {
        let length = socket.read_i32().await?;
        if !(4..=30_000).contains(&length) {
            return Ok::<_, io::Error>(None);
        }
        let mut body = vec![0; length as usize - 4];
        socket.read_exact(&mut body).await?;
        Ok(Some(body))
    };
    let Ok(Some(body)) = read.await else {
        return "received invalid error message in answer to the SSL request".to_string();
    };
    let mut severity = "ERROR".to_string();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'S', text)) => severity = String::from_utf8_lossy(text).into_owned(),
            Some((b'M', text)) => message = String::from_utf8_lossy(text).into_owned(),
            _ => {}
        }
    }
    format!("{severity}: {message}")
}

/// The OpenSSL session for one handshake, set up as libpq's
/// `initialize_SSL` does.
fn ssl_configuration(
    settings: &TlsSettings,
    host: &str,
    state: &Arc<AttemptState>,
) -> Result<ConnectConfiguration, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(ssl_error("could not create SSL context"))?;
    // Only sslrootcert is trusted, not the system's roots the connector
    // starts with.
    let empty = X509StoreBuilder::new().map_err(ssl_error("could not create SSL context"))?;
    builder.set_cert_store(empty.build());
    builder
        .set_min_proto_version(settings.min_version.or(Some(SslVersion::TLS1_2)))
        .map_err(ssl_error("could not set minimum SSL protocol version"))?;
    builder
        .set_max_proto_version(settings.max_version)
        .map_err(ssl_error("could not set maximum SSL protocol version"))?;

    let have_root = match &settings.root_cert {
        RootCert::System => {
            builder
                .set_default_verify_paths()
                .map_err(ssl_error("could not load system root certificate paths"))?;
            true
        }
        RootCert::File(file) if fs::metadata(file).is_ok() => {
            builder.set_ca_file(file).map_err(|e| {
                format!(
                    "could not read root certificate file \"{}\": {e}",
                    file.display()
                )
            })?;
            load_crls(&mut builder, settings);
            true
        }
        missing => {
            if settings.mode.verifies() {
                let advice = "Either provide the file, use the system's trusted roots with \
                              sslrootcert=system, or change sslmode to disable server certificate \
                              verification.";
                return Err(match missing {
                    RootCert::File(file) => format!(
                        "root certificate file \"{}\" does not exist. {advice}",
                        file.display()
                    ),
                    _ => format!(
                        "could not get home directory to locate root certificate file. {advice}"
                    ),
                });
            }
            false
        }
    };
    builder.set_verify(if have_root {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });

    if let Some(cert) = &settings.cert {
        let have_cert = match fs::metadata(cert) {
            Ok(_) => true,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                false
            }
            Err(e) => {
                return Err(format!(
                    "could not open certificate file \"{}\": {e}",
                    cert.display()
                ));
            }
        };
        if have_cert {
            builder.set_certificate_chain_file(cert).map_err(|e| {
                format!(
                    "could not read certificate file \"{}\": {e}",
                    cert.display()
                )
            })?;
            let Some(key_file) = &settings.key else {
                return Err("certificate present, but no private key file".to_string());
            };
            let key = load_private_key(key_file, settings.key_password.as_deref())?;
            builder.set_private_key(&key).map_err(|e| {
                format!(
                    "could not load private key file \"{}\": {e}",
                    key_file.display()
                )
            })?;
            builder.check_private_key().map_err(|e| {
                format!(
                    "certificate does not match private key file \"{}\": {e}",
                    key_file.display()
                )
            })?;
        }
    }
    if settings.direct {
        builder
            .set_alpn_protos(b"\x0apostgresql")
            .map_err(ssl_error("could not set ALPN"))?;
    }

    let mut config = builder
        .build()
        .configure()
        .map_err(ssl_error("could not establish SSL connection"))?;
    config.set_verify_hostname(false);
    // libpq sends SNI unless the host is a literal IP address.
    let literal_ip = host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || host.contains(':');
    config.set_use_server_name_indication(settings.sni && !host.is_empty() && !literal_ip);
    if settings.mode == SslMode::VerifyFull {
        if host.is_empty() {
            return Err("host name must be specified for a verified SSL connection".to_string());
        }
        let host = host.to_string();
        let state = state.clone();
        config.set_verify_callback(SslVerifyMode::PEER, move |chain_ok, context| {
            if !chain_ok || context.error_depth() != 0 {
                return chain_ok;
            }
            let Some(cert) = context.current_cert() else {
                return false;
            };
            match check_host_name(cert, &host) {
                Ok(()) => true,
                Err(refusal) => {
                    *state.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
                    context.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                    false
                }
            }
        });
    }
    Ok(config)
}

/// Describes an OpenSSL failure while setting up the session.
fn ssl_error(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> String {
    move |e| format!("{what}: {e}")
}

/// Loads `sslcrl` / `sslcrldir` like libpq's `X509_STORE_load_locations`:
/// a file or directory that cannot be read is silently skipped (a CRL is
/// not required), and CRL checks are on when one was loaded.
fn load_crls(builder: &mut openssl::ssl::SslConnectorBuilder, settings: &TlsSettings) {
    if settings.crl.is_none() && settings.crl_dir.is_none() {
        return;
    }
    let store = builder.cert_store_mut();
    let mut loaded = true;
    if let Some(file) = &settings.crl {
        loaded = store
            .add_lookup(X509Lookup::file())
            .and_then(|lookup| lookup.load_crl_file(file, openssl::ssl::SslFiletype::PEM))
            .is_ok();
    }
    if loaded && let Some(dir) = &settings.crl_dir {
        loaded = match (store.add_lookup(X509Lookup::hash_dir()), dir.to_str()) {
            (Ok(lookup), Some(dir)) => lookup.add_dir(dir, openssl::ssl::SslFiletype::PEM).is_ok(),
            _ => false,
        };
    }
    if loaded {
        let _ = store.set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL);
    }
    // Failures above leave errors on OpenSSL's queue; libpq clears them.
    let _ = openssl::error::ErrorStack::get();
}

/// The client's private key, refused when others may read it, as libpq:
/// 0600 or less, or 0640 or less when owned by root.
fn load_private_key(
    file: &Path,
    password: Option<&str>,
) -> Result<PKey<openssl::pkey::Private>, String> {
    let metadata = fs::metadata(file).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "certificate present, but not private key file \"{}\"",
                file.display()
            )
        } else {
            format!(
                "could not stat private key file \"{}\": {e}",
                file.display()
            )
        }
    })?;
    if !metadata.is_file() {
        return Err(format!(
            "private key file \"{}\" is not a regular file",
            file.display()
        ));
    }
    let forbidden = if metadata.uid() == 0 { 0o037 } else { 0o077 };
    if metadata.mode() & forbidden != 0 {
        return Err(format!(
            "private key file \"{}\" has group or world access; file must have permissions \
             u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
             or less if owned by root",
            file.display()
        ));
    }
    let bytes = fs::read(file).map_err(|e| {
        format!(
            "could not read private key file \"{}\": {e}",
            file.display()
        )
    })?;
    // An empty passphrase, never OpenSSL's prompt on the terminal.
    let passphrase = password.unwrap_or("").as_bytes();
    PKey::private_key_from_pem_passphrase(&bytes, passphrase)
        .or_else(|pem_error| PKey::private_key_from_der(&bytes).map_err(|_| pem_error))
        .map_err(|e| {
            format!(
                "could not load private key file \"{}\": {e}",
                file.display()
            )
        })
}

/// libpq's host name check for `verify-full`: the subject alternative
/// names of the host's type (DNS name or IP address) when there are some,
/// else the common name.
pub fn check_host_name(cert: &X509Ref, host: &str) -> Result<(), String> {
    let host_is_ip = host.parse::<Ipv4Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok();
    let mut check_cn = true;
    let mut names = Vec::new();
    if let Some(alt_names) = cert.subject_alt_names() {
        for name in &alt_names {
            let result = if let Some(dns) = name.dnsname() {
                if !host_is_ip {
                    check_cn = false;
                }
                names.push(dns.to_string());
                name_matches(dns.as_bytes(), host)
            } else if let Some(ip) = name.ipaddress() {
                if host_is_ip {
                    check_cn = false;
                }
                let shown = match ip.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(ip).unwrap_or_default()).to_string(),
                    16 => IpAddr::from(<[u8; 16]>::try_from(ip).unwrap_or_default()).to_string(),
                    len => {
                        return Err(format!(
                            "certificate contains IP address with invalid length {len}"
                        ));
                    }
                };
                names.push(shown);
                Ok(ip_matches(ip, host))
            } else {
                continue;
            };
            if result? {
                return Ok(());
            }
        }
    }
    if check_cn && let Some(cn) = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next() {
        let cn = cn.data().as_slice();
        names.push(String::from_utf8_lossy(cn).into_owned());
        if name_matches(cn, host)? {
            return Ok(());
        }
    }
    Err(match names.as_slice() {
        [] => "could not get server's host name from server certificate".to_string(),
        [only] => format!("server certificate for \"{only}\" does not match host name \"{host}\""),
        [first, others @ ..] => format!(
            "server certificate for \"{first}\" (and {} other name{}) does not match host name \"{host}\"",
            others.len(),
            if others.len() == 1 { "" } else { "s" }
        ),
    })
}

fn name_matches(name: &[u8], host: &str) -> Result<bool, String> {
    if name.contains(&0) {
        return Err("SSL certificate's name contains embedded null".to_string());
    }
    let host = host.as_bytes();
    Ok(name.eq_ignore_ascii_case(host) || wildcard_matches(name, host))
}

/// `*.example.com` matches one leading label: `db.example.com`, not
/// `a.db.example.com` nor `example.com`.
fn wildcard_matches(pattern: &[u8], host: &[u8]) -> bool {
    let Some(suffix) = pattern.strip_prefix(b"*") else {
        return false;
    };
    if pattern.len() < 3 || !suffix.starts_with(b".") || pattern.len() > host.len() {
        return false;
    }
    let start = host.len() - suffix.len();
    host[start..].eq_ignore_ascii_case(suffix) && !host[..start].contains(&b'.')
}

fn ip_matches(ip: &[u8], host: &str) -> bool {
    match ip.len() {
        4 => host
            .parse::<Ipv4Addr>()
            .is_ok_and(|addr| addr.octets() == ip),
        16 => host
            .parse::<Ipv6Addr>()
            .is_ok_and(|addr| addr.octets() == ip),
        _ => false,
    }
}

/// The connection's byte stream: the socket, or TLS over it.
enum Inner {
    Plain(Socket),
    Tls(Box<postgres_openssl::TlsStream<Socket>>),
}

/// What the driver reads and writes; until the attempt is over
/// ([`AttemptState::disarm`]), an operation still pending at the deadline
/// fails instead of waiting forever.
pub struct Stream {
    inner: Inner,
    deadline: Option<(Pin<Box<Sleep>>, Deadline)>,
    state: Arc<AttemptState>,
}

impl Stream {
    /// Turns a pending operation into an error once the deadline passed or
    /// the connection was tripped.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.state.tripped.load(Ordering::Acquire) {
            return Poll::Ready(Err(tripped()));
        }
        if poll.is_ready() {
            return poll;
        }
        *self
            .state
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // A trip between the first look and the waker's registration.
        if self.state.tripped.load(Ordering::Acquire) {
            return Poll::Ready(Err(tripped()));
        }
        if self.deadline.is_none() {
            return poll;
        }
        if !self.state.armed.load(Ordering::Acquire) {
            // The attempt is over: the deadline no longer applies.
            self.deadline = None;
            return poll;
        }
        if let Some((sleep, deadline)) = &mut self.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(deadline.error()));
        }
        poll
    }
}

/// The error of an operation on a tripped connection.
fn tripped() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection dropped by the collector: the server did not answer in time",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = match &mut self.inner {
            Inner::Plain(socket) => Pin::new(socket).poll_read(cx, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        self.check(cx, poll)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = match &mut self.inner {
            Inner::Plain(socket) => Pin::new(socket).poll_write(cx, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        };
        self.check(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = match &mut self.inner {
            Inner::Plain(socket) => Pin::new(socket).poll_flush(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        };
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = match &mut self.inner {
            Inner::Plain(socket) => Pin::new(socket).poll_shutdown(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        };
        self.check(cx, poll)
    }
}

impl TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.inner {
            Inner::Plain(_) => ChannelBinding::none(),
            Inner::Tls(tls) => tls.channel_binding(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::dsn::parse;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    fn settings(dsn: &str) -> Result<TlsSettings, String> {
        TlsSettings::from_options(&parse(dsn).unwrap(), Some(Path::new("/home/u")))
    }

    #[test]
    fn defaults_are_libpq_files() {
        let s = settings("").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(
            s.root_cert,
            RootCert::File("/home/u/.postgresql/root.crt".into())
        );
        assert_eq!(s.crl, Some("/home/u/.postgresql/root.crl".into()));
        assert_eq!(s.cert, Some("/home/u/.postgresql/postgresql.crt".into()));
        assert_eq!(s.key, Some("/home/u/.postgresql/postgresql.key".into()));
        assert!(s.sni && !s.direct);
        let s = settings("sslmode=verify-full sslrootcert=/ca.pem sslcert=/c sslkey=/k sslcrldir=/d sslsni=0 sslcertmode=allow").unwrap();
        assert_eq!(s.root_cert, RootCert::File("/ca.pem".into()));
        assert_eq!((s.crl, s.crl_dir), (None, Some("/d".into())));
        assert_eq!((s.cert, s.key), (Some("/c".into()), Some("/k".into())));
        assert!(!s.sni);
        assert_eq!(settings("sslcertmode=disable").unwrap().cert, None);
        let no_home = TlsSettings::from_options(&parse("").unwrap(), None).unwrap();
        assert_eq!(no_home.root_cert, RootCert::Unknown);
        assert_eq!(no_home.cert, None);
    }

    #[test]
    fn refusals_and_errors() {
        for (dsn, expected) in [
            ("sslmode=verify", "invalid sslmode value: \"verify\""),
            (
                "sslrootcert=system sslmode=require",
                "weak sslmode \"require\"",
            ),
            ("sslnegotiation=direct", "weak sslmode \"prefer\""),
            (
                "sslnegotiation=fast sslmode=require",
                "invalid sslnegotiation",
            ),
            ("sslcertmode=require", "not supported"),
            ("sslcertmode=maybe", "invalid sslcertmode"),
            ("sslkey=pkcs11:token", "engine"),
            (
                "ssl_min_protocol_version=SSLv3",
                "invalid ssl_min_protocol_version",
            ),
            (
                "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
                "invalid SSL protocol version range",
            ),
        ] {
            let error = settings(dsn).unwrap_err();
            assert!(error.contains(expected), "{dsn}: {error}");
        }
        assert!(settings("sslrootcert=system sslmode=verify-full").is_ok());
        assert!(settings("sslnegotiation=direct sslmode=require").is_ok());
        assert!(settings("ssl_min_protocol_version=tlsv1 ssl_max_protocol_version=TLSv1").is_ok());
    }

    fn certificate(cn: Option<&str>, dns: &[&str], ips: &[&str]) -> X509 {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "test")
            .unwrap();
        if let Some(cn) = cn {
            name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        }
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        if !dns.is_empty() || !ips.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for name in dns {
                san.dns(name);
            }
            for ip in ips {
                san.ip(ip);
            }
            let san = san.build(&builder.x509v3_context(None, None)).unwrap();
            builder.append_extension(san).unwrap();
        }
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        builder.build()
    }

    #[test]
    fn host_names_follow_libpq() {
        let cn_only = certificate(Some("db.example.com"), &[], &[]);
        assert!(check_host_name(&cn_only, "db.example.com").is_ok());
        assert!(check_host_name(&cn_only, "DB.Example.com").is_ok());
        assert_eq!(
            check_host_name(&cn_only, "other.example.com").unwrap_err(),
            "server certificate for \"db.example.com\" does not match host name \"other.example.com\""
        );

        // With DNS names, the common name is ignored for a host name.
        let sans = certificate(
            Some("cn.example.com"),
            &["a.example.com", "*.b.example.com"],
            &["127.0.0.1"],
        );
        assert!(check_host_name(&sans, "a.example.com").is_ok());
        assert!(check_host_name(&sans, "x.b.example.com").is_ok());
        assert!(check_host_name(&sans, "y.x.b.example.com").is_err());
        assert!(check_host_name(&sans, "b.example.com").is_err());
        assert!(check_host_name(&sans, "127.0.0.1").is_ok());
        assert!(check_host_name(&sans, "127.0.0.2").is_err());
        assert_eq!(
            check_host_name(&sans, "cn.example.com").unwrap_err(),
            "server certificate for \"a.example.com\" (and 2 other names) does not match host name \"cn.example.com\""
        );

        // An IP host with no IP names falls back to the common name, even
        // when there are DNS names (libpq's rule).
        let ip_cn = certificate(Some("10.0.0.1"), &["db.example.com"], &[]);
        assert!(check_host_name(&ip_cn, "10.0.0.1").is_ok());
        let v6 = certificate(None, &[], &["::1"]);
        assert!(check_host_name(&v6, "::1").is_ok());
        assert!(check_host_name(&v6, "0:0::1").is_ok());
        let nothing = certificate(None, &[], &[]);
        assert_eq!(
            check_host_name(&nothing, "h").unwrap_err(),
            "could not get server's host name from server certificate"
        );
    }

    #[test]
    fn private_keys_others_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.key");
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        fs::write(&path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let set_mode = |mode| fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        set_mode(0o600);
        assert!(load_private_key(&path, None).is_ok());
        // libpq allows 0640 for a key owned by root, 0600 otherwise.
        let owned_by_root = fs::metadata(&path).unwrap().uid() == 0;
        set_mode(0o640);
        assert_eq!(load_private_key(&path, None).is_ok(), owned_by_root);
        set_mode(0o660);
        let refused = load_private_key(&path, None).unwrap_err();
        assert!(refused.contains("has group or world access"), "{refused}");
        set_mode(0o604);
        assert!(load_private_key(&path, None).is_err());
        let missing = load_private_key(&dir.path().join("none.key"), None).unwrap_err();
        assert!(
            missing.contains("certificate present, but not private key file"),
            "{missing}"
        );

        // An encrypted key: its password from sslpassword, never a prompt.
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"k3y-pw")
            .unwrap();
        fs::write(&path, encrypted).unwrap();
        set_mode(0o600);
        assert!(load_private_key(&path, Some("k3y-pw")).is_ok());
        let wrong = load_private_key(&path, Some("nope")).unwrap_err();
        assert!(
            !wrong.contains("nope") && !wrong.contains("k3y-pw"),
            "{wrong}"
        );
        assert!(load_private_key(&path, None).is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_matches(b"*.example.com", b"db.example.com"));
        assert!(wildcard_matches(b"*.example.com", b"DB.EXAMPLE.COM"));
        assert!(!wildcard_matches(b"*.example.com", b"a.db.example.com"));
        assert!(!wildcard_matches(b"*.example.com", b".example.com"));
        assert!(!wildcard_matches(b"*.example.com", b"example.com"));
        assert!(!wildcard_matches(b"*", b"anything"));
        assert!(!wildcard_matches(b"db*.example.com", b"db1.example.com"));
        assert!(!wildcard_matches(b"*example.com", b"dbexample.com"));
    }
}
