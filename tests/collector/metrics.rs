//! The metrics endpoint (`metrics_address`): `/metrics` shows snapshots,
//! rows and the repository connection, `/healthz` the latter (503 once the
//! repository is gone); a port taken
//! at start is fatal, a bad address or a taken port at reload is logged and
//! the endpoint stays where it was; a changed address moves it.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::{Collector, free_port, repository_with_remote, wait_for};

/// How long the collector may take to start and take a first snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange, and on a reload's effect.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon the collector notices that the repository went away: it
/// checks its connection at least every 10 s.
const REPOSITORY_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP answer: status code and body.
struct Answer {
    code: u16,
    body: String,
}

/// `GET path` on `address`, HTTP/1.0.
fn get(address: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Ok(Answer {
        code,
        body: body.to_string(),
    })
}

/// The value of the series of `name` whose labels contain each of `labels`.
fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let (series, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            let bare = series.split('{').next() == Some(name);
            bare && labels.iter().all(|label| series.contains(label))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Waits until the log has more lines holding `needle` than `before`.
fn reload_logged(collector: &Collector, needle: &str, before: usize) {
    wait_for(HTTP_TIMEOUT, needle, || {
        let seen = collector.log().matches(needle).count();
        if seen > before {
            Ok(())
        } else {
            Err(format!("{seen} lines with {needle:?}"))
        }
    });
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A configuration for `dsn` with `metrics_address` set to `address`.
fn config_with(mut config: serde_json::Value, address: &str) -> String {
    config["metrics_address"] = serde_json::Value::from(address);
    config.to_string()
}

#[test]
fn metrics_show_snapshots_and_health_and_follow_reloads() {
    let (repository, _remote, srvid) = repository_with_remote(5);
    let mut repo = repository.connect_powa();
    let address = loopback(free_port());
    let base = Collector::config_for(&repository);
    let mut collector =
        Collector::start_with_config(&config_with(base.clone(), &address.to_string()));
    collector.wait_for_first_snapshot(&mut repo, srvid, SNAPSHOT_TIMEOUT);

    let server = format!("srvid=\"{srvid}\"");
    let text = collector.wait_for(HTTP_TIMEOUT, "a snapshot counted on /metrics", || {
        let answer = get(address, "/metrics").map_err(|e| e.to_string())?;
        match value(&answer.body, "powa_collector_snapshots_total", &[&server]) {
            Some(count) if answer.code == 200 && count >= 1.0 => Ok(answer.body),
            _ => Err(format!("{} {}", answer.code, answer.body)),
        }
    });
    println!("/metrics:\n{text}");
    let rows = value(&text, "powa_collector_snapshot_rows_total", &[&server]);
    assert!(
        rows.is_some_and(|rows| rows > 0.0),
        "rows: {rows:?}\n{text}"
    );
    assert_eq!(
        value(&text, "powa_collector_repository_up", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "powa_collector_workers", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "powa_collector_worker_status",
            &[&server, "status=\"running\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "powa_collector_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    for name in [
        "powa_collector_last_snapshot_success_timestamp_seconds",
        "powa_collector_last_snapshot_duration_seconds",
        "powa_collector_snapshot_errors_total",
        "powa_collector_repository_wait_seconds_total",
    ] {
        assert!(value(&text, name, &[&server]).is_some(), "{name}:\n{text}");
    }
    assert!(!text.contains("password"), "{text}");

    let health = get(address, "/healthz").expect("GET /healthz");
    assert_eq!((health.code, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(address, "/nothing").expect("GET /nothing").code, 404);

    let config_path = collector.config_path();
    // A bad address at reload: logged, the endpoint stays.
    fs::write(&config_path, config_with(base.clone(), "not an address")).expect("write config");
    let before = collector.log().matches("reload failed").count();
    collector.signal("HUP");
    reload_logged(&collector, "reload failed", before);
    assert!(
        collector.log().contains("key metrics_address"),
        "{}",
        collector.log()
    );
    assert!(collector.exit_status().is_none(), "the collector exited");
    assert_eq!(get(address, "/healthz").expect("GET /healthz").code, 200);

    // A taken port at reload: logged, the endpoint stays.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_address = taken.local_addr().expect("local address");
    fs::write(
        &config_path,
        config_with(base.clone(), &taken_address.to_string()),
    )
    .expect("write config");
    let needle = format!("cannot serve metrics on {taken_address}");
    collector.signal("HUP");
    reload_logged(&collector, &needle, 0);
    assert!(collector.exit_status().is_none(), "the collector exited");
    assert_eq!(get(address, "/healthz").expect("GET /healthz").code, 200);
    drop(taken);

    // A new address at reload: the endpoint moves.
    let moved = loopback(free_port());
    fs::write(&config_path, config_with(base, &moved.to_string())).expect("write config");
    collector.signal("HUP");
    collector.wait_for(
        HTTP_TIMEOUT,
        "the endpoint on its new address",
        || match get(moved, "/healthz") {
            Ok(answer) if answer.code == 200 => Ok(()),
            Ok(answer) => Err(format!("{} {}", answer.code, answer.body)),
            Err(e) => Err(e.to_string()),
        },
    );
    wait_for(HTTP_TIMEOUT, "the old address to be closed", || {
        match get(address, "/healthz") {
            Err(_) => Ok(()),
            Ok(answer) => Err(format!("still answering {}", answer.code)),
        }
    });

    // The repository goes away: /healthz says so, within a check interval.
    drop(repo);
    repository.stop_now();
    collector.wait_for(
        REPOSITORY_CHECK_TIMEOUT,
        "/healthz to answer 503",
        || match get(moved, "/healthz") {
            Ok(answer) if answer.code == 503 => Ok(answer.body),
            Ok(answer) => Err(format!("{} {}", answer.code, answer.body)),
            Err(e) => Err(e.to_string()),
        },
    );
    let text = get(moved, "/metrics").expect("GET /metrics").body;
    assert_eq!(
        value(&text, "powa_collector_repository_up", &[]),
        Some(0.0),
        "{text}"
    );
    collector.stop().assert_exited_zero();
}

#[test]
fn a_taken_port_at_start_is_fatal() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("local address");
    let config = serde_json::json!({
        "repository": {
            "dsn": format!("host=127.0.0.1 port={} user=postgres dbname=powa", free_port())
        },
        "metrics_address": address.to_string(),
    });
    let mut collector = Collector::start_with_config(&config.to_string());
    let status = wait_for(HTTP_TIMEOUT, "the collector to exit", || {
        collector.exit_status().ok_or_else(|| "running".to_string())
    });
    assert_eq!(status.code(), Some(1), "{}", collector.log());
    let log = collector.log();
    assert!(
        log.contains(&format!(
            "cannot serve metrics on {address} (metrics_address)"
        )),
        "{log}"
    );
}

#[test]
fn a_bad_address_at_start_is_a_configuration_error() {
    let config = serde_json::json!({
        "repository": { "dsn": "host=127.0.0.1 user=postgres dbname=powa" },
        "metrics_address": "localhost",
    });
    let mut collector = Collector::start_with_config(&config.to_string());
    let status = wait_for(HTTP_TIMEOUT, "the collector to exit", || {
        collector.exit_status().ok_or_else(|| "running".to_string())
    });
    assert_eq!(status.code(), Some(78), "{}", collector.log());
    assert!(
        collector.log().contains("key metrics_address"),
        "{}",
        collector.log()
    );
}
