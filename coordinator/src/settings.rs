//! Configuration parameters (Postgres' GUCs): the registry of what exists, with type, default,
//! range and context; a session's values with Postgres' layering and transaction semantics.
//!
//! A value is looked up in this order: `SET LOCAL` (until the transaction ends), `SET` (for the
//! session; undone if its transaction rolls back), the server's values (`ALTER SYSTEM`, stored
//! in the catalog, applied at start and by `pg_reload_conf()`), the built-in default.

use std::collections::BTreeMap;
use std::sync::Arc;

use orochi_common::error::{DbError, DbResult, SqlState};
use parking_lot::{Mutex, RwLock};

pub const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Bool,
    /// An integer; `unit` is Postgres' base unit for time values (`ms`, `min`), if any.
    Int {
        min: i64,
        max: i64,
        unit: Option<&'static str>,
    },
    Enum(&'static [&'static str]),
    String,
}

/// Who may change a parameter, and when the change takes effect (Postgres' `context`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Context {
    /// reports a fact about the server; nobody changes it
    Internal,
    /// set at server start (configuration file)
    Postmaster,
    /// any session, any time
    User,
}

impl Context {
    pub fn name(self) -> &'static str {
        match self {
            Context::Internal => "internal",
            Context::Postmaster => "postmaster",
            Context::User => "user",
        }
    }
}

pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub context: Context,
    pub category: &'static str,
    pub description: &'static str,
}

const CLIENT: &str = "Client Connection Defaults / Statement Behavior";
const LOCALE: &str = "Client Connection Defaults / Locale and Formatting";
const PRESET: &str = "Preset Options";
const OROCHI: &str = "Customized Options";
const MAX_I32: i64 = i32::MAX as i64;

const fn def(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    context: Context,
    category: &'static str,
    description: &'static str,
) -> Def {
    Def {
        name,
        kind,
        default,
        context,
        category,
        description,
    }
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int {
        min,
        max,
        unit: None,
    }
}

const fn millis() -> Kind {
    Kind::Int {
        min: 0,
        max: MAX_I32,
        unit: Some("ms"),
    }
}

const fn minutes() -> Kind {
    Kind::Int {
        min: 1,
        max: MAX_I32,
        unit: Some("min"),
    }
}

/// Every parameter, by name (sorted as `SHOW ALL` lists them: case-insensitively).
pub const PARAMETERS: &[Def] = &[
    def(
        "application_name",
        Kind::String,
        "",
        Context::User,
        "Reporting and Logging / What to Log",
        "Sets the application name to be reported in statistics and logs.",
    ),
    def(
        "client_encoding",
        Kind::String,
        "UTF8",
        Context::User,
        LOCALE,
        "Sets the client's character set encoding.",
    ),
    def(
        "DateStyle",
        Kind::String,
        "ISO, MDY",
        Context::User,
        LOCALE,
        "Sets the display format for date and time values.",
    ),
    def(
        "default_transaction_isolation",
        Kind::Enum(&[
            "serializable",
            "repeatable read",
            "read committed",
            "read uncommitted",
        ]),
        "read committed",
        Context::User,
        CLIENT,
        "Sets the transaction isolation level of each new transaction.",
    ),
    def(
        "extra_float_digits",
        int(-15, 3),
        "1",
        Context::User,
        LOCALE,
        "Sets the number of digits displayed for floating-point values.",
    ),
    def(
        "idle_in_transaction_session_timeout",
        millis(),
        "0",
        Context::User,
        CLIENT,
        "Sets the maximum allowed idle time between queries, when in a transaction.",
    ),
    def(
        "idle_session_timeout",
        millis(),
        "0",
        Context::User,
        CLIENT,
        "Sets the maximum allowed idle time between queries, when not in a transaction.",
    ),
    def(
        "integer_datetimes",
        Kind::Bool,
        "on",
        Context::Internal,
        PRESET,
        "Shows whether datetimes are integer based.",
    ),
    def(
        "IntervalStyle",
        Kind::Enum(&["postgres", "postgres_verbose", "sql_standard", "iso_8601"]),
        "postgres",
        Context::User,
        LOCALE,
        "Sets the display format for interval values.",
    ),
    def(
        "lock_timeout",
        millis(),
        "0",
        Context::User,
        CLIENT,
        "Sets the maximum allowed duration of any wait for a lock.",
    ),
    def(
        "max_connections",
        int(1, 262_143),
        "100",
        Context::Postmaster,
        "Connections and Authentication / Connection Settings",
        "Sets the maximum number of concurrent connections.",
    ),
    def(
        "orochi.cold_tier_age",
        minutes(),
        "43200",
        Context::User,
        OROCHI,
        "Age after which a chunk moves from warm to cold (object storage) tier.",
    ),
    def(
        "orochi.compression_level",
        int(1, 22),
        "3",
        Context::User,
        OROCHI,
        "Compression level of the ZSTD codec for cold columnar segments.",
    ),
    def(
        "orochi.default_compression",
        Kind::Enum(&["lz4", "zstd", "none"]),
        "lz4",
        Context::User,
        OROCHI,
        "Codec for new columnar segments.",
    ),
    def(
        "orochi.default_shard_count",
        int(1, 4096),
        "32",
        Context::User,
        OROCHI,
        "Number of hash shards for new distributed tables.",
    ),
    def(
        "orochi.enable_columnar_scan",
        Kind::Bool,
        "on",
        Context::User,
        OROCHI,
        "Enables scans of columnar segments.",
    ),
    def(
        "orochi.enable_vectorized",
        Kind::Bool,
        "on",
        Context::User,
        OROCHI,
        "Enables vectorized execution.",
    ),
    def(
        "orochi.hot_tier_age",
        minutes(),
        "1440",
        Context::User,
        OROCHI,
        "Age after which rows move from the row store to columnar segments.",
    ),
    def(
        "orochi.jit_threshold",
        int(0, MAX_I32),
        "100000",
        Context::User,
        OROCHI,
        "Estimated rows above which expressions are compiled.",
    ),
    def(
        "orochi.vectorized_batch_size",
        int(1, 1 << 20),
        "8192",
        Context::User,
        OROCHI,
        "Rows per batch in vectorized execution.",
    ),
    def(
        "orochi.warm_tier_age",
        minutes(),
        "10080",
        Context::User,
        OROCHI,
        "Age after which a chunk moves from the hot to the warm (compressed) tier.",
    ),
    def(
        "search_path",
        Kind::String,
        "\"$user\", public",
        Context::User,
        CLIENT,
        "Sets the schema search order for names that are not schema-qualified.",
    ),
    def(
        "server_encoding",
        Kind::String,
        "UTF8",
        Context::Internal,
        PRESET,
        "Shows the server (database) character set encoding.",
    ),
    def(
        "server_version",
        Kind::String,
        SERVER_VERSION,
        Context::Internal,
        PRESET,
        "Shows the server version.",
    ),
    def(
        "server_version_num",
        int(160006, 160006),
        SERVER_VERSION_NUM,
        Context::Internal,
        PRESET,
        "Shows the server version as an integer.",
    ),
    def(
        "shared_preload_libraries",
        Kind::String,
        "orochi",
        Context::Postmaster,
        "Client Connection Defaults / Shared Library Preloading",
        "Lists shared libraries to preload into server.",
    ),
    def(
        "standard_conforming_strings",
        Kind::Bool,
        "on",
        Context::User,
        "Version and Platform Compatibility / Previous PostgreSQL Versions",
        "Causes '...' strings to treat backslashes literally.",
    ),
    def(
        "statement_timeout",
        millis(),
        "0",
        Context::User,
        CLIENT,
        "Sets the maximum allowed duration of any statement.",
    ),
    def(
        "TimeZone",
        Kind::String,
        "UTC",
        Context::User,
        LOCALE,
        "Sets the time zone for displaying and interpreting time stamps.",
    ),
    def(
        "transaction_isolation",
        Kind::Enum(&[
            "serializable",
            "repeatable read",
            "read committed",
            "read uncommitted",
        ]),
        "read committed",
        Context::User,
        CLIENT,
        "Sets the current transaction's isolation level.",
    ),
];

/// The parameter called `name` (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static Def> {
    PARAMETERS
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

fn invalid(name: &str, value: &str) -> DbError {
    DbError::new(
        SqlState::InvalidParameterValue,
        format!("invalid value for parameter \"{name}\": \"{value}\""),
    )
}

/// Postgres' time units, in milliseconds.
const TIME_UNITS: &[(&str, f64)] = &[
    ("us", 0.001),
    ("ms", 1.0),
    ("s", 1000.0),
    ("min", 60_000.0),
    ("h", 3_600_000.0),
    ("d", 86_400_000.0),
];

fn unit_ms(unit: &str) -> f64 {
    TIME_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, ms)| *ms)
        .unwrap_or(1.0)
}

/// A time value in `base` units, the largest unit that divides it exactly: `60000` ms is
/// `1min`, as Postgres shows it.
fn format_time(v: i64, base: &str) -> String {
    if v <= 0 {
        return v.to_string();
    }
    let ms = v as f64 * unit_ms(base);
    for (unit, size) in TIME_UNITS.iter().rev() {
        if *size >= unit_ms(base) && ms % size == 0.0 {
            return format!("{}{unit}", (ms / size) as i64);
        }
    }
    format!("{v}{base}")
}

impl Def {
    /// Checks `value` and returns it the way `SHOW` prints it (22023 when it is not valid).
    pub fn normalize(&self, value: &str) -> DbResult<String> {
        let name = self.name;
        match self.kind {
            Kind::Bool => match value.trim().to_lowercase().as_str() {
                "on" | "true" | "yes" | "1" | "t" | "y" => Ok("on".into()),
                "off" | "false" | "no" | "0" | "f" | "n" => Ok("off".into()),
                _ => Err(DbError::new(
                    SqlState::InvalidParameterValue,
                    format!("parameter \"{name}\" requires a Boolean value"),
                )),
            },
            Kind::Int { min, max, unit } => {
                let text = value.trim();
                let split = text
                    .find(|c: char| c.is_ascii_alphabetic())
                    .unwrap_or(text.len());
                let (number, suffix) = text.split_at(split);
                let number: f64 = number.trim().parse().map_err(|_| invalid(name, value))?;
                let n = match (unit, suffix.trim()) {
                    (_, "") => number,
                    (Some(base), u) if TIME_UNITS.iter().any(|(x, _)| *x == u) => {
                        number * unit_ms(u) / unit_ms(base)
                    }
                    _ => {
                        let hint = if unit.is_some() {
                            "Valid units for this parameter are \"us\", \"ms\", \"s\", \"min\", \"h\", and \"d\"."
                        } else {
                            "This parameter takes no unit."
                        };
                        return Err(invalid(name, value).with_detail(hint));
                    }
                };
                let n = n.round();
                if n < min as f64 || n > max as f64 {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!(
                            "{} is outside the valid range for parameter \"{name}\" ({min} .. {max})",
                            n as i64
                        ),
                    ));
                }
                Ok(match unit {
                    Some(base) => format_time(n as i64, base),
                    None => (n as i64).to_string(),
                })
            }
            Kind::Enum(values) => {
                let v = value.trim().to_lowercase();
                values
                    .iter()
                    .find(|x| **x == v)
                    .map(|x| x.to_string())
                    .ok_or_else(|| {
                        invalid(name, value)
                            .with_detail(format!("Available values: {}.", values.join(", ")))
                    })
            }
            Kind::String => match name {
                "client_encoding"
                    if !matches!(value.to_uppercase().as_str(), "UTF8" | "UTF-8" | "UNICODE") =>
                {
                    Err(DbError::new(
                        SqlState::FeatureNotSupported,
                        format!(
                            "conversion to encoding \"{value}\" is not supported; only UTF8 is"
                        ),
                    ))
                }
                "client_encoding" => Ok("UTF8".into()),
                "DateStyle" => date_style(value),
                "TimeZone" => time_zone(value),
                _ => Ok(value.to_string()),
            },
        }
    }

    /// The built-in default, as `SHOW` prints it (`1440` minutes is `1d`).
    pub fn default_shown(&self) -> String {
        self.normalize(self.default)
            .unwrap_or_else(|_| self.default.to_string())
    }

    /// The value in the setting's base unit, as `pg_settings.setting` shows it.
    pub fn base_value(&self, shown: &str) -> String {
        match self.kind {
            Kind::Int { unit: Some(_), .. } => self
                .normalize(shown)
                .ok()
                .and_then(|_| {
                    let text = shown.trim();
                    let split = text
                        .find(|c: char| c.is_ascii_alphabetic())
                        .unwrap_or(text.len());
                    let (n, u) = text.split_at(split);
                    let n: f64 = n.parse().ok()?;
                    let Kind::Int {
                        unit: Some(base), ..
                    } = self.kind
                    else {
                        return None;
                    };
                    let u = if u.is_empty() { base } else { u };
                    Some(((n * unit_ms(u) / unit_ms(base)).round() as i64).to_string())
                })
                .unwrap_or_else(|| shown.to_string()),
            _ => shown.to_string(),
        }
    }

    pub fn vartype(&self) -> &'static str {
        match self.kind {
            Kind::Bool => "bool",
            Kind::Int { .. } => "integer",
            Kind::Enum(_) => "enum",
            Kind::String => "string",
        }
    }
}

/// `TimeZone`: a zone of the IANA database, matched without regard to case and shown as the
/// database spells it (as Postgres does), or a POSIX-style offset (`+02`, `-05:30`,
/// `UTC+3`), kept as written. Anything else is 22023.
fn time_zone(value: &str) -> DbResult<String> {
    let v = value.trim();
    if let Some(tz) = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(v))
    {
        return Ok(tz.name().to_string());
    }
    // `<+02>-02`: POSIX with a quoted abbreviation (how Postgres shows `+02`)
    let abbreviation_ok = match v.strip_prefix('<') {
        Some(r) => r.split_once('>').is_some(),
        None => {
            let letters = v.bytes().take_while(u8::is_ascii_alphabetic).count();
            letters == 0 || letters >= 3
        }
    };
    if abbreviation_ok && orochi_common::zone::offset_of(v).is_some() {
        return Ok(orochi_common::zone::canonical_offset(v));
    }
    Err(invalid("TimeZone", value))
}

/// `DateStyle`: only ISO output is implemented; the field order is kept.
fn date_style(value: &str) -> DbResult<String> {
    let mut style = None;
    let mut order = "MDY";
    for part in value.split(',').map(|p| p.trim().to_uppercase()) {
        match part.as_str() {
            "ISO" => style = Some("ISO"),
            "MDY" | "US" | "NONEURO" | "NONEUROPEAN" => order = "MDY",
            "DMY" | "EURO" | "EUROPEAN" => order = "DMY",
            "YMD" => order = "YMD",
            "" | "DEFAULT" => {}
            "POSTGRES" | "SQL" | "GERMAN" => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("DateStyle \"{part}\" is not supported; only ISO output is"),
                ));
            }
            _ => return Err(invalid("DateStyle", value)),
        }
    }
    Ok(format!("{}, {order}", style.unwrap_or("ISO")))
}

/// Where a parameter's name is reserved for us: `orochi.*` names must be known ones.
fn check_name(name: &str) -> DbResult<&'static Def> {
    if let Some(d) = lookup(name) {
        return Ok(d);
    }
    if name.to_lowercase().starts_with("orochi.") {
        return Err(DbError::new(
            SqlState::InvalidName,
            format!("invalid configuration parameter name \"{name}\""),
        )
        .with_detail("\"orochi\" is a reserved prefix."));
    }
    Err(DbError::new(
        SqlState::UndefinedObject,
        format!("unrecognized configuration parameter \"{name}\""),
    ))
}

/// Whether a session may set `d` (55P02 for what only the server decides).
fn check_settable(d: &Def) -> DbResult<()> {
    match d.context {
        Context::User => Ok(()),
        Context::Internal => Err(DbError::new(
            SqlState::CantChangeRuntimeParam,
            format!("parameter \"{}\" cannot be changed", d.name),
        )),
        Context::Postmaster => Err(DbError::new(
            SqlState::CantChangeRuntimeParam,
            format!(
                "parameter \"{}\" cannot be changed without restarting the server",
                d.name
            ),
        )),
    }
}

/// The server-wide values (`ALTER SYSTEM` as of the last reload), shared by all sessions.
pub type ServerValues = Arc<RwLock<BTreeMap<String, String>>>;

/// How many times the server values were reloaded (part of [`Settings::generation`]).
pub static SERVER_RELOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Checks an `ALTER SYSTEM SET` value; returns the name as registered and the value as shown.
pub fn check_system_value(name: &str, value: &str) -> DbResult<(&'static str, String)> {
    let d = check_name(name)?;
    if d.context == Context::Internal {
        check_settable(d)?;
    }
    Ok((d.name, d.normalize(value)?))
}

/// A session's parameter values.
pub struct Settings {
    server: ServerValues,
    /// `SET` values (lower-case names).
    session: BTreeMap<String, String>,
    /// `SET LOCAL` values, until the transaction ends.
    local: BTreeMap<String, String>,
    /// `session` as it was when the transaction block began (restored by ROLLBACK).
    at_begin: Option<BTreeMap<String, String>>,
    /// Custom (`prefix.name`) parameters someone set, by lower-case name: the name as written.
    custom: BTreeMap<String, String>,
    /// Bumped by every change of a session value, so the connection can tell cheaply when
    /// to look for reportable parameters that changed (ParameterStatus).
    generation: u64,
}

pub type SharedSettings = Arc<Mutex<Settings>>;

impl Settings {
    pub fn new(server: ServerValues) -> Settings {
        Settings {
            server,
            session: BTreeMap::new(),
            local: BTreeMap::new(),
            at_begin: None,
            custom: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The current value of `name`, as `SHOW` prints it.
    pub fn get(&self, name: &str) -> DbResult<String> {
        let key = name.to_lowercase();
        if let Some(v) = self.local.get(&key).or_else(|| self.session.get(&key)) {
            return Ok(v.clone());
        }
        let d = match check_name(name) {
            Ok(d) => d,
            Err(e) => return self.custom.get(&key).map(|_| String::new()).ok_or(e),
        };
        Ok(self
            .server
            .read()
            .get(&key)
            .cloned()
            .unwrap_or_else(|| d.default_shown()))
    }

    /// Where the current value comes from (`pg_settings.source`).
    pub fn source(&self, name: &str) -> &'static str {
        let key = name.to_lowercase();
        if self.local.contains_key(&key) || self.session.contains_key(&key) {
            "session"
        } else if self.server.read().contains_key(&key) {
            "configuration file"
        } else {
            "default"
        }
    }

    /// The value a `RESET` goes back to.
    pub fn reset_value(&self, d: &Def) -> String {
        self.server
            .read()
            .get(&d.name.to_lowercase())
            .cloned()
            .unwrap_or_else(|| d.default_shown())
    }

    /// `SET [LOCAL] name = value`.
    pub fn set(&mut self, name: &str, value: &str, local: bool) -> DbResult<()> {
        let key = name.to_lowercase();
        let value = match check_name(name) {
            Ok(d) => {
                check_settable(d)?;
                d.normalize(value)?
            }
            // a custom parameter (`myapp.x`), as Postgres allows
            Err(e) if e.state == SqlState::UndefinedObject && key.contains('.') => {
                self.custom.insert(key.clone(), name.to_string());
                value.to_string()
            }
            Err(e) => return Err(e),
        };
        self.generation += 1;
        if local {
            // until the transaction ends (an implicit one ends with its statement)
            self.local.insert(key, value);
        } else {
            self.local.remove(&key);
            self.session.insert(key, value);
        }
        Ok(())
    }

    /// `RESET name`.
    pub fn reset(&mut self, name: &str) -> DbResult<()> {
        let key = name.to_lowercase();
        match check_name(name) {
            Ok(d) => check_settable(d)?,
            Err(_) if self.custom.contains_key(&key) => {}
            Err(e) => return Err(e),
        }
        self.local.remove(&key);
        self.session.remove(&key);
        self.generation += 1;
        Ok(())
    }

    /// `RESET ALL`.
    pub fn reset_all(&mut self) {
        self.local.clear();
        self.session.clear();
        self.generation += 1;
    }

    /// Changes with every SET, RESET, end of a transaction that undid or dropped values, and
    /// server-wide reload (`pg_reload_conf()`).
    pub fn generation(&self) -> u64 {
        self.generation
            .wrapping_add(SERVER_RELOADS.load(std::sync::atomic::Ordering::Relaxed) << 40)
    }

    /// A transaction block began: SETs from here on are undone if it rolls back.
    pub fn begin(&mut self) {
        self.at_begin = Some(self.session.clone());
        self.local.clear();
    }

    /// The transaction ended; `committed` keeps its SETs, otherwise they are undone. SET
    /// LOCAL values end either way.
    pub fn end(&mut self, committed: bool) {
        if let Some(before) = self.at_begin.take()
            && !committed
        {
            self.session = before;
            self.generation += 1;
        }
        if !self.local.is_empty() {
            self.local.clear();
            self.generation += 1;
        }
    }

    /// `statement_timeout` as a duration; `None` when 0 (no timeout).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        self.duration("statement_timeout")
    }

    /// A millisecond parameter as a duration; `None` when 0 (disabled).
    pub fn duration(&self, name: &str) -> Option<std::time::Duration> {
        let shown = self.get(name).ok()?;
        let ms: u64 = lookup(name)?.base_value(&shown).parse().ok()?;
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    /// The names of every parameter `SHOW ALL` lists.
    pub fn all(&self) -> Vec<(&'static Def, String)> {
        let mut out: Vec<(&'static Def, String)> = PARAMETERS
            .iter()
            .map(|d| (d, self.get(d.name).unwrap_or_default()))
            .collect();
        out.sort_by_key(|(d, _)| d.name.to_lowercase());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new(Arc::new(RwLock::new(BTreeMap::new())))
    }

    #[test]
    fn values_are_checked_and_shown_as_postgres_shows_them() {
        let mut s = settings();
        s.set("statement_timeout", "60000", false).unwrap();
        assert_eq!(s.get("statement_timeout").unwrap(), "1min");
        s.set("statement_timeout", "1500ms", false).unwrap();
        assert_eq!(s.get("STATEMENT_TIMEOUT").unwrap(), "1500ms");
        assert_eq!(
            s.statement_timeout(),
            Some(std::time::Duration::from_millis(1500))
        );
        s.set("orochi.hot_tier_age", "2d", false).unwrap();
        assert_eq!(s.get("orochi.hot_tier_age").unwrap(), "2d");
        s.set("orochi.enable_vectorized", "false", false).unwrap();
        assert_eq!(s.get("orochi.enable_vectorized").unwrap(), "off");
        let e = s.set("orochi.compression_level", "23", false).unwrap_err();
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        let e = s
            .set("orochi.default_compression", "gzip", false)
            .unwrap_err();
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        let e = s.set("orochi.nope", "1", false).unwrap_err();
        assert_eq!(e.state, SqlState::InvalidName);
        let e = s.set("nope", "1", false).unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedObject);
        let e = s.set("server_version", "1", false).unwrap_err();
        assert_eq!(e.state, SqlState::CantChangeRuntimeParam);
        s.set("myapp.user_id", "42", false).unwrap();
        assert_eq!(s.get("myapp.user_id").unwrap(), "42");
    }

    #[test]
    fn set_follows_the_transaction() {
        let mut s = settings();
        s.set("application_name", "a", false).unwrap();
        s.begin();
        s.set("application_name", "b", false).unwrap();
        s.set("extra_float_digits", "2", true).unwrap();
        assert_eq!(s.get("extra_float_digits").unwrap(), "2");
        s.end(false);
        assert_eq!(s.get("application_name").unwrap(), "a");
        assert_eq!(s.get("extra_float_digits").unwrap(), "1");
        s.begin();
        s.set("application_name", "c", false).unwrap();
        s.set("extra_float_digits", "3", true).unwrap();
        s.end(true);
        assert_eq!(s.get("application_name").unwrap(), "c");
        assert_eq!(s.get("extra_float_digits").unwrap(), "1");
    }
}

/// `current_setting(name [, missing_ok])`, `set_config(name, value, is_local)` and
/// `pg_reload_conf()` over a session's settings.
pub mod functions {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
    use arrow::datatypes::DataType;
    use datafusion::common::{Result, ScalarValue};
    use datafusion::logical_expr::{
        ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
    };

    use super::SharedSettings;
    use crate::error::db_to_df;
    use crate::session::Instance;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Which {
        Current,
        SetConfig,
        Reload,
    }

    pub struct SettingFunction {
        which: Which,
        settings: SharedSettings,
        instance: Option<Arc<Instance>>,
        signature: Signature,
    }

    impl std::fmt::Debug for SettingFunction {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.which)
        }
    }
    // one per session: identity is the function
    impl PartialEq for SettingFunction {
        fn eq(&self, o: &Self) -> bool {
            self.which == o.which && Arc::ptr_eq(&self.settings, &o.settings)
        }
    }
    impl Eq for SettingFunction {}
    impl std::hash::Hash for SettingFunction {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            self.which.hash(h);
        }
    }

    pub fn all(settings: &SharedSettings, instance: &Arc<Instance>) -> Vec<ScalarUDF> {
        let f = |which, signature| {
            ScalarUDF::new_from_impl(SettingFunction {
                which,
                settings: settings.clone(),
                instance: Some(instance.clone()),
                signature,
            })
        };
        vec![
            f(Which::Current, Signature::variadic_any(Volatility::Stable)),
            f(Which::SetConfig, Signature::any(3, Volatility::Volatile)),
            f(Which::Reload, Signature::nullary(Volatility::Volatile)),
        ]
    }

    fn texts(a: &ArrayRef) -> Result<StringArray> {
        Ok(arrow::compute::cast(a, &DataType::Utf8)?
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8")
            .clone())
    }

    fn bools(a: &ArrayRef) -> Result<BooleanArray> {
        Ok(arrow::compute::cast(a, &DataType::Boolean)?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("cast to Boolean")
            .clone())
    }

    impl ScalarUDFImpl for SettingFunction {
        fn name(&self) -> &str {
            match self.which {
                Which::Current => "current_setting",
                Which::SetConfig => "set_config",
                Which::Reload => "pg_reload_conf",
            }
        }
        fn signature(&self) -> &Signature {
            &self.signature
        }
        fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
            Ok(match self.which {
                Which::Reload => DataType::Boolean,
                _ => DataType::Utf8,
            })
        }
        fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
            if self.which == Which::Reload {
                if let Some(i) = &self.instance {
                    i.reload_settings().map_err(db_to_df)?;
                }
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))));
            }
            let scalar = args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)));
            let arrays = ColumnarValue::values_to_arrays(&args.args)?;
            let names = texts(&arrays[0])?;
            let mut out: Vec<Option<String>> = Vec::with_capacity(names.len());
            match self.which {
                Which::Current => {
                    let missing_ok = arrays.get(1).map(bools).transpose()?;
                    let st = self.settings.lock();
                    for i in 0..names.len() {
                        if names.is_null(i) {
                            out.push(None);
                            continue;
                        }
                        match st.get(names.value(i)) {
                            Ok(v) => out.push(Some(v)),
                            Err(_) if missing_ok.as_ref().is_some_and(|m| m.value(i)) => {
                                out.push(None)
                            }
                            Err(e) => return Err(db_to_df(e)),
                        }
                    }
                }
                Which::SetConfig => {
                    let values = texts(&arrays[1])?;
                    let local = bools(&arrays[2])?;
                    let mut st = self.settings.lock();
                    for i in 0..names.len() {
                        if names.is_null(i) {
                            return Err(db_to_df(orochi_common::error::DbError::new(
                                orochi_common::error::SqlState::NullValueNotAllowed,
                                "SET requires parameter name",
                            )));
                        }
                        let name = names.value(i);
                        let is_local = local.is_valid(i) && local.value(i);
                        if values.is_null(i) {
                            st.reset(name).map_err(db_to_df)?;
                        } else {
                            st.set(name, values.value(i), is_local).map_err(db_to_df)?;
                        }
                        out.push(Some(st.get(name).map_err(db_to_df)?));
                    }
                }
                Which::Reload => unreachable!("handled above"),
            }
            let out = StringArray::from(out);
            if scalar {
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            } else {
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}
