//! Mapping between DataFusion / Arrow errors and our [`DbError`] (which carries a SQLSTATE).

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use orochi_common::error::{DbError, SqlState};

/// Wraps a [`DbError`] so it can travel through DataFusion and be recovered intact.
pub fn db_to_df(e: DbError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Maps a DataFusion error to a SQLSTATE-carrying error: our own errors come back unchanged,
/// the rest are classified by category (STYLE.md §4).
pub fn df_to_db(e: DataFusionError) -> DbError {
    // find our own error anywhere in the chain first
    if let Some(db) = find_db_error(&e) {
        return db;
    }
    let root = e.find_root();
    match root {
        DataFusionError::SQL(err, _) => {
            DbError::new(SqlState::SyntaxError, format!("syntax error: {err}"))
        }
        DataFusionError::NotImplemented(msg) => DbError::new(
            SqlState::FeatureNotSupported,
            format!("not supported yet: {msg}"),
        ),
        DataFusionError::ResourcesExhausted(msg) => {
            DbError::new(SqlState::OutOfMemory, format!("out of memory: {msg}"))
        }
        DataFusionError::ArrowError(ae, _) => arrow_to_db(ae),
        DataFusionError::Plan(msg) => plan_error(msg),
        DataFusionError::SchemaError(se, _) => schema_error(&se.to_string()),
        DataFusionError::Execution(msg) => execution_error(msg),
        DataFusionError::Internal(msg) => DbError::internal(format!("internal error: {msg}")),
        other => {
            let msg = other.to_string();
            if msg.contains("Divide by zero") || msg.contains("Division by zero") {
                DbError::new(SqlState::DivisionByZero, "division by zero")
            } else {
                DbError::internal(msg)
            }
        }
    }
}

fn find_db_error(e: &DataFusionError) -> Option<DbError> {
    match e {
        DataFusionError::External(b) => {
            if let Some(db) = b.downcast_ref::<DbError>() {
                return Some(db.clone());
            }
            if let Some(df) = b.downcast_ref::<DataFusionError>() {
                return find_db_error(df);
            }
            None
        }
        DataFusionError::Context(_, inner) => find_db_error(inner),
        DataFusionError::Shared(inner) => find_db_error(inner),
        DataFusionError::Diagnostic(_, inner) => find_db_error(inner),
        DataFusionError::ArrowError(ae, _) => match ae.as_ref() {
            ArrowError::ExternalError(b) => b
                .downcast_ref::<DbError>()
                .cloned()
                .or_else(|| b.downcast_ref::<DataFusionError>().and_then(find_db_error)),
            _ => None,
        },
        _ => None,
    }
}

pub fn arrow_to_db(e: &ArrowError) -> DbError {
    match e {
        ArrowError::DivideByZero => DbError::new(SqlState::DivisionByZero, "division by zero"),
        ArrowError::ArithmeticOverflow(msg) => DbError::new(
            SqlState::NumericValueOutOfRange,
            format!("value out of range: {msg}"),
        ),
        ArrowError::CastError(msg) | ArrowError::ParseError(msg) => cast_error(msg),
        ArrowError::ExternalError(b) => match b.downcast_ref::<DbError>() {
            Some(db) => db.clone(),
            None => DbError::internal(b.to_string()),
        },
        ArrowError::ComputeError(msg) if msg.contains("Overflow") || msg.contains("overflow") => {
            DbError::new(
                SqlState::NumericValueOutOfRange,
                format!("value out of range: {msg}"),
            )
        }
        other => DbError::internal(other.to_string()),
    }
}

fn cast_error(msg: &str) -> DbError {
    if msg.contains("overflow")
        || msg.contains("Overflow")
        || msg.contains("too large")
        || msg.contains("out of range")
    {
        return DbError::new(
            SqlState::NumericValueOutOfRange,
            format!("value out of range: {msg}"),
        );
    }
    // "Cannot cast string 'abc' to value of Int32 type"
    if let Some(rest) = msg.strip_prefix("Cannot cast string '")
        && let Some((value, ty)) = rest.split_once("' to value of ")
    {
        let ty = ty.trim_end_matches(" type");
        let pg = match ty {
            "Int16" => "smallint",
            "Int32" => "integer",
            "Int64" => "bigint",
            "Float32" => "real",
            "Float64" => "double precision",
            "Boolean" => "boolean",
            t if t.starts_with("Decimal") => "numeric",
            t if t.starts_with("Date") => "date",
            t if t.starts_with("Timestamp") => "timestamp",
            other => other,
        };
        return DbError::new(
            SqlState::InvalidTextRepresentation,
            format!("invalid input syntax for type {pg}: \"{value}\""),
        );
    }
    DbError::new(
        SqlState::InvalidTextRepresentation,
        format!("invalid input syntax: {msg}"),
    )
}

fn plan_error(msg: &str) -> DbError {
    if msg.contains("table") && msg.contains("not found") {
        // "table 'postgres.public.t' not found"
        let name = msg.split('\'').nth(1).unwrap_or(msg);
        let short = name.rsplit('.').next().unwrap_or(name);
        return DbError::new(
            SqlState::UndefinedTable,
            format!("relation \"{short}\" does not exist"),
        );
    }
    if msg.contains("Invalid function") || msg.contains("No function matches") {
        return DbError::new(SqlState::UndefinedFunction, msg.to_string());
    }
    if msg.contains("Placeholder") || msg.contains("placeholder") {
        return DbError::new(SqlState::UndefinedParameter, msg.to_string());
    }
    if msg.contains("Cannot infer common")
        || msg.contains("Cannot coerce")
        || msg.contains("does not support")
    {
        return DbError::new(SqlState::DatatypeMismatch, msg.to_string());
    }
    DbError::new(SqlState::SyntaxError, msg.to_string())
}

fn schema_error(msg: &str) -> DbError {
    if msg.contains("No field named") || msg.contains("not found") {
        // Schema error: No field named nosuch. Valid fields are ...
        let name = msg
            .split("No field named ")
            .nth(1)
            .map(|r| r.split(['.', ' ']).next().unwrap_or(r).trim_matches('"'))
            .unwrap_or("?");
        return DbError::new(
            SqlState::UndefinedColumn,
            format!("column \"{name}\" does not exist"),
        );
    }
    if msg.contains("Ambiguous") || msg.contains("ambiguous") {
        return DbError::new(SqlState::AmbiguousColumn, msg.to_string());
    }
    if msg.contains("duplicate") || msg.contains("Duplicate") {
        return DbError::new(SqlState::DuplicateColumn, msg.to_string());
    }
    DbError::new(SqlState::SyntaxError, msg.to_string())
}

fn execution_error(msg: &str) -> DbError {
    if msg.contains("Divide by zero") || msg.contains("Division by zero") {
        return DbError::new(SqlState::DivisionByZero, "division by zero");
    }
    if msg.contains("Overflow") || msg.contains("overflow") {
        return DbError::new(
            SqlState::NumericValueOutOfRange,
            format!("value out of range: {msg}"),
        );
    }
    if msg.contains("Cannot cast") {
        return cast_error(msg);
    }
    DbError::internal(msg.to_string())
}
