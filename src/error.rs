//! The collector's error type.
//!
//! Every fallible operation of the crate returns [`Error`]. Its `Display` is
//! the sentence a DBA reads in the log or on stderr: it says what was being
//! done (which file, which server, which datasource) and why it failed, and it
//! never contains a password.

use std::fmt;

/// Exit code for a configuration error (`EX_CONFIG` from `sysexits.h`).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code for any other fatal error.
pub const EXIT_FAILURE: u8 = 1;

/// What went wrong, with enough context to act on it.
#[derive(Debug)]
pub enum Error {
    /// The configuration file, or a value in it, is unusable.
    Config(String),
    /// A connection or a query failed; `context` says what was being done.
    Postgres {
        context: String,
        source: postgres::Error,
    },
    /// No connection could be opened, and no driver error says why (a host
    /// name that does not resolve, no host accepting the session wanted).
    Connect(String),
    /// PoWA is missing or unusable on a server.
    Powa(String),
    /// Something asked for on the command line does not exist (a server
    /// id).
    NotFound(String),
    /// Work was abandoned because the collector is stopping.
    Interrupted,
    /// The metrics endpoint cannot listen where it is told to.
    Listen(String),
    /// A snapshot passed its deadline and was abandoned.
    DeadlineExceeded(std::time::Duration),
}

impl Error {
    /// Wraps a PostgreSQL error with what was being done when it happened.
    pub fn postgres(context: impl Into<String>, source: postgres::Error) -> Error {
        Error::Postgres {
            context: context.into(),
            source,
        }
    }

    /// The process exit code this error maps to when it is fatal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Postgres { .. }
            | Error::Connect(_)
            | Error::Powa(_)
            | Error::NotFound(_)
            | Error::Interrupted
            | Error::Listen(_)
            | Error::DeadlineExceeded(_) => EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(message)
            | Error::Connect(message)
            | Error::Powa(message)
            | Error::NotFound(message)
            | Error::Listen(message) => f.write_str(message),
            Error::Interrupted => f.write_str("interrupted: the worker is stopping"),
            Error::DeadlineExceeded(timeout) => write!(
                f,
                "the snapshot did not finish within its deadline of {} s \
                 (snapshot_timeout) and was rolled back",
                timeout.as_secs_f64()
            ),
            Error::Postgres { context, source } => {
                write!(f, "{context}: {}", describe_postgres_error(source))
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Postgres { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Describes a `postgres` error completely.
///
/// The crate's own `Display` only names the kind of error ("db error",
/// "error connecting to server"); the useful part (the server's message, the
/// operating system's reason) is in its source chain, which this appends.
pub fn describe_postgres_error(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (DETAIL: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (HINT: {hint})"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
