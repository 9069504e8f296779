//! Memcomparable encoding of primary keys: comparing two encoded keys byte-wise gives the same
//! order as comparing the SQL values column by column. The row store relies on this for ordered
//! scans and the hash router hashes the encoded distribution column, so **this format is stored
//! on disk and must never change** without a migration (see the stability tests below).
//!
//! Per column: `0x00` for NULL, or `0x01` followed by the value:
//! - integers of every width, dates, timestamps: 8 bytes big-endian with the sign bit flipped;
//! - floats: IEEE bits, sign bit flipped for positives, all bits flipped for negatives;
//! - numeric: 16 bytes big-endian of the unscaled i128 (column scale is fixed), sign flipped;
//! - bool: one byte; uuid: 16 raw bytes;
//! - text, bytea, json: bytes with `0x00` escaped as `0x00 0xFF`, terminated by `0x00 0x00`.

use crate::datum::Datum;
use crate::error::{DbError, DbResult};
use crate::types::SqlType;

/// Appends the memcomparable encoding of `d` to `out`.
pub fn encode_datum(d: &Datum, out: &mut Vec<u8>) {
    let int = |v: i64, out: &mut Vec<u8>| {
        out.push(1);
        out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
    };
    match d {
        Datum::Null => out.push(0),
        Datum::Bool(b) => {
            out.push(1);
            out.push(*b as u8);
        }
        Datum::Int2(v) => int(*v as i64, out),
        Datum::Int4(v) => int(*v as i64, out),
        Datum::Int8(v) => int(*v, out),
        Datum::Date(v) => int(*v as i64, out),
        Datum::Timestamp(v) | Datum::Timestamptz(v) => int(*v, out),
        Datum::Float4(v) => encode_f64(*v as f64, out),
        Datum::Float8(v) => encode_f64(*v, out),
        Datum::Numeric { unscaled, .. } => {
            out.push(1);
            out.extend_from_slice(&((*unscaled as u128) ^ (1 << 127)).to_be_bytes());
        }
        Datum::Uuid(u) => {
            out.push(1);
            out.extend_from_slice(u);
        }
        Datum::Text(s) | Datum::Json(s) => encode_bytes(s.as_bytes(), out),
        Datum::Bytea(b) => encode_bytes(b, out),
        // ordered by length (a month is 30 days, as Postgres compares intervals), then by
        // the fields themselves, which decoding needs
        Datum::Interval {
            months,
            days,
            micros,
        } => {
            out.push(1);
            let span = (*months as i128 * 30 + *days as i128) * 86_400_000_000 + *micros as i128;
            out.extend_from_slice(&((span as u128) ^ (1 << 127)).to_be_bytes());
            out.extend_from_slice(&((*months as u32) ^ (1 << 31)).to_be_bytes());
            out.extend_from_slice(&((*days as u32) ^ (1 << 31)).to_be_bytes());
            out.extend_from_slice(&((*micros as u64) ^ (1 << 63)).to_be_bytes());
        }
    }
}

fn encode_f64(v: f64, out: &mut Vec<u8>) {
    out.push(1);
    // normalise -0.0 to 0.0 and all NaNs to one NaN so equal values encode equally
    let v = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    };
    let bits = v.to_bits();
    let bits = if bits >> 63 == 0 {
        bits ^ (1 << 63)
    } else {
        !bits
    };
    out.extend_from_slice(&bits.to_be_bytes());
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.push(1);
    for &byte in b {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Encodes a whole key (several columns).
pub fn encode_key(values: &[&Datum]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for v in values {
        encode_datum(v, &mut out);
    }
    out
}

/// Decodes one column of type `ty` from the front of `buf`, returning the value and the rest.
pub fn decode_datum<'a>(ty: SqlType, buf: &'a [u8]) -> DbResult<(Datum, &'a [u8])> {
    let corrupt = || DbError::internal("corrupt key encoding");
    let (&tag, rest) = buf.split_first().ok_or_else(corrupt)?;
    if tag == 0 {
        return Ok((Datum::Null, rest));
    }
    let take = |n: usize| -> DbResult<(&'a [u8], &'a [u8])> {
        if rest.len() < n {
            Err(corrupt())
        } else {
            Ok(rest.split_at(n))
        }
    };
    let int = || -> DbResult<(i64, &'a [u8])> {
        let (b, r) = take(8)?;
        let u = u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Ok(((u ^ (1 << 63)) as i64, r))
    };
    Ok(match ty {
        SqlType::Bool => {
            let (b, r) = take(1)?;
            (Datum::Bool(b[0] != 0), r)
        }
        SqlType::Int2 => {
            let (v, r) = int()?;
            (Datum::Int2(v as i16), r)
        }
        SqlType::Int4 => {
            let (v, r) = int()?;
            (Datum::Int4(v as i32), r)
        }
        SqlType::Int8 => {
            let (v, r) = int()?;
            (Datum::Int8(v), r)
        }
        SqlType::Date => {
            let (v, r) = int()?;
            (Datum::Date(v as i32), r)
        }
        SqlType::Timestamp => {
            let (v, r) = int()?;
            (Datum::Timestamp(v), r)
        }
        SqlType::Timestamptz => {
            let (v, r) = int()?;
            (Datum::Timestamptz(v), r)
        }
        SqlType::Interval => {
            // the span (16 bytes) orders; the fields follow
            let (b, r) = take(32)?;
            let field = |at: usize, n: usize| -> u64 {
                b[at..at + n].iter().fold(0, |v, &x| v << 8 | x as u64)
            };
            (
                Datum::Interval {
                    months: (field(16, 4) as u32 ^ (1 << 31)) as i32,
                    days: (field(20, 4) as u32 ^ (1 << 31)) as i32,
                    micros: (field(24, 8) ^ (1 << 63)) as i64,
                },
                r,
            )
        }
        SqlType::Float4 | SqlType::Float8 => {
            let (b, r) = take(8)?;
            let bits = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            let bits = if bits >> 63 == 1 {
                bits ^ (1 << 63)
            } else {
                !bits
            };
            let v = f64::from_bits(bits);
            (
                if ty == SqlType::Float4 {
                    Datum::Float4(v as f32)
                } else {
                    Datum::Float8(v)
                },
                r,
            )
        }
        SqlType::Numeric(spec) => {
            let (b, r) = take(16)?;
            let u = u128::from_be_bytes(b.try_into().expect("16 bytes"));
            let (_, scale) = crate::datum::numeric_spec(spec);
            (
                Datum::Numeric {
                    unscaled: (u ^ (1 << 127)) as i128,
                    scale,
                },
                r,
            )
        }
        SqlType::Uuid => {
            let (b, r) = take(16)?;
            (Datum::Uuid(b.try_into().expect("16 bytes")), r)
        }
        SqlType::Text
        | SqlType::Varchar(_)
        | SqlType::Char(_)
        | SqlType::Json
        | SqlType::Jsonb
        | SqlType::Bytea => {
            let mut bytes = Vec::new();
            let mut i = 0;
            loop {
                let b = *rest.get(i).ok_or_else(corrupt)?;
                if b == 0 {
                    let next = *rest.get(i + 1).ok_or_else(corrupt)?;
                    if next == 0 {
                        i += 2;
                        break;
                    }
                    bytes.push(0);
                    i += 2;
                } else {
                    bytes.push(b);
                    i += 1;
                }
            }
            let d = match ty {
                SqlType::Bytea => Datum::Bytea(bytes),
                SqlType::Json | SqlType::Jsonb => {
                    Datum::Json(String::from_utf8(bytes).map_err(|_| corrupt())?)
                }
                _ => Datum::Text(String::from_utf8(bytes).map_err(|_| corrupt())?),
            };
            (d, &rest[i..])
        }
    })
}

/// Decodes a whole key of the given column types.
pub fn decode_key(types: &[SqlType], mut buf: &[u8]) -> DbResult<Vec<Datum>> {
    let mut out = Vec::with_capacity(types.len());
    for ty in types {
        let (d, rest) = decode_datum(*ty, buf)?;
        out.push(d);
        buf = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(d: Datum) -> Vec<u8> {
        encode_key(&[&d])
    }

    #[test]
    fn order_is_preserved() {
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ints.windows(2) {
            assert!(enc(Datum::Int8(w[0])) < enc(Datum::Int8(w[1])));
        }
        let floats = [f64::NEG_INFINITY, -2.5, -0.1, 0.0, 0.1, 3.0, f64::INFINITY];
        for w in floats.windows(2) {
            assert!(enc(Datum::Float8(w[0])) < enc(Datum::Float8(w[1])), "{w:?}");
        }
        let texts = ["", "a", "a\0", "a\0b", "ab", "b"];
        for w in texts.windows(2) {
            assert!(
                enc(Datum::Text(w[0].into())) < enc(Datum::Text(w[1].into())),
                "{w:?}"
            );
        }
        // intervals by length, a month being 30 days: -1 day < 2 hours < 1 day < 1 mon 1 day
        let iv = |months, days, micros| Datum::Interval {
            months,
            days,
            micros,
        };
        let intervals = [
            iv(0, -1, 0),
            iv(0, 0, 7_200_000_000),
            iv(0, 1, 0),
            iv(0, 29, 86_400_000_001),
            iv(1, 1, 0),
        ];
        for w in intervals.windows(2) {
            assert!(enc(w[0].clone()) < enc(w[1].clone()), "{w:?}");
        }
        // composite keys: first column dominates, prefix-free text encoding keeps it so
        let k1 = encode_key(&[&Datum::Text("a".into()), &Datum::Int4(9)]);
        let k2 = encode_key(&[&Datum::Text("ab".into()), &Datum::Int4(1)]);
        assert!(k1 < k2);
    }

    #[test]
    fn round_trip() {
        let types = [
            SqlType::Int4,
            SqlType::Text,
            SqlType::Numeric(Some((10, 2))),
            SqlType::Uuid,
            SqlType::Interval,
        ];
        let vals = vec![
            Datum::Int4(-3),
            Datum::Text("x\0y".into()),
            Datum::Numeric {
                unscaled: -1234,
                scale: 2,
            },
            Datum::Uuid([7; 16]),
            Datum::Interval {
                months: -14,
                days: 3,
                micros: -5_000_001,
            },
        ];
        let refs: Vec<&Datum> = vals.iter().collect();
        let key = encode_key(&refs);
        assert_eq!(decode_key(&types, &key).unwrap(), vals);
    }

    /// The on-disk format: these bytes must never change.
    #[test]
    fn format_is_stable() {
        assert_eq!(enc(Datum::Int4(1)), [1, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(Datum::Text("a\0".into())), [1, b'a', 0, 0xFF, 0, 0]);
        assert_eq!(enc(Datum::Null), [0]);
    }
}
