//! SQL column types and how they map to Arrow (execution) and Postgres (wire) types.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use serde::{Deserialize, Serialize};

/// Arrow field metadata key carrying the Postgres type name when Arrow alone is ambiguous
/// (uuid and json are stored as Utf8, char(n)/varchar(n) carry their length).
pub const PG_TYPE_METADATA_KEY: &str = "orochi.pg_type";

/// Scale used for `numeric` columns declared without a scale.
pub const UNCONSTRAINED_NUMERIC_SCALE: i8 = 16;
/// Maximum precision of a `numeric` we can store (Decimal128).
pub const MAX_NUMERIC_PRECISION: u8 = 38;

/// A column type as declared in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(p, s)`; `None` = unconstrained.
    Numeric(Option<(u8, i8)>),
    Text,
    /// `varchar(n)`; `None` = unbounded.
    Varchar(Option<u32>),
    /// `char(n)`, blank-padded.
    Char(u32),
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Json,
    Jsonb,
    /// Months, days and microseconds, as Postgres keeps an interval.
    Interval,
}

impl SqlType {
    /// The Arrow type values of this SQL type have during execution.
    pub fn arrow_type(self) -> DataType {
        match self {
            SqlType::Bool => DataType::Boolean,
            SqlType::Int2 => DataType::Int16,
            SqlType::Int4 => DataType::Int32,
            SqlType::Int8 => DataType::Int64,
            SqlType::Float4 => DataType::Float32,
            SqlType::Float8 => DataType::Float64,
            SqlType::Numeric(Some((p, s))) => DataType::Decimal128(p, s),
            SqlType::Numeric(None) => {
                DataType::Decimal128(MAX_NUMERIC_PRECISION, UNCONSTRAINED_NUMERIC_SCALE)
            }
            SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Char(_)
            | SqlType::Uuid
            | SqlType::Json
            | SqlType::Jsonb => DataType::Utf8,
            SqlType::Bytea => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Timestamptz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("+00:00")))
            }
            SqlType::Interval => DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        }
    }

    /// An Arrow field for a column of this type, with the Postgres type name in its metadata.
    pub fn arrow_field(self, name: &str, nullable: bool) -> Field {
        let mut meta = std::collections::HashMap::new();
        meta.insert(PG_TYPE_METADATA_KEY.to_string(), self.to_string());
        Field::new(name, self.arrow_type(), nullable).with_metadata(meta)
    }

    /// Postgres' internal type name (`pg_type.typname`): `int4`, `bpchar`, `timestamptz`…
    /// (the column name Postgres gives `CAST(<non-column> AS type)`).
    pub fn typname(self) -> &'static str {
        match self {
            SqlType::Bool => "bool",
            SqlType::Int2 => "int2",
            SqlType::Int4 => "int4",
            SqlType::Int8 => "int8",
            SqlType::Float4 => "float4",
            SqlType::Float8 => "float8",
            SqlType::Numeric(_) => "numeric",
            SqlType::Text => "text",
            SqlType::Varchar(_) => "varchar",
            SqlType::Char(_) => "bpchar",
            SqlType::Bytea => "bytea",
            SqlType::Date => "date",
            SqlType::Timestamp => "timestamp",
            SqlType::Timestamptz => "timestamptz",
            SqlType::Uuid => "uuid",
            SqlType::Json => "json",
            SqlType::Jsonb => "jsonb",
            SqlType::Interval => "interval",
        }
    }

    /// Postgres type OID (pg_type.oid).
    pub fn pg_oid(self) -> u32 {
        match self {
            SqlType::Bool => 16,
            SqlType::Bytea => 17,
            SqlType::Int8 => 20,
            SqlType::Int2 => 21,
            SqlType::Int4 => 23,
            SqlType::Text => 25,
            SqlType::Json => 114,
            SqlType::Float4 => 700,
            SqlType::Float8 => 701,
            SqlType::Char(_) => 1042,
            SqlType::Varchar(_) => 1043,
            SqlType::Date => 1082,
            SqlType::Timestamp => 1114,
            SqlType::Timestamptz => 1184,
            SqlType::Numeric(_) => 1700,
            SqlType::Uuid => 2950,
            SqlType::Jsonb => 3802,
            SqlType::Interval => 1186,
        }
    }

    /// Parses the `orochi.pg_type` metadata written by [`SqlType::arrow_field`].
    pub fn from_metadata_name(name: &str) -> Option<SqlType> {
        Some(match name {
            "boolean" => SqlType::Bool,
            "smallint" => SqlType::Int2,
            "integer" => SqlType::Int4,
            "bigint" => SqlType::Int8,
            "real" => SqlType::Float4,
            "double precision" => SqlType::Float8,
            "numeric" => SqlType::Numeric(None),
            "text" => SqlType::Text,
            "character varying" => SqlType::Varchar(None),
            "bytea" => SqlType::Bytea,
            "date" => SqlType::Date,
            "timestamp without time zone" => SqlType::Timestamp,
            "timestamp with time zone" => SqlType::Timestamptz,
            "uuid" => SqlType::Uuid,
            "json" => SqlType::Json,
            "jsonb" => SqlType::Jsonb,
            "interval" => SqlType::Interval,
            other => {
                if let Some(rest) = other.strip_prefix("numeric(") {
                    let rest = rest.strip_suffix(')')?;
                    let (p, s) = rest.split_once(',')?;
                    SqlType::Numeric(Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
                } else if let Some(rest) = other.strip_prefix("character varying(") {
                    SqlType::Varchar(Some(rest.strip_suffix(')')?.parse().ok()?))
                } else if let Some(rest) = other.strip_prefix("character(") {
                    SqlType::Char(rest.strip_suffix(')')?.parse().ok()?)
                } else {
                    return None;
                }
            }
        })
    }

    pub fn is_integer(self) -> bool {
        matches!(self, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
    }
}

/// Postgres' `format_type` spelling, which is also what `\d` prints.
impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Bool => f.write_str("boolean"),
            SqlType::Int2 => f.write_str("smallint"),
            SqlType::Int4 => f.write_str("integer"),
            SqlType::Int8 => f.write_str("bigint"),
            SqlType::Float4 => f.write_str("real"),
            SqlType::Float8 => f.write_str("double precision"),
            SqlType::Numeric(None) => f.write_str("numeric"),
            SqlType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            SqlType::Text => f.write_str("text"),
            SqlType::Varchar(None) => f.write_str("character varying"),
            SqlType::Varchar(Some(n)) => write!(f, "character varying({n})"),
            SqlType::Char(n) => write!(f, "character({n})"),
            SqlType::Bytea => f.write_str("bytea"),
            SqlType::Date => f.write_str("date"),
            SqlType::Timestamp => f.write_str("timestamp without time zone"),
            SqlType::Timestamptz => f.write_str("timestamp with time zone"),
            SqlType::Uuid => f.write_str("uuid"),
            SqlType::Json => f.write_str("json"),
            SqlType::Jsonb => f.write_str("jsonb"),
            SqlType::Interval => f.write_str("interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_name_round_trips() {
        for t in [
            SqlType::Bool,
            SqlType::Int2,
            SqlType::Int4,
            SqlType::Int8,
            SqlType::Float4,
            SqlType::Float8,
            SqlType::Numeric(None),
            SqlType::Numeric(Some((10, 2))),
            SqlType::Text,
            SqlType::Varchar(None),
            SqlType::Varchar(Some(20)),
            SqlType::Char(5),
            SqlType::Bytea,
            SqlType::Date,
            SqlType::Timestamp,
            SqlType::Timestamptz,
            SqlType::Uuid,
            SqlType::Json,
            SqlType::Jsonb,
            SqlType::Interval,
        ] {
            assert_eq!(SqlType::from_metadata_name(&t.to_string()), Some(t), "{t}");
        }
    }
}
