//! Copying one datasource: the remote's `COPY ... TO STDOUT` streamed into
//! the repository's `COPY ... FROM STDIN`, chunk by chunk, so memory does
//! not grow with the size of a datasource; each side in a savepoint, so
//! that a datasource that fails is rolled back alone and both connections
//! stay usable. Also the remote-side cleanup that follows some copies.

use std::io::{BufRead, Write};

use postgres::{SimpleQueryMessage, Transaction};

use crate::error::{Error, describe_postgres_error};
use crate::powa::quote_literal;

/// A connection that failed as a whole, not just one datasource: the
/// snapshot (or, for a per-database connection, that database) cannot go
/// on with it.
#[derive(Debug)]
pub enum Broken {
    Remote(Error),
    Repository(Error),
}

impl From<Broken> for Error {
    fn from(broken: Broken) -> Error {
        match broken {
            Broken::Remote(error) | Broken::Repository(error) => error,
        }
    }
}

/// One copy: `name` for messages, the remote's query and the repository's
/// target table, both ready for COPY.
pub struct Copy<'a> {
    pub name: &'a str,
    /// A `SELECT` on the remote.
    pub query: String,
    /// A qualified table on the repository.
    pub table: &'a str,
}

/// SQLSTATE `lock_not_available`: `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Why one copy failed, already rolled back.
struct Failed {
    message: String,
    /// It waited `lock_timeout` for a lock: worth one more try.
    lock_timeout: bool,
}

impl Failed {
    fn new(message: String) -> Failed {
        Failed {
            message,
            lock_timeout: false,
        }
    }
}

/// Copies one datasource. `Ok(Err(message))` is the datasource's own
/// error, already rolled back; `Ok(Ok(rows))` what it copied. A copy that
/// hit `lock_timeout` is tried once more before it is reported.
pub fn copy(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    copy: &Copy<'_>,
) -> Result<Result<u64, String>, Broken> {
    match copy_once(remote, repo, copy)? {
        Err(failed) if failed.lock_timeout => {
            log::info!("{}; trying once more", failed.message);
            Ok(copy_once(remote, repo, copy)?.map_err(|failed| failed.message))
        }
        outcome => Ok(outcome.map_err(|failed| failed.message)),
    }
}

fn copy_once(
    remote: &mut Transaction<'_>,
    repo: &mut Transaction<'_>,
    copy: &Copy<'_>,
) -> Result<Result<u64, Failed>, Broken> {
    let name = copy.name;
    let savepoint_error = |e| Error::postgres(format!("cannot open a savepoint for {name}"), e);
    let closing_error = |e| Error::postgres(format!("cannot close the savepoint of {name}"), e);
    let mut source = remote
        .savepoint("src")
        .map_err(|e| Broken::Remote(savepoint_error(e)))?;
    let mut target = repo
        .savepoint("data")
        .map_err(|e| Broken::Repository(savepoint_error(e)))?;
    let copied = stream(&mut source, &mut target, copy);
    let (source_closed, target_closed) = if copied.is_ok() {
        (source.commit(), target.commit())
    } else {
        (source.rollback(), target.rollback())
    };
    source_closed.map_err(|e| Broken::Remote(closing_error(e)))?;
    target_closed.map_err(|e| Broken::Repository(closing_error(e)))?;
    Ok(copied)
}

/// Runs `sql` on the remote in a savepoint: `Ok(Err(message))` when it
/// failed (and was rolled back).
pub fn cleanup(remote: &mut Transaction<'_>, sql: &str) -> Result<Result<(), String>, Broken> {
    let mut savepoint = remote.savepoint("cleanup").map_err(|e| {
        Broken::Remote(Error::postgres(
            "cannot open a savepoint on the remote server",
            e,
        ))
    })?;
    let (outcome, closed) = match savepoint.batch_execute(sql) {
        Ok(()) => (Ok(()), savepoint.commit()),
        Err(e) => (
            Err(format!(
                "Error while calling {sql}: {}",
                describe_postgres_error(&e)
            )),
            savepoint.rollback(),
        ),
    };
    closed.map_err(|e| {
        Broken::Remote(Error::postgres(
            "cannot close a savepoint on the remote server",
            e,
        ))
    })?;
    Ok(outcome)
}

/// How many bytes of the remote's rows are gathered before they are sent
/// to the repository. The remote sends one message per row; sending them
/// in batches of this size (instead of the driver's 4 kB) divides the
/// system calls and wake-ups of both sides, for at most a few times this
/// size of memory per copy in flight.
const BATCH_SIZE: usize = 64 * 1024;

/// Streams the remote's COPY output into the repository's COPY input, in
/// batches of [`BATCH_SIZE`].
///
/// Both COPYs must end cleanly, whatever fails, for their connections to
/// stay usable. The repository's COPY is opened once the remote's first
/// rows are in: while the remote computes them, the repository session is
/// idle in its transaction, where `idle_in_transaction_session_timeout`
/// ends it should the collector vanish (a session in COPY FROM STDIN
/// waits for the client whatever the timeouts). An unfinished repository
/// COPY is aborted by dropping its writer; when writing fails, the rest of
/// the remote's output is read and discarded.
fn stream(
    source: &mut Transaction<'_>,
    target: &mut Transaction<'_>,
    copy: &Copy<'_>,
) -> Result<u64, Failed> {
    let name = copy.name;
    let reading =
        |e: &dyn std::fmt::Display| Failed::new(format!("Error while calling {name}: {e}"));
    let writing = |e: &dyn std::fmt::Display| {
        Failed::new(format!("Error while inserting data of {name}: {e}"))
    };

    ready_to_receive(target, copy.table).map_err(|failed| Failed {
        message: format!("Error while inserting data of {name}: {}", failed.message),
        ..failed
    })?;
    let mut reader = source
        .copy_out(&format!("COPY ({}) TO STDOUT", copy.query))
        .map_err(|e| reading(&describe_postgres_error(&e)))?;
    // The reader must not be asked again once it said the output ended.
    let mut ended = reader
        .fill_buf()
        .map_err(|e| reading(&describe_io(&e)))?
        .is_empty();
    let mut writer = match target.copy_in(&format!("COPY {} FROM STDIN", copy.table)) {
        Ok(writer) => writer,
        Err(e) => {
            if !ended {
                drain(&mut reader);
            }
            return Err(writing(&describe_postgres_error(&e)));
        }
    };
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    while !ended {
        let chunk = reader.fill_buf().map_err(|e| reading(&describe_io(&e)))?;
        ended = chunk.is_empty();
        let length = chunk.len();
        batch.extend_from_slice(chunk);
        reader.consume(length);
        if batch.len() < BATCH_SIZE && !ended {
            continue;
        }
        if let Err(e) = writer.write_all(&batch) {
            if !ended {
                drain(&mut reader);
            }
            return Err(writing(&describe_io(&e)));
        }
        batch.clear();
    }
    writer
        .finish()
        .map_err(|e| writing(&describe_postgres_error(&e)))
}

/// Makes sure `COPY table FROM STDIN` cannot fail before it starts: the
/// table exists, is locked as COPY would lock it (waiting at most
/// `lock_timeout`), and may be written to. The driver cannot recover from a
/// `COPY ... FROM STDIN` that the server refuses before entering COPY mode
/// (it then reads a second ReadyForQuery and drops the connection), so
/// those errors are caught here, by ordinary statements, in one round trip.
fn ready_to_receive(target: &mut Transaction<'_>, table: &str) -> Result<(), Failed> {
    let check = format!(
        "LOCK TABLE {table} IN ROW EXCLUSIVE MODE; \
         SELECT pg_catalog.has_table_privilege({}, 'INSERT')",
        quote_literal(table)
    );
    let messages = target.simple_query(&check).map_err(|e| Failed {
        message: describe_postgres_error(&e),
        lock_timeout: e
            .as_db_error()
            .is_some_and(|db| db.code().code() == LOCK_NOT_AVAILABLE),
    })?;
    let allowed = messages
        .iter()
        .any(|message| matches!(message, SimpleQueryMessage::Row(row) if row.get(0) == Some("t")));
    if allowed {
        Ok(())
    } else {
        Err(Failed::new(format!(
            "permission denied to insert into {table}"
        )))
    }
}

/// Reads what is left of a COPY's output, so that its connection is ready
/// for the next statement.
fn drain(reader: &mut impl BufRead) {
    loop {
        match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(chunk) => {
                let length = chunk.len();
                reader.consume(length);
            }
        }
    }
}

/// The `postgres` error inside an I/O error from a COPY reader or writer.
fn describe_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<postgres::Error>())
    {
        Some(postgres) => describe_postgres_error(postgres),
        None => error.to_string(),
    }
}
