//! The password file (`PGPASSFILE`, `passfile=`, or `~/.pgpass`), with
//! libpq's rules: lines `hostname:port:database:username:password`, `*`
//! matching anything, `\` escaping `:` and `\`, `localhost` standing for
//! the default Unix socket directory, and a file readable by group or
//! others ignored with a warning.
//!
//! Read at each connection attempt, like libpq, on the thread that
//! connects; the matching itself ([`find`]) is a pure function.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::DEFAULT_SOCKET_DIR;

/// What a lookup in the password file is keyed on, as libpq builds it.
pub struct Key<'a> {
    /// `host` as given, else `hostaddr`; empty means the default socket.
    pub host: &'a str,
    /// The port as given, empty for the default.
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// Files already warned about, so that a daemon reconnecting every few
/// seconds says it once.
static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The password the file at `path` has for `key`, if the file exists, is
/// private to its owner and has a matching line.
pub fn lookup(path: &Path, key: &Key<'_>) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    let problem = if !metadata.is_file() {
        Some("is not a plain file")
    } else if metadata.permissions().mode() & 0o077 != 0 {
        Some("has group or world access; permissions should be u=rw (0600) or less")
    } else {
        None
    };
    if let Some(problem) = problem {
        warn_once(path, problem);
        return None;
    }
    let text = std::fs::read(path).ok()?;
    find(&String::from_utf8_lossy(&text), key)
}

fn warn_once(path: &Path, problem: &str) {
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert(path.to_path_buf())
    {
        log::warn!(
            "password file \"{}\" {problem}: it is ignored",
            path.display()
        );
    } else {
        log::debug!(
            "password file \"{}\" {problem}: it is ignored",
            path.display()
        );
    }
}

/// The password of the first line of `text` matching `key`, as libpq's
/// `passwordFromFile`.
pub fn find(text: &str, key: &Key<'_>) -> Option<String> {
    if key.dbname.is_empty() || key.user.is_empty() {
        return None;
    }
    // 'localhost' matches an empty host and the default socket directory.
    let host = if key.host.is_empty() || key.host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        key.host
    };
    let port = if key.port.is_empty() {
        "5432"
    } else {
        key.port
    };
    for line in text.split('\n') {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = [host, port, key.dbname, key.user]
            .iter()
            .try_fold(line.as_bytes(), |rest, token| field_matches(rest, token));
        if let Some(password) = rest {
            return Some(unescape_password(password));
        }
    }
    None
}

/// Matches one `:`-terminated field at the start of `field` against
/// `token`, as libpq's `pwdfMatchesString`; returns what follows the `:`.
fn field_matches<'a>(field: &'a [u8], token: &str) -> Option<&'a [u8]> {
    if field.starts_with(b"*:") {
        return Some(&field[2..]);
    }
    let token = token.as_bytes();
    let (mut f, mut t) = (0, 0);
    while f < field.len() {
        let mut escaped = false;
        if field[f] == b'\\' {
            f += 1;
            escaped = true;
        }
        let c = field.get(f).copied();
        if c == Some(b':') && t == token.len() && !escaped {
            return Some(&field[f + 1..]);
        }
        if t == token.len() || c != Some(token[t]) {
            return None;
        }
        f += 1;
        t += 1;
    }
    None
}

/// The password field: up to the first unescaped `:`, escapes removed.
fn unescape_password(field: &[u8]) -> String {
    let mut password = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() && field[i] != b':' {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        password.push(field[i]);
        i += 1;
    }
    String::from_utf8_lossy(&password).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> Key<'a> {
        Key {
            host,
            port,
            dbname,
            user,
        }
    }

    const FILE: &str = "\
# comment:line:with:colons:x
db.example:5432:powa:powa:first
db.example:*:*:powa:second
*:5433:*:*:third
localhost:5432:powa:powa:local
/tmp/sockets:5432:powa:powa:socketdir
h\\:x:5432:d:u:escaped-host
h:5432:d\\\\b:u:escaped-db
h:5432:d:u:pa\\:ss\\\\word:trailing
h:5432:d:nopassword
crlf:5432:d:u:windows\r
";

    #[test]
    fn matching_follows_libpq() {
        let cases = [
            (key("db.example", "5432", "powa", "powa"), Some("first")),
            (key("db.example", "", "powa", "powa"), Some("first")),
            (key("db.example", "6000", "other", "powa"), Some("second")),
            (key("db.example", "6000", "other", "someone"), None),
            (key("anything", "5433", "x", "y"), Some("third")),
            (key("", "5432", "powa", "powa"), Some("local")),
            (
                key(DEFAULT_SOCKET_DIR, "5432", "powa", "powa"),
                Some("local"),
            ),
            (
                key("/tmp/sockets", "5432", "powa", "powa"),
                Some("socketdir"),
            ),
            (key("/other/dir", "5432", "powa", "powa"), None),
            (key("h:x", "5432", "d", "u"), Some("escaped-host")),
            (key("h", "5432", "d\\b", "u"), Some("escaped-db")),
            (key("h", "5432", "d", "u"), Some("pa:ss\\word")),
            (key("h", "5432", "d", "nopassword"), None),
            (key("crlf", "5432", "d", "u"), Some("windows")),
            (key("db.example", "5432", "", "powa"), None),
            (key("db.example", "5432", "powa", ""), None),
            // Port strings are compared as given.
            (key("db.example", "05432", "powa", "powa"), Some("second")),
        ];
        for (key, expected) in cases {
            assert_eq!(
                find(FILE, &key).as_deref(),
                expected,
                "{} {} {} {}",
                key.host,
                key.port,
                key.dbname,
                key.user
            );
        }
    }

    #[test]
    fn field_edge_cases() {
        assert_eq!(field_matches(b"*:rest", "x"), Some(&b"rest"[..]));
        assert_eq!(field_matches(b"*x:rest", "*x"), Some(&b"rest"[..]));
        assert_eq!(field_matches(b"ab", "ab"), None);
        assert_eq!(field_matches(b"ab\\", "ab"), None);
        assert_eq!(field_matches(b"a:rest", "ab"), None);
        assert_eq!(field_matches(b"abc:rest", "ab"), None);
        assert_eq!(unescape_password(b"a\\"), "a\\");
        assert_eq!(unescape_password(b""), "");
    }

    #[test]
    fn readable_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:s3cret\n").unwrap();
        let k = key("h", "5432", "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &k).as_deref(), Some("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&path, &k), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(lookup(&path, &k), None);
        assert_eq!(lookup(dir.path(), &k), None);
        assert_eq!(lookup(&dir.path().join("missing"), &k), None);
    }
}
