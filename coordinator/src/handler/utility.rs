//! SET / SHOW / RESET and other utility statements.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, DbResult, SqlState};

use crate::session::{Session, StatementResult};

pub const SERVER_VERSION: &str = "16.6";

/// Session settings. `orochi.default_shard_count` is typed because DDL reads it; the rest are
/// kept as Postgres prints them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_shard_count: u32,
    pub vars: BTreeMap<String, String>,
}

/// Settings every session starts with (name, default, description).
pub const DEFAULTS: &[(&str, &str, &str)] = &[
    (
        "application_name",
        "",
        "Sets the application name to be reported in statistics and logs.",
    ),
    (
        "client_encoding",
        "UTF8",
        "Sets the client's character set encoding.",
    ),
    (
        "DateStyle",
        "ISO, MDY",
        "Sets the display format for date and time values.",
    ),
    (
        "default_transaction_isolation",
        "read committed",
        "Sets the transaction isolation level of each new transaction.",
    ),
    (
        "extra_float_digits",
        "1",
        "Sets the number of digits displayed for floating-point values.",
    ),
    (
        "integer_datetimes",
        "on",
        "Shows whether datetimes are integer based.",
    ),
    (
        "IntervalStyle",
        "postgres",
        "Sets the display format for interval values.",
    ),
    (
        "lock_timeout",
        "0",
        "Sets the maximum allowed duration of any wait for a lock.",
    ),
    (
        "max_connections",
        "100",
        "Sets the maximum number of concurrent connections.",
    ),
    (
        "orochi.default_shard_count",
        "32",
        "Number of hash shards for new distributed tables.",
    ),
    (
        "search_path",
        "\"$user\", public",
        "Sets the schema search order for names that are not schema-qualified.",
    ),
    (
        "server_encoding",
        "UTF8",
        "Shows the server (database) character set encoding.",
    ),
    (
        "server_version",
        SERVER_VERSION,
        "Shows the server version.",
    ),
    (
        "standard_conforming_strings",
        "on",
        "Causes '...' strings to treat backslashes literally.",
    ),
    (
        "statement_timeout",
        "0",
        "Sets the maximum allowed duration of any statement.",
    ),
    (
        "TimeZone",
        "UTC",
        "Sets the time zone for displaying and interpreting time stamps.",
    ),
    (
        "transaction_isolation",
        "read committed",
        "Shows the current transaction's isolation level.",
    ),
];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_shard_count: 32,
            vars: DEFAULTS
                .iter()
                .map(|(k, v, _)| (k.to_lowercase(), v.to_string()))
                .collect(),
        }
    }
}

fn canonical_name(name: &str) -> String {
    DEFAULTS
        .iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _, _)| k.to_string())
        .unwrap_or_else(|| name.to_string())
}

fn value_text(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            ast::Value::Boolean(b) => if *b { "on" } else { "off" }.into(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

impl Settings {
    pub fn set(&mut self, name: &str, value: &str) -> DbResult<()> {
        let key = name.to_lowercase();
        match key.as_str() {
            "orochi.default_shard_count" => {
                let n: u32 = value.parse().ok().filter(|n| (1..=4096).contains(n)).ok_or_else(|| {
                    DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("invalid value for parameter \"orochi.default_shard_count\": \"{value}\""),
                    )
                    .with_detail("Valid values are between \"1\" and \"4096\".")
                })?;
                self.default_shard_count = n;
            }
            "server_version" | "server_encoding" | "integer_datetimes" | "max_connections" => {
                return Err(DbError::new(
                    SqlState::CantChangeRuntimeParam,
                    format!("parameter \"{key}\" cannot be changed"),
                ));
            }
            "client_encoding"
                if !matches!(value.to_uppercase().as_str(), "UTF8" | "UTF-8" | "UNICODE") =>
            {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("conversion to encoding \"{value}\" is not supported; only UTF8 is"),
                ));
            }
            "extra_float_digits" | "statement_timeout" | "lock_timeout"
                if value
                    .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .parse::<i64>()
                    .is_err() =>
            {
                return Err(DbError::new(
                    SqlState::InvalidParameterValue,
                    format!("invalid value for parameter \"{key}\": \"{value}\""),
                ));
            }
            k if !k.contains('.') && !self.vars.contains_key(k) => {
                return Err(DbError::new(
                    SqlState::UndefinedObject,
                    format!("unrecognized configuration parameter \"{name}\""),
                ));
            }
            _ => {}
        }
        self.vars.insert(key, value.to_string());
        Ok(())
    }

    /// `statement_timeout` as a duration; `None` when 0 (no timeout). Postgres units: a bare
    /// number is milliseconds; `us`, `ms`, `s`, `min`, `h`, `d` suffixes.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        let v = self.vars.get("statement_timeout")?.trim().to_lowercase();
        let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
        let (n, unit) = v.split_at(split);
        let n: u64 = n.trim().parse().ok()?;
        let ms = match unit.trim() {
            "" | "ms" => n,
            "us" => n / 1000,
            "s" => n * 1000,
            "min" => n * 60_000,
            "h" => n * 3_600_000,
            "d" => n * 86_400_000,
            _ => return None,
        };
        (ms > 0).then(|| std::time::Duration::from_millis(ms))
    }

    pub fn get(&self, name: &str) -> DbResult<String> {
        self.vars.get(&name.to_lowercase()).cloned().ok_or_else(|| {
            DbError::new(
                SqlState::UndefinedObject,
                format!("unrecognized configuration parameter \"{name}\""),
            )
        })
    }
}

pub fn handle_set(s: &mut Session, set: &ast::Set) -> DbResult<StatementResult> {
    match set {
        ast::Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = variable.to_string();
            let text = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
            let default = text.eq_ignore_ascii_case("default");
            if default {
                reset(s, &name)?;
            } else {
                s.settings.set(&name, &text)?;
                if name.eq_ignore_ascii_case("search_path") {
                    s.search_path = values
                        .iter()
                        .map(value_text)
                        .map(|v| v.trim_matches('"').to_string())
                        .filter(|v| v != "$user")
                        .collect();
                    s.refresh_functions();
                }
            }
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetTimeZone { value, .. } => {
            s.settings.set("TimeZone", &value_text(value))?;
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetNames { .. } | ast::Set::SetNamesDefault {} => {
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetTransaction { .. } => Ok(StatementResult::Command("SET".into())),
        other => Err(DbError::new(
            SqlState::FeatureNotSupported,
            format!("{other} is not supported yet"),
        )),
    }
}

fn reset(s: &mut Session, name: &str) -> DbResult<()> {
    let default = DEFAULTS
        .iter()
        .find(|(k, _, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v, _)| *v);
    match default {
        Some(v) => {
            s.settings.set(name, v)?;
            if name.eq_ignore_ascii_case("search_path") {
                s.search_path = vec!["public".into()];
                s.refresh_functions();
            }
            Ok(())
        }
        None if name.contains('.') => {
            s.settings.vars.remove(&name.to_lowercase());
            Ok(())
        }
        None => Err(DbError::new(
            SqlState::UndefinedObject,
            format!("unrecognized configuration parameter \"{name}\""),
        )),
    }
}

pub fn handle_reset(s: &mut Session, r: &ast::ResetStatement) -> DbResult<StatementResult> {
    match &r.reset {
        ast::Reset::ALL => {
            let keep = s.settings.default_shard_count;
            s.settings = Settings::default();
            let _ = keep;
            s.search_path = vec!["public".into()];
            s.refresh_functions();
        }
        ast::Reset::ConfigurationParameter(name) => reset(s, &name.to_string())?,
    }
    Ok(StatementResult::Command("RESET".into()))
}

fn one_column(name: &str, values: Vec<String>) -> StatementResult {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    rows(schema, vec![Arc::new(StringArray::from(values))], "SHOW")
}

fn rows(schema: Arc<Schema>, cols: Vec<arrow::array::ArrayRef>, tag: &str) -> StatementResult {
    let batch = RecordBatch::try_new(schema.clone(), cols).expect("columns match the schema");
    StatementResult::Rows {
        schema: schema.clone(),
        stream: Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(vec![Ok(batch)]),
        )),
        tag: tag.into(),
    }
}

pub fn handle_show(s: &mut Session, variable: &[ast::Ident]) -> DbResult<StatementResult> {
    let name = variable
        .iter()
        .map(|i| i.value.clone())
        .collect::<Vec<_>>()
        .join(" ");
    if name.eq_ignore_ascii_case("all") {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
        ]));
        let mut names = Vec::new();
        let mut values = Vec::new();
        let mut descs = Vec::new();
        for (k, _, d) in DEFAULTS {
            names.push(k.to_string());
            values.push(s.settings.get(k)?);
            descs.push(d.to_string());
        }
        return Ok(rows(
            schema,
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(values)),
                Arc::new(StringArray::from(descs)),
            ],
            "SHOW",
        ));
    }
    let name = match name.to_lowercase().as_str() {
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "TimeZone".to_string(),
        _ => variable
            .iter()
            .map(|i| i.value.clone())
            .collect::<Vec<_>>()
            .join("."),
    };
    let value = s.settings.get(&name)?;
    Ok(one_column(
        &canonical_name(&name).to_lowercase(),
        vec![value],
    ))
}

pub fn handle_create_extension(ext: &ast::CreateExtension) -> DbResult<StatementResult> {
    let name = ext.name.value.to_lowercase();
    match name.as_str() {
        "orochi" | "plpgsql" => Ok(StatementResult::Command("CREATE EXTENSION".into())),
        other => Err(DbError::new(
            SqlState::FeatureNotSupported,
            format!("extension \"{other}\" is not available in OrochiDB"),
        )),
    }
}
