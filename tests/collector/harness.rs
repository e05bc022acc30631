//! Test harness: throwaway PostgreSQL clusters (PoWA 4 remotes and
//! repositories on the host's PostgreSQL 15, PoWA 5 ones on PostgreSQL 17 in
//! the PoWA 5 chroot) and the real `powa-collector` binary, each owned by a value
//! whose `Drop` stops it, also when the test panics, and prints its log when
//! it does.
//!
//! Run by the test threads; every test owns its clusters and its collector,
//! so tests run in parallel.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use tempfile::TempDir;

/// Which PoWA a cluster runs, and so which PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Powa {
    /// powa-archivist 4.1 on PostgreSQL 15, from Debian 12.
    #[default]
    V4,
    /// powa-archivist 5.0 on PostgreSQL 17, from Debian 13, in a chroot.
    V5,
}

/// Where a PostgreSQL installation lives and which packages provide it.
struct Install {
    /// The chroot holding it; `None` for the host's own.
    root: Option<PathBuf>,
    bindir: &'static str,
    extdir: &'static str,
    libdir: &'static str,
    /// The extensions the clusters use, with the Debian package of each.
    packages: &'static [(&'static str, &'static str)],
    /// What to do when something is missing.
    remedy: &'static str,
}

/// Where the PoWA 5 chroot is unless `POWA5_CHROOT` says otherwise (the
/// default of `scripts/lib.sh`).
const DEFAULT_POWA5_CHROOT: &str = "/var/cache/powa-collector/powa5-trixie";

impl Powa {
    fn install(self) -> Install {
        match self {
            Powa::V4 => Install {
                root: None,
                bindir: "/usr/lib/postgresql/15/bin",
                extdir: "/usr/share/postgresql/15/extension",
                libdir: "/usr/lib/postgresql/15/lib",
                packages: &[
                    ("pg_stat_statements", "postgresql-15"),
                    ("btree_gist", "postgresql-15"),
                    ("powa", "postgresql-15-powa"),
                    ("pg_qualstats", "postgresql-15-pg-qualstats"),
                    ("pg_stat_kcache", "postgresql-15-pg-stat-kcache"),
                    ("pg_wait_sampling", "postgresql-15-pg-wait-sampling"),
                ],
                remedy: "install the Debian package",
            },
            Powa::V5 => Install {
                root: Some(PathBuf::from(
                    std::env::var_os("POWA5_CHROOT").unwrap_or_else(|| DEFAULT_POWA5_CHROOT.into()),
                )),
                bindir: "/usr/lib/postgresql/17/bin",
                extdir: "/usr/share/postgresql/17/extension",
                libdir: "/usr/lib/postgresql/17/lib",
                packages: &[
                    ("pg_stat_statements", "postgresql-17"),
                    ("btree_gist", "postgresql-17"),
                    ("powa", "postgresql-17-powa"),
                    ("pg_qualstats", "postgresql-17-pg-qualstats"),
                    ("pg_stat_kcache", "postgresql-17-pg-stat-kcache"),
                    ("pg_wait_sampling", "postgresql-17-pg-wait-sampling"),
                    ("pg_track_settings", "postgresql-17-pg-track-settings"),
                ],
                remedy: "build the PoWA 5 chroot with scripts/powa5-chroot (as root; \
                         scripts/test does it), which installs the Debian 13 package",
            },
        }
    }

    /// The extensions a remote of this PoWA has in database `powa`, in the
    /// order they are created (`powa` is left out when `with_powa` is false).
    fn remote_extensions(self, with_powa: bool) -> Vec<&'static str> {
        let mut extensions = vec!["pg_stat_statements", "btree_gist"];
        if with_powa {
            extensions.push("powa");
        }
        extensions.extend(["pg_qualstats", "pg_stat_kcache", "pg_wait_sampling"]);
        if self == Powa::V5 {
            extensions.push("pg_track_settings");
        }
        extensions
    }

    /// The `extensions` argument of `powa_register_server`.
    fn registered_extensions(self) -> Vec<&'static str> {
        let mut extensions = vec!["pg_stat_kcache", "pg_qualstats", "pg_wait_sampling"];
        if self == Powa::V5 {
            extensions.push("pg_track_settings");
        }
        extensions
    }
}

impl Install {
    /// The host's path of `inside`, a path of the installation's root.
    fn host_path(&self, inside: &Path) -> PathBuf {
        match &self.root {
            None => inside.to_path_buf(),
            Some(root) => root.join(inside.strip_prefix("/").unwrap_or(inside)),
        }
    }

    /// The installation's path of `host`, a host path under its root.
    fn inside_path(&self, host: &Path) -> PathBuf {
        match &self.root {
            None => host.to_path_buf(),
            Some(root) => Path::new("/").join(
                host.strip_prefix(root)
                    .expect("a cluster directory inside the chroot"),
            ),
        }
    }

    fn require_root(&self) {
        if let Some(root) = &self.root {
            assert!(
                root.join("usr/bin").is_dir(),
                "the PoWA 5 chroot is missing in {} (set POWA5_CHROOT to use another): {}",
                root.display(),
                self.remedy
            );
            assert!(
                running_as_root(),
                "the PoWA 5 tests run PostgreSQL 17 in the chroot {} and so need root",
                root.display()
            );
        }
    }

    fn require_pg_binary(&self, name: &str) -> PathBuf {
        self.require_root();
        let path = Path::new(self.bindir).join(name);
        let package = self.packages[0].1;
        assert!(
            self.host_path(&path).is_file(),
            "{} is missing: {} {package}",
            self.host_path(&path).display(),
            self.remedy
        );
        path
    }

    fn require_extension(&self, name: &str) {
        self.require_root();
        let package = self
            .packages
            .iter()
            .find(|(extension, _)| *extension == name)
            .map(|(_, package)| *package)
            .unwrap_or_else(|| panic!("no Debian package known for extension {name}"));
        let mut files = vec![Path::new(self.extdir).join(format!("{name}.control"))];
        if !["pg_track_settings"].contains(&name) {
            files.push(Path::new(self.libdir).join(format!("{name}.so")));
        }
        for path in files {
            let path = self.host_path(&path);
            assert!(
                path.is_file(),
                "{} is missing: {} {package}",
                path.display(),
                self.remedy
            );
        }
    }

    /// A command running a PostgreSQL binary, as user postgres when we are
    /// root (initdb and postgres refuse to run as root), in the chroot when
    /// the installation has one.
    fn pg_command(&self, name: &str, cwd: &Path) -> Command {
        let program = self.require_pg_binary(name);
        let mut command = match &self.root {
            Some(root) => {
                let mut command = Command::new("chroot");
                command
                    .arg(root)
                    .args(["runuser", "-u", POSTGRES_USER, "--"])
                    .arg(program);
                command
            }
            None if running_as_root() => {
                let mut command = Command::new("runuser");
                command.args(["-u", POSTGRES_USER, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The caller's directory may not be readable by postgres.
        command.current_dir(cwd);
        command
    }

    /// Gives `path` (a host path) to user postgres of the installation when
    /// we are root (PostgreSQL runs as that user then); does nothing
    /// otherwise.
    fn chown_to_postgres(&self, path: &Path) {
        if !running_as_root() {
            return;
        }
        let mut command = match &self.root {
            Some(root) => {
                let mut command = Command::new("chroot");
                command.arg(root).arg("chown");
                command
            }
            None => Command::new("chown"),
        };
        command.arg(POSTGRES_USER).arg(self.inside_path(path));
        let output = run(&mut command, "chown");
        assert!(
            output.status.success(),
            "chown {POSTGRES_USER} {}: {}",
            path.display(),
            output_text(&output)
        );
    }

    /// Where clusters get their directory: the temporary directory, unless
    /// user postgres (when we are root) could not reach it, or the Unix
    /// socket path in it would be too long; then /tmp. In a chroot, its
    /// /tmp.
    fn cluster_parent_dir(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;

        /// Room left for `/powa-collector-test-XXXXXX/.s.PGSQL.NNNNN` in the
        /// 107 bytes of a Unix socket path.
        const MAX_PARENT_LEN: usize = 64;
        if self.root.is_some() {
            return self.host_path(Path::new("/tmp"));
        }
        let parent = std::env::temp_dir();
        let reachable = !running_as_root()
            || parent.ancestors().all(|dir| {
                fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0)
            });
        if reachable && parent.as_os_str().len() <= MAX_PARENT_LEN {
            parent
        } else {
            PathBuf::from("/tmp")
        }
    }
}

/// How often `wait_for` and `wait_until` look at their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a stopping collector may take before it is killed.
const COLLECTOR_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How many free ports to try when another process takes ours first.
const PORT_ATTEMPTS: usize = 5;

/// Lines of a log printed when a test fails.
const LOG_TAIL_LINES: usize = 300;

/// The user PostgreSQL runs as when the tests run as root.
const POSTGRES_USER: &str = "postgres";

/// Polls `condition` every `POLL_INTERVAL` until it returns `Ok`, and returns
/// that value. `Err` carries the state observed, for the message when
/// `timeout` passes: the panic says what was awaited and what was seen last.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(value) => return value,
            Err(state) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {state}");
                }
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `condition` every `POLL_INTERVAL` until it holds; panics after
/// `timeout` saying what was awaited.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    });
}

fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn run(command: &mut Command, what: &str) -> Output {
    command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run {what} ({command:?}): {error}{}",
            if running_as_root() {
                " (as root, PostgreSQL runs through runuser, from the Debian package util-linux)"
            } else {
                ""
            }
        )
    })
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Appends `text`, then a `key = value` line for each of `settings`, to the
/// `postgresql.conf` of the data directory `data`.
fn append_settings<V: std::fmt::Display>(data: &Path, text: &str, settings: &[(&str, V)]) {
    let mut conf = text.to_string();
    for (key, value) in settings {
        let _ = writeln!(conf, "{key} = {value}");
    }
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut file| file.write_all(conf.as_bytes()))
        .expect("append to postgresql.conf");
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "[... {start} earlier lines]");
    }
    for line in &all[start..] {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// `pg_ctl start` of the cluster in `dir` (a host path), on `port`, logging
/// to its `server.log`.
fn pg_ctl_start(install: &Install, dir: &Path, port: u16) -> Output {
    let inside = install.inside_path(dir);
    run(
        install
            .pg_command("pg_ctl", dir)
            .arg("-D")
            .arg(inside.join("data"))
            .arg("-l")
            .arg(inside.join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {port}"))
            .arg("start"),
        "pg_ctl start",
    )
}

/// Libraries a remote preloads.
const REMOTE_PRELOAD: &str = "pg_stat_statements,pg_qualstats,pg_stat_kcache,pg_wait_sampling";

/// What a remote cluster has.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Which PoWA (and so which PostgreSQL).
    pub version: Powa,
    /// Create extension `powa` in database `powa`.
    pub powa: bool,
    /// The schema of `powa`, when not `public` (created first).
    pub powa_schema: Option<&'static str>,
    /// The schema of the other extensions, when not `public`.
    pub stats_schema: Option<&'static str>,
    /// `pg_stat_statements.max`, when not the default.
    pub pgss_max: Option<u32>,
    /// `pg_stat_statements.track = all` (nested statements too).
    pub track_all: bool,
    /// More `postgresql.conf` settings (`listen_addresses`,
    /// `max_connections`...), written last so that they win.
    pub settings: Vec<(&'static str, String)>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            version: Powa::V4,
            powa: true,
            powa_schema: None,
            stats_schema: None,
            pgss_max: None,
            track_all: false,
            settings: Vec::new(),
        }
    }
}

impl RemoteOptions {
    /// A default remote of PoWA `version`.
    pub fn of(version: Powa) -> RemoteOptions {
        RemoteOptions {
            version,
            ..RemoteOptions::default()
        }
    }
}

/// What a repository cluster has.
#[derive(Clone, Debug, Default)]
pub struct RepositoryOptions {
    /// Which PoWA (and so which PostgreSQL).
    pub version: Powa,
    /// The schema of `powa`, when not `public` (created first).
    pub powa_schema: Option<&'static str>,
    /// The schema of the other extensions, when not `public`.
    pub stats_schema: Option<&'static str>,
    /// More `postgresql.conf` settings, written last so that they win.
    pub settings: Vec<(&'static str, String)>,
}

/// A PostgreSQL cluster in a temporary directory (in the PoWA 5 chroot for
/// PoWA 5), listening on 127.0.0.1 and on a Unix socket in that directory.
/// Stopped when dropped.
pub struct Cluster {
    name: String,
    install: Install,
    dir: TempDir,
    port: u16,
    version: Powa,
    /// Schemas put before `public` in `search_path` of the connections the
    /// harness opens (those of `powa` and the other extensions).
    schemas: Vec<&'static str>,
}

impl Cluster {
    /// A remote server: the stat extensions preloaded, and database `powa`
    /// with `pg_stat_statements`, `btree_gist`, `powa` (unless
    /// `options.powa` is false), `pg_qualstats`, `pg_stat_kcache`,
    /// `pg_wait_sampling` and, on PoWA 5, `pg_track_settings`.
    pub fn remote(options: &RemoteOptions) -> Cluster {
        let install = options.version.install();
        let extensions = options.version.remote_extensions(options.powa);
        for extension in &extensions {
            install.require_extension(extension);
        }

        let mut settings = vec![("shared_preload_libraries", format!("'{REMOTE_PRELOAD}'"))];
        if let Some(max) = options.pgss_max {
            settings.push(("pg_stat_statements.max", max.to_string()));
        }
        if options.track_all {
            settings.push(("pg_stat_statements.track", "all".to_string()));
        }
        settings.extend(options.settings.iter().cloned());
        let name = if options.powa {
            "remote"
        } else {
            "remote without powa"
        };
        let mut cluster = Cluster::start(name, install, options.version, &settings);
        cluster.create_powa_database();
        cluster.create_extensions(&extensions, options.powa_schema, options.stats_schema);
        cluster
    }

    /// A PoWA 4 repository: database `powa` with `powa` and what it needs.
    pub fn repository() -> Cluster {
        Cluster::repository_for(&RepositoryOptions::default())
    }

    /// A PoWA 4 repository with more `postgresql.conf` settings.
    pub fn repository_with(extra: &[(&'static str, String)]) -> Cluster {
        Cluster::repository_for(&RepositoryOptions {
            settings: extra.to_vec(),
            ..RepositoryOptions::default()
        })
    }

    /// A repository of PoWA `version`, otherwise default.
    pub fn repository_of(version: Powa) -> Cluster {
        Cluster::repository_for(&RepositoryOptions {
            version,
            ..RepositoryOptions::default()
        })
    }

    /// A repository: database `powa` with `powa` and what it needs
    /// (`pg_track_settings` too on PoWA 5, where it is external).
    pub fn repository_for(options: &RepositoryOptions) -> Cluster {
        let install = options.version.install();
        let mut extensions = vec!["pg_stat_statements", "btree_gist", "powa"];
        if options.version == Powa::V5 {
            extensions.push("pg_track_settings");
        }
        for extension in &extensions {
            install.require_extension(extension);
        }
        let mut settings = vec![(
            "shared_preload_libraries",
            "'pg_stat_statements'".to_string(),
        )];
        settings.extend(options.settings.iter().cloned());
        let mut cluster = Cluster::start("repository", install, options.version, &settings);
        cluster.create_powa_database();
        cluster.create_extensions(&extensions, options.powa_schema, options.stats_schema);
        cluster
    }

    /// Creates `extensions` in database `powa`, in that order: `powa` in
    /// `powa_schema`, the others in `stats_schema` (`public` when `None`).
    fn create_extensions(
        &mut self,
        extensions: &[&str],
        powa_schema: Option<&'static str>,
        stats_schema: Option<&'static str>,
    ) {
        let mut client = self.connect_powa();
        for schema in [powa_schema, stats_schema].into_iter().flatten() {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .unwrap_or_else(|error| panic!("{}: CREATE SCHEMA {schema}: {error}", self.name));
        }
        for extension in extensions {
            let schema = if *extension == "powa" {
                powa_schema
            } else {
                stats_schema
            };
            let sql = match schema {
                Some(schema) => format!("CREATE EXTENSION {extension} SCHEMA {schema}"),
                None => format!("CREATE EXTENSION {extension}"),
            };
            client
                .batch_execute(&sql)
                .unwrap_or_else(|error| panic!("{}: {sql}: {error}", self.name));
        }
        self.schemas = [powa_schema, stats_schema].into_iter().flatten().collect();
    }

    /// Which PoWA the cluster runs.
    pub fn powa_version(&self) -> Powa {
        self.version
    }

    fn start(name: &str, install: Install, version: Powa, settings: &[(&str, String)]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("powa-collector-test-")
            .tempdir_in(install.cluster_parent_dir())
            .expect("create a temporary directory");
        install.chown_to_postgres(dir.path());

        let inside = install.inside_path(dir.path());
        let data = inside.join("data");
        let output = run(
            install
                .pg_command("initdb", dir.path())
                .arg("-D")
                .arg(&data)
                .args([
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
            "initdb",
        );
        assert!(
            output.status.success(),
            "{name}: initdb failed: {}",
            output_text(&output)
        );

        let conf = format!(
            "\n# powa-collector tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 100\n\
             shared_buffers = '32MB'\n\
             log_line_prefix = '%m [%p] %q%a@%d '\n",
            inside.display()
        );
        append_settings(&dir.path().join("data"), &conf, settings);

        let log = dir.path().join("server.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let log_len_before = fs::metadata(&log).map(|meta| meta.len()).unwrap_or(0);
            let output = pg_ctl_start(&install, dir.path(), port);
            if output.status.success() {
                return Cluster {
                    name: format!("{name} (port {port})"),
                    install,
                    dir,
                    port,
                    version,
                    schemas: Vec::new(),
                };
            }
            let log_text = fs::read(&log).unwrap_or_default();
            let new_log =
                String::from_utf8_lossy(&log_text[log_len_before as usize..]).into_owned();
            if !new_log.contains("could not bind") && !new_log.contains("Address already in use") {
                panic!(
                    "{name}: pg_ctl start failed: {}\nserver log:\n{new_log}",
                    output_text(&output)
                );
            }
            eprintln!("{name}: port {port} was taken, trying another one");
        }
        panic!("{name}: no free port found after {PORT_ATTEMPTS} attempts");
    }

    fn create_powa_database(&self) {
        self.connect("postgres")
            .batch_execute("CREATE DATABASE powa")
            .unwrap_or_else(|error| panic!("{}: CREATE DATABASE powa: {error}", self.name));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory, where its Unix socket is.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to file `name` in the data directory, readable by
    /// the server only (for certificates and keys); returns its path.
    pub fn write_data_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;

        let path = self.dir.path().join("data").join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        self.install.chown_to_postgres(&path);
        path
    }

    /// Appends `settings` to postgresql.conf, replaces pg_hba.conf with
    /// `hba` when given, and asks the server to reload its configuration
    /// (for settings that a reload applies; the caller waits for it).
    pub fn reconfigure(&self, settings: &[(&str, &str)], hba: Option<&str>) {
        let data = self.dir.path().join("data");
        append_settings(&data, "\n# added by the test\n", settings);
        if let Some(hba) = hba {
            fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        let output = run(
            self.install
                .pg_command("pg_ctl", self.dir.path())
                .arg("-D")
                .arg(self.install.inside_path(&data))
                .arg("reload"),
            "pg_ctl reload",
        );
        assert!(
            output.status.success(),
            "{}: pg_ctl reload failed: {}",
            self.name,
            output_text(&output)
        );
    }

    /// A libpq connection string to database `powa` of this cluster.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=powa",
            self.port
        )
    }

    /// A connection to `dbname` as postgres; the schemas of the extensions,
    /// when not `public`, come first in its `search_path`.
    pub fn connect(&self, dbname: &str) -> Client {
        let mut dsn = format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        );
        if !self.schemas.is_empty() {
            dsn.push_str(&format!(
                " options='-c search_path={},public'",
                self.schemas.join(",")
            ));
        }
        Client::connect(&dsn, NoTls)
            .unwrap_or_else(|error| panic!("{}: connect to {dbname}: {error}", self.name))
    }

    pub fn connect_powa(&self) -> Client {
        self.connect("powa")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Registers `remote` on this repository with `powa_register_server` and
    /// returns its srvid.
    pub fn register_remote(&self, remote: &Cluster, alias: &str, frequency: i32) -> i32 {
        let mut client = self.connect_powa();
        let port = i32::from(remote.port());
        client
            .execute(
                "SELECT powa_register_server(hostname => '127.0.0.1', port => $1, \
                 alias => $2, username => 'postgres', dbname => 'powa', \
                 frequency => $3, extensions => $4)",
                &[
                    &port,
                    &alias,
                    &frequency,
                    &self.version.registered_extensions(),
                ],
            )
            .unwrap_or_else(|error| panic!("powa_register_server for {}: {error}", remote.name));
        client
            .query_one(
                "SELECT id FROM powa_servers WHERE hostname = '127.0.0.1' AND port = $1",
                &[&port],
            )
            .unwrap_or_else(|error| panic!("srvid of {}: {error}", remote.name))
            .get(0)
    }

    /// Registers `remote` as reached through `hostname` (one cluster
    /// listening on several loopback addresses counts as several servers,
    /// since `powa_servers` is unique on hostname and port) and returns its
    /// srvid. The alias is left unset.
    pub fn register_remote_at(&self, remote: &Cluster, hostname: &str, frequency: i32) -> i32 {
        self.register_address(hostname, remote.port(), frequency)
    }

    /// Registers the server reached at `hostname`:`port` (a remote's, or a
    /// proxy's in front of it), without alias; returns its srvid.
    pub fn register_address(&self, hostname: &str, port: u16, frequency: i32) -> i32 {
        let port = i32::from(port);
        let mut client = self.connect_powa();
        client
            .execute(
                "SELECT powa_register_server(hostname => $1, port => $2, \
                 username => 'postgres', dbname => 'powa', frequency => $3, \
                 extensions => $4)",
                &[
                    &hostname,
                    &port,
                    &frequency,
                    &self.version.registered_extensions(),
                ],
            )
            .unwrap_or_else(|error| panic!("powa_register_server for {hostname}:{port}: {error}"));
        client
            .query_one(
                "SELECT id FROM powa_servers WHERE hostname = $1 AND port = $2",
                &[&hostname, &port],
            )
            .unwrap_or_else(|error| panic!("srvid of {hostname}:{port}: {error}"))
            .get(0)
    }

    /// Registers each of `remotes` on this repository as `remote-<index>`
    /// (from 0), every `frequency` seconds; returns the srvids in the same
    /// order.
    pub fn register_remotes(&self, remotes: &[Cluster], frequency: i32) -> Vec<i32> {
        remotes
            .iter()
            .enumerate()
            .map(|(i, remote)| self.register_remote(remote, &format!("remote-{i}"), frequency))
            .collect()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash
    /// would; [`Cluster::start_again`] brings it back on the same port.
    pub fn stop_now(&self) {
        assert!(
            self.pg_ctl_stop("immediate"),
            "{}: immediate stop",
            self.name
        );
    }

    /// Starts the server again after [`Cluster::stop_now`].
    pub fn start_again(&self) {
        let output = pg_ctl_start(&self.install, self.dir.path(), self.port);
        assert!(
            output.status.success(),
            "{}: pg_ctl start again failed: {}",
            self.name,
            output_text(&output)
        );
    }

    fn pg_ctl_stop(&self, mode: &str) -> bool {
        let output = self
            .install
            .pg_command("pg_ctl", self.dir.path())
            .arg("-D")
            .arg(self.install.inside_path(&self.dir.path().join("data")))
            .args(["-w", "-t", "30", "-m", mode, "stop"])
            .output();
        match output {
            Ok(output) if output.status.success() => true,
            Ok(output) => {
                eprintln!(
                    "{}: pg_ctl stop -m {mode} failed: {}",
                    self.name,
                    output_text(&output)
                );
                false
            }
            Err(error) => {
                eprintln!("{}: cannot run pg_ctl stop: {error}", self.name);
                false
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.pg_ctl_stop("fast") {
            self.pg_ctl_stop("immediate");
        }
        if thread::panicking() {
            eprintln!(
                "===== server log of {} =====\n{}===== end of server log of {} =====",
                self.name,
                tail(&self.log(), LOG_TAIL_LINES),
                self.name
            );
        }
    }
}

/// A repository and a default remote registered on it as `remote`, every
/// `frequency` seconds: the repository, the remote and its srvid.
pub fn repository_with_remote(frequency: i32) -> (Cluster, Cluster, i32) {
    repository_with_remote_of(Powa::V4, frequency)
}

/// `repository_with_remote` with PoWA `version` on both.
pub fn repository_with_remote_of(version: Powa, frequency: i32) -> (Cluster, Cluster, i32) {
    let repository = Cluster::repository_of(version);
    let remote = Cluster::remote(&RemoteOptions::of(version));
    let srvid = repository.register_remote(&remote, "remote", frequency);
    (repository, remote, srvid)
}

/// A repository and two default remotes registered on it as `remote-0` and
/// `remote-1`, every `frequency` seconds: the repository, the remotes and
/// their srvids, in the same order.
pub fn repository_with_two_remotes(frequency: i32) -> (Cluster, [Cluster; 2], Vec<i32>) {
    let repository = Cluster::repository();
    let remotes = [
        Cluster::remote(&RemoteOptions::default()),
        Cluster::remote(&RemoteOptions::default()),
    ];
    let srvids = repository.register_remotes(&remotes, frequency);
    (repository, remotes, srvids)
}

/// One row of `powa_snapshot_metas`.
#[derive(Clone, Debug)]
pub struct SnapshotMeta {
    pub coalesce_seq: i64,
    /// `snapts` as seconds since the epoch; `-inf` before the first snapshot.
    pub snapts: f64,
    pub errors: Option<Vec<String>>,
}

impl SnapshotMeta {
    /// Whether one of the errors contains `needle`, ignoring case.
    pub fn has_error_containing(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.errors
            .iter()
            .flatten()
            .any(|error| error.to_lowercase().contains(&needle))
    }
}

/// Reads `powa_snapshot_metas` for `srvid` on a repository connection.
pub fn snapshot_meta(client: &mut Client, srvid: i32) -> SnapshotMeta {
    let row = client
        .query_one(
            "SELECT coalesce_seq, extract(epoch FROM snapts)::float8, errors \
             FROM powa_snapshot_metas WHERE srvid = $1",
            &[&srvid],
        )
        .unwrap_or_else(|error| panic!("powa_snapshot_metas of server {srvid}: {error}"));
    SnapshotMeta {
        coalesce_seq: row.get(0),
        snapts: row.get(1),
        errors: row.get(2),
    }
}

/// `SELECT count(*) FROM <table> WHERE srvid = $1` on a repository connection.
pub fn count_rows(client: &mut Client, table: &str, srvid: i32) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE srvid = $1"),
            &[&srvid],
        )
        .unwrap_or_else(|error| panic!("count rows of {table} for server {srvid}: {error}"))
        .get(0)
}

/// The `powa-collector` binary of this crate, running with a config file
/// of its own and its stdout and stderr in a log file. Stopped with SIGTERM
/// (then killed) when dropped; its log is printed when the test fails.
pub struct Collector {
    child: Child,
    dir: TempDir,
    status: Option<ExitStatus>,
}

/// How a collector ended after `Collector::stop` or
/// `Collector::signal_and_wait`.
pub struct Stopped {
    /// The signal that stopped it (a name for kill(1): TERM...).
    pub signal: String,
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub elapsed: Duration,
}

impl Stopped {
    /// Asserts that the collector exited with status 0.
    #[track_caller]
    pub fn assert_exited_zero(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "exit status after SIG{}: {}",
            self.signal,
            self.status
        );
    }

    /// Asserts that the collector exited with status 0, less than `limit`
    /// after the signal.
    #[track_caller]
    pub fn assert_clean_exit(&self, limit: Duration) {
        self.assert_exited_zero();
        assert!(
            self.elapsed < limit,
            "exit took {:?} after SIG{}, more than {limit:?}",
            self.elapsed,
            self.signal
        );
    }
}

impl Collector {
    /// The collector's configuration for `repository`, with debug logging.
    pub fn config_for(repository: &Cluster) -> serde_json::Value {
        serde_json::json!({
            "repository": { "dsn": repository.dsn() },
            "debug": true,
        })
    }

    /// Starts the collector against `repository`.
    pub fn start(repository: &Cluster) -> Collector {
        Collector::start_with_config(&Collector::config_for(repository).to_string())
    }

    /// Starts the collector with `config` as its config file.
    pub fn start_with_config(config: &str) -> Collector {
        Collector::start_with_env(config, &[])
    }

    /// Starts the collector with `config` as its config file and its
    /// stderr, the log file, named in `JOURNAL_STREAM` (`device:inode`), as
    /// systemd names the journal's stream.
    pub fn start_as_journald_service(config: &str) -> Collector {
        Collector::start_with_env_of(config, |log| {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(log).expect("the collector log's metadata");
            vec![(
                "JOURNAL_STREAM".to_string(),
                format!("{}:{}", meta.dev(), meta.ino()),
            )]
        })
    }

    /// Starts the collector with `config` as its config file and `env`
    /// added to its environment.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Collector {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Collector::start_with_env_of(config, |_| env)
    }

    /// Starts the collector with `config` as its config file and the
    /// environment `env` makes from the path of its log file.
    fn start_with_env_of(
        config: &str,
        env: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Collector {
        let dir = tempfile::Builder::new()
            .prefix("powa-collector-daemon-")
            .tempdir()
            .expect("create a temporary directory");
        let config_path = dir.path().join("powa-collector.conf");
        fs::write(&config_path, config).expect("write the collector config");
        let log_path = dir.path().join("collector.log");
        let log = File::create(&log_path).expect("create the collector log");
        let env = env(&log_path);
        let child = Command::new(collector_binary())
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .expect("start powa-collector");
        Collector {
            child,
            dir,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the collector wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// The exit status, if the collector has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait for powa-collector");
        }
        self.status
    }

    /// Sends `signal` (a name for kill(1): TERM, INT, HUP) to the collector.
    pub fn signal(&self, signal: &str) {
        let output = run(
            Command::new("kill")
                .arg("-s")
                .arg(signal)
                .arg(self.pid().to_string()),
            "kill",
        );
        assert!(
            output.status.success(),
            "kill -s {signal} {}: {}",
            self.pid(),
            output_text(&output)
        );
    }

    /// Like `wait_for`, but fails at once if the collector exits meanwhile.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut() -> Result<T, String>,
    ) -> T {
        wait_for(timeout, what, || {
            if let Some(status) = self.exit_status() {
                panic!("powa-collector exited ({status}) while waiting for {what}");
            }
            condition()
        })
    }

    /// Waits up to `timeout` until `srvid` has a first snapshot
    /// (`coalesce_seq` 2 or more), read on the repository connection
    /// `repo`; panics as soon as the server has errors.
    pub fn wait_for_first_snapshot(&mut self, repo: &mut Client, srvid: i32, timeout: Duration) {
        self.wait_for(timeout, "a first snapshot", || {
            let meta = snapshot_meta(repo, srvid);
            assert!(meta.errors.is_none(), "errors: {:?}", meta.errors);
            if meta.coalesce_seq >= 2 {
                Ok(())
            } else {
                Err(format!("{meta:?}"))
            }
        });
    }

    /// Waits up to `timeout` until each of `srvids` has a first snapshot
    /// (`coalesce_seq` 2 or more), read on the repository connection
    /// `repo`, whatever their errors.
    pub fn wait_for_a_snapshot_of_each(
        &mut self,
        repo: &mut Client,
        srvids: &[i32],
        timeout: Duration,
    ) {
        self.wait_for(timeout, "a first snapshot of each remote", || {
            let metas: Vec<_> = srvids
                .iter()
                .map(|&srvid| snapshot_meta(repo, srvid))
                .collect();
            if metas.iter().all(|meta| meta.coalesce_seq >= 2) {
                Ok(())
            } else {
                Err(format!("{metas:?}"))
            }
        });
    }

    /// Sends SIGTERM and waits for the collector to exit; panics (and kills
    /// it) if it is still there after `COLLECTOR_STOP_TIMEOUT`.
    pub fn stop(&mut self) -> Stopped {
        assert!(
            self.exit_status().is_none(),
            "powa-collector exited before it was asked to stop: {:?}",
            self.status
        );
        let start = Instant::now();
        self.signal("TERM");
        let status = wait_for(
            COLLECTOR_STOP_TIMEOUT,
            "powa-collector to exit after SIGTERM",
            || {
                self.exit_status()
                    .ok_or_else(|| "still running".to_string())
            },
        );
        Stopped {
            signal: "TERM".to_string(),
            status,
            elapsed: start.elapsed(),
        }
    }

    /// The collector's config file; a test may rewrite it before a reload.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("powa-collector.conf")
    }

    /// The value of line `field` of the running collector's
    /// /proc/<pid>/status, read by `parse` (given what follows `field:`);
    /// panics when there is no such line or `parse` returns `None`.
    fn proc_status_field<T>(&self, field: &str, parse: impl FnOnce(&str) -> Option<T>) -> T {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {path}: {error}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(parse)
            .unwrap_or_else(|| panic!("no {field} line in {path}:\n{status}"))
    }

    /// Threads of the running collector (`Threads:` in /proc/<pid>/status).
    pub fn threads(&self) -> usize {
        self.proc_status_field("Threads", |value| value.trim().parse().ok())
    }

    /// Sends `signal` and waits up to `timeout` for the collector to exit,
    /// looking every few milliseconds so that `elapsed` is precise; panics
    /// if it is still running then (`Drop` kills it).
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Stopped {
        const PRECISE_POLL: Duration = Duration::from_millis(2);
        assert!(
            self.exit_status().is_none(),
            "powa-collector exited before SIG{signal}: {:?}",
            self.status
        );
        let start = Instant::now();
        self.signal(signal);
        loop {
            if let Some(status) = self.exit_status() {
                return Stopped {
                    signal: signal.to_string(),
                    status,
                    elapsed: start.elapsed(),
                };
            }
            assert!(
                start.elapsed() < timeout,
                "powa-collector still running {timeout:?} after SIG{signal}"
            );
            thread::sleep(PRECISE_POLL);
        }
    }

    /// Peak resident set size (`VmHWM`) of the running collector, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_field("VmHWM", |value| {
            value.trim().strip_suffix("kB")?.trim().parse().ok()
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .output();
            let deadline = Instant::now() + COLLECTOR_STOP_TIMEOUT;
            while self.exit_status().is_none() && Instant::now() < deadline {
                thread::sleep(POLL_INTERVAL);
            }
            if self.exit_status().is_none() {
                eprintln!("powa-collector did not stop after SIGTERM, killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "===== powa-collector log (exit: {:?}) =====\n{}===== end of powa-collector log =====",
                self.status,
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}

/// Path of the binary under test.
pub fn collector_binary() -> &'static str {
    env!("CARGO_BIN_EXE_powa-collector")
}

/// How a short run of the binary ended.
pub struct Finished {
    /// `None` when it was still running at the deadline (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|status| status.code())
    }
}

/// Runs the collector binary with `args` and waits up to `timeout` for it to
/// exit; kills it otherwise.
pub fn run_collector(args: &[&str], cwd: &Path, timeout: Duration) -> Finished {
    let dir = tempfile::Builder::new()
        .prefix("powa-collector-run-")
        .tempdir()
        .expect("create a temporary directory");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(collector_binary())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("start powa-collector");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for powa-collector") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL_INTERVAL);
    };
    let read = |path: &Path| {
        let mut text = String::new();
        File::open(path)
            .and_then(|mut file| file.read_to_string(&mut text))
            .expect("read the output of powa-collector");
        text
    };
    Finished {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    }
}

/// Runs `powa-collector -c <config> args...` to its end (at most 20 s), in
/// a directory of its own holding the config file; returns how it ended
/// and how long it took.
pub fn run_with_config(config: &str, args: &[&str]) -> (Finished, Duration) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("powa-collector.conf");
    fs::write(&path, config).expect("write the config");
    let mut all = vec!["-c", path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let started = Instant::now();
    let finished = run_collector(&all, dir.path(), Duration::from_secs(20));
    (finished, started.elapsed())
}

/// The first column, as text, of the rows that `sql` returns with `srvid`
/// as `$1`; `what` names them when the query fails.
fn server_strings(client: &mut Client, sql: &str, srvid: i32, what: &str) -> Vec<String> {
    client
        .query(sql, &[&srvid])
        .expect(what)
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn harness_starts_clusters_and_registers_a_remote() {
    let repository = Cluster::repository();
    let remote = Cluster::remote(&RemoteOptions::default());
    let srvid = repository.register_remote(&remote, "harness", 5);
    assert!(srvid > 0, "srvid {srvid}");

    let mut repo = repository.connect_powa();
    let meta = snapshot_meta(&mut repo, srvid);
    assert_eq!(meta.coalesce_seq, 1);
    assert_eq!(meta.snapts, f64::NEG_INFINITY);
    assert_eq!(meta.errors, None);
    let modules = server_strings(
        &mut repo,
        "SELECT module FROM powa_functions \
         WHERE srvid = $1 AND operation = 'snapshot' AND enabled ORDER BY module",
        srvid,
        "powa_functions",
    );
    for module in [
        "pg_qualstats",
        "pg_stat_kcache",
        "pg_stat_statements",
        "pg_wait_sampling",
    ] {
        assert!(
            modules.iter().any(|m| m == module),
            "module {module} not registered: {modules:?}"
        );
    }

    // Every datasource of the remote answers, as the collector will call it.
    let mut remote_client = remote.connect_powa();
    let sources = server_strings(
        &mut repo,
        "SELECT query_source FROM powa_functions \
         WHERE srvid = $1 AND operation = 'snapshot' AND query_source IS NOT NULL",
        srvid,
        "datasources",
    );
    for source in &sources {
        remote_client
            .batch_execute(&format!("SELECT * FROM public.{source}(0)"))
            .unwrap_or_else(|error| panic!("{source}(0) on the remote: {error}"));
    }

    let bare = Cluster::remote(&RemoteOptions {
        powa: false,
        ..RemoteOptions::default()
    });
    let has_powa: bool = bare
        .connect_powa()
        .query_one(
            "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'powa'",
            &[],
        )
        .expect("pg_extension")
        .get(0);
    assert!(!has_powa);
}

#[test]
fn harness_starts_powa5_clusters_in_the_chroot() {
    let repository = Cluster::repository_of(Powa::V5);
    let remote = Cluster::remote(&RemoteOptions::of(Powa::V5));
    assert_eq!(remote.powa_version(), Powa::V5);
    let srvid = repository.register_remote(&remote, "harness", 5);

    let mut repo = repository.connect_powa();
    let version: String = repo
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'powa'",
            &[],
        )
        .expect("powa version")
        .get(0);
    assert!(version.starts_with("5."), "powa {version}");
    let names = server_strings(
        &mut repo,
        "SELECT name FROM powa_functions \
         WHERE srvid = $1 AND operation = 'snapshot' AND enabled ORDER BY name",
        srvid,
        "powa_functions",
    );
    for name in ["pg_stat_statements", "pg_track_settings", "pg_qualstats"] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    let server_version: i32 = remote
        .connect_powa()
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .expect("server_version_num")
        .get(0);
    assert!(server_version >= 170000, "{server_version}");
}
