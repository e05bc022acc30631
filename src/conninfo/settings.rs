//! From keywords to the settings of a connection, as libpq's
//! `conninfo_add_defaults` and `pqConnectOptions2` do: the service file,
//! then the `PG*` environment variables, then the built-in defaults fill in
//! what the connection string left out; the values are checked; the host
//! list is split into one entry per host. Keywords this collector cannot
//! honour are refused here, by name.
//!
//! A pure function of the keywords and an [`Env`] (plus the service files
//! it names), run by whatever thread parses a connection string.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::ChannelBinding;

use super::DEFAULT_SOCKET_DIR;
use super::dsn::{KEYWORDS, Options};
use super::env::Env;
use super::service;
use super::tls::TlsSettings;

/// Default keepalive timings, when the connection string sets none: the
/// first probe after 30 s of silence, then every 10 s, and the connection
/// is dropped after 3 unanswered probes, so that a vanished peer is noticed
/// within about a minute.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVES_COUNT: u32 = 3;

/// Default `tcp_user_timeout`, when the connection string sets none: data
/// sent and not acknowledged for this long drops the connection, so that a
/// peer that vanished is noticed while sending too, not only while waiting
/// (where the keepalives notice it).
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// libpq's minimum `connect_timeout`: 1 s is taken as 2 s.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where one host of the list is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A host name, resolved at each connection.
    Name(String),
    /// A numeric address (`hostaddr`, or a host given as an address).
    Ip(IpAddr),
    /// A Unix socket directory.
    Unix(PathBuf),
}

/// One entry of the host list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `host` as given for this entry (empty when only `hostaddr` is);
    /// what `verify-full` checks and what the password file is searched
    /// for.
    pub host: String,
    /// `hostaddr` as given for this entry, if any.
    pub hostaddr: Option<String>,
    pub address: Address,
    pub port: u16,
    /// The port as given (empty for the default), for the password file.
    pub port_text: String,
}

impl Host {
    /// The host name the password file is searched for: `host`, else
    /// `hostaddr`.
    pub fn password_file_host(&self) -> &str {
        match (&self.host, &self.hostaddr) {
            (host, Some(hostaddr)) if host.is_empty() => hostaddr,
            (host, _) => host,
        }
    }

    /// How the host appears in messages and in `Display`.
    pub fn shown(&self) -> &str {
        self.password_file_host()
    }
}

/// `target_session_attrs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// TCP keepalive timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// Everything a connection needs, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub hosts: Vec<Host>,
    pub user: String,
    pub dbname: String,
    /// From the connection string, the service file or `PGPASSWORD`.
    pub password: Option<String>,
    /// The password file to search when there is no password.
    pub passfile: Option<PathBuf>,
    /// `None`: wait forever (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
    /// `options`, plus `PGTZ` and `PGGEQO`.
    pub options: Option<String>,
    pub channel_binding: ChannelBinding,
    /// `None`: `keepalives=0`.
    pub keepalives: Option<Keepalives>,
    pub tcp_user_timeout: Option<Duration>,
    pub target: Target,
    pub load_balance: bool,
    pub tls: Arc<TlsSettings>,
}

impl std::fmt::Debug for Settings {
    /// Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("passfile", &self.passfile)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("keepalives", &self.keepalives)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("target", &self.target)
            .field("load_balance", &self.load_balance)
            .field("tls", &self.tls.mode)
            .finish()
    }
}

/// Built-in defaults (libpq's compiled-in values) of keywords whose value
/// matters even when unset.
const BUILT_IN: [(&str, &str); 3] = [
    ("sslmode", "prefer"),
    ("channel_binding", "prefer"),
    ("ssl_min_protocol_version", "TLSv1.2"),
];

/// Keywords refused when set to anything but an empty string, and why.
const REFUSED: [(&str, &str); 9] = [
    (
        "require_auth",
        "the PostgreSQL driver cannot restrict the authentication methods",
    ),
    (
        "requirepeer",
        "the PostgreSQL driver does not expose the socket's peer credentials",
    ),
    ("sslkeylogfile", "TLS key logging is not supported"),
    ("oauth_issuer", "OAuth authentication is not supported"),
    ("oauth_client_id", "OAuth authentication is not supported"),
    (
        "oauth_client_secret",
        "OAuth authentication is not supported",
    ),
    ("oauth_scope", "OAuth authentication is not supported"),
    (
        "scram_client_key",
        "SCRAM pass-through authentication is not supported",
    ),
    (
        "scram_server_key",
        "SCRAM pass-through authentication is not supported",
    ),
];

/// Applies the service file, the environment and the defaults to
/// `options`, and checks and resolves the result.
pub fn resolve(mut options: Options, env: &Env) -> Result<Settings, String> {
    service::apply(&mut options, env)?;
    for keyword in KEYWORDS {
        if let Some(value) = keyword.env.and_then(|name| env.var(name)) {
            options.set_default(keyword, value);
        }
    }
    if !options.is_set("sslmode") {
        if env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) {
            let _ = options.set("sslmode", "require");
        } else if options.get("sslrootcert") == Some("system") {
            let _ = options.set("sslmode", "verify-full");
        }
    }
    for (name, value) in BUILT_IN {
        if !options.is_set(name) {
            let _ = options.set(name, value);
        }
    }
    check_refused(&options)?;

    let user = match options.non_empty("user") {
        Some(user) => user.to_string(),
        None => env
            .os_user()
            .ok_or("could not look up local user name: give a user")?
            .to_string(),
    };
    let dbname = options.non_empty("dbname").unwrap_or(&user).to_string();
    let passfile = options
        .non_empty("passfile")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|home| home.join(".pgpass")));

    Ok(Settings {
        hosts: hosts(&options)?,
        password: options.non_empty("password").map(str::to_string),
        passfile,
        connect_timeout: connect_timeout(&options)?,
        options: startup_options(&options, env),
        channel_binding: channel_binding(&options)?,
        keepalives: keepalives(&options)?,
        tcp_user_timeout: match options.non_empty("tcp_user_timeout") {
            Some(value) => {
                let ms = parse_int(value, "tcp_user_timeout")?;
                (ms > 0).then(|| Duration::from_millis(ms as u64))
            }
            None => Some(DEFAULT_TCP_USER_TIMEOUT),
        },
        target: target(&options)?,
        load_balance: match options.get("load_balance_hosts").unwrap_or("disable") {
            "disable" => false,
            "random" => true,
            other => return Err(format!("invalid load_balance_hosts value: \"{other}\"")),
        },
        tls: Arc::new(TlsSettings::from_options(
            &options,
            env.home().map(PathBuf::as_path),
        )?),
        user,
        dbname,
    })
}

/// Refuses, by name, what this collector cannot do.
fn check_refused(options: &Options) -> Result<(), String> {
    for (name, why) in REFUSED {
        if options.non_empty(name).is_some() {
            return Err(format!(
                "connection option \"{name}\" is not supported: {why}"
            ));
        }
    }
    if let Some(value) = options.non_empty("replication") {
        let regular = ["false", "off", "no", "0"]
            .iter()
            .any(|word| value.eq_ignore_ascii_case(word));
        if !regular {
            return Err(
                "connection option \"replication\" is not supported: replication connections \
                 cannot collect statistics"
                    .to_string(),
            );
        }
    }
    if let Some(value) = options.non_empty("client_encoding") {
        let normalized: String = value
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        if !matches!(normalized.as_str(), "utf8" | "unicode" | "auto") {
            return Err(format!(
                "client_encoding \"{value}\" is not supported: the PostgreSQL driver always uses UTF8"
            ));
        }
    }
    match options.get("gssencmode").unwrap_or("disable") {
        "disable" | "prefer" => {}
        "require" => {
            return Err(
                "gssencmode value \"require\" invalid when GSSAPI support is not compiled in"
                    .to_string(),
            );
        }
        other => return Err(format!("invalid gssencmode value: \"{other}\"")),
    }
    for key in ["min_protocol_version", "max_protocol_version"] {
        match options.non_empty(key) {
            None | Some("3.0") => {}
            Some("3.2" | "latest") if key == "max_protocol_version" => {}
            Some(version @ ("3.2" | "latest")) => {
                return Err(format!(
                    "min_protocol_version \"{version}\" is not supported: the PostgreSQL driver \
                     speaks protocol 3.0"
                ));
            }
            Some(other) => return Err(format!("invalid {key} value: \"{other}\"")),
        }
    }
    Ok(())
}

/// libpq's `pqParseIntParam`: an integer with optional surrounding
/// whitespace.
pub fn parse_int(value: &str, key: &str) -> Result<i64, String> {
    let invalid = || format!("invalid integer value \"{value}\" for connection option \"{key}\"");
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let number: i64 = trimmed.parse().map_err(|_| invalid())?;
    if i32::try_from(number).is_err() {
        return Err(invalid());
    }
    Ok(number)
}

fn connect_timeout(options: &Options) -> Result<Option<Duration>, String> {
    match options.non_empty("connect_timeout") {
        None => Ok(Some(super::DEFAULT_CONNECT_TIMEOUT)),
        Some(value) => {
            let seconds = parse_int(value, "connect_timeout")?;
            Ok((seconds > 0).then(|| Duration::from_secs(seconds as u64).max(MIN_CONNECT_TIMEOUT)))
        }
    }
}

fn channel_binding(options: &Options) -> Result<ChannelBinding, String> {
    match options.get("channel_binding").unwrap_or("prefer") {
        "disable" => Ok(ChannelBinding::Disable),
        "prefer" => Ok(ChannelBinding::Prefer),
        "require" => Ok(ChannelBinding::Require),
        other => Err(format!("invalid channel_binding value: \"{other}\"")),
    }
}

fn target(options: &Options) -> Result<Target, String> {
    Ok(match options.get("target_session_attrs").unwrap_or("any") {
        "any" => Target::Any,
        "read-write" => Target::ReadWrite,
        "read-only" => Target::ReadOnly,
        "primary" => Target::Primary,
        "standby" => Target::Standby,
        "prefer-standby" => Target::PreferStandby,
        other => return Err(format!("invalid target_session_attrs value: \"{other}\"")),
    })
}

fn keepalives(options: &Options) -> Result<Option<Keepalives>, String> {
    if let Some(value) = options.get("keepalives") {
        let enabled = value
            .parse::<i64>()
            .map_err(|_| "keepalives parameter must be an integer".to_string())?;
        if enabled == 0 {
            return Ok(None);
        }
    }
    let seconds = |key: &str, default: Duration| -> Result<Duration, String> {
        match options.non_empty(key) {
            Some(value) => Ok(Duration::from_secs(parse_int(value, key)?.max(1) as u64)),
            None => Ok(default),
        }
    };
    Ok(Some(Keepalives {
        idle: seconds("keepalives_idle", DEFAULT_KEEPALIVES_IDLE)?,
        interval: seconds("keepalives_interval", DEFAULT_KEEPALIVES_INTERVAL)?,
        count: match options.non_empty("keepalives_count") {
            Some(value) => parse_int(value, "keepalives_count")?.max(1) as u32,
            None => DEFAULT_KEEPALIVES_COUNT,
        },
    }))
}

/// The `options` startup parameter, with the session settings libpq takes
/// from `PGTZ` and `PGGEQO`. (`PGDATESTYLE` is left out: the collector sets
/// `DateStyle` itself on every connection.)
fn startup_options(options: &Options, env: &Env) -> Option<String> {
    let mut text = options.get("options").unwrap_or("").to_string();
    for (variable, setting) in [("PGTZ", "TimeZone"), ("PGGEQO", "geqo")] {
        if let Some(value) = env.var(variable) {
            let escaped: String = value
                .chars()
                .flat_map(|c| {
                    let escape = c == '\\' || c.is_whitespace();
                    escape.then_some('\\').into_iter().chain(Some(c))
                })
                .collect();
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("-c {setting}={escaped}"));
        }
    }
    (!text.trim().is_empty()).then_some(text)
}

/// Splits `host`, `hostaddr` and `port` into one entry per host, as
/// libpq's `pqConnectOptions2`.
fn hosts(options: &Options) -> Result<Vec<Host>, String> {
    let split = |key: &str| {
        options
            .non_empty(key)
            .map(|value| value.split(',').map(str::to_string).collect::<Vec<_>>())
    };
    let hostaddrs = split("hostaddr");
    let names = split("host");
    let count = match (&hostaddrs, &names) {
        (Some(addrs), _) => addrs.len(),
        (None, Some(names)) => names.len(),
        (None, None) => 1,
    };
    if let (Some(_), Some(names)) = (&hostaddrs, &names)
        && names.len() != count
    {
        return Err(format!(
            "could not match {} host names to {count} hostaddr values",
            names.len()
        ));
    }
    let ports = match split("port") {
        None => vec![String::new(); count],
        Some(ports) if ports.len() == 1 => vec![ports[0].clone(); count],
        Some(ports) if ports.len() == count => ports,
        Some(ports) => {
            return Err(format!(
                "could not match {} port numbers to {count} hosts",
                ports.len()
            ));
        }
    };

    (0..count)
        .map(|i| {
            let hostaddr = hostaddrs
                .as_ref()
                .map(|addrs| addrs[i].clone())
                .filter(|a| !a.is_empty());
            let mut host = names.as_ref().map(|n| n[i].clone()).unwrap_or_default();
            let address = if let Some(hostaddr) = &hostaddr {
                let ip = hostaddr
                    .parse::<IpAddr>()
                    .map_err(|_| format!("could not parse network address \"{hostaddr}\""))?;
                Address::Ip(ip)
            } else if host.starts_with('/') {
                Address::Unix(PathBuf::from(&host))
            } else if host.starts_with('@') {
                return Err(format!(
                    "abstract Unix socket \"{host}\" is not supported: give a socket directory"
                ));
            } else if host.is_empty() {
                host = DEFAULT_SOCKET_DIR.to_string();
                Address::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
            } else {
                match host.parse::<IpAddr>() {
                    Ok(ip) => Address::Ip(ip),
                    Err(_) => Address::Name(host.clone()),
                }
            };
            let port_text = ports[i].clone();
            let port = if port_text.is_empty() {
                5432
            } else {
                let number = parse_int(&port_text, "port")?;
                u16::try_from(number)
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| format!("invalid port number: \"{port_text}\""))?
            };
            Ok(Host {
                host,
                hostaddr,
                address,
                port,
                port_text,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::dsn::parse;
    use crate::conninfo::tls::{RootCert, SslMode};

    /// Environment variables of a test case.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_pairs(vars.iter().copied(), Some("/home/me"), Some("me"))
    }

    fn resolve_with(dsn: &str, vars: &[(&str, &str)]) -> Result<Settings, String> {
        resolve(parse(dsn)?, &env(vars))
    }

    fn ok(dsn: &str, vars: &[(&str, &str)]) -> Settings {
        resolve_with(dsn, vars).unwrap_or_else(|e| panic!("{dsn}: {e}"))
    }

    /// host, port and kind of each host entry, compactly.
    fn hosts_of(settings: &Settings) -> Vec<String> {
        settings
            .hosts
            .iter()
            .map(|h| {
                let kind = match &h.address {
                    Address::Name(_) => "name",
                    Address::Ip(_) => "ip",
                    Address::Unix(_) => "unix",
                };
                format!("{}:{}:{kind}", h.shown(), h.port)
            })
            .collect()
    }

    #[test]
    fn table_of_strings_and_environments() {
        // (connection string, environment, hosts, user, dbname)
        let cases: &[(&str, Vars, &[&str], &str, &str)] = &[
            ("", &[], &["/var/run/postgresql:5432:unix"], "me", "me"),
            (
                "host=localhost port=5432 dbname=mydb connect_timeout=10",
                &[],
                &["localhost:5432:name"],
                "me",
                "mydb",
            ),
            (
                "",
                &[
                    ("PGHOST", "db"),
                    ("PGPORT", "6000"),
                    ("PGUSER", "u"),
                    ("PGDATABASE", "d"),
                ],
                &["db:6000:name"],
                "u",
                "d",
            ),
            // The string wins over the environment.
            (
                "host=a user=x",
                &[("PGHOST", "b"), ("PGUSER", "y")],
                &["a:5432:name"],
                "x",
                "x",
            ),
            // Set but empty counts as set: PGHOST does not apply.
            (
                "host=''",
                &[("PGHOST", "b")],
                &["/var/run/postgresql:5432:unix"],
                "me",
                "me",
            ),
            (
                "postgresql://",
                &[],
                &["/var/run/postgresql:5432:unix"],
                "me",
                "me",
            ),
            (
                "postgresql://%2Ftmp%2Fsock/powa",
                &[],
                &["/tmp/sock:5432:unix"],
                "me",
                "powa",
            ),
            ("host=/tmp port=5433", &[], &["/tmp:5433:unix"], "me", "me"),
            (
                "postgresql://host1:123,host2:456/somedb",
                &[],
                &["host1:123:name", "host2:456:name"],
                "me",
                "somedb",
            ),
            (
                "host=a,b,/tmp port=1",
                &[],
                &["a:1:name", "b:1:name", "/tmp:1:unix"],
                "me",
                "me",
            ),
            (
                "postgresql://a,b:5433/x",
                &[],
                &["a:5432:name", "b:5433:name"],
                "me",
                "x",
            ),
            ("postgresql://[::1]:5433", &[], &["::1:5433:ip"], "me", "me"),
            ("host=127.0.0.1", &[], &["127.0.0.1:5432:ip"], "me", "me"),
            (
                "host=db.example hostaddr=192.0.2.1",
                &[],
                &["db.example:5432:ip"],
                "me",
                "me",
            ),
            (
                "hostaddr=192.0.2.1",
                &[],
                &["192.0.2.1:5432:ip"],
                "me",
                "me",
            ),
            (
                "",
                &[("PGHOSTADDR", "192.0.2.7"), ("PGHOST", "named")],
                &["named:5432:ip"],
                "me",
                "me",
            ),
            (
                "host=h,",
                &[],
                &["h:5432:name", "/var/run/postgresql:5432:unix"],
                "me",
                "me",
            ),
        ];
        for (dsn, vars, hosts, user, dbname) in cases {
            let settings = ok(dsn, vars);
            assert_eq!(hosts_of(&settings), *hosts, "{dsn} {vars:?}");
            assert_eq!(settings.user, *user, "{dsn} {vars:?}");
            assert_eq!(settings.dbname, *dbname, "{dsn} {vars:?}");
        }
    }

    #[test]
    fn passwords_and_password_files() {
        assert_eq!(
            ok("password=x", &[("PGPASSWORD", "y")]).password.as_deref(),
            Some("x")
        );
        assert_eq!(
            ok("", &[("PGPASSWORD", "y")]).password.as_deref(),
            Some("y")
        );
        assert_eq!(ok("password=''", &[("PGPASSWORD", "y")]).password, None);
        assert_eq!(
            ok("", &[]).passfile,
            Some(PathBuf::from("/home/me/.pgpass"))
        );
        assert_eq!(
            ok("", &[("PGPASSFILE", "/etc/pw")]).passfile,
            Some(PathBuf::from("/etc/pw"))
        );
        assert_eq!(
            ok("passfile=/a", &[("PGPASSFILE", "/etc/pw")]).passfile,
            Some(PathBuf::from("/a"))
        );
        let no_home = resolve(parse("").unwrap(), &Env::from_pairs([], None, Some("me"))).unwrap();
        assert_eq!(no_home.passfile, None);
    }

    #[test]
    fn timeouts_and_keepalives() {
        assert_eq!(
            ok("", &[]).connect_timeout,
            Some(crate::conninfo::DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(
            ok("connect_timeout=5", &[]).connect_timeout,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            ok("connect_timeout=1", &[]).connect_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            ok("connect_timeout=' 7 '", &[]).connect_timeout,
            Some(Duration::from_secs(7))
        );
        assert_eq!(ok("connect_timeout=0", &[]).connect_timeout, None);
        assert_eq!(ok("connect_timeout=-3", &[]).connect_timeout, None);
        assert_eq!(
            ok("", &[("PGCONNECT_TIMEOUT", "4")]).connect_timeout,
            Some(Duration::from_secs(4))
        );
        let defaults = ok("", &[]).keepalives.unwrap();
        assert_eq!(
            defaults.idle + defaults.interval * defaults.count,
            Duration::from_secs(60)
        );
        assert_eq!(ok("keepalives=0", &[]).keepalives, None);
        let custom = ok(
            "keepalives_idle=5 keepalives_interval=2 keepalives_count=4",
            &[],
        );
        assert_eq!(
            custom.keepalives,
            Some(Keepalives {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                count: 4
            })
        );
        assert_eq!(
            ok("tcp_user_timeout=1500", &[]).tcp_user_timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(ok("", &[]).tcp_user_timeout, Some(DEFAULT_TCP_USER_TIMEOUT));
        assert_eq!(ok("tcp_user_timeout=0", &[]).tcp_user_timeout, None);
    }

    #[test]
    fn ssl_environment_and_defaults() {
        let s = ok(
            "",
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", "/ca.pem"),
                ("PGSSLCERT", "/c.pem"),
                ("PGSSLKEY", "/k.pem"),
            ],
        );
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.tls.root_cert, RootCert::File("/ca.pem".into()));
        assert_eq!(s.tls.cert, Some("/c.pem".into()));
        assert_eq!(s.tls.key, Some("/k.pem".into()));
        assert_eq!(ok("", &[]).tls.mode, SslMode::Prefer);
        assert_eq!(ok("", &[("PGREQUIRESSL", "1")]).tls.mode, SslMode::Require);
        assert_eq!(
            ok("", &[("PGREQUIRESSL", "1"), ("PGSSLMODE", "disable")])
                .tls
                .mode,
            SslMode::Disable
        );
        assert_eq!(ok("sslrootcert=system", &[]).tls.mode, SslMode::VerifyFull);
        assert_eq!(
            ok("sslmode=require", &[("PGSSLMODE", "disable")]).tls.mode,
            SslMode::Require
        );
        assert_eq!(
            ok("postgresql://h?ssl=true", &[]).tls.mode,
            SslMode::Require
        );
    }

    #[test]
    fn other_keywords() {
        assert_eq!(
            ok("target_session_attrs=read-write", &[]).target,
            Target::ReadWrite
        );
        assert_eq!(
            ok("", &[("PGTARGETSESSIONATTRS", "prefer-standby")]).target,
            Target::PreferStandby
        );
        assert!(ok("load_balance_hosts=random", &[]).load_balance);
        assert_eq!(
            ok("channel_binding=require", &[]).channel_binding,
            ChannelBinding::Require
        );
        assert_eq!(
            ok(
                "options='-c work_mem=4MB'",
                &[("PGTZ", "Europe/Paris"), ("PGGEQO", "off")]
            )
            .options,
            Some("-c work_mem=4MB -c TimeZone=Europe/Paris -c geqo=off".to_string())
        );
        assert_eq!(
            ok("", &[("PGTZ", "a b\\c")]).options,
            Some("-c TimeZone=a\\ b\\\\c".to_string())
        );
        assert_eq!(ok("", &[]).options, None);
        // Accepted, as by a libpq built without GSSAPI.
        for dsn in [
            "gssencmode=prefer krbsrvname=postgres gsslib=gssapi gssdelegation=0",
            "client_encoding=UTF8",
            "client_encoding=auto",
            "replication=false",
            "application_name=x fallback_application_name=y",
            "sslcompression=1",
            "min_protocol_version=3.0 max_protocol_version=latest",
            "require_auth=",
        ] {
            ok(dsn, &[]);
        }
    }

    #[test]
    fn errors_and_refusals() {
        let cases: &[(&str, Vars, &str)] = &[
            (
                "port=x",
                &[],
                "invalid integer value \"x\" for connection option \"port\"",
            ),
            ("port=70000", &[], "invalid port number: \"70000\""),
            ("port=0", &[], "invalid port number"),
            (
                "host=a,b port=1,2,3",
                &[],
                "could not match 3 port numbers to 2 hosts",
            ),
            (
                "host=a,b hostaddr=192.0.2.1",
                &[],
                "could not match 2 host names to 1 hostaddr values",
            ),
            (
                "hostaddr=db.example",
                &[],
                "could not parse network address \"db.example\"",
            ),
            ("host=@abstract", &[], "abstract Unix socket"),
            ("connect_timeout=ten", &[], "invalid integer value \"ten\""),
            (
                "keepalives=yes",
                &[],
                "keepalives parameter must be an integer",
            ),
            ("keepalives_idle=x", &[], "keepalives_idle"),
            ("sslmode=on", &[], "invalid sslmode value: \"on\""),
            (
                "",
                &[("PGSSLMODE", "bogus")],
                "invalid sslmode value: \"bogus\"",
            ),
            ("channel_binding=maybe", &[], "invalid channel_binding"),
            (
                "target_session_attrs=master",
                &[],
                "invalid target_session_attrs",
            ),
            ("load_balance_hosts=yes", &[], "invalid load_balance_hosts"),
            (
                "gssencmode=require",
                &[],
                "GSSAPI support is not compiled in",
            ),
            ("gssencmode=allow", &[], "invalid gssencmode"),
            (
                "require_auth=scram-sha-256",
                &[],
                "\"require_auth\" is not supported",
            ),
            (
                "requirepeer=postgres",
                &[],
                "\"requirepeer\" is not supported",
            ),
            (
                "replication=database",
                &[],
                "\"replication\" is not supported",
            ),
            (
                "client_encoding=LATIN1",
                &[],
                "client_encoding \"LATIN1\" is not supported",
            ),
            (
                "sslkeylogfile=/tmp/k",
                &[],
                "\"sslkeylogfile\" is not supported",
            ),
            ("oauth_issuer=https://x", &[], "OAuth"),
            ("oauth_client_secret=abc", &[], "OAuth"),
            ("scram_client_key=abc", &[], "SCRAM"),
            ("min_protocol_version=3.2", &[], "speaks protocol 3.0"),
            (
                "max_protocol_version=4",
                &[],
                "invalid max_protocol_version",
            ),
            (
                "service=nothere",
                &[("PGSYSCONFDIR", "/nonexistent")],
                "definition of service \"nothere\" not found",
            ),
            ("", &[("PGREQUIREAUTH", "md5")], "require_auth"),
        ];
        for (dsn, vars, expected) in cases {
            let error = resolve_with(dsn, vars).unwrap_err();
            assert!(error.contains(expected), "{dsn} {vars:?}: {error}");
        }
        let no_user = resolve(parse("").unwrap(), &Env::from_pairs([], None, None));
        assert!(no_user.unwrap_err().contains("local user name"));
    }

    #[test]
    fn parse_int_is_libpqs() {
        assert_eq!(parse_int("12", "k"), Ok(12));
        assert_eq!(parse_int(" -3 ", "k"), Ok(-3));
        assert_eq!(parse_int("+4", "k"), Ok(4));
        for bad in ["", " ", "1x", "x1", "1 2", "99999999999", "--1"] {
            assert!(parse_int(bad, "k").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", ok("password=s3cret", &[]));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
