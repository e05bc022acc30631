//! Connections with libpq's means: a remote registered with a NULL
//! password and a password file, TLS with `verify-full` and client
//! certificates (in the connection string and through `PGSSL*`), a server
//! that never answers, Unix socket directories as host.
//!
//! Certificates are made at test time with the `openssl` crate: a test CA,
//! a server certificate for `powa-repository.test` and 127.0.0.1, a client
//! certificate for role `collector_tls`.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use postgres::{Client, NoTls};
use powa_collector::conninfo::ConnInfo;
use tempfile::TempDir;

use crate::harness::{
    Cluster, Collector, RemoteOptions, run_collector, snapshot_meta, wait_for, wait_until,
};

/// Long enough for a first snapshot at frequency 5 (random start offset
/// included) on a loaded machine.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a server takes to apply a reloaded configuration.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The role the collector uses where authentication is not `trust`.
const PASSWORD_ROLE: &str = "collector";
const CERT_ROLE: &str = "collector_tls";

/// Creates a superuser role that can log in.
fn create_role(cluster: &Cluster, role: &str, password: Option<&str>) {
    let password = password.map_or(String::new(), |p| format!(" PASSWORD '{p}'"));
    cluster
        .connect("postgres")
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {role} LOGIN SUPERUSER{password}"
        ))
        .unwrap_or_else(|e| panic!("CREATE ROLE {role}: {e}"));
}

/// Registers a remote on `repository` as libpq-style settings would:
/// `hostname`, the remote's port, `username`, a NULL password.
fn register(repository: &Cluster, hostname: &str, port: u16, username: &str, alias: &str) -> i32 {
    let mut client = repository.connect_powa();
    let port = i32::from(port);
    client
        .execute(
            "SELECT powa_register_server(hostname => $1, port => $2, alias => $3, \
             username => $4, password => NULL, dbname => 'powa', frequency => 5, \
             extensions => '{pg_stat_kcache,pg_qualstats,pg_wait_sampling}')",
            &[&hostname, &port, &alias, &username],
        )
        .unwrap_or_else(|e| panic!("powa_register_server {hostname}:{port}: {e}"));
    let srvid: i32 = client
        .query_one(
            "SELECT id FROM powa_servers WHERE hostname = $1 AND port = $2",
            &[&hostname, &port],
        )
        .unwrap_or_else(|e| panic!("srvid of {hostname}:{port}: {e}"))
        .get(0);
    let password: Option<String> = client
        .query_one("SELECT password FROM powa_servers WHERE id = $1", &[&srvid])
        .expect("powa_servers.password")
        .get(0);
    assert_eq!(
        password, None,
        "the server must be registered without a password"
    );
    srvid
}

/// The collector's configuration with `dsn` for the repository.
fn config(dsn: &str) -> String {
    serde_json::json!({ "repository": { "dsn": dsn }, "debug": true }).to_string()
}

/// Waits until `count` more snapshots of `srvid` land on `repository`,
/// without errors.
fn wait_for_snapshots(collector: &mut Collector, repository: &Cluster, srvid: i32, count: i64) {
    let mut repo = repository.connect_powa();
    let target = snapshot_meta(&mut repo, srvid).coalesce_seq + count;
    collector.wait_for(
        SNAPSHOT_TIMEOUT + Duration::from_secs(5) * (count as u32),
        &format!("{count} more snapshot(s) of server {srvid} without errors"),
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            if meta.coalesce_seq >= target && meta.errors.is_none() {
                Ok(())
            } else {
                Err(format!("{meta:?}"))
            }
        },
    );
}

/// Waits until `errors` of `srvid` contain `needle`, and returns them.
fn wait_for_error(
    collector: &mut Collector,
    repository: &Cluster,
    srvid: i32,
    needle: &str,
) -> Vec<String> {
    let mut repo = repository.connect_powa();
    collector.wait_for(
        SNAPSHOT_TIMEOUT,
        &format!("\"{needle}\" in the errors of server {srvid}"),
        || {
            let meta = snapshot_meta(&mut repo, srvid);
            if meta.has_error_containing(needle) {
                Ok(meta.errors.unwrap_or_default())
            } else {
                Err(format!("{meta:?}"))
            }
        },
    )
}

/// A pg_hba.conf where `role` authenticates with `method` over TCP (on
/// `kind` lines: host or hostssl), and everyone else is trusted.
fn hba_for(role: &str, kind: &str, method: &str) -> String {
    format!(
        "local all all trust\n\
         {kind} all {role} 127.0.0.1/32 {method}\n\
         host all {role} 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 trust\n"
    )
}

/// Waits until a plain connection as `role` with no password is refused:
/// the new pg_hba.conf is in force.
fn wait_for_password_required(cluster: &Cluster, role: &str) {
    let dsn = format!(
        "host=127.0.0.1 port={} user={role} dbname=powa",
        cluster.port()
    );
    wait_until(
        RELOAD_TIMEOUT,
        &format!("connections as {role} to need a password"),
        || Client::connect(&dsn, NoTls).is_err(),
    );
}

fn write_private(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A repository, and a remote where `PASSWORD_ROLE` (password `right-pw`)
/// must authenticate with scram-sha-256 over TCP, registered on the
/// repository as `alias` for that role without a password: the repository,
/// the remote and its srvid.
fn repository_and_password_remote(alias: &str) -> (Cluster, Cluster, i32) {
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    create_role(&remote, PASSWORD_ROLE, Some("right-pw"));
    remote.reconfigure(&[], Some(&hba_for(PASSWORD_ROLE, "host", "scram-sha-256")));
    wait_for_password_required(&remote, PASSWORD_ROLE);
    let srvid = register(
        &repository,
        "127.0.0.1",
        remote.port(),
        PASSWORD_ROLE,
        alias,
    );
    (repository, remote, srvid)
}

/// Writes `contents` to `passfile` with permissions `mode`, and starts the
/// collector against `repository` with that file as its `PGPASSFILE`.
fn start_with_passfile(
    repository: &Cluster,
    passfile: &Path,
    contents: &str,
    mode: u32,
) -> Collector {
    write_private(passfile, contents, mode);
    Collector::start_with_env(
        &config(&repository.dsn()),
        &[("PGPASSFILE", passfile.to_str().unwrap())],
    )
}

#[test]
fn password_file_serves_a_remote_registered_without_password() {
    let (repository, remote, srvid) = repository_and_password_remote("scram");

    let dir = TempDir::new().expect("temporary directory");
    let passfile = dir.path().join("pgpass");
    // A comment, a line for another port, then ours with a wildcard.
    let mut collector = start_with_passfile(
        &repository,
        &passfile,
        &format!(
            "# PoWA remotes\n127.0.0.1:1:powa:{PASSWORD_ROLE}:not-this-one\n\
             127.0.0.1:{}:*:{PASSWORD_ROLE}:right-pw\n",
            remote.port()
        ),
        0o600,
    );
    wait_for_snapshots(&mut collector, &repository, srvid, 2);
    let scram_sessions: i64 = remote
        .connect("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE usename = $1 AND application_name LIKE 'PoWA collector - worker%'",
            &[&PASSWORD_ROLE],
        )
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(
        scram_sessions, 1,
        "the worker is connected as {PASSWORD_ROLE}"
    );
    collector.stop();
}

#[test]
fn wrong_or_unsafe_password_files_are_reported_without_the_password() {
    let (repository, _remote, srvid) = repository_and_password_remote("wrong");
    let dir = TempDir::new().expect("temporary directory");

    // A wrong password: the authentication error reaches the UI and the
    // logs, naming the file, never showing the password.
    let wrong = dir.path().join("wrong-pgpass");
    let mut collector = start_with_passfile(
        &repository,
        &wrong,
        &format!("*:*:*:{PASSWORD_ROLE}:Wr0ng-Secret\n"),
        0o600,
    );
    let errors = wait_for_error(
        &mut collector,
        &repository,
        srvid,
        "password authentication failed",
    );
    let all = errors.join("\n");
    assert!(all.contains("password retrieved from file"), "{all}");
    assert!(!all.contains("Wr0ng-Secret"), "{all}");
    collector.stop();
    let log = collector.log();
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(
        !log.contains("Wr0ng-Secret"),
        "the log shows the password:\n{log}"
    );

    // The right password in a file others can read: ignored, with a
    // warning; the server then finds no password.
    let unsafe_file = dir.path().join("readable-pgpass");
    let mut collector = start_with_passfile(
        &repository,
        &unsafe_file,
        &format!("*:*:*:{PASSWORD_ROLE}:right-pw\n"),
        0o644,
    );
    let errors = wait_for_error(&mut collector, &repository, srvid, "password missing");
    assert!(!errors.join("\n").contains("right-pw"), "{errors:?}");
    collector.stop();
    let log = collector.log();
    let warning = format!(
        "password file \"{}\" has group or world access",
        unsafe_file.display()
    );
    assert!(log.contains(&warning), "no warning in the log:\n{log}");
    assert!(
        !log.contains("right-pw"),
        "the log shows the password:\n{log}"
    );
}

/// Test certificates: a CA, a server certificate, a client certificate.
struct Pki {
    dir: TempDir,
    ca_pem: Vec<u8>,
    server_cert_pem: Vec<u8>,
    server_key_pem: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new().expect("temporary directory");
        let ca_key = new_key();
        let ca = certificate("powa test CA", &ca_key, None, Role::Ca);
        let server_key = new_key();
        let server = certificate(
            "powa-repository.test",
            &server_key,
            Some((&ca, &ca_key)),
            Role::Server,
        );
        let client_key = new_key();
        let client = certificate(CERT_ROLE, &client_key, Some((&ca, &ca_key)), Role::Client);

        let pki = Pki {
            dir,
            ca_pem: ca.to_pem().unwrap(),
            server_cert_pem: server.to_pem().unwrap(),
            server_key_pem: server_key.private_key_to_pem_pkcs8().unwrap(),
        };
        fs::write(pki.ca_file(), &pki.ca_pem).unwrap();
        fs::write(pki.client_cert_file(), client.to_pem().unwrap()).unwrap();
        let key = String::from_utf8(client_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        write_private(&pki.client_key_file(), &key, 0o600);
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// Turns TLS on for `cluster`, with `hostssl ... cert` for the
    /// certificate role, and waits until it is in force.
    fn serve(&self, cluster: &Cluster) {
        cluster.write_data_file("server.crt", &self.server_cert_pem);
        cluster.write_data_file("server.key", &self.server_key_pem);
        cluster.write_data_file("ca.crt", &self.ca_pem);
        create_role(cluster, CERT_ROLE, None);
        cluster.reconfigure(
            &[
                ("ssl", "on"),
                ("ssl_cert_file", "'server.crt'"),
                ("ssl_key_file", "'server.key'"),
                ("ssl_ca_file", "'ca.crt'"),
            ],
            Some(&hba_for(CERT_ROLE, "hostssl", "cert")),
        );
        wait_until(RELOAD_TIMEOUT, "ssl = on after the reload", || {
            cluster
                .connect("postgres")
                .query_one("SHOW ssl", &[])
                .is_ok_and(|row| row.get::<_, String>(0) == "on")
        });
    }

    /// The `ssl*` part of a connection string.
    fn dsn_keys(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            self.ca_file().display(),
            self.client_cert_file().display(),
            self.client_key_file().display()
        )
    }
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

enum Role {
    Ca,
    Server,
    Client,
}

fn certificate(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    role: Role,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let serial = BigNum::from_u32(fastrand::u32(1..u32::MAX)).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder
        .set_issuer_name(issuer.map_or(&name, |(ca, _)| ca.subject_name()))
        .unwrap();
    builder.set_pubkey(key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match role {
        Role::Ca => {
            builder
                .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            builder
                .append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().unwrap())
                .unwrap();
        }
        Role::Server => {
            let san = SubjectAlternativeName::new()
                .dns(cn)
                .ip("127.0.0.1")
                .build(&builder.x509v3_context(issuer.map(|(ca, _)| ca.as_ref()), None))
                .unwrap();
            builder.append_extension(san).unwrap();
            builder
                .append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
                .unwrap();
        }
        Role::Client => {
            builder
                .append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
                .unwrap();
        }
    }
    let signer = issuer.map_or(key, |(_, ca_key)| ca_key);
    builder.sign(signer, MessageDigest::sha256()).unwrap();
    builder.build()
}

/// The collector's sessions on `cluster`: each one's name, whether it uses
/// TLS, and the subject of its client certificate.
fn collector_sessions(cluster: &Cluster) -> Vec<(String, bool, String)> {
    cluster
        .connect("postgres")
        .query(
            "SELECT a.application_name, coalesce(s.ssl, false), coalesce(s.client_dn, '') \
             FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'PoWA collector%'",
            &[],
        )
        .expect("pg_stat_ssl")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[test]
fn tls_with_verify_full_and_client_certificates() {
    let pki = Pki::new();
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    pki.serve(&repository);
    pki.serve(&remote);
    // The remote is reached through PGSSL*: its row only names it.
    let srvid = register(&repository, "127.0.0.1", remote.port(), CERT_ROLE, "tls");

    // The repository through the connection string.
    let dsn = format!(
        "host=powa-repository.test hostaddr=127.0.0.1 port={} user={CERT_ROLE} dbname=powa {}",
        repository.port(),
        pki.dsn_keys()
    );
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", pki.ca_file().to_str().unwrap()),
        ("PGSSLCERT", pki.client_cert_file().to_str().unwrap()),
        ("PGSSLKEY", pki.client_key_file().to_str().unwrap()),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut collector = Collector::start_with_env(&config(&dsn), &env);
    wait_for_snapshots(&mut collector, &repository, srvid, 2);
    for cluster in [&repository, &remote] {
        let sessions = collector_sessions(cluster);
        let expected_dn = format!("/CN={CERT_ROLE}");
        assert!(
            !sessions.is_empty()
                && sessions
                    .iter()
                    .all(|(_, ssl, dn)| *ssl && *dn == expected_dn),
            "every session of the collector uses TLS and the client certificate: {sessions:?}"
        );
    }
    collector.stop();

    // A query on such a connection is cancelled with the same TLS settings.
    let conninfo = ConnInfo::parse(&dsn).expect("the repository DSN parses");
    let mut client = conninfo
        .connect("auth test")
        .expect("connect with verify-full");
    let token = client.cancel_token();
    let sleeper = thread::spawn(move || client.batch_execute("SELECT pg_sleep(60)"));
    wait_until(Duration::from_secs(10), "pg_sleep to run", || {
        repository
            .connect("postgres")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
                &[],
            )
            .is_ok_and(|row| row.get::<_, i64>(0) == 1)
    });
    conninfo.cancel(&token).expect("cancel request");
    let cancelled = sleeper.join().expect("the sleeping thread");
    let code = cancelled
        .expect_err("the query was cancelled")
        .code()
        .map(|code| code.code().to_string());
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");

    // verify-full against a certificate issued for another host name.
    let other = format!(
        "host=other-host.test hostaddr=127.0.0.1 port={} user={CERT_ROLE} dbname=powa {}",
        repository.port(),
        pki.dsn_keys()
    );
    let dir = TempDir::new().expect("temporary directory");
    let config_path = dir.path().join("powa-collector.conf");
    fs::write(&config_path, config(&other)).unwrap();
    let finished = run_collector(
        &["-c", config_path.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(30),
    );
    assert_eq!(finished.code(), Some(1), "stderr: {}", finished.stderr);
    assert!(
        finished.stderr.contains(
            "server certificate for \"powa-repository.test\" (and 1 other name) does not match \
             host name \"other-host.test\""
        ),
        "stderr: {}",
        finished.stderr
    );
}

/// A TCP listener that accepts connections and never answers; reports how
/// long each connection stayed open.
struct SilentServer {
    port: u16,
    durations: mpsc::Receiver<Duration>,
    stop: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let (report, durations) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.try_recv().is_ok() {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let report = report.clone();
                thread::spawn(move || {
                    let accepted = Instant::now();
                    let mut buf = [0; 256];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                    let _ = report.send(accepted.elapsed());
                });
            }
        });
        SilentServer {
            port,
            durations,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        // Wake the accept loop up so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_server_that_never_answers_times_out_and_others_go_on() {
    let repository = Cluster::repository();
    let healthy = Cluster::remote(&RemoteOptions::default());
    let silent = SilentServer::start();
    let good = repository.register_remote(&healthy, "healthy", 5);
    let stuck = register(&repository, "127.0.0.1", silent.port, "postgres", "silent");

    let mut collector =
        Collector::start_with_env(&config(&repository.dsn()), &[("PGCONNECT_TIMEOUT", "2")]);
    let held = collector.wait_for(
        SNAPSHOT_TIMEOUT,
        "the worker to give up on the silent server",
        || silent.durations.try_recv().map_err(|e| e.to_string()),
    );
    assert!(
        held >= Duration::from_millis(1500) && held <= Duration::from_secs(3),
        "the silent server held the connection {held:?}, connect_timeout is 2 s"
    );
    let errors = wait_for_error(&mut collector, &repository, stuck, "timeout expired");
    assert!(
        errors.join("\n").contains("connect_timeout (2 s)"),
        "{errors:?}"
    );
    wait_for_snapshots(&mut collector, &repository, good, 2);
    collector.stop();
    assert!(
        collector.log().contains("timeout expired"),
        "the worker's error is not in the log"
    );
}

/// Percent-encodes a path for the host part of a URI.
fn uri_encode(path: &Path) -> String {
    path.to_str()
        .unwrap()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the collector's main connection to `cluster` uses its Unix
/// socket (no client address).
fn main_thread_on_socket(cluster: &Cluster) -> Result<(), String> {
    let rows = cluster
        .connect("postgres")
        .query(
            "SELECT client_addr IS NULL FROM pg_stat_activity \
             WHERE application_name LIKE 'PoWA collector - main thread%'",
            &[],
        )
        .map_err(|e| e.to_string())?;
    match rows
        .iter()
        .map(|row| row.get::<_, bool>(0))
        .collect::<Vec<_>>()[..]
    {
        [true] => Ok(()),
        ref other => Err(format!("main-thread sessions over a socket: {other:?}")),
    }
}

#[test]
fn socket_directories_as_host() {
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    // The remote by its socket directory, as powa_servers.hostname.
    let socket_dir = remote.socket_dir().to_str().unwrap().to_string();
    let srvid = register(
        &repository,
        &socket_dir,
        remote.port(),
        "postgres",
        "socket",
    );

    let key_value = format!(
        "host={} port={} user=postgres dbname=powa",
        repository.socket_dir().display(),
        repository.port()
    );
    let uri = format!(
        "postgresql://postgres@{}:{}/powa",
        uri_encode(repository.socket_dir()),
        repository.port()
    );
    for dsn in [key_value, uri] {
        let mut collector = Collector::start_with_config(&config(&dsn));
        collector.wait_for(
            SNAPSHOT_TIMEOUT,
            &format!("the main thread on the repository's socket with {dsn}"),
            || main_thread_on_socket(&repository),
        );
        wait_for_snapshots(&mut collector, &repository, srvid, 1);
        let on_socket: bool = remote
            .connect("postgres")
            .query_one(
                "SELECT bool_and(client_addr IS NULL) FROM pg_stat_activity \
                 WHERE application_name LIKE 'PoWA collector - worker%'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0);
        assert!(on_socket, "the worker reaches the remote over its socket");
        collector.stop();
        wait_for(
            Duration::from_secs(10),
            "the collector's sessions to end",
            || match main_thread_on_socket(&repository) {
                Ok(()) => Err("still there".to_string()),
                Err(_) => Ok(()),
            },
        );
    }
}
