//! The JSON configuration file: where it is looked for, how it is parsed,
//! its defaults and its validation.
//!
//! The file format is the Python collector's, so that an existing
//! `/etc/powa-collector.conf` works unchanged:
//!
//! ```json
//! { "repository": { "dsn": "postgresql://powa@localhost:5432/powa" },
//!   "debug": false, "use_server_alias": false }
//! ```
//!
//! Errors name the file and the key at fault; unknown keys are reported as
//! warnings, not errors, so that a file written for a newer collector still
//! loads. Runs on the main thread (start-up and reload).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::conninfo::ConnInfo;
use crate::error::Error;
use crate::pool;

/// The places searched, in order, when no path is given on the command line.
pub fn default_locations() -> Vec<PathBuf> {
    let mut places = vec![PathBuf::from("/etc/powa-collector.conf")];
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        places.push(home.join(".config/powa-collector.conf"));
        places.push(home.join(".powa-collector.conf"));
    }
    places.push(PathBuf::from("./powa-collector.conf"));
    places
}

/// Every key the file may have, nested ones written `parent.child`; any
/// other key is reported as unknown. The man page documents each of them.
pub const KEYS: [&str; 6] = [
    "repository.dsn",
    "repository.pool_size",
    "debug",
    "use_server_alias",
    "snapshot_timeout",
    "metrics_address",
];

/// Whether `key` (a top-level key, or `parent.child`) is one of [`KEYS`]
/// or the parent of one.
fn is_known(key: &str) -> bool {
    KEYS.iter().any(|known| {
        *known == key
            || known
                .split_once('.')
                .is_some_and(|(parent, _)| parent == key)
    })
}

/// A configuration to copy from, printed when the mandatory key is missing.
pub const SAMPLE: &str = r#"{
    "repository": {
        "dsn": "postgresql://powa_user@localhost:5432/powa"
    },
    "debug": false,
    "use_server_alias": false
}"#;

/// The loaded configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Connection string of the repository database.
    pub repository_dsn: String,
    /// Debug-level logging.
    pub debug: bool,
    /// Name workers by `powa_servers.alias` rather than `host:port`.
    pub use_server_alias: bool,
    /// Deadline of a snapshot (`snapshot_timeout`, in seconds); `None`
    /// derives it from each server's frequency.
    pub snapshot_timeout: Option<Duration>,
    /// How many repository connections the workers share
    /// (`repository.pool_size`).
    pub pool_size: usize,
    /// Where the metrics endpoint listens (`metrics_address`); `None`: no
    /// endpoint.
    pub metrics_address: Option<SocketAddr>,
    /// Keys the file has that this version does not know.
    pub unknown_keys: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("repository_dsn", &"<redacted>")
            .field("debug", &self.debug)
            .field("use_server_alias", &self.use_server_alias)
            .field("snapshot_timeout", &self.snapshot_timeout)
            .field("pool_size", &self.pool_size)
            .field("metrics_address", &self.metrics_address)
            .field("unknown_keys", &self.unknown_keys)
            .finish()
    }
}

impl Config {
    /// The repository's connection settings.
    pub fn repository(&self) -> Result<ConnInfo, Error> {
        ConnInfo::parse(&self.repository_dsn).map_err(|reason| {
            Error::Config(format!(
                "{}: repository.dsn is invalid: {reason}",
                self.path.display()
            ))
        })
    }
}

/// Loads the configuration from `explicit`, or from the first existing file
/// among [`default_locations`].
pub fn load(explicit: Option<&Path>) -> Result<Config, Error> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => find(&default_locations())?,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Config(format!(
            "cannot read configuration file {}: {e}",
            path.display()
        ))
    })?;
    parse(&path, &text)
}

/// The first of `candidates` that exists.
pub fn find(candidates: &[PathBuf]) -> Result<PathBuf, Error> {
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .ok_or_else(|| {
            let list: Vec<String> = candidates
                .iter()
                .map(|p| format!("  - {}", p.display()))
                .collect();
            Error::Config(format!(
                "no configuration file found; searched:\n{}\nor give one with --config",
                list.join("\n")
            ))
        })
}

/// Parses and validates the text of a configuration file.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let file = path.display();
    let root: Value = serde_json::from_str(text).map_err(|e| {
        let mut message = format!(
            "{file}: invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        );
        if e.to_string().contains("trailing comma") {
            message.push_str(
                "\nJSON allows no comma after the last item of an object or a list \
                 (the sample configuration published with PoWA 4 has one after the dsn line)",
            );
        }
        Error::Config(message)
    })?;
    let Value::Object(root) = root else {
        return Err(Error::Config(format!(
            "{file}: expected a JSON object at the top level, found {}",
            kind_of(&root)
        )));
    };

    let mut unknown_keys = Vec::new();
    for key in root.keys() {
        if !is_known(key) {
            unknown_keys.push(key.clone());
        }
    }

    let missing_dsn = || {
        Error::Config(format!(
            "{file}: missing required key repository.dsn; a configuration file looks like:\n{SAMPLE}"
        ))
    };
    let repository = match root.get("repository") {
        None => return Err(missing_dsn()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(wrong_type(path, "repository", "an object", other)),
    };
    for key in repository.keys() {
        let key = format!("repository.{key}");
        if !is_known(&key) {
            unknown_keys.push(key);
        }
    }
    let repository_dsn = match repository.get("dsn") {
        None => return Err(missing_dsn()),
        Some(Value::String(dsn)) => dsn.clone(),
        Some(other) => return Err(wrong_type(path, "repository.dsn", "a string", other)),
    };

    let config = Config {
        path: path.to_path_buf(),
        repository_dsn,
        debug: optional_bool(path, &root, "debug")?,
        use_server_alias: optional_bool(path, &root, "use_server_alias")?,
        snapshot_timeout: optional_seconds(path, &root, "snapshot_timeout")?,
        pool_size: pool_size(path, repository)?,
        metrics_address: metrics_address(path, &root)?,
        unknown_keys,
    };
    config.repository()?;
    Ok(config)
}

fn optional_bool(path: &Path, root: &Map<String, Value>, key: &str) -> Result<bool, Error> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(wrong_type(path, key, "true or false", other)),
    }
}

/// A positive number of seconds, at most a day.
fn optional_seconds(
    path: &Path,
    root: &Map<String, Value>,
    key: &str,
) -> Result<Option<Duration>, Error> {
    const MAX_SECONDS: f64 = 86_400.0;
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(seconds) if seconds > 0.0 && seconds <= MAX_SECONDS => {
                Ok(Some(Duration::from_secs_f64(seconds)))
            }
            _ => Err(Error::Config(format!(
                "{}: key {key}: expected a number of seconds above 0 and at most {MAX_SECONDS}, \
                 found {number}",
                path.display()
            ))),
        },
        Some(other) => Err(wrong_type(path, key, "a number of seconds", other)),
    }
}

/// `repository.pool_size`: a whole number from 1 to [`MAX_POOL_SIZE`].
fn pool_size(path: &Path, repository: &Map<String, Value>) -> Result<usize, Error> {
    const KEY: &str = "repository.pool_size";
    match repository.get("pool_size") {
        None | Some(Value::Null) => Ok(pool::DEFAULT_SIZE),
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: key {KEY}: expected a whole number from 1 to {MAX_POOL_SIZE}, found {number}",
                    path.display()
                ))
            }),
        Some(other) => Err(wrong_type(path, KEY, "a whole number", other)),
    }
}

/// `metrics_address`: an IP address and a port, `127.0.0.1:9187` or
/// `[::1]:9187`; absent or null, no metrics endpoint.
fn metrics_address(path: &Path, root: &Map<String, Value>) -> Result<Option<SocketAddr>, Error> {
    const KEY: &str = "metrics_address";
    match root.get(KEY) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text.parse().map(Some).map_err(|_| {
            Error::Config(format!(
                "{}: key {KEY}: expected an IP address and a port such as 127.0.0.1:9187 \
                 or [::1]:9187, found {text:?}",
                path.display()
            ))
        }),
        Some(other) => Err(wrong_type(
            path,
            KEY,
            "a string such as \"127.0.0.1:9187\"",
            other,
        )),
    }
}

/// The largest `repository.pool_size`.
pub const MAX_POOL_SIZE: usize = 100;

fn wrong_type(path: &Path, key: &str, expected: &str, found: &Value) -> Error {
    Error::Config(format!(
        "{}: key {key}: expected {expected}, found {}",
        path.display(),
        kind_of(found)
    ))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// serde_json appends " at line L column C" to its messages; we say it first.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Config, String> {
        parse(Path::new("/etc/test.conf"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let config = parse_text(r#"{"repository": {"dsn": "postgresql:///powa"}}"#).unwrap();
        assert_eq!(config.repository_dsn, "postgresql:///powa");
        assert!(!config.debug);
        assert!(!config.use_server_alias);
        assert_eq!(config.snapshot_timeout, None);
        assert_eq!(config.pool_size, pool::DEFAULT_SIZE);
        assert_eq!(config.metrics_address, None);
        assert!(config.unknown_keys.is_empty());
    }

    #[test]
    fn snapshot_timeout_is_positive_seconds() {
        let with = |value: &str| {
            parse_text(&format!(
                r#"{{"repository": {{"dsn": "postgresql:///powa"}}, "snapshot_timeout": {value}}}"#
            ))
        };
        assert_eq!(
            with("90").unwrap().snapshot_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            with("2.5").unwrap().snapshot_timeout,
            Some(Duration::from_millis(2500))
        );
        for bad in ["0", "-3", "1e9"] {
            let error = with(bad).unwrap_err();
            assert!(error.contains("key snapshot_timeout"), "{bad}: {error}");
        }
        let error = with("\"60\"").unwrap_err();
        assert!(error.contains("expected a number of seconds"), "{error}");
    }

    #[test]
    fn pool_size_is_a_small_whole_number() {
        let with = |value: &str| {
            parse_text(&format!(
                r#"{{"repository": {{"dsn": "postgresql:///powa", "pool_size": {value}}}}}"#
            ))
        };
        assert_eq!(with("2").unwrap().pool_size, 2);
        assert!(with("2").unwrap().unknown_keys.is_empty());
        for bad in ["0", "-1", "2.5", "101"] {
            let error = with(bad).unwrap_err();
            assert!(error.contains("key repository.pool_size"), "{bad}: {error}");
        }
        let error = with("\"4\"").unwrap_err();
        assert!(error.contains("expected a whole number"), "{error}");
    }

    #[test]
    fn metrics_address_is_an_ip_and_a_port() {
        let with = |value: &str| {
            parse_text(&format!(
                r#"{{"repository": {{"dsn": "postgresql:///powa"}}, "metrics_address": {value}}}"#
            ))
        };
        assert_eq!(with("null").unwrap().metrics_address, None);
        assert_eq!(
            with(r#""127.0.0.1:9187""#).unwrap().metrics_address,
            Some("127.0.0.1:9187".parse().unwrap())
        );
        assert_eq!(
            with(r#""[::1]:9187""#).unwrap().metrics_address,
            Some("[::1]:9187".parse().unwrap())
        );
        assert!(with(r#""0.0.0.0:9187""#).unwrap().unknown_keys.is_empty());
        for bad in [
            r#""localhost:9187""#,
            r#""127.0.0.1""#,
            r#""127.0.0.1:99999""#,
            "\"\"",
        ] {
            let error = with(bad).unwrap_err();
            assert!(error.contains("key metrics_address"), "{bad}: {error}");
            assert!(error.contains("127.0.0.1:9187"), "{bad}: {error}");
        }
        let error = with("9187").unwrap_err();
        assert!(
            error.contains("key metrics_address: expected a string"),
            "{error}"
        );
    }

    #[test]
    fn every_key_is_read() {
        let config = parse_text(
            r#"{"repository": {"dsn": "host=db user=powa dbname=powa"},
                "debug": true, "use_server_alias": true}"#,
        )
        .unwrap();
        assert!(config.debug);
        assert!(config.use_server_alias);
    }

    #[test]
    fn keys_are_the_ones_read() {
        let config = parse_text(
            r#"{"repository": {"dsn": "postgresql:///powa", "pool_size": 2}, "debug": true,
                "use_server_alias": true, "snapshot_timeout": 30,
                "metrics_address": "127.0.0.1:9187"}"#,
        )
        .unwrap();
        assert!(config.unknown_keys.is_empty());
        assert!(!is_known("dsn") && !is_known("repository.sslmode"));
    }

    #[test]
    fn shipped_sample_parses() {
        let text = include_str!("../powa-collector.conf.sample");
        let config = parse_text(text).unwrap();
        assert!(config.unknown_keys.is_empty());
    }

    #[test]
    fn debian_conffile_parses() {
        let text = include_str!("../packaging/debian/powa-collector.conf");
        let config = parse_text(text).unwrap();
        assert_eq!(config.repository_dsn, "postgresql:///powa");
        assert!(config.unknown_keys.is_empty());
    }

    #[test]
    fn printed_sample_parses() {
        parse_text(SAMPLE).unwrap();
    }

    #[test]
    fn errors_name_the_culprit() {
        let cases: &[(&str, &[&str])] = &[
            (
                "{\n  \"debug\": yes\n}",
                &["/etc/test.conf", "line 2, column"],
            ),
            (
                "{\n \"repository\": {\n  \"dsn\": \"postgresql:///powa\",\n },\n \"debug\": false\n}",
                &["line 4, column 2", "trailing comma"],
            ),
            ("{\"debug\": true}", &["repository.dsn", "\"repository\""]),
            ("{\"repository\": {}}", &["repository.dsn", "\"dsn\""]),
            (
                r#"{"repository": "postgresql:///powa"}"#,
                &["key repository:", "expected an object"],
            ),
            (
                r#"{"repository": {"dsn": 5432}}"#,
                &["key repository.dsn:", "expected a string", "a number"],
            ),
            (
                r#"{"repository": {"dsn": "x"}, "debug": "yes"}"#,
                &["key debug:", "expected true or false", "a string"],
            ),
            (
                r#"{"repository": {"dsn": "x"}, "use_server_alias": 1}"#,
                &["key use_server_alias:", "expected"],
            ),
            ("[1, 2]", &["expected a JSON object", "a list"]),
            (
                r#"{"repository": {"dsn": "host=db port=notaport"}}"#,
                &["repository.dsn is invalid"],
            ),
        ];
        for (text, expected) in cases {
            let message = parse_text(text).expect_err(text);
            for part in *expected {
                assert!(
                    message.contains(part),
                    "error for {text:?} should contain {part:?}, got: {message}"
                );
            }
        }
    }

    #[test]
    fn invalid_dsn_error_hides_the_password() {
        let message =
            parse_text(r#"{"repository": {"dsn": "host=db password=s3cret port=notaport"}}"#)
                .unwrap_err();
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn unknown_keys_are_listed_not_refused() {
        let config = parse_text(
            r#"{"repository": {"dsn": "postgresql:///powa", "sslmode": "x"},
                "frequency": 5}"#,
        )
        .unwrap();
        assert_eq!(config.unknown_keys, ["frequency", "repository.sslmode"]);
    }

    #[test]
    fn debug_output_hides_the_dsn() {
        let config =
            parse_text(r#"{"repository": {"dsn": "postgresql://u:s3cret@h/powa"}}"#).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn search_takes_the_first_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.conf");
        let second = dir.path().join("b.conf");
        std::fs::write(&second, "{}").unwrap();
        assert_eq!(find(&[first.clone(), second.clone()]).unwrap(), second);
        std::fs::write(&first, "{}").unwrap();
        assert_eq!(find(&[first.clone(), second]).unwrap(), first);
    }

    #[test]
    fn search_failure_lists_the_places() {
        let message = find(&[
            PathBuf::from("/nonexistent/a"),
            PathBuf::from("/nonexistent/b"),
        ])
        .unwrap_err()
        .to_string();
        assert!(message.contains("/nonexistent/a"));
        assert!(message.contains("/nonexistent/b"));
        assert!(message.contains("--config"));
    }

    #[test]
    fn default_locations_follow_the_reference_order() {
        let places = default_locations();
        assert_eq!(places[0], PathBuf::from("/etc/powa-collector.conf"));
        assert_eq!(
            places.last().unwrap(),
            &PathBuf::from("./powa-collector.conf")
        );
    }
}
