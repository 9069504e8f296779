//! One SQL value, and the Postgres text forms it is parsed from and printed as.
//!
//! Parsing follows Postgres' input functions closely enough that bad input fails with the same
//! SQLSTATE (22P02 invalid text representation, 22003 out of range, 22007/22008 for datetimes,
//! 22001 for too-long strings).

use std::fmt::Write as _;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use crate::error::{DbError, DbResult, SqlState};
use crate::types::{SqlType, UNCONSTRAINED_NUMERIC_SCALE};
use crate::zone::Zone;

/// Days between 0001-01-01 (CE day 1) and 1970-01-01.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

/// A single value. Integers of every width, dates and timestamps keep their SQL type so that
/// values round-trip exactly; `Numeric` holds an unscaled integer at its column's scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Datum {
    Null,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Numeric {
        unscaled: i128,
        scale: i8,
    },
    Text(String),
    Bytea(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00 (no zone).
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    Timestamptz(i64),
    Uuid([u8; 16]),
    Json(String),
    /// Months, days and microseconds.
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
}

fn invalid(ty: &str, s: &str) -> DbError {
    DbError::new(
        SqlState::InvalidTextRepresentation,
        format!("invalid input syntax for type {ty}: \"{s}\""),
    )
}

fn out_of_range(ty: &str, s: &str) -> DbError {
    DbError::new(
        SqlState::NumericValueOutOfRange,
        format!("value \"{s}\" is out of range for type {ty}"),
    )
}

impl Datum {
    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// Parses Postgres text input for a column of type `ty` (the `typinput` function), a
    /// `timestamptz` without an offset read in UTC.
    pub fn parse(ty: SqlType, s: &str) -> DbResult<Datum> {
        Datum::parse_in(ty, s, &Zone::UTC)
    }

    /// [`Datum::parse`] in the session's time zone: a `timestamptz` written without an offset
    /// is that wall-clock time there.
    pub fn parse_in(ty: SqlType, s: &str, zone: &Zone) -> DbResult<Datum> {
        match ty {
            SqlType::Bool => parse_bool(s).map(Datum::Bool),
            SqlType::Int2 => {
                let v = parse_int(s, "smallint")?;
                i16::try_from(v)
                    .map(Datum::Int2)
                    .map_err(|_| out_of_range("smallint", s))
            }
            SqlType::Int4 => {
                let v = parse_int(s, "integer")?;
                i32::try_from(v)
                    .map(Datum::Int4)
                    .map_err(|_| out_of_range("integer", s))
            }
            SqlType::Int8 => parse_int(s, "bigint").map(Datum::Int8),
            SqlType::Float4 => {
                let v = parse_float(s, "real")?;
                let f = v as f32;
                if f.is_infinite() && v.is_finite() {
                    return Err(out_of_range("real", s));
                }
                Ok(Datum::Float4(f))
            }
            SqlType::Float8 => parse_float(s, "double precision").map(Datum::Float8),
            SqlType::Numeric(spec) => {
                let (precision, scale) = numeric_spec(spec);
                parse_numeric(s, precision, scale)
                    .map(|unscaled| Datum::Numeric { unscaled, scale })
            }
            SqlType::Text => Ok(Datum::Text(s.to_string())),
            SqlType::Varchar(limit) => {
                check_length(s, limit, "character varying")?;
                Ok(Datum::Text(s.to_string()))
            }
            SqlType::Char(n) => Ok(Datum::Text(pad_char(s, n)?)),
            SqlType::Bytea => parse_bytea(s).map(Datum::Bytea),
            SqlType::Date => parse_date(s).map(Datum::Date),
            SqlType::Interval => crate::interval::parse_interval(s).map(Datum::from_interval),
            SqlType::Timestamp => parse_timestamp(s, None).map(Datum::Timestamp),
            SqlType::Timestamptz => parse_timestamp(s, Some(zone)).map(Datum::Timestamptz),
            SqlType::Uuid => parse_uuid(s).map(Datum::Uuid),
            SqlType::Json | SqlType::Jsonb => {
                let v: serde_json::Value = serde_json::from_str(s).map_err(|_| {
                    DbError::new(
                        SqlState::InvalidTextRepresentation,
                        "invalid input syntax for type json",
                    )
                    .with_detail(format!("Token \"{s}\" is invalid."))
                })?;
                Ok(Datum::Json(if ty == SqlType::Jsonb {
                    let mut out = String::with_capacity(s.len());
                    jsonb_text(&v, &mut out);
                    out
                } else {
                    s.to_string()
                }))
            }
        }
    }

    /// Postgres text output in the session's time zone (a `timestamptz` shows its wall-clock
    /// time and offset there), or `None` for NULL.
    pub fn to_text_in(&self, zone: &Zone) -> Option<String> {
        match self {
            Datum::Timestamptz(us) => Some(format_timestamptz_offset(*us, zone.offset_at(*us))),
            other => other.to_text(),
        }
    }

    /// Postgres text output (the `typoutput` function), or `None` for NULL; a `timestamptz`
    /// in UTC.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Datum::Null => return None,
            Datum::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Datum::Int2(v) => v.to_string(),
            Datum::Int4(v) => v.to_string(),
            Datum::Int8(v) => v.to_string(),
            Datum::Float4(v) => format_float4(*v),
            Datum::Float8(v) => format_float8(*v),
            Datum::Numeric { unscaled, scale } => format_numeric(*unscaled, *scale, false),
            Datum::Text(s) | Datum::Json(s) => s.clone(),
            Datum::Bytea(b) => format_bytea(b),
            Datum::Date(d) => format_date(*d),
            Datum::Timestamp(us) => format_timestamp(*us),
            Datum::Timestamptz(us) => format_timestamptz(*us),
            Datum::Uuid(u) => format_uuid(u),
            Datum::Interval { .. } => {
                crate::interval::format_interval(self.as_interval().expect("an interval"))
            }
        })
    }

    /// Converts a value of one SQL type into a column of type `ty` (assignment cast), with
    /// Postgres' checks (range, length, precision).
    pub fn coerce_to(self, ty: SqlType) -> DbResult<Datum> {
        let int_range = |v: i128, name: &str| -> DbError {
            let _ = v;
            DbError::new(
                SqlState::NumericValueOutOfRange,
                format!("{name} out of range"),
            )
        };
        Ok(match (self, ty) {
            (Datum::Null, _) => Datum::Null,
            (Datum::Text(s), t) | (Datum::Json(s), t) => Datum::parse(t, &s)?,
            (d @ Datum::Bool(_), SqlType::Bool) => d,
            (d, SqlType::Int2 | SqlType::Int4 | SqlType::Int8) if d.as_i128().is_some() => {
                let v = d.as_i128().expect("checked");
                match ty {
                    SqlType::Int2 => {
                        Datum::Int2(i16::try_from(v).map_err(|_| int_range(v, "smallint"))?)
                    }
                    SqlType::Int4 => {
                        Datum::Int4(i32::try_from(v).map_err(|_| int_range(v, "integer"))?)
                    }
                    _ => Datum::Int8(i64::try_from(v).map_err(|_| int_range(v, "bigint"))?),
                }
            }
            (Datum::Numeric { unscaled, scale }, SqlType::Int2 | SqlType::Int4 | SqlType::Int8) => {
                let v = rescale(unscaled, scale, 0).ok_or_else(|| int_range(0, "bigint"))?;
                Datum::Int8(v as i64).coerce_to(ty)?
            }
            (Datum::Float8(f), SqlType::Int2 | SqlType::Int4 | SqlType::Int8) => {
                float_to_int(f, ty)?
            }
            (Datum::Float4(f), SqlType::Int2 | SqlType::Int4 | SqlType::Int8) => {
                float_to_int(f as f64, ty)?
            }
            (d, SqlType::Float8) if d.as_f64().is_some() => {
                Datum::Float8(d.as_f64().expect("checked"))
            }
            (d, SqlType::Float4) if d.as_f64().is_some() => {
                Datum::Float4(d.as_f64().expect("checked") as f32)
            }
            (Datum::Numeric { unscaled, scale }, SqlType::Numeric(spec)) => {
                let (p, s) = numeric_spec(spec);
                let v = rescale(unscaled, scale, s).ok_or_else(numeric_overflow)?;
                check_precision(v, p, s)?;
                Datum::Numeric {
                    unscaled: v,
                    scale: s,
                }
            }
            (d, SqlType::Numeric(spec)) if d.as_i128().is_some() => {
                let (p, s) = numeric_spec(spec);
                let v =
                    rescale(d.as_i128().expect("checked"), 0, s).ok_or_else(numeric_overflow)?;
                check_precision(v, p, s)?;
                Datum::Numeric {
                    unscaled: v,
                    scale: s,
                }
            }
            (d, SqlType::Numeric(_)) if d.as_f64().is_some() => {
                let f = d.as_f64().expect("checked");
                if !f.is_finite() {
                    return Err(DbError::new(
                        SqlState::FeatureNotSupported,
                        "cannot convert infinity or NaN to numeric",
                    ));
                }
                Datum::parse(ty, &format_float8(f))?
            }
            (Datum::Date(d), SqlType::Date) => Datum::Date(d),
            (Datum::Date(d), SqlType::Timestamp) => Datum::Timestamp(d as i64 * 86_400_000_000),
            (Datum::Date(d), SqlType::Timestamptz) => Datum::Timestamptz(d as i64 * 86_400_000_000),
            (Datum::Timestamp(t), SqlType::Timestamp) => Datum::Timestamp(t),
            (Datum::Timestamp(t), SqlType::Timestamptz) => Datum::Timestamptz(t),
            (Datum::Timestamptz(t), SqlType::Timestamptz) => Datum::Timestamptz(t),
            (Datum::Timestamptz(t), SqlType::Timestamp) => Datum::Timestamp(t),
            (Datum::Timestamp(t) | Datum::Timestamptz(t), SqlType::Date) => {
                Datum::Date(t.div_euclid(86_400_000_000) as i32)
            }
            (Datum::Bytea(b), SqlType::Bytea) => Datum::Bytea(b),
            (Datum::Uuid(u), SqlType::Uuid) => Datum::Uuid(u),
            (i @ Datum::Interval { .. }, SqlType::Interval) => i,
            (d, SqlType::Text | SqlType::Varchar(_) | SqlType::Char(_)) => {
                let s = d.to_text().expect("non-null");
                Datum::parse(ty, &s)?
            }
            (d, ty) => {
                return Err(DbError::new(
                    SqlState::DatatypeMismatch,
                    format!(
                        "cannot assign a value of type {} to a column of type {ty}",
                        d.type_name()
                    ),
                ));
            }
        })
    }

    fn as_i128(&self) -> Option<i128> {
        match self {
            Datum::Int2(v) => Some(*v as i128),
            Datum::Int4(v) => Some(*v as i128),
            Datum::Int8(v) => Some(*v as i128),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Datum::Int2(v) => Some(*v as f64),
            Datum::Int4(v) => Some(*v as f64),
            Datum::Int8(v) => Some(*v as f64),
            Datum::Float4(v) => Some(*v as f64),
            Datum::Float8(v) => Some(*v),
            Datum::Numeric { unscaled, scale } => {
                Some(*unscaled as f64 / 10f64.powi(*scale as i32))
            }
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Datum::Null => "unknown",
            Datum::Bool(_) => "boolean",
            Datum::Int2(_) => "smallint",
            Datum::Int4(_) => "integer",
            Datum::Int8(_) => "bigint",
            Datum::Float4(_) => "real",
            Datum::Float8(_) => "double precision",
            Datum::Numeric { .. } => "numeric",
            Datum::Text(_) => "text",
            Datum::Bytea(_) => "bytea",
            Datum::Date(_) => "date",
            Datum::Timestamp(_) => "timestamp without time zone",
            Datum::Timestamptz(_) => "timestamp with time zone",
            Datum::Interval { .. } => "interval",
            Datum::Uuid(_) => "uuid",
            Datum::Json(_) => "json",
        }
    }

    /// Reads row `row` of an Arrow array as a value of column type `ty`.
    pub fn from_arrow(array: &dyn Array, row: usize, ty: SqlType) -> DbResult<Datum> {
        if array.is_null(row) {
            return Ok(Datum::Null);
        }
        let raw = match array.data_type() {
            DataType::Null => Datum::Null,
            DataType::Boolean => Datum::Bool(array.as_boolean().value(row)),
            DataType::Int8 => Datum::Int2(
                array
                    .as_primitive::<arrow::datatypes::Int8Type>()
                    .value(row) as i16,
            ),
            DataType::Int16 => Datum::Int2(
                array
                    .as_primitive::<arrow::datatypes::Int16Type>()
                    .value(row),
            ),
            DataType::Int32 => Datum::Int4(
                array
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .value(row),
            ),
            DataType::Int64 => Datum::Int8(
                array
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(row),
            ),
            DataType::UInt8 => Datum::Int2(
                array
                    .as_primitive::<arrow::datatypes::UInt8Type>()
                    .value(row) as i16,
            ),
            DataType::UInt16 => Datum::Int4(
                array
                    .as_primitive::<arrow::datatypes::UInt16Type>()
                    .value(row) as i32,
            ),
            DataType::UInt32 => Datum::Int8(
                array
                    .as_primitive::<arrow::datatypes::UInt32Type>()
                    .value(row) as i64,
            ),
            DataType::UInt64 => {
                let v = array
                    .as_primitive::<arrow::datatypes::UInt64Type>()
                    .value(row);
                Datum::Numeric {
                    unscaled: v as i128,
                    scale: 0,
                }
            }
            DataType::Float32 => Datum::Float4(
                array
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .value(row),
            ),
            DataType::Float64 => Datum::Float8(
                array
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .value(row),
            ),
            DataType::Decimal128(_, s) => Datum::Numeric {
                unscaled: array
                    .as_primitive::<arrow::datatypes::Decimal128Type>()
                    .value(row),
                scale: *s,
            },
            DataType::Utf8 => Datum::Text(array.as_string::<i32>().value(row).to_string()),
            DataType::LargeUtf8 => Datum::Text(array.as_string::<i64>().value(row).to_string()),
            DataType::Utf8View => Datum::Text(array.as_string_view().value(row).to_string()),
            DataType::Binary => Datum::Bytea(array.as_binary::<i32>().value(row).to_vec()),
            DataType::LargeBinary => Datum::Bytea(array.as_binary::<i64>().value(row).to_vec()),
            DataType::BinaryView => Datum::Bytea(array.as_binary_view().value(row).to_vec()),
            DataType::Date32 => Datum::Date(
                array
                    .as_primitive::<arrow::datatypes::Date32Type>()
                    .value(row),
            ),
            DataType::Timestamp(unit, tz) => {
                let v = match unit {
                    TimeUnit::Second => {
                        array
                            .as_primitive::<arrow::datatypes::TimestampSecondType>()
                            .value(row)
                            * 1_000_000
                    }
                    TimeUnit::Millisecond => {
                        array
                            .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                            .value(row)
                            * 1_000
                    }
                    TimeUnit::Microsecond => array
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(row),
                    TimeUnit::Nanosecond => array
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(row)
                        .div_euclid(1_000),
                };
                if tz.is_some() {
                    Datum::Timestamptz(v)
                } else {
                    Datum::Timestamp(v)
                }
            }
            DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano) => {
                let v = array
                    .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
                    .value(row);
                Datum::Interval {
                    months: v.months,
                    days: v.days,
                    micros: v.nanoseconds.div_euclid(1_000),
                }
            }
            other => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("values of Arrow type {other} cannot be stored in a table yet"),
                ));
            }
        };
        match (&raw, ty) {
            (Datum::Text(s), SqlType::Uuid) => Datum::parse(SqlType::Uuid, s),
            (Datum::Text(s), SqlType::Json | SqlType::Jsonb) => Datum::parse(ty, s),
            _ => raw.coerce_to(ty),
        }
    }
}

impl Datum {
    pub fn from_interval(i: crate::interval::Interval) -> Datum {
        Datum::Interval {
            months: i.months,
            days: i.days,
            micros: i.micros,
        }
    }

    pub fn as_interval(&self) -> Option<crate::interval::Interval> {
        match *self {
            Datum::Interval {
                months,
                days,
                micros,
            } => Some(crate::interval::Interval {
                months,
                days,
                micros,
            }),
            _ => None,
        }
    }
}

fn float_to_int(f: f64, ty: SqlType) -> DbResult<Datum> {
    let r = f.round_ties_even();
    let (lo, hi, name) = match ty {
        SqlType::Int2 => (i16::MIN as f64, i16::MAX as f64, "smallint"),
        SqlType::Int4 => (i32::MIN as f64, i32::MAX as f64, "integer"),
        _ => (i64::MIN as f64, i64::MAX as f64, "bigint"),
    };
    if !r.is_finite() || r < lo || r > hi {
        return Err(DbError::new(
            SqlState::NumericValueOutOfRange,
            format!("{name} out of range"),
        ));
    }
    Datum::Int8(r as i64).coerce_to(ty)
}

/// Resolves an optional `numeric(p, s)` spec to the stored precision and scale.
pub fn numeric_spec(spec: Option<(u8, i8)>) -> (u8, i8) {
    spec.unwrap_or((
        crate::types::MAX_NUMERIC_PRECISION,
        UNCONSTRAINED_NUMERIC_SCALE,
    ))
}

fn numeric_overflow() -> DbError {
    DbError::new(SqlState::NumericValueOutOfRange, "numeric field overflow")
}

fn check_precision(unscaled: i128, precision: u8, scale: i8) -> DbResult<()> {
    let limit = 10i128.checked_pow(precision as u32).unwrap_or(i128::MAX);
    if unscaled.unsigned_abs() >= limit.unsigned_abs() {
        let int_digits = precision as i32 - scale as i32;
        return Err(numeric_overflow().with_detail(format!(
            "A field with precision {precision}, scale {scale} must round to an absolute value less than 10^{int_digits}."
        )));
    }
    Ok(())
}

/// Changes the scale of an unscaled decimal, rounding half away from zero like Postgres.
pub fn rescale(unscaled: i128, from: i8, to: i8) -> Option<i128> {
    if to >= from {
        10i128
            .checked_pow((to - from) as u32)?
            .checked_mul(unscaled)
    } else {
        let div = 10i128.checked_pow((from - to) as u32)?;
        let q = unscaled / div;
        let r = unscaled % div;
        if r.unsigned_abs() * 2 >= div.unsigned_abs() {
            Some(if unscaled < 0 { q - 1 } else { q + 1 })
        } else {
            Some(q)
        }
    }
}

fn parse_bool(s: &str) -> DbResult<bool> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes" | "on" | "1" => Ok(true),
        "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "of" | "off" | "0" => Ok(false),
        _ => Err(invalid("boolean", s)),
    }
}

fn parse_int(s: &str, ty: &str) -> DbResult<i64> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(ty, s));
    }
    let t = t.replace('_', "");
    match t.parse::<i64>() {
        Ok(v) => Ok(v),
        Err(e) => match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                Err(out_of_range(ty, s))
            }
            _ => Err(invalid(ty, s)),
        },
    }
}

fn parse_float(s: &str, ty: &str) -> DbResult<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-infinity" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let v: f64 = t.parse().map_err(|_| invalid(ty, s))?;
    if v.is_infinite() {
        return Err(out_of_range(ty, s));
    }
    Ok(v)
}

/// Parses a decimal literal into an unscaled integer at `scale`, checking `precision`.
pub fn parse_numeric(s: &str, precision: u8, scale: i8) -> DbResult<i128> {
    let t = s.trim();
    let err = || invalid("numeric", s);
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i32>().map_err(|_| err())?),
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((a, b)) => (a, b),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    // digits as one integer, with its own scale
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mut own_scale = frac_part.len() as i32 - exp;
    let mut value: i128 = 0;
    let mut dropped_digits = 0;
    for (i, b) in digits.bytes().enumerate() {
        if i >= 38 {
            // beyond i128 precision: keep the magnitude, the tail can only matter for rounding
            dropped_digits += 1;
            continue;
        }
        value = value * 10 + (b - b'0') as i128;
    }
    own_scale -= dropped_digits;
    if neg {
        value = -value;
    }
    let target = scale as i32;
    let unscaled = if own_scale > 127 {
        0
    } else if own_scale < -127 {
        return Err(numeric_overflow());
    } else {
        let clamped = own_scale.clamp(target - 60, 127);
        let v = if clamped != own_scale { 0 } else { value };
        rescale(v, clamped as i8, scale).ok_or_else(numeric_overflow)?
    };
    check_precision(unscaled, precision, scale)?;
    Ok(unscaled)
}

fn check_length(s: &str, limit: Option<u32>, ty: &str) -> DbResult<()> {
    if let Some(n) = limit
        && s.chars().count() > n as usize
    {
        return Err(DbError::new(
            SqlState::StringDataRightTruncation,
            format!("value too long for type {ty}({n})"),
        ));
    }
    Ok(())
}

fn pad_char(s: &str, n: u32) -> DbResult<String> {
    let len = s.chars().count();
    if len > n as usize {
        // Postgres allows truncating trailing spaces only
        let trimmed = s.trim_end_matches(' ');
        if trimmed.chars().count() > n as usize {
            return Err(DbError::new(
                SqlState::StringDataRightTruncation,
                format!("value too long for type character({n})"),
            ));
        }
        return Ok(s.chars().take(n as usize).collect());
    }
    let mut out = String::with_capacity(n as usize);
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', n as usize - len));
    Ok(out)
}

fn parse_bytea(s: &str) -> DbResult<Vec<u8>> {
    if let Some(hex) = s.strip_prefix("\\x") {
        let bytes: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !bytes.len().is_multiple_of(2) {
            return Err(DbError::new(
                SqlState::InvalidTextRepresentation,
                "invalid hexadecimal data: odd number of digits",
            ));
        }
        bytes
            .chunks(2)
            .map(|pair| {
                let hi = (pair[0] as char).to_digit(16);
                let lo = (pair[1] as char).to_digit(16);
                match (hi, lo) {
                    (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                    _ => Err(DbError::new(
                        SqlState::InvalidTextRepresentation,
                        format!(
                            "invalid hexadecimal digit: \"{}\"",
                            if hi.is_none() {
                                pair[0] as char
                            } else {
                                pair[1] as char
                            }
                        ),
                    )),
                }
            })
            .collect()
    } else {
        // escape format
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                if i + 1 < b.len() && b[i + 1] == b'\\' {
                    out.push(b'\\');
                    i += 2;
                } else if i + 3 < b.len()
                    && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
                {
                    let v = (b[i + 1] - b'0') as u32 * 64
                        + (b[i + 2] - b'0') as u32 * 8
                        + (b[i + 3] - b'0') as u32;
                    if v > 255 {
                        return Err(invalid("bytea", s));
                    }
                    out.push(v as u8);
                    i += 4;
                } else {
                    return Err(invalid("bytea", s));
                }
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Ok(out)
    }
}

fn parse_date(s: &str) -> DbResult<i32> {
    let t = s.trim();
    let d = NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|e| datetime_error("date", s, e))?;
    Ok(d.num_days_from_ce() - UNIX_EPOCH_CE_DAYS)
}

fn datetime_error(ty: &str, s: &str, e: chrono::ParseError) -> DbError {
    use chrono::format::ParseErrorKind;
    match e.kind() {
        ParseErrorKind::OutOfRange | ParseErrorKind::Impossible => DbError::new(
            SqlState::DatetimeFieldOverflow,
            format!("date/time field value out of range: \"{s}\""),
        ),
        _ => DbError::new(
            SqlState::InvalidDatetimeFormat,
            format!("invalid input syntax for type {ty}: \"{s}\""),
        ),
    }
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][zone]`; a bare date means midnight.
/// `zone`: for a `timestamptz`, the zone a time written without an offset is in; `None`: a
/// `timestamp` (an offset written is ignored, as Postgres ignores it).
fn parse_timestamp(s: &str, zone: Option<&Zone>) -> DbResult<i64> {
    let with_zone = zone.is_some();
    let ty = if with_zone {
        "timestamp with time zone"
    } else {
        "timestamp"
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("epoch") {
        return Ok(0);
    }
    if t.eq_ignore_ascii_case("now") {
        return Ok(Utc::now().timestamp_micros());
    }
    // split off a zone suffix: Z, +HH, +HH:MM, +HHMM, -...
    let (body, offset_secs) = split_zone(t);
    let body = body.trim();
    let parsed = match iso_timestamp(body) {
        Some(p) => Ok(p),
        None => NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S%.f"),
    };
    let parsed = parsed
        .or_else(|_| NaiveDateTime::parse_from_str(body, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(body, "%Y-%m-%dT%H:%M"))
        .or_else(|e| {
            NaiveDate::parse_from_str(body, "%Y-%m-%d")
                .map(|d| d.and_time(NaiveTime::MIN))
                .map_err(|_| e)
        })
        .map_err(|e| datetime_error(ty, s, e))?;
    let utc = parsed.and_utc();
    // digits past microseconds round, half to even, as Postgres rounds them (rint)
    let micros = utc.timestamp_micros();
    let rest = utc.timestamp_subsec_nanos() % 1000;
    let micros = micros + i64::from(rest > 500 || (rest == 500 && micros % 2 != 0));
    Ok(match (zone, offset_secs) {
        (Some(_), Some(off)) => micros - off as i64 * 1_000_000,
        (Some(zone), None) => zone.local_to_utc(micros),
        (None, _) => micros,
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with `T`), the form COPY data and drivers send,
/// without chrono's format interpreter (the hot spot of a CSV load). `None`: another form,
/// or out of range; the general parser decides.
fn iso_timestamp(b: &str) -> Option<NaiveDateTime> {
    let b = b.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32)
        })
    };
    let mut micros = 0;
    if b.len() > 19 {
        let frac = &b[20..];
        if b[19] != b'.' || frac.is_empty() || frac.len() > 6 {
            return None;
        }
        micros = num(20..b.len())? * 10u32.pow(6 - frac.len() as u32);
    }
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time = NaiveTime::from_hms_micro_opt(num(11..13)?, num(14..16)?, num(17..19)?, micros)?;
    Some(date.and_time(time))
}

fn split_zone(t: &str) -> (&str, Option<i32>) {
    if let Some(body) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return (body, Some(0));
    }
    if let Some(body) = t.strip_suffix(" UTC").or_else(|| t.strip_suffix(" utc")) {
        return (body, Some(0));
    }
    // search for the last + or - after the time part (position > 10 skips the date's dashes)
    if t.len() > 10
        && let Some(pos) = t[10..].rfind(['+', '-']).map(|p| p + 10)
    {
        let zone = &t[pos + 1..];
        let sign = if t.as_bytes()[pos] == b'-' { -1 } else { 1 };
        let digits: String = zone.chars().filter(|c| *c != ':').collect();
        if !digits.is_empty() && digits.len() <= 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
            let (h, rest) = digits.split_at(digits.len().min(2));
            let (m, sec) = rest.split_at(rest.len().min(2));
            let h: i32 = h.parse().unwrap_or(0);
            let m: i32 = if m.is_empty() {
                0
            } else {
                m.parse().unwrap_or(0)
            };
            let sec: i32 = if sec.is_empty() {
                0
            } else {
                sec.parse().unwrap_or(0)
            };
            return (&t[..pos], Some(sign * (h * 3600 + m * 60 + sec)));
        }
    }
    (t, None)
}

fn parse_uuid(s: &str) -> DbResult<[u8; 16]> {
    let t = s.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let hex: Vec<u8> = t.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(invalid("uuid", s));
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let h = (pair[0] as char)
            .to_digit(16)
            .ok_or_else(|| invalid("uuid", s))?;
        let l = (pair[1] as char)
            .to_digit(16)
            .ok_or_else(|| invalid("uuid", s))?;
        out[i] = (h * 16 + l) as u8;
    }
    Ok(out)
}

/// Postgres' float8 output with the default `extra_float_digits = 1`: shortest round-trip digits,
/// exponent notation when the decimal exponent is < -4 or >= 15.
pub fn format_float8(v: f64) -> String {
    format_float(v, 15)
}

/// Postgres' float4 output: shortest round-trip digits, exponent notation when < -4 or >= 6.
pub fn format_float4(v: f32) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    shortest_to_pg(&format!("{v:e}"), 6)
}

fn format_float(v: f64, max_exp: i32) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    shortest_to_pg(&format!("{v:e}"), max_exp)
}

/// Turns Rust's shortest `{:e}` output (`-1.2345e-7`) into Postgres' `%g`-style form.
fn shortest_to_pg(sci: &str, max_exp: i32) -> String {
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits == "0" {
        return if neg {
            "-0".to_string()
        } else {
            "0".to_string()
        };
    }
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if exp < -4 || exp >= max_exp {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', int_len - digits.len()));
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// Prints an unscaled decimal. `trim` drops trailing fractional zeros (used for unconstrained
/// `numeric`, whose storage scale is not the value's display scale).
pub fn format_numeric(unscaled: i128, scale: i8, trim: bool) -> String {
    let neg = unscaled < 0;
    let abs = unscaled.unsigned_abs().to_string();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if scale <= 0 {
        out.push_str(&abs);
        out.extend(std::iter::repeat_n('0', (-scale) as usize));
        return out;
    }
    let scale = scale as usize;
    let (int_part, frac_part) = if abs.len() > scale {
        (
            abs[..abs.len() - scale].to_string(),
            abs[abs.len() - scale..].to_string(),
        )
    } else {
        (
            "0".to_string(),
            format!("{}{}", "0".repeat(scale - abs.len()), abs),
        )
    };
    let frac = if trim {
        frac_part.trim_end_matches('0')
    } else {
        frac_part.as_str()
    };
    out.push_str(&int_part);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if neg && out == "-0" {
        return "0".to_string();
    }
    out
}

pub fn format_bytea(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("\\x");
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

pub fn format_date(days: i32) -> String {
    match NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_CE_DAYS) {
        Some(d) => format_date_naive(d),
        None => days.to_string(),
    }
}

fn format_date_naive(d: NaiveDate) -> String {
    if d.year() <= 0 {
        format!("{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day())
    } else {
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    }
}

fn format_time_part(t: NaiveDateTime) -> String {
    use chrono::Timelike;
    let mut s = format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let micros = t.nanosecond() / 1000;
    if micros > 0 {
        let frac = format!("{micros:06}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

pub fn format_timestamp(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => {
            let n = dt.naive_utc();
            format!("{} {}", format_date_naive(n.date()), format_time_part(n))
        }
        None => micros.to_string(),
    }
}

/// Prints a timestamptz in UTC (`+00`), the server's default TimeZone.
pub fn format_timestamptz(micros: i64) -> String {
    format_timestamptz_offset(micros, 0)
}

/// Prints a timestamptz at a fixed UTC offset in seconds, the way Postgres prints it in ISO style.
pub fn format_timestamptz_offset(micros: i64, offset_secs: i32) -> String {
    let Some(dt) = DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let Some(fixed) = chrono::FixedOffset::east_opt(offset_secs) else {
        return micros.to_string();
    };
    let local = fixed.from_utc_datetime(&dt.naive_utc()).naive_local();
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.abs();
    let mut zone = format!("{sign}{:02}", abs / 3600);
    if abs % 3600 != 0 {
        let _ = write!(zone, ":{:02}", (abs % 3600) / 60);
    }
    if abs % 60 != 0 {
        let _ = write!(zone, ":{:02}", abs % 60);
    }
    format!(
        "{} {}{}",
        format_date_naive(local.date()),
        format_time_part(local),
        zone
    )
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// jsonb as Postgres prints it: object keys ordered by length, then bytes (the last of
/// duplicate keys wins), `": "` and `", "` separators.
fn jsonb_text(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_text(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes())));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                jsonb_text(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path for ISO timestamps agrees with the general parser, and leaves anything
    /// else (other forms, out-of-range fields) to it.
    #[test]
    fn iso_timestamps_parse_like_the_general_parser() {
        for t in [
            "2024-03-07 12:34:56",
            "2024-03-07T00:00:00",
            "1999-12-31 23:59:59.5",
            "2000-02-29 01:02:03.123456",
            "0001-01-01 00:00:00.000001",
        ] {
            let general = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
                .unwrap();
            assert_eq!(iso_timestamp(t), Some(general), "{t}");
        }
        for t in [
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-01-01 25:00:00",
            "2024-01-01 00:00",
            "2024-01-01 00:00:00.1234567",
            "2024-01-01 00:00:00.",
            "2024/01/01 00:00:00",
        ] {
            assert_eq!(iso_timestamp(t), None, "{t}");
        }
        assert_eq!(
            parse_timestamp("2024-01-01 00:00:00.25+02", Some(&Zone::UTC)).unwrap(),
            parse_timestamp("2023-12-31 22:00:00.25", Some(&Zone::UTC)).unwrap()
        );
        assert!(parse_timestamp("2023-02-29 00:00:00", None).is_err());
    }

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(format_float8(1.0), "1");
        assert_eq!(format_float8(0.1), "0.1");
        assert_eq!(format_float8(1e20), "1e+20");
        assert_eq!(format_float8(123456789012345.0), "123456789012345");
        assert_eq!(format_float8(1234567890123456.0), "1.234567890123456e+15");
        assert_eq!(format_float8(0.0001), "0.0001");
        assert_eq!(format_float8(0.00001), "1e-05");
        assert_eq!(format_float8(-2.5), "-2.5");
        assert_eq!(format_float4(1234567.0), "1.234567e+06");
        assert_eq!(format_float4(0.1), "0.1");
        assert_eq!(format_float8(f64::NAN), "NaN");
    }

    #[test]
    fn numeric_parse_and_print() {
        assert_eq!(parse_numeric("1.25", 10, 1).unwrap(), 13);
        assert_eq!(parse_numeric("-1.25", 10, 1).unwrap(), -13);
        assert_eq!(parse_numeric("1e3", 10, 0).unwrap(), 1000);
        assert_eq!(parse_numeric("0.5", 10, 0).unwrap(), 1);
        assert!(parse_numeric("abc", 10, 0).is_err());
        assert_eq!(
            parse_numeric("1000", 3, 0).unwrap_err().state,
            SqlState::NumericValueOutOfRange
        );
        assert_eq!(format_numeric(12345, 2, false), "123.45");
        assert_eq!(format_numeric(5, 3, false), "0.005");
        assert_eq!(format_numeric(-5, 3, false), "-0.005");
        assert_eq!(format_numeric(150_000, 5, true), "1.5");
        assert_eq!(format_numeric(200_000, 5, true), "2");
    }

    #[test]
    fn ints_fail_with_postgres_codes() {
        assert_eq!(Datum::parse(SqlType::Int4, "12").unwrap(), Datum::Int4(12));
        assert_eq!(
            Datum::parse(SqlType::Int4, " 12 ").unwrap(),
            Datum::Int4(12)
        );
        assert_eq!(
            Datum::parse(SqlType::Int4, "abc").unwrap_err().state,
            SqlState::InvalidTextRepresentation
        );
        assert_eq!(
            Datum::parse(SqlType::Int2, "40000").unwrap_err().state,
            SqlState::NumericValueOutOfRange
        );
        assert_eq!(
            Datum::Int8(1 << 40)
                .coerce_to(SqlType::Int4)
                .unwrap_err()
                .state,
            SqlState::NumericValueOutOfRange
        );
    }

    #[test]
    fn datetimes_round_trip() {
        let d = Datum::parse(SqlType::Date, "2024-02-29").unwrap();
        assert_eq!(d.to_text().unwrap(), "2024-02-29");
        let ts = Datum::parse(SqlType::Timestamp, "2024-01-02 03:04:05.5").unwrap();
        assert_eq!(ts.to_text().unwrap(), "2024-01-02 03:04:05.5");
        let tz = Datum::parse(SqlType::Timestamptz, "2024-01-02 03:04:05+02").unwrap();
        assert_eq!(tz.to_text().unwrap(), "2024-01-02 01:04:05+00");
        assert_eq!(
            Datum::parse(SqlType::Date, "2024-02-30").unwrap_err().state,
            SqlState::DatetimeFieldOverflow
        );
    }

    #[test]
    fn text_types() {
        assert_eq!(
            Datum::parse(SqlType::Char(4), "ab").unwrap(),
            Datum::Text("ab  ".into())
        );
        assert_eq!(
            Datum::parse(SqlType::Varchar(Some(2)), "abc")
                .unwrap_err()
                .state,
            SqlState::StringDataRightTruncation
        );
        let u = Datum::parse(SqlType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        assert_eq!(u.to_text().unwrap(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(
            Datum::parse(SqlType::Bytea, "\\x0aff").unwrap(),
            Datum::Bytea(vec![10, 255])
        );
        assert_eq!(Datum::Bytea(vec![10, 255]).to_text().unwrap(), "\\x0aff");
    }
}
