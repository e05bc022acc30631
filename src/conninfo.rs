//! Connection settings and connection set-up, for the repository and for the
//! remote servers alike.
//!
//! Everything about how a connection is built lives here: parsing a
//! connection string (URI or `key=value`), settings from a `powa_servers`
//! row, the defaults applied when a string leaves something out, the
//! connection deadline, and the session settings every collector connection
//! gets. [`ConnInfo`]'s `Display` and `Debug` never show a password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, NoTls};

/// Deadline for establishing a connection when the connection string sets
/// none (`connect_timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix socket directory used when neither the connection string nor
/// `PGHOST` names a host (Debian's default).
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

/// How to reach one server.
#[derive(Clone)]
pub struct ConnInfo {
    config: postgres::Config,
}

impl ConnInfo {
    /// Parses a libpq connection string, URI or `key=value` list.
    ///
    /// The error says what is wrong without quoting the string, which may
    /// hold a password.
    pub fn parse(dsn: &str) -> Result<ConnInfo, String> {
        let config = postgres::Config::from_str(dsn)
            .map_err(|e| crate::error::describe_postgres_error(&e))?;
        Ok(ConnInfo::with_defaults(config))
    }

    /// Settings for a remote server registered in `powa_servers`.
    pub fn for_server(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        dbname: &str,
    ) -> ConnInfo {
        let mut config = postgres::Config::new();
        config.host(host).port(port).user(user).dbname(dbname);
        if let Some(password) = password {
            config.password(password);
        }
        ConnInfo::with_defaults(config)
    }

    fn with_defaults(mut config: postgres::Config) -> ConnInfo {
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            let host = std::env::var("PGHOST").unwrap_or_else(|_| DEFAULT_SOCKET_DIR.to_string());
            config.host(&host);
        }
        if config.get_ports().is_empty()
            && let Some(port) = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())
        {
            config.port(port);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        ConnInfo { config }
    }

    /// Opens a connection named `application_name` and applies the
    /// collector's session settings.
    pub fn connect(&self, application_name: &str) -> Result<Client, postgres::Error> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        let mut client = config.connect(NoTls)?;
        client.batch_execute(SESSION_SETUP)?;
        Ok(client)
    }
}

impl fmt::Display for ConnInfo {
    /// `host=... port=... user=... dbname=...`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .chain(self.config.get_hostaddrs().iter().map(|a| a.to_string()))
            .collect();
        write!(f, "host={}", hosts.join(","))?;
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            write!(f, " port={}", ports.join(","))?;
        }
        if let Some(user) = self.config.get_user() {
            write!(f, " user={user}")?;
        }
        if let Some(dbname) = self.config.get_dbname() {
            write!(f, " dbname={dbname}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse() {
        let uri = ConnInfo::parse("postgresql://powa:s3cret@db.example:5433/powa").unwrap();
        assert_eq!(
            uri.to_string(),
            "host=db.example port=5433 user=powa dbname=powa"
        );
        let kv = ConnInfo::parse("host=db.example port=5433 user=powa password=s3cret dbname=powa")
            .unwrap();
        assert_eq!(kv.to_string(), uri.to_string());
    }

    #[test]
    fn no_host_means_a_unix_socket() {
        let info = ConnInfo::parse("postgresql:///powa").unwrap();
        let expected = std::env::var("PGHOST").unwrap_or_else(|_| DEFAULT_SOCKET_DIR.into());
        assert!(info.to_string().starts_with(&format!("host={expected}")));
    }

    #[test]
    fn a_deadline_is_always_set() {
        let info = ConnInfo::parse("host=db").unwrap();
        assert_eq!(
            info.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        let info = ConnInfo::parse("host=db connect_timeout=3").unwrap();
        assert_eq!(
            info.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
    }

    #[test]
    fn password_never_shown() {
        for info in [
            ConnInfo::parse("postgresql://powa:s3cret@db/powa").unwrap(),
            ConnInfo::parse("host=db password=s3cret").unwrap(),
            ConnInfo::for_server("db", 5432, "powa", Some("s3cret"), "powa"),
        ] {
            assert!(!info.to_string().contains("s3cret"));
            assert!(!format!("{info:?}").contains("s3cret"));
        }
    }

    #[test]
    fn parse_errors_do_not_quote_the_string() {
        let error = ConnInfo::parse("host=db password=s3cret port=x").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("port"), "{error}");
    }
}
