//! Row encoding for the row store. A row is stored against its table's *physical* column list
//! (every column ever added, dropped ones included), so `ALTER TABLE ADD/DROP COLUMN` never
//! rewrites data: a row shorter than the current list is padded with each added column's
//! `missing` value, and dropped columns are skipped by readers.
//!
//! Layout: `[version: u8 = 1][column count: u16 LE]` then per column a tag byte (`0` NULL,
//! `1` present) followed, when present, by the value: fixed-width little-endian for numbers,
//! dates and timestamps; `u32 LE length + bytes` for text, bytea and json; 16 bytes for uuid.

use crate::datum::Datum;
use crate::error::{DbError, DbResult};
use crate::types::SqlType;

const ROW_FORMAT_VERSION: u8 = 1;

pub fn encode_row(values: &[Datum], out: &mut Vec<u8>) {
    out.push(ROW_FORMAT_VERSION);
    out.extend_from_slice(&(values.len() as u16).to_le_bytes());
    for v in values {
        if v.is_null() {
            out.push(0);
            continue;
        }
        out.push(1);
        match v {
            Datum::Null => unreachable!("handled above"),
            Datum::Bool(b) => out.push(*b as u8),
            Datum::Int2(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Int4(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Int8(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Float4(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Float8(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Numeric { unscaled, .. } => out.extend_from_slice(&unscaled.to_le_bytes()),
            Datum::Date(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Timestamp(x) | Datum::Timestamptz(x) => out.extend_from_slice(&x.to_le_bytes()),
            Datum::Uuid(u) => out.extend_from_slice(u),
            Datum::Text(s) | Datum::Json(s) => {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Datum::Bytea(b) => {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            Datum::Interval {
                months,
                days,
                micros,
            } => {
                out.extend_from_slice(&months.to_le_bytes());
                out.extend_from_slice(&days.to_le_bytes());
                out.extend_from_slice(&micros.to_le_bytes());
            }
        }
    }
}

/// Decodes a row. `types` is the physical column list; `missing(i)` supplies the value of a
/// column added after the row was written.
pub fn decode_row(
    types: &[SqlType],
    missing: impl Fn(usize) -> Datum,
    buf: &[u8],
) -> DbResult<Vec<Datum>> {
    let corrupt = || DbError::internal("corrupt row encoding");
    if buf.len() < 3 || buf[0] != ROW_FORMAT_VERSION {
        return Err(corrupt());
    }
    let n = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    let mut pos = 3;
    let mut out = Vec::with_capacity(types.len());
    let mut take = |len: usize| -> DbResult<&[u8]> {
        let s = buf.get(pos..pos + len).ok_or_else(corrupt)?;
        pos += len;
        Ok(s)
    };
    for (i, ty) in types.iter().enumerate() {
        if i >= n {
            out.push(missing(i));
            continue;
        }
        if take(1)?[0] == 0 {
            out.push(Datum::Null);
            continue;
        }
        let d = match ty {
            SqlType::Bool => Datum::Bool(take(1)?[0] != 0),
            SqlType::Int2 => Datum::Int2(i16::from_le_bytes(take(2)?.try_into().expect("2"))),
            SqlType::Int4 => Datum::Int4(i32::from_le_bytes(take(4)?.try_into().expect("4"))),
            SqlType::Int8 => Datum::Int8(i64::from_le_bytes(take(8)?.try_into().expect("8"))),
            SqlType::Float4 => Datum::Float4(f32::from_le_bytes(take(4)?.try_into().expect("4"))),
            SqlType::Float8 => Datum::Float8(f64::from_le_bytes(take(8)?.try_into().expect("8"))),
            SqlType::Numeric(spec) => Datum::Numeric {
                unscaled: i128::from_le_bytes(take(16)?.try_into().expect("16")),
                scale: crate::datum::numeric_spec(*spec).1,
            },
            SqlType::Date => Datum::Date(i32::from_le_bytes(take(4)?.try_into().expect("4"))),
            SqlType::Timestamp => {
                Datum::Timestamp(i64::from_le_bytes(take(8)?.try_into().expect("8")))
            }
            SqlType::Timestamptz => {
                Datum::Timestamptz(i64::from_le_bytes(take(8)?.try_into().expect("8")))
            }
            SqlType::Uuid => Datum::Uuid(take(16)?.try_into().expect("16")),
            SqlType::Interval => Datum::Interval {
                months: i32::from_le_bytes(take(4)?.try_into().expect("4")),
                days: i32::from_le_bytes(take(4)?.try_into().expect("4")),
                micros: i64::from_le_bytes(take(8)?.try_into().expect("8")),
            },
            SqlType::Bytea => {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
                Datum::Bytea(take(len)?.to_vec())
            }
            SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Char(_)
            | SqlType::Json
            | SqlType::Jsonb => {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
                let s = String::from_utf8(take(len)?.to_vec()).map_err(|_| corrupt())?;
                if matches!(ty, SqlType::Json | SqlType::Jsonb) {
                    Datum::Json(s)
                } else {
                    Datum::Text(s)
                }
            }
        };
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_added_columns() {
        let types = [
            SqlType::Int4,
            SqlType::Text,
            SqlType::Float8,
            SqlType::Interval,
            SqlType::Bool,
        ];
        let interval = Datum::Interval {
            months: 14,
            days: -3,
            micros: 5_000_001,
        };
        let vals = vec![
            Datum::Int4(5),
            Datum::Null,
            Datum::Float8(2.5),
            interval.clone(),
        ];
        let mut buf = Vec::new();
        encode_row(&vals, &mut buf);
        let back = decode_row(&types, |_| Datum::Bool(true), &buf).unwrap();
        assert_eq!(
            back,
            vec![
                Datum::Int4(5),
                Datum::Null,
                Datum::Float8(2.5),
                interval,
                Datum::Bool(true)
            ]
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode_row(&[Datum::Text("hello".into())], &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_row(&[SqlType::Text], |_| Datum::Null, &buf[..cut]).is_err());
        }
    }
}
