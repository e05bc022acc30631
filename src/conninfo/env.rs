//! The process environment as libpq reads it: the `PG*` variables, the home
//! directory and the operating-system user name.
//!
//! [`Env`] is a plain value: [`Env::from_process`] reads the real
//! environment once, and unit tests build one from a list of pairs, so that
//! resolving a connection string is a pure function of its inputs and no
//! test changes the process environment. Used on whatever thread parses a
//! connection string.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Environment variables libpq reads, besides the ones named in the
/// keyword table of [`super::dsn`].
const OTHER_VARIABLES: [&str; 6] = [
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGREQUIRESSL",
    "PGTZ",
    "PGGEQO",
    "PGDATESTYLE",
];

/// What libpq would see of the environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
    os_user: Option<String>,
}

impl Env {
    /// Reads the variables libpq uses from the process environment, the
    /// home directory (`HOME`, else the password database, as libpq) and
    /// the name of the effective user.
    pub fn from_process() -> Env {
        let mut vars = BTreeMap::new();
        let names = super::dsn::KEYWORDS
            .iter()
            .filter_map(|keyword| keyword.env)
            .chain(OTHER_VARIABLES);
        for name in names {
            if let Some(value) = std::env::var_os(name) {
                vars.insert(name.to_string(), value.to_string_lossy().into_owned());
            }
        }
        #[allow(deprecated)] // Unix semantics (HOME, then getpwuid) are libpq's.
        let home = std::env::home_dir().filter(|home| !home.as_os_str().is_empty());
        Env {
            vars,
            home,
            os_user: whoami::username().ok(),
        }
    }

    /// An environment made of the given variables, with the given home
    /// directory and operating-system user (for tests).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        home: Option<&str>,
        os_user: Option<&str>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            home: home.map(PathBuf::from),
            os_user: os_user.map(str::to_string),
        }
    }

    /// The value of an environment variable; set but empty counts as set,
    /// as for libpq.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The home directory, where `.pgpass`, `.pg_service.conf` and
    /// `.postgresql/` are looked for.
    pub fn home(&self) -> Option<&PathBuf> {
        self.home.as_ref()
    }

    /// The operating-system user name, the default database user.
    pub fn os_user(&self) -> Option<&str> {
        self.os_user.as_deref()
    }
}

impl std::fmt::Debug for Env {
    /// Variable names only: `PGPASSWORD` must not show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .field("os_user", &self.os_user)
            .finish()
    }
}
