//! Connection strings, both forms libpq accepts, parsed into [`Options`]:
//! `key=value` lists (single quotes, backslash escapes) and
//! `postgresql://` / `postgres://` URIs (percent-decoding, `[::1]` hosts,
//! several `host:port` pairs, query parameters). Also the table of every
//! keyword libpq knows ([`KEYWORDS`]), with its environment variable.
//!
//! Only syntax is checked here, keyword names included; what the values
//! mean is [`super::settings`]' business. Error messages never quote a
//! value, so that a password cannot end up in a log: they name the keyword
//! or the part of the URI at fault instead. Pure functions, run by whatever
//! thread parses a connection string.

use std::collections::BTreeMap;
use std::fmt;

/// A libpq connection keyword.
pub struct Keyword {
    /// Its name, as written in a connection string.
    pub name: &'static str,
    /// The environment variable that gives its default, if any.
    pub env: Option<&'static str>,
    /// Whether its value is a secret, never to be shown.
    pub secret: bool,
}

const fn keyword(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword {
        name,
        env,
        secret: false,
    }
}

const fn secret(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword {
        name,
        env,
        secret: true,
    }
}

/// Every keyword of libpq 18's connection strings, in libpq's order. A key
/// not in this table is refused as libpq refuses it.
pub const KEYWORDS: &[Keyword] = &[
    keyword("service", Some("PGSERVICE")),
    keyword("user", Some("PGUSER")),
    secret("password", Some("PGPASSWORD")),
    keyword("passfile", Some("PGPASSFILE")),
    keyword("require_auth", Some("PGREQUIREAUTH")),
    keyword("channel_binding", Some("PGCHANNELBINDING")),
    keyword("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    keyword("dbname", Some("PGDATABASE")),
    keyword("host", Some("PGHOST")),
    keyword("hostaddr", Some("PGHOSTADDR")),
    keyword("port", Some("PGPORT")),
    keyword("client_encoding", Some("PGCLIENTENCODING")),
    keyword("options", Some("PGOPTIONS")),
    keyword("application_name", Some("PGAPPNAME")),
    keyword("fallback_application_name", None),
    keyword("keepalives", None),
    keyword("keepalives_idle", None),
    keyword("keepalives_interval", None),
    keyword("keepalives_count", None),
    keyword("tcp_user_timeout", None),
    keyword("sslmode", Some("PGSSLMODE")),
    keyword("sslnegotiation", Some("PGSSLNEGOTIATION")),
    keyword("sslcompression", Some("PGSSLCOMPRESSION")),
    keyword("sslcert", Some("PGSSLCERT")),
    keyword("sslkey", Some("PGSSLKEY")),
    keyword("sslcertmode", Some("PGSSLCERTMODE")),
    secret("sslpassword", None),
    keyword("sslkeylogfile", None),
    keyword("sslrootcert", Some("PGSSLROOTCERT")),
    keyword("sslcrl", Some("PGSSLCRL")),
    keyword("sslcrldir", Some("PGSSLCRLDIR")),
    keyword("sslsni", Some("PGSSLSNI")),
    keyword("requirepeer", Some("PGREQUIREPEER")),
    keyword("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    keyword("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    keyword("min_protocol_version", Some("PGMINPROTOCOLVERSION")),
    keyword("max_protocol_version", Some("PGMAXPROTOCOLVERSION")),
    keyword("gssencmode", Some("PGGSSENCMODE")),
    keyword("krbsrvname", Some("PGKRBSRVNAME")),
    keyword("gsslib", Some("PGGSSLIB")),
    keyword("gssdelegation", Some("PGGSSDELEGATION")),
    keyword("replication", None),
    keyword("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    keyword("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    secret("scram_client_key", None),
    secret("scram_server_key", None),
    keyword("oauth_issuer", None),
    keyword("oauth_client_id", None),
    secret("oauth_client_secret", None),
    keyword("oauth_scope", None),
];

/// The table entry of a keyword.
pub fn find_keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|keyword| keyword.name == name)
}

/// Keyword values, as given (set but empty counts as set, as in libpq).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<&'static str, String>,
}

impl Options {
    /// The value of a keyword, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of a keyword when set and not empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|value| !value.is_empty())
    }

    /// Whether a keyword is set (possibly to an empty string).
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Sets a keyword, replacing an earlier value (the last one wins, as in
    /// libpq). `requiressl` is libpq's old spelling of `sslmode`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), UnknownKeyword> {
        let (name, value) = if name == "requiressl" {
            let mode = if value.starts_with('1') {
                "require"
            } else {
                "prefer"
            };
            ("sslmode", mode)
        } else {
            (name, value)
        };
        let keyword = find_keyword(name).ok_or(UnknownKeyword)?;
        self.values.insert(keyword.name, value.to_string());
        Ok(())
    }

    /// Sets a keyword only if it is not set yet (defaults, service files).
    pub fn set_default(&mut self, keyword: &'static Keyword, value: &str) {
        self.values
            .entry(keyword.name)
            .or_insert_with(|| value.to_string());
    }

    /// The keywords that are set, in the order of their names.
    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.values.keys().copied()
    }
}

impl fmt::Debug for Options {
    /// Every keyword with its value, secrets masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.values {
            let shown = match find_keyword(name) {
                Some(keyword) if keyword.secret => "********",
                _ => value.as_str(),
            };
            map.entry(name, &shown);
        }
        map.finish()
    }
}

/// A key that is not a libpq keyword.
#[derive(Debug)]
pub struct UnknownKeyword;

/// Parses a connection string, URI or `key=value` list, as libpq's
/// `PQconnectdb` does (no defaults applied yet).
pub fn parse(dsn: &str) -> Result<Options, String> {
    match uri_prefix_length(dsn) {
        Some(prefix) => parse_uri(&dsn[prefix..]),
        None => parse_key_values(dsn),
    }
}

fn uri_prefix_length(dsn: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|prefix| dsn.starts_with(*prefix))
        .map(|prefix| prefix.len())
}

/// C's `isspace` in the "C" locale, which libpq's parser uses.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

/// Names the key at fault, unless it follows a password: in
/// `password=my secret`, the "key" `secret` is the second half of the
/// password, which must not be printed.
fn describe_key(key: &str, after_secret: bool) -> String {
    if after_secret {
        "the word after the password (not shown: a value with spaces must be in single quotes)"
            .to_string()
    } else {
        format!("\"{key}\"")
    }
}

fn parse_key_values(dsn: &str) -> Result<Options, String> {
    let mut options = Options::default();
    let mut chars = dsn.chars().peekable();
    let mut after_secret = false;
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "missing \"=\" after {} in the connection string",
                describe_key(&key, after_secret)
            ));
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => {
                        return Err(format!(
                            "unterminated quoted string in the connection string (value of \"{key}\")"
                        ));
                    }
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(*c)) {
                if c == '\\' {
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if options.set(&key, &value).is_err() {
            return Err(format!(
                "invalid connection option {}",
                describe_key(&key, after_secret)
            ));
        }
        after_secret = !quoted && find_keyword(&key).is_some_and(|keyword| keyword.secret);
    }
    Ok(options)
}

/// Which part of a URI a percent-decoding error is in.
#[derive(Clone, Copy)]
enum Part {
    User,
    Password,
    Host,
    Port,
    Dbname,
    Parameter,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::User => "user name",
            Part::Password => "password",
            Part::Host => "host",
            Part::Port => "port",
            Part::Dbname => "database name",
            Part::Parameter => "query parameters",
        })
    }
}

/// Percent-decodes one part of a URI, as libpq's `conninfo_uri_decode`.
fn uri_decode(text: &str, part: Part) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| {
                bytes
                    .get(j)
                    .and_then(|b| char::from(*b).to_digit(16))
                    .map(|d| d as u8)
            };
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(format!("invalid percent-encoded token in the URI's {part}"));
            };
            let byte = (hi << 4) | lo;
            if byte == 0 {
                return Err(format!(
                    "forbidden value %00 in percent-encoded value in the URI's {part}"
                ));
            }
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded)
        .map_err(|_| format!("the URI's {part} does not decode to valid UTF-8"))
}

/// Parses what follows `postgresql://`, as libpq's
/// `conninfo_uri_parse_options`:
/// `[user[:password]@][host][:port][,...][/dbname][?param=value&...]`.
fn parse_uri(rest: &str) -> Result<Options, String> {
    let mut options = Options::default();
    let store = |options: &mut Options, name: &str, raw: &str, part: Part| {
        let value = uri_decode(raw, part)?;
        options
            .set(name, &value)
            .map_err(|_| format!("invalid URI component {part}"))
    };

    // Credentials: everything before the first '@' that comes before any '/'.
    let mut p = rest;
    let credentials_end = rest.find(['@', '/']);
    if let Some(at) = credentials_end.filter(|i| rest.as_bytes()[*i] == b'@') {
        let credentials = &rest[..at];
        let (user, password) = match credentials.find(':') {
            Some(colon) => (&credentials[..colon], Some(&credentials[colon + 1..])),
            None => (credentials, None),
        };
        if !user.is_empty() {
            store(&mut options, "user", user, Part::User)?;
        }
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            store(&mut options, "password", password, Part::Password)?;
        }
        p = &rest[at + 1..];
    }

    // Hosts and ports: netloc[:port][,netloc[:port]...]
    let mut hosts = String::new();
    let mut ports = String::new();
    let mut terminator;
    loop {
        if let Some(after_bracket) = p.strip_prefix('[') {
            let Some(close) = after_bracket.find(']') else {
                return Err(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI"
                        .to_string(),
                );
            };
            if close == 0 {
                return Err("IPv6 host address may not be empty in URI".to_string());
            }
            hosts.push_str(&after_bracket[..close]);
            p = &after_bracket[close + 1..];
            terminator = p.chars().next();
            if !matches!(terminator, None | Some(':' | '/' | '?' | ',')) {
                return Err(
                    "unexpected character after an IPv6 host address in URI (expected \":\" or \"/\")"
                        .to_string(),
                );
            }
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            hosts.push_str(&p[..end]);
            p = &p[end..];
            terminator = p.chars().next();
        }
        if terminator == Some(':') {
            p = &p[1..];
            let end = p.find(['/', '?', ',']).unwrap_or(p.len());
            ports.push_str(&p[..end]);
            p = &p[end..];
            terminator = p.chars().next();
        }
        if terminator != Some(',') {
            break;
        }
        p = &p[1..];
        hosts.push(',');
        ports.push(',');
    }
    if !hosts.is_empty() {
        store(&mut options, "host", &hosts, Part::Host)?;
    }
    if !ports.is_empty() {
        store(&mut options, "port", &ports, Part::Port)?;
    }

    // Database name: after '/', up to '?'.
    if terminator == Some('/') {
        p = &p[1..];
        let end = p.find('?').unwrap_or(p.len());
        let dbname = &p[..end];
        if !dbname.is_empty() {
            store(&mut options, "dbname", dbname, Part::Dbname)?;
        }
        p = &p[end..];
        terminator = p.chars().next();
    }

    // Query parameters.
    if terminator == Some('?') {
        parse_uri_parameters(&p[1..], &mut options)?;
    }
    Ok(options)
}

fn parse_uri_parameters(params: &str, options: &mut Options) -> Result<(), String> {
    if params.is_empty() {
        return Ok(());
    }
    for pair in params.split('&') {
        let mut parts = pair.splitn(3, '=');
        let raw_key = parts.next().unwrap_or_default();
        let (Some(raw_value), None) = (parts.next(), parts.next()) else {
            let key = uri_decode(raw_key, Part::Parameter)?;
            return Err(if pair.contains('=') {
                format!("extra key/value separator \"=\" in URI query parameter \"{key}\"")
            } else {
                format!("missing key/value separator \"=\" in URI query parameter \"{key}\"")
            });
        };
        let key = uri_decode(raw_key, Part::Parameter)?;
        let value = uri_decode(raw_value, Part::Parameter)?;
        // libpq accepts JDBC's ssl=true as sslmode=require.
        let (key, value) = if key == "ssl" && value == "true" {
            ("sslmode".to_string(), "require".to_string())
        } else {
            (key, value)
        };
        if options.set(&key, &value).is_err() {
            return Err(format!("invalid URI query parameter: \"{key}\""));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(dsn: &str) -> Vec<(String, String)> {
        let options = parse(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        options
            .names()
            .map(|name| (name.to_string(), options.get(name).unwrap().to_string()))
            .collect()
    }

    fn expect(dsn: &str, expected: &[(&str, &str)]) {
        let mut expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        expected.sort();
        assert_eq!(pairs(dsn), expected, "{dsn}");
    }

    #[test]
    fn key_value_lists() {
        // Examples of libpq's documentation, section "Connection Strings".
        expect(
            "host=localhost port=5432 dbname=mydb connect_timeout=10",
            &[
                ("host", "localhost"),
                ("port", "5432"),
                ("dbname", "mydb"),
                ("connect_timeout", "10"),
            ],
        );
        expect("", &[]);
        expect("   ", &[]);
        // Spaces around '=', quoting, escapes.
        expect(
            "host = db  password = 'it s' user=a\\ b",
            &[("host", "db"), ("password", "it s"), ("user", "a b")],
        );
        expect("password='it\\'s'", &[("password", "it's")]);
        expect("password='a\\\\b c'", &[("password", "a\\b c")]);
        expect("dbname=''", &[("dbname", "")]);
        expect("dbname=", &[("dbname", "")]);
        expect("options='-c geqo=off'", &[("options", "-c geqo=off")]);
        // The last value wins.
        expect("port=1 port=2", &[("port", "2")]);
        // requiressl is the old spelling of sslmode.
        expect("requiressl=1", &[("sslmode", "require")]);
        expect("requiressl=0", &[("sslmode", "prefer")]);
        // A trailing backslash is dropped.
        expect("user=a\\", &[("user", "a")]);
        // Tabs and newlines are spaces.
        expect(
            "host=a\tport=1\nuser=u",
            &[("host", "a"), ("port", "1"), ("user", "u")],
        );
    }

    #[test]
    fn uris() {
        // Examples of libpq's documentation, section "Connection URIs".
        expect("postgresql://", &[]);
        expect("postgresql://localhost", &[("host", "localhost")]);
        expect(
            "postgresql://localhost:5433",
            &[("host", "localhost"), ("port", "5433")],
        );
        expect(
            "postgresql://localhost/mydb",
            &[("host", "localhost"), ("dbname", "mydb")],
        );
        expect(
            "postgresql://user@localhost",
            &[("user", "user"), ("host", "localhost")],
        );
        expect(
            "postgresql://user:secret@localhost",
            &[
                ("user", "user"),
                ("password", "secret"),
                ("host", "localhost"),
            ],
        );
        expect(
            "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
            &[
                ("user", "other"),
                ("host", "localhost"),
                ("dbname", "otherdb"),
                ("connect_timeout", "10"),
                ("application_name", "myapp"),
            ],
        );
        expect(
            "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
            &[
                ("host", "host1,host2"),
                ("port", "123,456"),
                ("dbname", "somedb"),
                ("target_session_attrs", "any"),
                ("application_name", "myapp"),
            ],
        );
        expect(
            "postgresql:///mydb?host=localhost&port=5433",
            &[("dbname", "mydb"), ("host", "localhost"), ("port", "5433")],
        );
        expect(
            "postgresql://[2001:db8::1234]/database",
            &[("host", "2001:db8::1234"), ("dbname", "database")],
        );
        expect(
            "postgresql://[::1]:5433",
            &[("host", "::1"), ("port", "5433")],
        );
        expect(
            "postgresql:///dbname?host=/var/lib/postgresql",
            &[("dbname", "dbname"), ("host", "/var/lib/postgresql")],
        );
        expect(
            "postgresql://%2Fvar%2Flib%2Fpostgresql/dbname",
            &[("host", "/var/lib/postgresql"), ("dbname", "dbname")],
        );
        expect(
            "postgres://u%40x:p%3Aw%2F@h/d%20b",
            &[
                ("user", "u@x"),
                ("password", "p:w/"),
                ("host", "h"),
                ("dbname", "d b"),
            ],
        );
        // A host without a port among hosts with ports.
        expect(
            "postgresql://a,b:5433,[::1]/x",
            &[("host", "a,b,::1"), ("port", ",5433,"), ("dbname", "x")],
        );
        expect(
            "postgresql://h?ssl=true",
            &[("host", "h"), ("sslmode", "require")],
        );
        expect("postgresql://:5433", &[("port", "5433")]);
        expect("postgresql://h/", &[("host", "h")]);
        expect("postgresql://h?", &[("host", "h")]);
        expect("postgresql://user:@h", &[("user", "user"), ("host", "h")]);
    }

    fn error(dsn: &str) -> String {
        match parse(dsn) {
            Ok(options) => panic!("{dsn} parsed: {options:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_fault_and_never_the_password() {
        let cases = [
            ("host=db foo=bar", "invalid connection option \"foo\""),
            ("host", "missing \"=\" after \"host\""),
            ("password=my secret host=db", "after the password"),
            ("password=my sec=ret", "after the password"),
            ("password='pw1 and more", "unterminated quoted string"),
            (
                "postgresql://h?foo=bar",
                "invalid URI query parameter: \"foo\"",
            ),
            (
                "postgresql://h?ssl=false",
                "invalid URI query parameter: \"ssl\"",
            ),
            ("postgresql://h?port", "missing key/value separator"),
            ("postgresql://h?port=1=2", "extra key/value separator"),
            ("postgresql://[::1", "matching \"]\""),
            ("postgresql://[]/x", "may not be empty"),
            ("postgresql://[::1]x", "unexpected character"),
            (
                "postgresql://u:sec%zzret@h",
                "invalid percent-encoded token in the URI's password",
            ),
            ("postgresql://u:sec%00ret@h", "%00"),
            ("postgresql://u:sec%ffret@h", "UTF-8"),
        ];
        for (dsn, expected) in cases {
            let message = error(dsn);
            assert!(message.contains(expected), "{dsn}: {message}");
            // No case's message has any part of its password.
            for part in ["secret", "sec", "ret", "my", "pw1"] {
                assert!(!message.contains(part), "{dsn}: {message}");
            }
        }
    }

    #[test]
    fn debug_masks_secrets() {
        let options = parse("password=s3cret sslpassword=k3y user=u").unwrap();
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("\"user\": \"u\""), "{shown}");
    }

    #[test]
    fn every_keyword_is_known_once() {
        let mut names: Vec<&str> = KEYWORDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        for keyword in KEYWORDS {
            assert!(
                parse(&format!("{}=x", keyword.name)).is_ok(),
                "{}",
                keyword.name
            );
        }
    }
}
