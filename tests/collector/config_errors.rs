//! The command line and configuration errors: each bad config exits 78 with a
//! message naming the file or key, before anything is started; an unknown
//! key only warns.

use std::fs;
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{Finished, free_port, run_collector};

/// Exit code for a configuration error (EX_CONFIG).
const EXIT_CONFIG: i32 = 78;
/// Exit code for any other fatal error.
const EXIT_FATAL: i32 = 1;
/// How long a run that must fail at once may take.
const QUICK: Duration = Duration::from_secs(10);

/// Writes `config` to a file in `dir` and runs the collector on it.
fn run_with_config(dir: &TempDir, config: &str) -> (String, Finished) {
    let path = dir.path().join("powa-collector.conf");
    fs::write(&path, config).expect("write the config file");
    let path = path.to_str().expect("utf-8 path").to_string();
    let finished = run_collector(&["-c", &path], dir.path(), QUICK);
    (path, finished)
}

/// Asserts that the run exited 78 and that stderr contains each of
/// `expected`.
fn assert_config_error(case: &str, finished: &Finished, expected: &[&str]) {
    assert_eq!(
        finished.code(),
        Some(EXIT_CONFIG),
        "{case}: exit status {:?} instead of {EXIT_CONFIG}\nstdout: {}\nstderr: {}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    for fragment in expected {
        assert!(
            finished.stderr.contains(fragment),
            "{case}: stderr does not contain {fragment:?}:\n{}",
            finished.stderr
        );
    }
}

fn valid_dsn() -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=powa",
        free_port()
    )
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new().expect("temporary directory");
    let path = dir.path().join("absent.conf");
    let path = path.to_str().expect("utf-8 path");
    let finished = run_collector(&["-c", path], dir.path(), QUICK);
    assert_config_error(
        "missing file",
        &finished,
        &[path, "No such file or directory"],
    );
}

#[test]
fn invalid_json_names_line_and_column() {
    let dir = TempDir::new().expect("temporary directory");
    let config = format!(
        "{{\n  \"repository\": {{\"dsn\": \"{}\"}}\n  \"debug\": true\n}}\n",
        valid_dsn()
    );
    let (path, finished) = run_with_config(&dir, &config);
    assert_config_error("invalid JSON", &finished, &[&path, "line 3, column "]);
}

#[test]
fn trailing_comma_is_named() {
    // The sample of the PoWA 4 announcement.
    let dir = TempDir::new().expect("temporary directory");
    let config = format!(
        "{{\n    \"repository\": {{\n        \"dsn\": \"{}\",\n    }},\n    \"debug\": true\n}}\n",
        valid_dsn()
    );
    let (path, finished) = run_with_config(&dir, &config);
    assert_config_error("trailing comma", &finished, &[&path, "trailing comma"]);
}

#[test]
fn missing_dsn_prints_a_sample() {
    for (case, config) in [
        ("no repository", r#"{"debug": true}"#),
        ("no dsn", r#"{"repository": {}, "debug": true}"#),
    ] {
        let dir = TempDir::new().expect("temporary directory");
        let (_, finished) = run_with_config(&dir, config);
        assert_config_error(
            case,
            &finished,
            &["repository.dsn", "\"repository\"", "\"dsn\""],
        );
    }
}

#[test]
fn wrong_types_name_the_key() {
    let dsn = valid_dsn();
    let cases = [
        (
            "debug",
            format!(r#"{{"repository": {{"dsn": "{dsn}"}}, "debug": "yes"}}"#),
        ),
        (
            "use_server_alias",
            format!(r#"{{"repository": {{"dsn": "{dsn}"}}, "use_server_alias": 1}}"#),
        ),
        ("repository", format!(r#"{{"repository": "{dsn}"}}"#)),
        (
            "repository.dsn",
            r#"{"repository": {"dsn": 5432}}"#.to_string(),
        ),
    ];
    for (key, config) in &cases {
        let dir = TempDir::new().expect("temporary directory");
        let (_, finished) = run_with_config(&dir, config);
        assert_config_error(
            &format!("wrong type for {key}"),
            &finished,
            &[key, "expected"],
        );
    }
}

#[test]
fn unparsable_dsn_is_invalid() {
    for dsn in [
        "host=127.0.0.1 port",
        "host='127.0.0.1",
        "postgresql://postgres@127.0.0.1:notaport/powa",
    ] {
        let dir = TempDir::new().expect("temporary directory");
        let config = serde_json::json!({ "repository": { "dsn": dsn } }).to_string();
        let (_, finished) = run_with_config(&dir, &config);
        assert_config_error(
            &format!("DSN {dsn:?}"),
            &finished,
            &["repository.dsn", "invalid"],
        );
    }
}

#[test]
fn unknown_keys_only_warn() {
    let dir = TempDir::new().expect("temporary directory");
    // Nothing listens there: the collector gets past the config, then fails
    // (or retries) on the connection.
    let config = serde_json::json!({
        "repository": { "dsn": valid_dsn(), "dns": "typo" },
        "debug": false,
        "use_server_aliases": true,
    })
    .to_string();
    let (_, finished) = run_with_config(&dir, &config);
    assert_ne!(
        finished.code(),
        Some(EXIT_CONFIG),
        "an unknown key is a configuration error:\n{}",
        finished.stderr
    );
    // An unreachable repository at start is a fatal error, not a config one.
    assert_eq!(
        finished.code(),
        Some(EXIT_FATAL),
        "exit status {:?} with the repository unreachable:\n{}",
        finished.status,
        finished.stderr
    );
    for key in ["use_server_aliases", "dns"] {
        let warned = finished
            .stderr
            .lines()
            .any(|line| line.to_lowercase().contains("unknown") && line.contains(key));
        assert!(
            warned,
            "no warning line with \"unknown\" and {key:?}:\n{}",
            finished.stderr
        );
    }
}

fn run_flag(flag: &str) -> Finished {
    let dir = TempDir::new().expect("temporary directory");
    let finished = run_collector(&[flag], dir.path(), QUICK);
    assert_eq!(
        finished.code(),
        Some(0),
        "{flag}: exit status {:?}\nstdout: {}\nstderr: {}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    finished
}

#[test]
fn version_flag_prints_the_version() {
    for flag in ["--version", "-V"] {
        let finished = run_flag(flag);
        assert!(
            finished.stdout.contains(env!("CARGO_PKG_VERSION")),
            "{flag}: no version {} in {:?}",
            env!("CARGO_PKG_VERSION"),
            finished.stdout
        );
    }
}

#[test]
fn help_flags_print_usage() {
    for flag in ["--help", "-h", "-?"] {
        let finished = run_flag(flag);
        assert!(
            finished.stdout.contains("--config"),
            "{flag}: no --config in the help:\n{}",
            finished.stdout
        );
    }
}
