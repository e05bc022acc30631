//! Writes the manual page powa-collector(1), in roff, to standard output or
//! to the file named as the only argument:
//!
//! ```sh
//! cargo run --example man -- target/powa-collector.1
//! ```
//!
//! The synopsis, the options and the commands come from the command line's
//! definition (`powa_collector::cli`), so that a new option or command shows
//! up by itself; the configuration keys must each have an entry in
//! [`CONFIG_KEYS`], which the tests below check against `config::KEYS`. The
//! other sections (signals, exit status, files) are written here, for the
//! page only: `--help` stays short. clap_mangen and roff are
//! dev-dependencies: the collector's binary carries none of this.

use std::io::{self, Write};

use clap::{Arg, Command, CommandFactory};
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};
use powa_collector::cli::Cli;
use powa_collector::error::{EXIT_CONFIG, EXIT_FAILURE};

/// Each configuration key, its type and default, and what it does.
const CONFIG_KEYS: [(&str, &str, &str); 6] = [
    (
        "repository.dsn",
        "string, required",
        "libpq connection string (URI or key=value) of the repository database. \
         What it leaves out comes from the PG* environment variables and libpq's \
         defaults; its password may come from ~/.pgpass.",
    ),
    (
        "repository.pool_size",
        "whole number from 1 to 100, default 4",
        "Repository connections the workers share, besides the main thread's: at \
         most this many snapshots, error reports and version saves run on the \
         repository at once.",
    ),
    (
        "debug",
        "boolean, default false",
        "Log at debug level: each datasource copied, with its row count, and each \
         request received.",
    ),
    (
        "use_server_alias",
        "boolean, default false",
        "Name a server in logs by its alias (powa_servers.alias) rather than host:port.",
    ),
    (
        "snapshot_timeout",
        "number of seconds, default the server's frequency and at least 60",
        "Deadline of one snapshot; past it, its queries are cancelled and it is \
         rolled back. The Python collector ignores this key, so the file can stay \
         shared.",
    ),
    (
        "metrics_address",
        "string, an IP address and a port, default none",
        "Where to serve /metrics (Prometheus text format) and /healthz over HTTP, \
         e.g. \"127.0.0.1:9187\" or \"[::1]:9187\"; without it, no endpoint. The \
         Python collector ignores this key.",
    ),
];

fn main() -> io::Result<()> {
    let page = page()?;
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(path, page),
        None => io::stdout().write_all(&page),
    }
}

/// The whole page.
fn page() -> io::Result<Vec<u8>> {
    let mut cli = Cli::command();
    cli.build();
    let man = Man::new(cli.clone())
        .title("POWA-COLLECTOR")
        .date(date())
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    sections(&cli).to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(single_preamble(out))
}

/// The page's date: that of SOURCE_DATE_EPOCH when set (scripts/deb sets
/// the last commit's, so that the page is reproducible), else today.
fn date() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|value| value.parse::<i64>().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_secs() as i64)
        });
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The Gregorian date of a day counted from 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The commands a user runs: clap's own `help` command is left out.
fn subcommands(cli: &Command) -> impl Iterator<Item = &Command> {
    cli.get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
}

/// Every section written here, after the options.
fn sections(cli: &Command) -> Roff {
    let mut roff = Roff::new();
    commands(&mut roff, cli);
    configuration(&mut roff);
    signals(&mut roff);
    exit_status(&mut roff);
    files(&mut roff);
    see_also(&mut roff);
    roff
}

/// Each roff writer starts with the same preamble; keep the first.
fn single_preamble(page: Vec<u8>) -> Vec<u8> {
    let preamble = Roff::new().render();
    let text = String::from_utf8(page).expect("roff output is UTF-8");
    let (first, rest) = text.split_at(preamble.len());
    format!("{first}{}", rest.replace(&preamble, "")).into_bytes()
}

/// A paragraph.
fn paragraph(roff: &mut Roff, text: impl Into<Vec<Inline>>) {
    roff.control("PP", []);
    roff.text(text);
}

/// An indented entry: its term on a line, then its text.
fn entry(roff: &mut Roff, term: impl Into<Vec<Inline>>, text: impl Into<Vec<Inline>>) {
    roff.control("TP", []);
    roff.text(term);
    roff.text(text);
}

/// COMMANDS: each subcommand with its usage, description and own options.
fn commands(roff: &mut Roff, cli: &Command) {
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Without a command, powa-collector runs the collector daemon in the foreground, \
         logging to standard error.",
    )]);
    for command in subcommands(cli) {
        roff.control(
            "SS",
            [format!("powa-collector {}", command.get_name()).as_str()],
        );
        let about = command.get_long_about().or(command.get_about());
        paragraphs(roff, &about.map(|a| a.to_string()).unwrap_or_default());
        for arg in command
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set())
        {
            entry(roff, arg_term(arg), arg_text(arg));
        }
        if let Some(after) = command.get_after_long_help() {
            preformatted(roff, &after.to_string(), false);
        }
    }
}

/// Text in paragraphs, one per blank-line-separated block.
fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, block) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(block.replace('\n', " "))]);
    }
}

/// Text kept as it is laid out (a table, an example), indented or not.
fn preformatted(roff: &mut Roff, text: &str, indented: bool) {
    roff.control("PP", []);
    roff.control("nf", []);
    if indented {
        roff.control("RS", []);
    }
    roff.text([roman(text.trim_end())]);
    if indented {
        roff.control("RE", []);
    }
    roff.control("fi", []);
}

/// `--timeout SECONDS`, `-s, --server ID`, or `[SRVID]` for a positional.
fn arg_term(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    if arg.is_positional() {
        let value = if arg.is_required_set() {
            value
        } else {
            format!("[{value}]")
        };
        return vec![italic(value)];
    }
    let mut term = Vec::new();
    if let Some(short) = arg.get_short() {
        term.push(bold(format!("-{short}")));
        term.push(roman(", "));
    }
    if let Some(long) = arg.get_long() {
        term.push(bold(format!("--{long}")));
    }
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        term.push(roman(" "));
        term.push(italic(value));
    }
    term
}

/// The argument's help, and its default when it has one.
fn arg_text(arg: &Arg) -> Vec<Inline> {
    let mut text = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
        text.push_str(&format!(" [default: {}]", defaults.join(", ")));
    }
    vec![roman(text)]
}

/// CONFIGURATION: the file's format and every key.
fn configuration(roff: &mut Roff) {
    roff.control("SH", ["CONFIGURATION"]);
    roff.text([roman(
        "The configuration file is a JSON object, the same as the Python collector's:",
    )]);
    preformatted(roff, powa_collector::config::SAMPLE, true);
    paragraph(
        roff,
        [roman("Its keys, a nested key written parent.child:")],
    );
    for (key, kind, text) in CONFIG_KEYS {
        entry(
            roff,
            [bold(key), roman(format!(" ({kind})"))],
            [roman(text)],
        );
    }
    paragraph(
        roff,
        [roman(
            "Unknown keys are reported with a warning and ignored. The remote servers are not \
             in the file: they are the rows of powa_servers in the repository, added with \
             powa_register_server(); reload the collector after changing them.",
        )],
    );
}

/// SIGNALS: reload and stop.
fn signals(roff: &mut Roff) {
    roff.control("SH", ["SIGNALS"]);
    entry(
        roff,
        [bold("SIGHUP")],
        [roman(
            "Reload: read the configuration file and the server list again; workers are \
             started, stopped or reconnected to follow them. A reload that cannot read either \
             is logged and the collector runs on as before. systemctl reload powa-collector \
             sends it; powa-collector reload asks for the same through the repository.",
        )],
    );
    entry(
        roff,
        [bold("SIGTERM"), roman(", "), bold("SIGINT")],
        [roman(
            "Stop: every worker stops, a snapshot in flight is cancelled and rolled back, and \
             the collector exits with status 0. A second one exits at once.",
        )],
    );
}

/// EXIT STATUS: 0, 1 and 78, with the commands' meaning of them.
fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    entry(
        roff,
        [bold("0")],
        [roman(
            "The daemon stopped on SIGTERM or SIGINT, or the command succeeded (status and \
             reload: the running collector answered in time; check: every check passed).",
        )],
    );
    entry(
        roff,
        [bold(EXIT_FAILURE.to_string())],
        [roman(
            "A fatal error: the repository cannot be reached, or PoWA is missing or too old \
             there; or the command failed (status and reload: no answer from the collector in \
             time; check: a check failed).",
        )],
    );
    entry(
        roff,
        [bold(EXIT_CONFIG.to_string())],
        [roman(
            "A configuration error (EX_CONFIG): no configuration file found, invalid JSON, a \
             missing or mistyped key, an invalid repository.dsn. Nothing was started; the \
             systemd unit does not restart the daemon after it.",
        )],
    );
}

/// FILES: the configuration file's places, the password file, the unit.
fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    let places = [
        "/etc/powa-collector.conf",
        "~/.config/powa-collector.conf",
        "~/.powa-collector.conf",
        "./powa-collector.conf",
    ];
    for place in places {
        roff.control("TQ", []);
        roff.text([italic(place)]);
    }
    roff.text([roman(
        "The configuration file: without --config, the first of these that exists.",
    )]);
    entry(
        roff,
        [italic("~/.pgpass")],
        [roman(
            "Passwords for the repository and the remote servers, in the home directory of the \
             user the collector runs as (powa under systemd), mode 0600; PGPASSFILE names \
             another file. A file that its group or others may read is ignored.",
        )],
    );
    entry(
        roff,
        [italic("/lib/systemd/system/powa-collector.service")],
        [roman(
            "The systemd unit of the Debian package: Type=notify, runs the daemon as user powa, \
             reloads it with SIGHUP, and does not restart it after a configuration error.",
        )],
    );
    entry(
        roff,
        [italic("/usr/share/doc/powa-collector/README.Debian")],
        [roman(
            "Setting up the repository role, its privileges and the password file, with the \
             Debian package.",
        )],
    );
}

/// SEE ALSO.
fn see_also(roff: &mut Roff) {
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "psql(1), systemctl(1), journalctl(1); PoWA: https://powa.readthedocs.io/",
    )]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        String::from_utf8(page().unwrap()).unwrap()
    }

    #[test]
    fn every_command_has_its_section() {
        let page = rendered();
        let mut cli = Cli::command();
        cli.build();
        let names: Vec<_> = subcommands(&cli).map(|c| c.get_name().to_owned()).collect();
        assert!(names.contains(&"status".to_owned()), "{names:?}");
        for name in names {
            assert!(
                page.contains(&format!(".SS \"powa-collector {name}\"")),
                "no section for {name}"
            );
        }
        assert!(page.contains("\\fB\\-\\-timeout\\fR"), "{page}");
    }

    #[test]
    fn every_config_key_is_documented() {
        let documented: Vec<&str> = CONFIG_KEYS.iter().map(|(key, _, _)| *key).collect();
        assert_eq!(documented, powa_collector::config::KEYS);
        let page = rendered();
        for key in powa_collector::config::KEYS {
            assert!(
                page.contains(&format!("\\fB{key}\\fR")),
                "{key} not in the page"
            );
        }
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn sections_and_codes_are_there() {
        let page = rendered();
        for section in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "COMMANDS",
            "CONFIGURATION",
            "SIGNALS",
            "\"EXIT STATUS\"",
            "FILES",
        ] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "no section {section}"
            );
        }
        for text in [
            "\\fB78\\fR",
            "SIGHUP",
            "~/.pgpass",
            "/etc/powa\\-collector.conf",
        ] {
            assert!(page.contains(text), "{text} not in the page");
        }
        assert_eq!(page.matches(&Roff::new().render()).count(), 1);
    }
}
