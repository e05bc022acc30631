//! Connection service files (`pg_service.conf`), as libpq reads them: the
//! service named by `service=` or `PGSERVICE` is looked up in
//! `PGSERVICEFILE` (or `~/.pg_service.conf`), then in
//! `PGSYSCONFDIR/pg_service.conf` (Debian's libpq: `/etc/postgresql-common`),
//! and its settings fill in the keywords the connection string left unset.
//!
//! Run by whatever thread resolves a connection string; the parsing itself
//! ([`apply_service_text`]) is a pure function.

use std::path::{Path, PathBuf};

use super::dsn::{Options, find_keyword};
use super::env::Env;

/// Where Debian's libpq looks for the system-wide service file when
/// `PGSYSCONFDIR` is not set.
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// libpq reads service files with a 1024-byte line buffer.
const MAX_LINE: usize = 1023;

/// Fills `options` from the service it names (or `PGSERVICE` names), if
/// any.
pub fn apply(options: &mut Options, env: &Env) -> Result<(), String> {
    let Some(service) = options
        .get("service")
        .or_else(|| env.var("PGSERVICE"))
        .map(str::to_string)
    else {
        return Ok(());
    };

    let user_file = match env.var("PGSERVICEFILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => env
            .home()
            .map(|home| home.join(".pg_service.conf"))
            .filter(|file| file.exists()),
    };
    if let Some(file) = user_file {
        let text = read(&file)?;
        if apply_service_text(&text, &file, &service, options)? {
            return Ok(());
        }
    }

    let sysconfdir = env.var("PGSYSCONFDIR").unwrap_or(DEFAULT_SYSCONFDIR);
    let system_file = Path::new(sysconfdir).join("pg_service.conf");
    if system_file.exists() {
        let text = read(&system_file)?;
        if apply_service_text(&text, &system_file, &service, options)? {
            return Ok(());
        }
    }
    Err(format!("definition of service \"{service}\" not found"))
}

fn read(file: &Path) -> Result<String, String> {
    std::fs::read(file)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| format!("service file \"{}\" not found: {e}", file.display()))
}

/// Applies the section `[service]` of a service file's text to `options`
/// (without replacing what is set). Returns whether the section exists.
pub fn apply_service_text(
    text: &str,
    file: &Path,
    service: &str,
    options: &mut Options,
) -> Result<bool, String> {
    let mut found = false;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.len() >= MAX_LINE {
            return Err(format!(
                "line {number} too long in service file \"{}\"",
                file.display()
            ));
        }
        let line = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            if found {
                break;
            }
            found = section
                .strip_prefix(service)
                .is_some_and(|rest| rest.starts_with(']'));
            continue;
        }
        if !found {
            continue;
        }
        let syntax_error = || {
            format!(
                "syntax error in service file \"{}\", line {number}",
                file.display()
            )
        };
        if line.starts_with("ldap") {
            return Err(format!(
                "LDAP lookups in service file \"{}\", line {number}, are not supported",
                file.display()
            ));
        }
        let (key, value) = line.split_once('=').ok_or_else(syntax_error)?;
        if key == "service" {
            return Err(format!(
                "nested service specifications not supported in service file \"{}\", line {number}",
                file.display()
            ));
        }
        let keyword = find_keyword(key).ok_or_else(syntax_error)?;
        options.set_default(keyword, value);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::dsn::parse;

    const FILE: &str = "\
# comment
[other]
host=elsewhere

[mydb]
  host=somehost
port=5433
user=admin
dbname=
[after]
host=ignored
";

    #[test]
    fn section_fills_what_is_unset() {
        let mut options = parse("user=me").unwrap();
        let found = apply_service_text(FILE, Path::new("f"), "mydb", &mut options).unwrap();
        assert!(found);
        assert_eq!(options.get("host"), Some("somehost"));
        assert_eq!(options.get("port"), Some("5433"));
        assert_eq!(options.get("user"), Some("me"));
        assert_eq!(options.get("dbname"), Some(""));
        let mut options = Options::default();
        assert!(!apply_service_text(FILE, Path::new("f"), "nope", &mut options).unwrap());
        assert!(!apply_service_text(FILE, Path::new("f"), "my", &mut options).unwrap());
    }

    #[test]
    fn errors_name_file_and_line() {
        let mut options = Options::default();
        for (text, expected) in [
            (
                "[s]\nhost = x\n",
                "syntax error in service file \"f\", line 2",
            ),
            ("[s]\nfoo=x\n", "syntax error in service file \"f\", line 2"),
            ("[s]\nnoequal\n", "line 2"),
            ("[s]\nservice=t\n", "nested service"),
            ("[s]\nldap://ldap.example/x\n", "LDAP"),
        ] {
            let error = apply_service_text(text, Path::new("f"), "s", &mut options).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn files_are_searched_as_libpq_does() {
        let dir = tempfile::tempdir().unwrap();
        let user_file = dir.path().join("user.conf");
        std::fs::write(&user_file, "[a]\nhost=from-user\n").unwrap();
        let sysconf = dir.path().join("etc");
        std::fs::create_dir(&sysconf).unwrap();
        std::fs::write(sysconf.join("pg_service.conf"), "[b]\nhost=from-system\n").unwrap();
        let env = Env::from_pairs(
            [
                ("PGSERVICEFILE", user_file.to_str().unwrap()),
                ("PGSYSCONFDIR", sysconf.to_str().unwrap()),
            ],
            None,
            None,
        );
        let resolve = |dsn: &str, env: &Env| {
            let mut options = parse(dsn).unwrap();
            apply(&mut options, env).map(|()| options.get("host").map(str::to_string))
        };
        assert_eq!(
            resolve("service=a", &env).unwrap().as_deref(),
            Some("from-user")
        );
        assert_eq!(
            resolve("service=b", &env).unwrap().as_deref(),
            Some("from-system")
        );
        assert_eq!(
            resolve("service=c", &env).unwrap_err(),
            "definition of service \"c\" not found"
        );
        assert_eq!(resolve("host=h", &env).unwrap().as_deref(), Some("h"));
        let with_pgservice = Env::from_pairs(
            [
                ("PGSERVICE", "b"),
                ("PGSYSCONFDIR", sysconf.to_str().unwrap()),
            ],
            Some(dir.path().to_str().unwrap()),
            None,
        );
        assert_eq!(
            resolve("", &with_pgservice).unwrap().as_deref(),
            Some("from-system")
        );
        let missing = Env::from_pairs([("PGSERVICEFILE", "/nonexistent/x")], None, None);
        assert!(
            resolve("service=a", &missing)
                .unwrap_err()
                .contains("not found")
        );
    }
}
