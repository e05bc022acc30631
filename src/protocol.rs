//! The command protocol powa-web speaks over LISTEN/NOTIFY: parsing
//! requests and formatting answers. No I/O here; the main loop
//! (`collector`) receives the notifications and sends the answers.
//!
//! A request arrives on channel `powa_collector` as
//! `COMMAND RESPONSE_CHANNEL ARGS...`; the answer, `COMMAND STATUS DATA`,
//! goes to RESPONSE_CHANNEL unless it is `-` or absent. Words are separated
//! by spaces; empty words (repeated or trailing spaces, which powa-web sends
//! when a command has no argument) are ignored.

use std::fmt;

/// Longest channel name: PostgreSQL truncates identifiers to
/// `NAMEDATALEN - 1` bytes, so a client that ran `LISTEN` on a longer name
/// listens on its first 63 bytes, and that is where the answer goes.
pub const MAX_CHANNEL_BYTES: usize = 63;

/// Largest answer PostgreSQL's NOTIFY accepts with its default settings is
/// just under 8000 bytes.
pub const MAX_ANSWER_BYTES: usize = 8000;

/// A request the collector understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Re-read the configuration and the server list.
    Reload,
    /// Report the workers' status, of one server or all.
    WorkersStatus { srvid: Option<i32> },
    /// Take a snapshot of a server now.
    ForceSnapshot { srvid: i32 },
    /// Refresh the catalogs of some databases (all when empty) of a server
    /// at its next snapshot.
    RefreshDbCat { srvid: i32, dbnames: Vec<String> },
}

/// A parsed notification payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The first word, echoed at the start of the answer.
    pub command: String,
    /// Where to answer; `None` for `-` or no channel.
    pub channel: Option<String>,
    /// The command, or the answer that refuses it.
    pub parsed: Result<Command, Answer>,
}

/// The status word of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Ko,
    Error,
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Ko => "KO",
            Status::Error => "ERROR",
            Status::Unknown => "UNKNOWN",
        })
    }
}

/// An answer's status and data; the command word is added when sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    pub data: String,
}

impl Answer {
    pub fn ok(data: impl Into<String>) -> Answer {
        Answer {
            status: Status::Ok,
            data: data.into(),
        }
    }

    pub fn error(data: impl Into<String>) -> Answer {
        Answer {
            status: Status::Error,
            data: data.into(),
        }
    }

    /// The NOTIFY payload answering `command`: `COMMAND STATUS DATA`, or
    /// `COMMAND KO {ANSWER TOO LONG}` when that would not fit.
    pub fn payload(&self, command: &str) -> String {
        let full = format!("{command} {} {}", self.status, self.data);
        if full.len() < MAX_ANSWER_BYTES {
            return full;
        }
        let short = format!("{command} KO {{ANSWER TOO LONG}}");
        if short.len() < MAX_ANSWER_BYTES {
            return short;
        }
        // Only an unknown command thousands of bytes long gets here.
        format!("{} KO {{ANSWER TOO LONG}}", truncate(command, 64))
    }
}

/// Parses a notification payload sent on `powa_collector`.
pub fn parse(payload: &str) -> Request {
    let mut words = payload.split(' ').filter(|word| !word.is_empty());
    let command = words.next().unwrap_or_default().to_string();
    let channel = words
        .next()
        .filter(|channel| *channel != "-")
        .map(|channel| truncate(channel, MAX_CHANNEL_BYTES).to_string());
    let args: Vec<&str> = words.collect();
    let parsed = match command.as_str() {
        "RELOAD" => Ok(Command::Reload),
        "WORKERS_STATUS" => match args.first() {
            None => Ok(Command::WorkersStatus { srvid: None }),
            Some(word) => srvid(word).map(|srvid| Command::WorkersStatus { srvid: Some(srvid) }),
        },
        "FORCE_SNAPSHOT" => match args.as_slice() {
            [word] => srvid(word).map(|srvid| Command::ForceSnapshot { srvid }),
            _ => Err(Answer::error(format!(
                "FORCE_SNAPSHOT takes one server id, got {} arguments",
                args.len()
            ))),
        },
        "REFRESH_DB_CAT" => refresh_db_cat(&args),
        _ => Err(Answer {
            status: Status::Unknown,
            data: format!(
                "Message \"{}\" invalid, command ignored",
                truncate(&command, 200)
            ),
        }),
    };
    Request {
        command,
        channel,
        parsed,
    }
}

fn refresh_db_cat(args: &[&str]) -> Result<Command, Answer> {
    let [srvid_word, count_word, dbnames @ ..] = args else {
        return Err(Answer::error(
            "REFRESH_DB_CAT takes a server id, a number of databases and their names",
        ));
    };
    let srvid = srvid(srvid_word)?;
    let count: usize = count_word.parse().map_err(|_| {
        Answer::error(format!(
            "invalid number of databases \"{}\"",
            truncate(count_word, 64)
        ))
    })?;
    if count != dbnames.len() {
        return Err(Answer::error(format!(
            "Caller asked for {count} databases, but found {}",
            dbnames.len()
        )));
    }
    Ok(Command::RefreshDbCat {
        srvid,
        dbnames: dbnames.iter().map(|name| name.to_string()).collect(),
    })
}

fn srvid(word: &str) -> Result<i32, Answer> {
    word.parse::<i32>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| Answer::error(format!("invalid server id \"{}\"", truncate(word, 64))))
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &str, channel: Option<&str>, parsed: Result<Command, Answer>) -> Request {
        Request {
            command: command.into(),
            channel: channel.map(str::to_string),
            parsed,
        }
    }

    #[test]
    fn requests_parse() {
        let error = |text: &str| Err(Answer::error(text));
        let cases = vec![
            (
                "RELOAD r123",
                request("RELOAD", Some("r123"), Ok(Command::Reload)),
            ),
            // powa-web leaves a trailing space when there is no argument.
            (
                "RELOAD r123 ",
                request("RELOAD", Some("r123"), Ok(Command::Reload)),
            ),
            ("RELOAD", request("RELOAD", None, Ok(Command::Reload))),
            ("RELOAD -", request("RELOAD", None, Ok(Command::Reload))),
            (
                "WORKERS_STATUS r1",
                request(
                    "WORKERS_STATUS",
                    Some("r1"),
                    Ok(Command::WorkersStatus { srvid: None }),
                ),
            ),
            (
                "WORKERS_STATUS r1 3",
                request(
                    "WORKERS_STATUS",
                    Some("r1"),
                    Ok(Command::WorkersStatus { srvid: Some(3) }),
                ),
            ),
            (
                "WORKERS_STATUS  r1   3 ",
                request(
                    "WORKERS_STATUS",
                    Some("r1"),
                    Ok(Command::WorkersStatus { srvid: Some(3) }),
                ),
            ),
            (
                "WORKERS_STATUS r1 x",
                request(
                    "WORKERS_STATUS",
                    Some("r1"),
                    error("invalid server id \"x\""),
                ),
            ),
            (
                "FORCE_SNAPSHOT r1 2",
                request(
                    "FORCE_SNAPSHOT",
                    Some("r1"),
                    Ok(Command::ForceSnapshot { srvid: 2 }),
                ),
            ),
            (
                "FORCE_SNAPSHOT r1",
                request(
                    "FORCE_SNAPSHOT",
                    Some("r1"),
                    error("FORCE_SNAPSHOT takes one server id, got 0 arguments"),
                ),
            ),
            (
                "FORCE_SNAPSHOT r1 2 3",
                request(
                    "FORCE_SNAPSHOT",
                    Some("r1"),
                    error("FORCE_SNAPSHOT takes one server id, got 2 arguments"),
                ),
            ),
            (
                "FORCE_SNAPSHOT r1 -4",
                request(
                    "FORCE_SNAPSHOT",
                    Some("r1"),
                    error("invalid server id \"-4\""),
                ),
            ),
            (
                "FORCE_SNAPSHOT r1 99999999999",
                request(
                    "FORCE_SNAPSHOT",
                    Some("r1"),
                    error("invalid server id \"99999999999\""),
                ),
            ),
            (
                "REFRESH_DB_CAT r1 2 0",
                request(
                    "REFRESH_DB_CAT",
                    Some("r1"),
                    Ok(Command::RefreshDbCat {
                        srvid: 2,
                        dbnames: vec![],
                    }),
                ),
            ),
            (
                "REFRESH_DB_CAT r1 2 2 db1 db2",
                request(
                    "REFRESH_DB_CAT",
                    Some("r1"),
                    Ok(Command::RefreshDbCat {
                        srvid: 2,
                        dbnames: vec!["db1".into(), "db2".into()],
                    }),
                ),
            ),
            (
                "REFRESH_DB_CAT r1 2 3 db1 db2",
                request(
                    "REFRESH_DB_CAT",
                    Some("r1"),
                    error("Caller asked for 3 databases, but found 2"),
                ),
            ),
            (
                "REFRESH_DB_CAT r1 2 x",
                request(
                    "REFRESH_DB_CAT",
                    Some("r1"),
                    error("invalid number of databases \"x\""),
                ),
            ),
            (
                "REFRESH_DB_CAT r1 2",
                request(
                    "REFRESH_DB_CAT",
                    Some("r1"),
                    error(
                        "REFRESH_DB_CAT takes a server id, a number of databases and their names",
                    ),
                ),
            ),
            (
                "DROP r1",
                request(
                    "DROP",
                    Some("r1"),
                    Err(Answer {
                        status: Status::Unknown,
                        data: "Message \"DROP\" invalid, command ignored".into(),
                    }),
                ),
            ),
            (
                "reload r1",
                request(
                    "reload",
                    Some("r1"),
                    Err(Answer {
                        status: Status::Unknown,
                        data: "Message \"reload\" invalid, command ignored".into(),
                    }),
                ),
            ),
            (
                "",
                request(
                    "",
                    None,
                    Err(Answer {
                        status: Status::Unknown,
                        data: "Message \"\" invalid, command ignored".into(),
                    }),
                ),
            ),
            (
                "   ",
                request(
                    "",
                    None,
                    Err(Answer {
                        status: Status::Unknown,
                        data: "Message \"\" invalid, command ignored".into(),
                    }),
                ),
            ),
            (
                "RELOAD \"; DROP TABLE powa_servers; --",
                request("RELOAD", Some("\";"), Ok(Command::Reload)),
            ),
            (
                "WORKERS_STATUS canal-é",
                request(
                    "WORKERS_STATUS",
                    Some("canal-é"),
                    Ok(Command::WorkersStatus { srvid: None }),
                ),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(parse(payload), expected, "payload {payload:?}");
        }
    }

    #[test]
    fn long_channels_are_truncated_like_identifiers() {
        let long = "c".repeat(100);
        let request = parse(&format!("RELOAD {long}"));
        assert_eq!(request.channel.as_deref(), Some(&long[..63]));
        // On a character boundary, as PostgreSQL cuts multibyte names.
        let accented = "é".repeat(40);
        let request = parse(&format!("RELOAD {accented}"));
        assert_eq!(request.channel.as_deref(), Some(&accented[..62]));
    }

    #[test]
    fn answers_format() {
        assert_eq!(Answer::ok("OK").payload("RELOAD"), "RELOAD OK OK");
        assert_eq!(
            Answer::ok("{\"1\": \"running\"}").payload("WORKERS_STATUS"),
            "WORKERS_STATUS OK {\"1\": \"running\"}"
        );
        assert_eq!(
            Answer::error("Permission denied").payload("RELOAD"),
            "RELOAD ERROR Permission denied"
        );
    }

    #[test]
    fn long_answers_are_replaced() {
        let data = "x".repeat(MAX_ANSWER_BYTES);
        assert_eq!(
            Answer::ok(data).payload("WORKERS_STATUS"),
            "WORKERS_STATUS KO {ANSWER TOO LONG}"
        );
        // Exactly at the limit is too long; just under fits.
        let prefix = "WORKERS_STATUS OK ".len();
        let fits = "x".repeat(MAX_ANSWER_BYTES - 1 - prefix);
        assert_eq!(
            Answer::ok(fits.clone()).payload("WORKERS_STATUS").len(),
            MAX_ANSWER_BYTES - 1
        );
        let over = fits + "x";
        assert!(
            Answer::ok(over)
                .payload("WORKERS_STATUS")
                .ends_with("KO {ANSWER TOO LONG}")
        );
    }

    #[test]
    fn huge_unknown_commands_still_get_a_short_answer() {
        let command = "é".repeat(4000);
        let request = parse(&format!("{command} r1"));
        let answer = request.parsed.unwrap_err();
        assert_eq!(answer.status, Status::Unknown);
        let payload = answer.payload(&request.command);
        assert!(payload.len() < MAX_ANSWER_BYTES);
        assert!(payload.ends_with("KO {ANSWER TOO LONG}"));
    }
}
