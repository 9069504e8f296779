//! Arrow ↔ Postgres wire values: result columns (text and binary), and bound parameters.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::{BufMut, BytesMut};
use datafusion::common::ScalarValue;
use orochi_common::datum::{self, Datum};
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::types::{PG_TYPE_METADATA_KEY, SqlType};
use orochi_common::zone::Zone;
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

use crate::handler::copy::{CopyFormat, CopyOptions};

/// Microseconds between the Unix epoch and Postgres' epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// Our SQL type of a column, from its field metadata — only if the values really are of that
/// type's Arrow representation (metadata can outlive a conversion).
pub fn sql_type_of(field: &Field) -> Option<SqlType> {
    field
        .metadata()
        .get(PG_TYPE_METADATA_KEY)
        .and_then(|n| SqlType::from_metadata_name(n))
        .filter(|t| &t.arrow_type() == field.data_type())
}

/// The Postgres type of a result column.
pub fn pg_type(field: &Field) -> Type {
    if let Some(t) = sql_type_of(field)
        && let Some(ty) = Type::from_oid(t.pg_oid())
    {
        return ty;
    }
    match field.data_type() {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 => Type::INT8,
        DataType::UInt32 => Type::OID,
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Interval(_) | DataType::Duration(_) => Type::INTERVAL,
        DataType::List(f) | DataType::LargeList(f) => array_type_of(&pg_type(f)),
        _ => Type::TEXT,
    }
}

/// The Postgres array type whose elements are `elem`.
fn array_type_of(elem: &Type) -> Type {
    match *elem {
        Type::BOOL => Type::BOOL_ARRAY,
        Type::INT2 => Type::INT2_ARRAY,
        Type::INT4 => Type::INT4_ARRAY,
        Type::INT8 => Type::INT8_ARRAY,
        Type::FLOAT4 => Type::FLOAT4_ARRAY,
        Type::FLOAT8 => Type::FLOAT8_ARRAY,
        Type::NUMERIC => Type::NUMERIC_ARRAY,
        Type::BYTEA => Type::BYTEA_ARRAY,
        Type::DATE => Type::DATE_ARRAY,
        Type::TIMESTAMP => Type::TIMESTAMP_ARRAY,
        Type::TIMESTAMPTZ => Type::TIMESTAMPTZ_ARRAY,
        _ => Type::TEXT_ARRAY,
    }
}

/// One-dimensional array in Postgres' text form: `{a,"b c",NULL}`.
fn encode_text_array(values: &dyn Array, zone: &Zone, buf: &mut BytesMut) -> DbResult<()> {
    buf.put_u8(b'{');
    let mut elem = BytesMut::new();
    for i in 0..values.len() {
        if i > 0 {
            buf.put_u8(b',');
        }
        if values.is_null(i) {
            buf.put_slice(b"NULL");
            continue;
        }
        elem.clear();
        encode_text(values, i, None, zone, &mut elem)?;
        let needs_quotes = elem.is_empty()
            || elem.eq_ignore_ascii_case(b"null")
            || elem
                .iter()
                .any(|b| matches!(b, b'{' | b'}' | b',' | b'"' | b'\\') || b.is_ascii_whitespace());
        if needs_quotes {
            buf.put_u8(b'"');
            for &b in elem.iter() {
                if b == b'"' || b == b'\\' {
                    buf.put_u8(b'\\');
                }
                buf.put_u8(b);
            }
            buf.put_u8(b'"');
        } else {
            buf.put_slice(&elem);
        }
    }
    buf.put_u8(b'}');
    Ok(())
}

/// One-dimensional array in Postgres' binary form.
fn encode_binary_array(values: &dyn Array, elem_type: &Type, buf: &mut BytesMut) -> DbResult<()> {
    buf.put_i32(1); // dimensions
    buf.put_i32(i32::from(values.null_count() > 0));
    buf.put_u32(elem_type.oid());
    buf.put_i32(values.len() as i32);
    buf.put_i32(1); // lower bound
    for i in 0..values.len() {
        if values.is_null(i) {
            buf.put_i32(-1);
            continue;
        }
        let len_pos = buf.len();
        buf.put_i32(0);
        encode_binary(values, i, None, buf)?;
        let len = (buf.len() - len_pos - 4) as i32;
        buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Postgres type → our column type, for decoding parameters.
pub fn sql_type_for_pg(t: &Type) -> Option<SqlType> {
    Some(match t.oid() {
        16 => SqlType::Bool,
        17 => SqlType::Bytea,
        20 => SqlType::Int8,
        21 => SqlType::Int2,
        23 => SqlType::Int4,
        // a bpchar parameter has no length of its own: its text is taken as is, and padded
        // (or refused) by the column it is stored in
        25 | 19 | 705 | 1042 => SqlType::Text,
        114 => SqlType::Json,
        700 => SqlType::Float4,
        701 => SqlType::Float8,
        1043 => SqlType::Varchar(None),
        1082 => SqlType::Date,
        1114 => SqlType::Timestamp,
        1184 => SqlType::Timestamptz,
        1186 => SqlType::Interval,
        1700 => SqlType::Numeric(None),
        2950 => SqlType::Uuid,
        3802 => SqlType::Jsonb,
        _ => return None,
    })
}

/// Postgres type for a parameter inferred as an Arrow type.
pub fn pg_type_of_arrow(dt: &DataType) -> Type {
    pg_type(&Field::new("", dt.clone(), true))
}

pub fn field_infos(schema: &Schema, format: impl Fn(usize) -> FieldFormat) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f), format(i)))
        .collect()
}

/// Encodes every row of a batch as DataRow messages.
/// Text values are written as Postgres writes them in the session's time `zone`.
pub fn encode_batch(
    batch: &RecordBatch,
    fields: &[FieldInfo],
    schema: &Schema,
    zone: &Zone,
    out: &mut Vec<DataRow>,
) -> DbResult<()> {
    let ncols = batch.num_columns();
    let types: Vec<Option<SqlType>> = schema.fields().iter().map(|f| sql_type_of(f)).collect();
    for r in 0..batch.num_rows() {
        let mut buf = BytesMut::with_capacity(16 * ncols);
        for c in 0..ncols {
            let array = batch.column(c);
            if array.is_null(r) {
                buf.put_i32(-1);
                continue;
            }
            let binary = fields
                .get(c)
                .map(|f| f.format() == FieldFormat::Binary)
                .unwrap_or(false);
            let len_pos = buf.len();
            buf.put_i32(0);
            if binary {
                encode_binary(array.as_ref(), r, types.get(c).copied().flatten(), &mut buf)?;
            } else {
                let ty = types.get(c).copied().flatten();
                encode_text(array.as_ref(), r, ty, zone, &mut buf)?;
            }
            let len = (buf.len() - len_pos - 4) as i32;
            buf[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
        }
        out.push(DataRow::new(buf, ncols as i16));
    }
    Ok(())
}

/// The signature, flags and header-extension length that open a binary COPY stream.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// What `COPY … TO STDOUT` sends before the first row: the binary signature, or the CSV
/// header line; nothing otherwise.
pub fn copy_preamble(schema: &Schema, opts: &CopyOptions) -> Vec<u8> {
    let mut out = Vec::new();
    match opts.format {
        CopyFormat::Binary => out.extend_from_slice(COPY_BINARY_HEADER),
        CopyFormat::Csv { quote, escape } if opts.header => {
            for (i, f) in schema.fields().iter().enumerate() {
                if i > 0 {
                    out.push(opts.delimiter);
                }
                csv_field(f.name().as_bytes(), opts, quote, escape, &mut out);
            }
            out.push(b'\n');
        }
        _ => {}
    }
    out
}

/// One CopyData payload per row of `batch` in COPY's text, CSV or binary format, as Postgres
/// writes them (text: backslash escapes and `\N`; CSV: quoted when needed).
pub fn encode_copy_rows(
    batch: &RecordBatch,
    schema: &Schema,
    opts: &CopyOptions,
    zone: &Zone,
    out: &mut Vec<BytesMut>,
) -> DbResult<()> {
    let types: Vec<Option<SqlType>> = schema.fields().iter().map(|f| sql_type_of(f)).collect();
    let ncols = batch.num_columns();
    let mut value = BytesMut::new();
    for r in 0..batch.num_rows() {
        let mut row = BytesMut::with_capacity(16 * ncols);
        if opts.format == CopyFormat::Binary {
            row.put_i16(ncols as i16);
        }
        for c in 0..ncols {
            let array = batch.column(c);
            let ty = types.get(c).copied().flatten();
            if opts.format == CopyFormat::Binary {
                if array.is_null(r) {
                    row.put_i32(-1);
                    continue;
                }
                let len_pos = row.len();
                row.put_i32(0);
                encode_binary(array.as_ref(), r, ty, &mut row)?;
                let len = (row.len() - len_pos - 4) as i32;
                row[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
                continue;
            }
            if c > 0 {
                row.put_u8(opts.delimiter);
            }
            if array.is_null(r) {
                row.put_slice(opts.null.as_bytes());
                continue;
            }
            value.clear();
            encode_text(array.as_ref(), r, ty, zone, &mut value)?;
            match opts.format {
                CopyFormat::Csv { quote, escape } => {
                    let mut field = Vec::with_capacity(value.len() + 2);
                    csv_field(&value, opts, quote, escape, &mut field);
                    row.put_slice(&field);
                }
                _ => text_field(&value, opts.delimiter, &mut row),
            }
        }
        if opts.format != CopyFormat::Binary {
            row.put_u8(b'\n');
        }
        out.push(row);
    }
    Ok(())
}

/// A value in COPY's text format: backslash, control characters and the delimiter escaped.
fn text_field(v: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in v {
        let escaped = match b {
            b'\\' => Some(b'\\'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            0x0b => Some(b'v'),
            d if d == delimiter => Some(d),
            _ => None,
        };
        match escaped {
            Some(e) => {
                out.put_u8(b'\\');
                out.put_u8(e);
            }
            None => out.put_u8(b),
        }
    }
}

/// A value in CSV: quoted when it holds the delimiter, the quote, a line break, equals the NULL
/// string, or is `\.` (which would end the data); quotes and escapes inside are escaped.
fn csv_field(v: &[u8], opts: &CopyOptions, quote: u8, escape: u8, out: &mut Vec<u8>) {
    let needs_quotes = v == opts.null.as_bytes()
        || v == b"\\."
        || v.iter()
            .any(|&b| b == opts.delimiter || b == quote || b == b'\n' || b == b'\r');
    if !needs_quotes {
        out.extend_from_slice(v);
        return;
    }
    out.push(quote);
    for &b in v {
        if b == quote || b == escape {
            out.push(escape);
        }
        out.push(b);
    }
    out.push(quote);
}

fn encode_text(
    a: &dyn Array,
    r: usize,
    ty: Option<SqlType>,
    zone: &Zone,
    buf: &mut BytesMut,
) -> DbResult<()> {
    use arrow::datatypes as t;
    match a.data_type() {
        DataType::Boolean => buf.put_slice(if a.as_boolean().value(r) { b"t" } else { b"f" }),
        DataType::Int8 => buf.put_slice(
            a.as_primitive::<t::Int8Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::Int16 => buf.put_slice(
            a.as_primitive::<t::Int16Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::Int32 => buf.put_slice(
            a.as_primitive::<t::Int32Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::Int64 => buf.put_slice(
            a.as_primitive::<t::Int64Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::UInt8 => buf.put_slice(
            a.as_primitive::<t::UInt8Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::UInt16 => buf.put_slice(
            a.as_primitive::<t::UInt16Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::UInt32 => buf.put_slice(
            a.as_primitive::<t::UInt32Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::UInt64 => buf.put_slice(
            a.as_primitive::<t::UInt64Type>()
                .value(r)
                .to_string()
                .as_bytes(),
        ),
        DataType::Float32 => buf.put_slice(
            datum::format_float4(a.as_primitive::<t::Float32Type>().value(r)).as_bytes(),
        ),
        DataType::Float64 => buf.put_slice(
            datum::format_float8(a.as_primitive::<t::Float64Type>().value(r)).as_bytes(),
        ),
        DataType::Decimal128(_, s) => {
            let trim = matches!(ty, Some(SqlType::Numeric(None))) || ty.is_none() && *s > 6;
            buf.put_slice(
                datum::format_numeric(a.as_primitive::<t::Decimal128Type>().value(r), *s, trim)
                    .as_bytes(),
            )
        }
        DataType::Utf8 => buf.put_slice(a.as_string::<i32>().value(r).as_bytes()),
        DataType::LargeUtf8 => buf.put_slice(a.as_string::<i64>().value(r).as_bytes()),
        DataType::Utf8View => buf.put_slice(a.as_string_view().value(r).as_bytes()),
        DataType::Binary => {
            buf.put_slice(datum::format_bytea(a.as_binary::<i32>().value(r)).as_bytes())
        }
        DataType::LargeBinary => {
            buf.put_slice(datum::format_bytea(a.as_binary::<i64>().value(r)).as_bytes())
        }
        DataType::BinaryView => {
            buf.put_slice(datum::format_bytea(a.as_binary_view().value(r)).as_bytes())
        }
        DataType::Date32 => {
            buf.put_slice(datum::format_date(a.as_primitive::<t::Date32Type>().value(r)).as_bytes())
        }
        DataType::Timestamp(..) => {
            let d = Datum::from_arrow(
                a,
                r,
                if matches!(a.data_type(), DataType::Timestamp(_, Some(_))) {
                    SqlType::Timestamptz
                } else {
                    SqlType::Timestamp
                },
            )?;
            buf.put_slice(d.to_text_in(zone).unwrap_or_default().as_bytes())
        }
        DataType::Interval(_) | DataType::Duration(_) => {
            let i = interval_at(a, r)?;
            buf.put_slice(orochi_common::interval::format_interval(i).as_bytes())
        }
        DataType::List(_) => encode_text_array(a.as_list::<i32>().value(r).as_ref(), zone, buf)?,
        DataType::LargeList(_) => {
            encode_text_array(a.as_list::<i64>().value(r).as_ref(), zone, buf)?
        }
        _ => {
            let fmt = arrow::util::display::ArrayFormatter::try_new(a, &Default::default())
                .map_err(|e| DbError::internal(format!("formatting {}: {e}", a.data_type())))?;
            buf.put_slice(fmt.value(r).to_string().as_bytes());
        }
    }
    Ok(())
}

fn encode_binary(a: &dyn Array, r: usize, ty: Option<SqlType>, buf: &mut BytesMut) -> DbResult<()> {
    use arrow::datatypes as t;
    match (a.data_type(), ty) {
        (DataType::Boolean, _) => buf.put_u8(a.as_boolean().value(r) as u8),
        (DataType::Int8, _) => buf.put_i16(a.as_primitive::<t::Int8Type>().value(r) as i16),
        (DataType::Int16, _) => buf.put_i16(a.as_primitive::<t::Int16Type>().value(r)),
        (DataType::Int32, _) => buf.put_i32(a.as_primitive::<t::Int32Type>().value(r)),
        (DataType::Int64, _) => buf.put_i64(a.as_primitive::<t::Int64Type>().value(r)),
        (DataType::UInt8, _) => buf.put_i16(a.as_primitive::<t::UInt8Type>().value(r) as i16),
        (DataType::UInt16, _) => buf.put_i32(a.as_primitive::<t::UInt16Type>().value(r) as i32),
        (DataType::UInt32, _) => buf.put_u32(a.as_primitive::<t::UInt32Type>().value(r)),
        (DataType::List(f), _) => {
            encode_binary_array(a.as_list::<i32>().value(r).as_ref(), &pg_type(f), buf)?
        }
        (DataType::LargeList(f), _) => {
            encode_binary_array(a.as_list::<i64>().value(r).as_ref(), &pg_type(f), buf)?
        }
        (DataType::Float32, _) => buf.put_f32(a.as_primitive::<t::Float32Type>().value(r)),
        (DataType::Float64, _) => buf.put_f64(a.as_primitive::<t::Float64Type>().value(r)),
        (DataType::Decimal128(_, s), _) => {
            encode_numeric_binary(a.as_primitive::<t::Decimal128Type>().value(r), *s, buf)
        }
        (DataType::Utf8, Some(SqlType::Uuid)) => {
            let d = Datum::parse(SqlType::Uuid, a.as_string::<i32>().value(r))?;
            if let Datum::Uuid(u) = d {
                buf.put_slice(&u);
            }
        }
        (DataType::Utf8, Some(SqlType::Jsonb)) => {
            buf.put_u8(1);
            buf.put_slice(a.as_string::<i32>().value(r).as_bytes());
        }
        (DataType::Date32, _) => {
            buf.put_i32(a.as_primitive::<t::Date32Type>().value(r) - PG_EPOCH_DAYS)
        }
        (DataType::Timestamp(TimeUnit::Microsecond, _), _) => {
            buf.put_i64(a.as_primitive::<t::TimestampMicrosecondType>().value(r) - PG_EPOCH_MICROS)
        }
        (DataType::Timestamp(..), _) => {
            let d = Datum::from_arrow(a, r, SqlType::Timestamp)?;
            if let Datum::Timestamp(us) = d {
                buf.put_i64(us - PG_EPOCH_MICROS);
            }
        }
        (DataType::Interval(_) | DataType::Duration(_), _) => {
            // microseconds, days, months
            let i = interval_at(a, r)?;
            buf.put_i64(i.micros);
            buf.put_i32(i.days);
            buf.put_i32(i.months);
        }
        (DataType::Binary, _) => buf.put_slice(a.as_binary::<i32>().value(r)),
        (DataType::LargeBinary, _) => buf.put_slice(a.as_binary::<i64>().value(r)),
        (DataType::BinaryView, _) => buf.put_slice(a.as_binary_view().value(r)),
        // text-like types are their UTF-8 bytes in binary format too
        _ => encode_text(a, r, ty, &Zone::UTC, buf)?,
    }
    Ok(())
}

/// Row `r` of an Arrow interval or duration array as Postgres' interval (a duration, the
/// difference of two timestamps, in whole days and the time, as Postgres subtracts them).
pub fn interval_at(a: &dyn Array, r: usize) -> DbResult<orochi_common::interval::Interval> {
    use arrow::datatypes as t;
    use arrow::datatypes::IntervalUnit;
    use orochi_common::interval::{Interval, interval_of_duration};
    Ok(match a.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = a.as_primitive::<t::IntervalMonthDayNanoType>().value(r);
            Interval {
                months: v.months,
                days: v.days,
                micros: v.nanoseconds / 1_000,
            }
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = a.as_primitive::<t::IntervalDayTimeType>().value(r);
            Interval {
                months: 0,
                days: v.days,
                micros: v.milliseconds as i64 * 1_000,
            }
        }
        DataType::Interval(IntervalUnit::YearMonth) => Interval {
            months: a.as_primitive::<t::IntervalYearMonthType>().value(r),
            ..Default::default()
        },
        DataType::Duration(TimeUnit::Second) => {
            interval_of_duration(a.as_primitive::<t::DurationSecondType>().value(r) * 1_000_000)
        }
        DataType::Duration(TimeUnit::Millisecond) => {
            interval_of_duration(a.as_primitive::<t::DurationMillisecondType>().value(r) * 1_000)
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            interval_of_duration(a.as_primitive::<t::DurationMicrosecondType>().value(r))
        }
        DataType::Duration(TimeUnit::Nanosecond) => {
            interval_of_duration(a.as_primitive::<t::DurationNanosecondType>().value(r) / 1_000)
        }
        other => return Err(DbError::internal(format!("{other} is not an interval"))),
    })
}

/// Postgres' binary `numeric`: ndigits, weight, sign, dscale, then base-10000 digits.
fn encode_numeric_binary(unscaled: i128, scale: i8, buf: &mut BytesMut) {
    let text = datum::format_numeric(unscaled, scale, false);
    let neg = text.starts_with('-');
    let t = text.trim_start_matches('-');
    let (int_part, frac_part) = t.split_once('.').unwrap_or((t, ""));
    let dscale = frac_part.len() as i16;
    // pad integer part on the left and fraction on the right to multiples of 4
    let int_pad = (4 - int_part.len() % 4) % 4;
    let int_digits = format!("{}{}", "0".repeat(int_pad), int_part);
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let frac_digits = format!("{}{}", frac_part, "0".repeat(frac_pad));
    let mut groups: Vec<i16> = Vec::new();
    for chunk in int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
    {
        groups.push(
            std::str::from_utf8(chunk)
                .unwrap_or("0")
                .parse()
                .unwrap_or(0),
        );
    }
    let mut weight = (int_digits.len() / 4) as i16 - 1;
    // strip leading zero groups (adjusting weight) and trailing zero groups
    while groups.first() == Some(&0) && !groups.is_empty() {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    buf.put_i16(groups.len() as i16);
    buf.put_i16(weight);
    buf.put_u16(if neg && !groups.is_empty() { 0x4000 } else { 0 });
    buf.put_i16(dscale);
    for g in groups {
        buf.put_i16(g);
    }
}

/// A column value as a DataFusion scalar (for binding parameters).
pub fn datum_to_scalar(d: &Datum, ty: SqlType) -> ScalarValue {
    match d {
        Datum::Null => ScalarValue::try_from(ty.arrow_type()).unwrap_or(ScalarValue::Null),
        Datum::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Datum::Int2(v) => ScalarValue::Int16(Some(*v)),
        Datum::Int4(v) => ScalarValue::Int32(Some(*v)),
        Datum::Int8(v) => ScalarValue::Int64(Some(*v)),
        Datum::Float4(v) => ScalarValue::Float32(Some(*v)),
        Datum::Float8(v) => ScalarValue::Float64(Some(*v)),
        Datum::Numeric { unscaled, scale } => ScalarValue::Decimal128(Some(*unscaled), 38, *scale),
        Datum::Text(s) | Datum::Json(s) => ScalarValue::Utf8(Some(s.clone())),
        Datum::Bytea(b) => ScalarValue::Binary(Some(b.clone())),
        Datum::Date(v) => ScalarValue::Date32(Some(*v)),
        Datum::Timestamp(v) => ScalarValue::TimestampMicrosecond(Some(*v), None),
        Datum::Timestamptz(v) => {
            ScalarValue::TimestampMicrosecond(Some(*v), Some(Arc::from("+00:00")))
        }
        Datum::Uuid(u) => ScalarValue::Utf8(Some(datum::format_uuid(u))),
        Datum::Interval {
            months,
            days,
            micros,
        } => ScalarValue::IntervalMonthDayNano(Some(arrow::datatypes::IntervalMonthDayNano::new(
            *months,
            *days,
            micros.saturating_mul(1_000),
        ))),
    }
}

/// Decodes one bound parameter of Postgres type `t` (text or binary format).
/// A value in its type's binary send format (bound parameters, binary COPY): 22P03 when the
/// bytes do not fit the type; text-like types are checked by their input function.
pub fn decode_binary(b: &[u8], ty: SqlType) -> DbResult<Datum> {
    let bad = || {
        DbError::new(
            SqlState::InvalidBinaryRepresentation,
            format!("incorrect binary data format for type {}", ty.typname()),
        )
    };
    let arr = |n: usize| -> DbResult<&[u8]> { if b.len() == n { Ok(b) } else { Err(bad()) } };
    Ok(match ty {
        SqlType::Bool => Datum::Bool(arr(1)?[0] != 0),
        SqlType::Int2 => Datum::Int2(i16::from_be_bytes(arr(2)?.try_into().expect("2"))),
        SqlType::Int4 => Datum::Int4(i32::from_be_bytes(arr(4)?.try_into().expect("4"))),
        SqlType::Int8 => Datum::Int8(i64::from_be_bytes(arr(8)?.try_into().expect("8"))),
        SqlType::Float4 => Datum::Float4(f32::from_be_bytes(arr(4)?.try_into().expect("4"))),
        SqlType::Float8 => Datum::Float8(f64::from_be_bytes(arr(8)?.try_into().expect("8"))),
        SqlType::Date => {
            Datum::Date(i32::from_be_bytes(arr(4)?.try_into().expect("4")) + PG_EPOCH_DAYS)
        }
        SqlType::Timestamp => {
            Datum::Timestamp(i64::from_be_bytes(arr(8)?.try_into().expect("8")) + PG_EPOCH_MICROS)
        }
        SqlType::Timestamptz => {
            Datum::Timestamptz(i64::from_be_bytes(arr(8)?.try_into().expect("8")) + PG_EPOCH_MICROS)
        }
        SqlType::Uuid => Datum::Uuid(arr(16)?.try_into().expect("16")),
        SqlType::Bytea => Datum::Bytea(b.to_vec()),
        SqlType::Jsonb => {
            if b.first() != Some(&1) {
                return Err(bad());
            }
            Datum::parse(ty, std::str::from_utf8(&b[1..]).map_err(|_| bad())?)?
        }
        SqlType::Numeric(_) => Datum::parse(ty, &decode_numeric_binary(b).ok_or_else(bad)?)?,
        // microseconds, days, months (Postgres' interval_send)
        SqlType::Interval => {
            let b = arr(16)?;
            Datum::Interval {
                micros: i64::from_be_bytes(b[0..8].try_into().expect("8")),
                days: i32::from_be_bytes(b[8..12].try_into().expect("4")),
                months: i32::from_be_bytes(b[12..16].try_into().expect("4")),
            }
        }
        _ => Datum::parse(ty, std::str::from_utf8(b).map_err(|_| bad())?)?,
    })
}

/// A bound parameter's value; text input is read in the session's time `zone`.
pub fn decode_param(
    bytes: Option<&[u8]>,
    binary: bool,
    t: &Type,
    zone: &Zone,
) -> DbResult<ScalarValue> {
    let ty = sql_type_for_pg(t).unwrap_or(SqlType::Text);
    let Some(b) = bytes else {
        return Ok(datum_to_scalar(&Datum::Null, ty));
    };
    let bad = || {
        DbError::new(
            SqlState::InvalidBinaryRepresentation,
            format!(
                "incorrect binary data format in bind parameter of type {}",
                t.name()
            ),
        )
    };
    let d = if !binary {
        let s = std::str::from_utf8(b).map_err(|_| {
            DbError::new(
                SqlState::CharacterNotInRepertoire,
                "invalid byte sequence for encoding \"UTF8\"",
            )
        })?;
        Datum::parse_in(ty, s, zone)?
    } else {
        decode_binary(b, ty).map_err(|e| {
            if e.state == SqlState::InvalidBinaryRepresentation {
                bad()
            } else {
                e
            }
        })?
    };
    Ok(datum_to_scalar(&d, ty))
}

fn decode_numeric_binary(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let ndigits = i16::from_be_bytes([b[0], b[1]]) as usize;
    let weight = i16::from_be_bytes([b[2], b[3]]) as i32;
    let sign = u16::from_be_bytes([b[4], b[5]]);
    let dscale = i16::from_be_bytes([b[6], b[7]]) as usize;
    if b.len() != 8 + ndigits * 2 {
        return None;
    }
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| u16::from_be_bytes([b[8 + 2 * i], b[9 + 2 * i]]))
        .collect();
    let mut int_part = String::new();
    let mut frac_part = String::new();
    for (i, d) in digits.iter().enumerate() {
        let pos = weight - i as i32; // power of 10000
        if pos >= 0 {
            int_part.push_str(&format!("{d:04}"));
        } else {
            frac_part.push_str(&format!("{d:04}"));
        }
    }
    if weight >= ndigits as i32 {
        for _ in 0..(weight + 1 - ndigits as i32) {
            int_part.push_str("0000");
        }
    }
    let lead_zero_groups = if weight < -1 {
        (-1 - weight) as usize
    } else {
        0
    };
    let frac_part = format!("{}{}", "0000".repeat(lead_zero_groups), frac_part);
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let mut frac: String = frac_part.chars().take(dscale).collect();
    while frac.len() < dscale {
        frac.push('0');
    }
    let sign = if sign == 0x4000 { "-" } else { "" };
    Some(if dscale > 0 {
        format!("{sign}{int_part}.{frac}")
    } else {
        format!("{sign}{int_part}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_round_trip() {
        for (v, s) in [(12345i128, 2i8), (-5, 3), (0, 0), (100000000, 0), (1, 10)] {
            let mut buf = BytesMut::new();
            encode_numeric_binary(v, s, &mut buf);
            let text = decode_numeric_binary(&buf).unwrap();
            assert_eq!(text, datum::format_numeric(v, s, false), "{v} {s}");
        }
    }
}
