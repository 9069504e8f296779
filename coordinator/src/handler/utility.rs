//! SET / SHOW / RESET, ALTER SYSTEM and other utility statements (parameters: `settings.rs`).

use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use orochi_common::error::{DbError, DbResult, SqlState};

use crate::session::{Session, StatementResult};
pub use crate::settings::SERVER_VERSION;

/// A SET value as Postgres reads it: strings unquoted, identifiers and numbers as written.
fn value_text(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            ast::Value::Boolean(b) => if *b { "on" } else { "off" }.into(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(i) => i.value.clone(),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => format!("-{}", value_text(expr)),
        other => other.to_string(),
    }
}

/// `search_path` items keep their quotes (`"$user", public`), as Postgres shows them.
fn search_path_text(values: &[ast::Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            ast::Expr::Value(x) => match &x.value {
                ast::Value::SingleQuotedString(s) if s.starts_with('$') || s.contains(' ') => {
                    format!("\"{s}\"")
                }
                _ => value_text(v),
            },
            ast::Expr::Identifier(i) if i.quote_style.is_some() => format!("\"{}\"", i.value),
            _ => value_text(v),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn handle_set(s: &mut Session, set: &ast::Set) -> DbResult<StatementResult> {
    match set {
        ast::Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let name = variable.to_string();
            let text = if name.eq_ignore_ascii_case("search_path") {
                search_path_text(values)
            } else {
                values.iter().map(value_text).collect::<Vec<_>>().join(", ")
            };
            let default = values.len() == 1
                && matches!(&values[0], ast::Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"));
            match scope {
                // `ALTER SYSTEM SET|RESET` (parse.rs spells it this way)
                Some(ast::ContextModifier::Global) => {
                    return alter_system(s, &name, (!default).then_some(text.as_str()));
                }
                Some(ast::ContextModifier::Local) => {
                    let mut st = s.settings.lock();
                    if default {
                        let d = crate::settings::lookup(&name);
                        let value = d.map(|d| st.reset_value(d)).unwrap_or_default();
                        st.set(&name, &value, true)?;
                    } else {
                        st.set(&name, &text, true)?;
                    }
                }
                _ => {
                    let mut st = s.settings.lock();
                    if default {
                        st.reset(&name)?;
                    } else {
                        st.set(&name, &text, false)?;
                    }
                }
            }
            s.sync_settings();
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetTimeZone { local, value } => {
            s.settings
                .lock()
                .set("TimeZone", &value_text(value), *local)?;
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetNames { charset_name, .. } => {
            s.settings
                .lock()
                .set("client_encoding", &charset_name.value, false)?;
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetNamesDefault {} => {
            s.settings.lock().reset("client_encoding")?;
            Ok(StatementResult::Command("SET".into()))
        }
        ast::Set::SetTransaction { .. } => Ok(StatementResult::Command("SET".into())),
        other => Err(DbError::new(
            SqlState::FeatureNotSupported,
            format!("{other} is not supported yet"),
        )),
    }
}

/// `ALTER SYSTEM SET name = value` (`Some`) / `ALTER SYSTEM RESET name` (`None`; the name
/// `all` resets every one). Stored durably in the catalog; takes effect at the next start or
/// `pg_reload_conf()`, as in Postgres.
fn alter_system(s: &mut Session, name: &str, value: Option<&str>) -> DbResult<StatementResult> {
    if !matches!(s.txn, crate::session::TxnStatus::Idle) {
        return Err(DbError::new(
            SqlState::ActiveSqlTransaction,
            "ALTER SYSTEM cannot run inside a transaction block",
        ));
    }
    let catalog = &s.instance.catalog;
    match value {
        None if name.eq_ignore_ascii_case("all") => catalog.clear_system_settings()?,
        None => {
            let default = crate::settings::lookup(name).map_or("", |d| d.default);
            let (name, _) = crate::settings::check_system_value(name, default)?;
            catalog.put_system_setting(name, None)?;
        }
        Some(v) => {
            let (name, shown) = crate::settings::check_system_value(name, v)?;
            catalog.put_system_setting(name, Some(&shown))?;
        }
    }
    Ok(StatementResult::Command("ALTER SYSTEM".into()))
}

pub fn handle_reset(s: &mut Session, r: &ast::ResetStatement) -> DbResult<StatementResult> {
    match &r.reset {
        ast::Reset::ALL => s.settings.lock().reset_all(),
        ast::Reset::ConfigurationParameter(name)
            if name.to_string().eq_ignore_ascii_case("role") =>
        {
            crate::handler::role::handle_set_role(s, None)?;
            return Ok(StatementResult::Command("RESET".into()));
        }
        ast::Reset::ConfigurationParameter(name) => s.settings.lock().reset(&name.to_string())?,
    }
    s.sync_settings();
    Ok(StatementResult::Command("RESET".into()))
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
    let words: Vec<String> = variable.iter().map(|i| i.value.clone()).collect();
    let spaced = words.join(" ").to_lowercase();
    if spaced == "all" {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
        ]));
        let all = s.settings.lock().all();
        let names: Vec<&str> = all.iter().map(|(d, _)| d.name).collect();
        let values: Vec<&str> = all.iter().map(|(_, v)| v.as_str()).collect();
        let descs: Vec<&str> = all.iter().map(|(d, _)| d.description).collect();
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
    let name = match spaced.as_str() {
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "TimeZone".to_string(),
        _ => words.join("."),
    };
    let value = s.settings.lock().get(&name)?;
    // the column is named as the parameter is registered (`SHOW datestyle` → DateStyle)
    let column = crate::settings::lookup(&name)
        .map(|d| d.name.to_string())
        .unwrap_or_else(|| name.to_lowercase());
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    Ok(rows(
        schema,
        vec![Arc::new(StringArray::from(vec![value]))],
        "SHOW",
    ))
}

pub fn handle_create_extension(ext: &ast::CreateExtension) -> DbResult<StatementResult> {
    let name = ext.name.value.to_lowercase();
    match name.as_str() {
        // built in, and listed in pg_extension
        "orochi" | "plpgsql" if ext.if_not_exists => {
            Ok(StatementResult::Command("CREATE EXTENSION".into()))
        }
        "orochi" | "plpgsql" => Err(DbError::new(
            SqlState::DuplicateObject,
            format!("extension \"{name}\" already exists"),
        )),
        other => Err(DbError::new(
            SqlState::FeatureNotSupported,
            format!("extension \"{other}\" is not available in OrochiDB"),
        )
        .with_detail("OrochiDB runs no Postgres extensions; orochi and plpgsql are built in.")),
    }
}
