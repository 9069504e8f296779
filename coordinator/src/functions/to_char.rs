//! `to_char(value, template)` with Postgres' template patterns (not DataFusion's strftime
//! ones), for timestamps, timestamps with time zone (in the session's zone: the analyzer
//! relabels them, see `checked.rs`), dates, intervals and numbers.
//!
//! Date/time patterns: `HH HH12 HH24 MI SS MS US FF1…FF6 SSSS SSSSS AM PM A.M. P.M. Y,YYY
//! YYYY YYY YY Y IYYY IYY IY I BC AD B.C. A.D. MONTH Month month MON Mon mon MM DAY Day day
//! DY Dy dy DDD IDDD DD D ID W WW IW CC J Q RM TZ TZH TZM OF` (and the lower-case spellings
//! Postgres accepts), with the `FM` (no padding) and `TM` prefixes and the `TH`/`th`
//! (ordinal) suffix; `"quoted text"` is copied. Number patterns: `9 0 . , D G S MI PL SG PR
//! EEEE RN V TH FM`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, IntervalUnit};
use chrono::{DateTime, Datelike, Timelike};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use orochi_common::error::{DbError, SqlState};
use orochi_common::zone::Zone;
use orochi_worker::dferror::db_to_df;

pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ToChar {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToChar {
    signature: Signature,
}

fn supported(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Date64
            | DataType::Interval(IntervalUnit::MonthDayNano)
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Null
    )
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        "to_char"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !supported(&args[0])
            || !matches!(
                args[1],
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
            )
        {
            return Err(db_to_df(DbError::new(
                SqlState::UndefinedFunction,
                format!(
                    "function to_char({}, {}) does not exist",
                    type_name(&args[0]),
                    type_name(&args[1])
                ),
            )));
        }
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = args.number_rows;
        let values = args.args[0].to_array(n)?;
        let formats = arrow::compute::cast(&args.args[1].to_array(n)?, &DataType::Utf8)?;
        let formats = formats.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(n, n * 16);
        // the template, parsed again only when it changes from row to row
        let mut parsed: Option<Template> = None;
        for row in 0..n {
            if values.is_null(row) || formats.is_null(row) {
                out.append_null();
                continue;
            }
            let text = formats.value(row);
            let template = match parsed.take() {
                Some(t) if t.text == text => t,
                _ => Template::parse(text),
            };
            out.append_value(format_value(&values, row, &template)?);
            parsed = Some(template);
        }
        crate::checked::shaped_like_input(scalar, Arc::new(out.finish()))
    }
}

/// A type's name as an error message names it.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        other => other.to_string(),
    }
}

fn format_value(values: &ArrayRef, row: usize, template: &Template) -> Result<String> {
    use arrow::datatypes as t;
    let num = |n: Num| Ok(format_number(n, &template.num.0, template.num.1));
    match values.data_type() {
        DataType::Timestamp(_, tz) => {
            let micros = super::datetime::timestamp_micros(values.as_ref(), row)?;
            Ok(format_time(
                &Tm::of_timestamp(micros, tz.as_deref())?,
                &template.time,
            ))
        }
        DataType::Date32 => {
            let days = values.as_primitive::<t::Date32Type>().value(row) as i64;
            Ok(format_time(
                &Tm::of_timestamp(days * 86_400_000_000, None)?,
                &template.time,
            ))
        }
        DataType::Date64 => {
            let ms = values.as_primitive::<t::Date64Type>().value(row);
            Ok(format_time(
                &Tm::of_timestamp(ms * 1_000, None)?,
                &template.time,
            ))
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = values
                .as_primitive::<t::IntervalMonthDayNanoType>()
                .value(row);
            Ok(format_time(
                &Tm::of_interval(v.months, v.days, v.nanoseconds / 1_000),
                &template.time,
            ))
        }
        DataType::Int8 => num(Num::Int(
            values.as_primitive::<t::Int8Type>().value(row) as i128
        )),
        DataType::Int16 => num(Num::Int(
            values.as_primitive::<t::Int16Type>().value(row) as i128
        )),
        DataType::Int32 => num(Num::Int(
            values.as_primitive::<t::Int32Type>().value(row) as i128
        )),
        DataType::Int64 => num(Num::Int(
            values.as_primitive::<t::Int64Type>().value(row) as i128
        )),
        DataType::UInt8 => num(Num::Int(
            values.as_primitive::<t::UInt8Type>().value(row) as i128
        )),
        DataType::UInt16 => num(Num::Int(
            values.as_primitive::<t::UInt16Type>().value(row) as i128
        )),
        DataType::UInt32 => num(Num::Int(
            values.as_primitive::<t::UInt32Type>().value(row) as i128
        )),
        DataType::UInt64 => num(Num::Int(
            values.as_primitive::<t::UInt64Type>().value(row) as i128
        )),
        DataType::Float32 => num(Num::Float(
            values.as_primitive::<t::Float32Type>().value(row) as f64,
            6,
        )),
        DataType::Float64 => num(Num::Float(
            values.as_primitive::<t::Float64Type>().value(row),
            15,
        )),
        DataType::Decimal128(_, scale) => num(Num::Decimal(
            values.as_primitive::<t::Decimal128Type>().value(row),
            *scale as i32,
        )),
        other => Err(db_to_df(DbError::new(
            SqlState::UndefinedFunction,
            format!("function to_char({other}, text) does not exist"),
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// date/time

/// The fields a date/time template reads.
struct Tm {
    /// Astronomical year: 0 is 1 BC.
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micros: i64,
    /// Day of the year (1-based), day of the week (0 = Sunday).
    yday: i64,
    wday: i64,
    iso_year: i64,
    iso_week: i64,
    julian: i64,
    /// The zone's abbreviation and offset (seconds east), for a timestamp with time zone.
    zone: Option<(String, i32)>,
    interval: bool,
}

impl Tm {
    fn of_timestamp(utc_micros: i64, tz: Option<&str>) -> Result<Tm> {
        let (local, zone) = match tz {
            None => (utc_micros, None),
            Some(label) => {
                let z = Zone::from_arrow(label);
                let offset = z.offset_at(utc_micros);
                let abbrev = match z {
                    Zone::Named(tz) => {
                        DateTime::from_timestamp_micros(utc_micros).map_or_else(String::new, |dt| {
                            use chrono::TimeZone;
                            tz.offset_from_utc_datetime(&dt.naive_utc()).to_string()
                        })
                    }
                    Zone::Fixed(_) => offset_text(offset, false),
                };
                (
                    utc_micros + offset as i64 * 1_000_000,
                    Some((abbrev, offset)),
                )
            }
        };
        let dt = DateTime::from_timestamp_micros(local)
            .ok_or_else(|| {
                db_to_df(DbError::new(
                    SqlState::DatetimeFieldOverflow,
                    "timestamp out of range",
                ))
            })?
            .naive_utc();
        let date = dt.date();
        let iso = date.iso_week();
        Ok(Tm {
            year: date.year() as i64,
            month: date.month() as i64,
            day: date.day() as i64,
            hour: dt.hour() as i64,
            minute: dt.minute() as i64,
            second: dt.second() as i64,
            micros: (dt.nanosecond() / 1_000) as i64,
            yday: date.ordinal() as i64,
            wday: date.weekday().num_days_from_sunday() as i64,
            iso_year: iso.year() as i64,
            iso_week: iso.week() as i64,
            julian: date.num_days_from_ce() as i64 + 1_721_425,
            zone,
            interval: false,
        })
    }

    fn of_interval(months: i32, days: i32, micros: i64) -> Tm {
        let secs = micros / 1_000_000;
        Tm {
            year: (months / 12) as i64,
            month: (months % 12) as i64,
            day: days as i64,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            micros: micros % 1_000_000,
            yday: 0,
            wday: 0,
            iso_year: 0,
            iso_week: 0,
            julian: 0,
            zone: None,
            interval: true,
        }
    }

    /// The year as written with an era (1 BC is year 0).
    fn year_abs(&self) -> i64 {
        if self.year <= 0 && !self.interval {
            1 - self.year
        } else {
            self.year
        }
    }
}

/// `±HH` or `±HH:MM`.
fn offset_text(offset: i32, always_minutes: bool) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.abs();
    let (h, m) = (abs / 3600, abs % 3600 / 60);
    if m != 0 || always_minutes {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}")
    }
}

const DATE_KEYWORDS: &[&str] = &[
    "A.D.", "A.M.", "AD", "AM", "B.C.", "BC", "CC", "DAY", "DDD", "DD", "DY", "Day", "Dy", "D",
    "FF1", "FF2", "FF3", "FF4", "FF5", "FF6", "FX", "HH24", "HH12", "HH", "IDDD", "ID", "IW",
    "IYYY", "IYY", "IY", "I", "J", "MI", "MM", "MONTH", "MON", "MS", "Month", "Mon", "OF", "P.M.",
    "PM", "Q", "RM", "SSSSS", "SSSS", "SS", "TZH", "TZM", "TZ", "US", "WW", "W", "Y,YYY", "YYYY",
    "YYY", "YY", "Y", "a.d.", "a.m.", "ad", "am", "b.c.", "bc", "cc", "day", "ddd", "dd", "dy",
    "d", "ff1", "ff2", "ff3", "ff4", "ff5", "ff6", "fx", "hh24", "hh12", "hh", "iddd", "id", "iw",
    "iyyy", "iyy", "iy", "i", "j", "mi", "mm", "month", "mon", "ms", "of", "p.m.", "pm", "q", "rm",
    "sssss", "ssss", "ss", "tz", "us", "ww", "w", "y,yyy", "yyyy", "yyy", "yy", "y",
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const ROMAN_MONTHS: [&str; 12] = [
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
];

/// The keyword of `list` at the start of `s`, longest first.
fn keyword_at<'a>(s: &str, list: &[&'a str]) -> Option<&'a str> {
    list.iter()
        .filter(|k| s.starts_with(**k))
        .max_by_key(|k| k.len())
        .copied()
}

/// English ordinal suffix of `n`.
fn ordinal(n: i64, upper: bool) -> &'static str {
    let n = n.abs();
    let s = if (11..=13).contains(&(n % 100)) {
        "th"
    } else {
        match n % 10 {
            1 => "st",
            2 => "nd",
            3 => "rd",
            _ => "th",
        }
    };
    if upper {
        match s {
            "st" => "ST",
            "nd" => "ND",
            "rd" => "RD",
            _ => "TH",
        }
    } else {
        s
    }
}

/// Copies a quoted literal (after its opening quote) or an escaped character; returns the
/// bytes consumed.
fn literal(rest: &str, out: &mut String) -> usize {
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return i + 1,
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => return i + 1,
            },
            c => out.push(c),
        }
    }
    rest.len()
}

/// Postgres' case of a name pattern: `MONTH` upper, `Month` as is, `month` lower.
fn cased(name: &str, keyword: &str) -> String {
    let mut chars = keyword.chars();
    let first_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    let second_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
    match (first_upper, second_upper) {
        (true, true) => name.to_ascii_uppercase(),
        (true, false) => name.to_string(),
        _ => name.to_ascii_lowercase(),
    }
}

/// A date/time template, parsed: literal text and patterns.
enum Piece {
    Text(String),
    Field {
        kw: &'static str,
        /// `kw` in upper case (what the pattern is, whatever its spelling).
        upper: String,
        fm: bool,
        /// An ordinal suffix, upper-case or not.
        th: Option<bool>,
    },
}

/// A template parsed both ways (which one applies depends on the value's type), once per
/// distinct template rather than once per row.
struct Template {
    text: String,
    time: Vec<Piece>,
    num: (Vec<NumTok>, bool),
}

impl Template {
    fn parse(text: &str) -> Template {
        Template {
            text: text.to_string(),
            time: time_pieces(text),
            num: num_tokens(text),
        }
    }
}

fn time_pieces(template: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut out = String::new();
    let mut i = 0;
    while i < template.len() {
        let rest = &template[i..];
        // prefixes
        let mut fm = false;
        let mut j = 0;
        loop {
            let r = &rest[j..];
            if r.starts_with("FM") || r.starts_with("fm") {
                fm = true;
                j += 2;
            } else if r.starts_with("TM") || r.starts_with("tm") {
                j += 2;
            } else {
                break;
            }
        }
        let Some(kw) = keyword_at(&rest[j..], DATE_KEYWORDS) else {
            if j > 0 {
                i += j; // a prefix before something that is not a pattern
                continue;
            }
            let c = rest.chars().next().expect("not at the end");
            i += c.len_utf8();
            match c {
                '"' => i += literal(&template[i..], &mut out),
                '\\' if template[i..].starts_with('"') => {
                    out.push('"');
                    i += 1;
                }
                c => out.push(c),
            }
            continue;
        };
        i += j + kw.len();
        let th = if template[i..].starts_with("TH") {
            i += 2;
            Some(true)
        } else if template[i..].starts_with("th") {
            i += 2;
            Some(false)
        } else {
            if template[i..].starts_with("SP") || template[i..].starts_with("sp") {
                i += 2;
            }
            None
        };
        if !out.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut out)));
        }
        pieces.push(Piece::Field {
            kw,
            upper: kw.to_ascii_uppercase(),
            fm,
            th,
        });
    }
    if !out.is_empty() {
        pieces.push(Piece::Text(out));
    }
    pieces
}

fn format_time(tm: &Tm, pieces: &[Piece]) -> String {
    let mut out = String::with_capacity(32);
    for piece in pieces {
        let (kw, upper, fm, th) = match piece {
            Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            Piece::Field { kw, upper, fm, th } => (*kw, upper.as_str(), *fm, *th),
        };
        let mut number = |v: i64, width: usize| {
            if fm {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&format!("{v:0width$}"));
            }
            if let Some(upper) = th {
                out.push_str(ordinal(v, upper));
            }
        };
        match upper {
            "A.D." | "B.C." | "AD" | "BC" => {
                let bc = tm.year <= 0 && !tm.interval;
                let text = match (kw.len() == 4, bc) {
                    (true, false) => "A.D.",
                    (true, true) => "B.C.",
                    (false, false) => "AD",
                    (false, true) => "BC",
                };
                out.push_str(&cased(text, kw));
            }
            "A.M." | "P.M." | "AM" | "PM" => {
                let pm = tm.hour % 24 >= 12;
                let text = match (kw.len() == 4, pm) {
                    (true, false) => "A.M.",
                    (true, true) => "P.M.",
                    (false, false) => "AM",
                    (false, true) => "PM",
                };
                out.push_str(&cased(text, kw));
            }
            "CC" => {
                let cc = if tm.interval {
                    tm.year / 100
                } else if tm.year > 0 {
                    (tm.year - 1) / 100 + 1
                } else {
                    -((1 - tm.year - 1) / 100 + 1)
                };
                number(cc, 2)
            }
            "DAY" | "DY" => {
                let name = if tm.interval {
                    ""
                } else {
                    DAYS[tm.wday as usize]
                };
                let name = if upper == "DY" {
                    &name[..name.len().min(3)]
                } else {
                    name
                };
                let text = cased(name, kw);
                if fm || upper == "DY" {
                    out.push_str(&text);
                } else {
                    out.push_str(&format!("{text:<9}"));
                }
            }
            "MONTH" | "MON" => {
                let name = if (1..=12).contains(&tm.month) {
                    MONTHS[tm.month as usize - 1]
                } else {
                    ""
                };
                let name = if upper == "MON" {
                    &name[..name.len().min(3)]
                } else {
                    name
                };
                let text = cased(name, kw);
                if fm || upper == "MON" {
                    out.push_str(&text);
                } else {
                    out.push_str(&format!("{text:<9}"));
                }
            }
            "RM" => {
                let name = if (1..=12).contains(&tm.month) {
                    ROMAN_MONTHS[tm.month as usize - 1]
                } else {
                    ""
                };
                let text = if kw == "rm" {
                    name.to_ascii_lowercase()
                } else {
                    name.to_string()
                };
                if fm {
                    out.push_str(&text);
                } else {
                    out.push_str(&format!("{text:<4}"));
                }
            }
            "DDD" => number(tm.yday, 3),
            "DD" => number(tm.day, 2),
            "D" => number(tm.wday + 1, 1),
            "ID" => number(if tm.wday == 0 { 7 } else { tm.wday }, 1),
            "IDDD" => {
                let iso_wday = if tm.wday == 0 { 7 } else { tm.wday };
                number((tm.iso_week - 1) * 7 + iso_wday, 3)
            }
            "FX" => {}
            "HH" | "HH12" => {
                let h = tm.hour % 12;
                number(if h == 0 { 12 } else { h }, 2)
            }
            "HH24" => number(tm.hour, 2),
            "MI" => number(tm.minute, 2),
            "SS" => number(tm.second, 2),
            "MS" => number(tm.micros / 1000, 3),
            "US" => number(tm.micros, 6),
            "SSSS" | "SSSSS" => number(tm.hour * 3600 + tm.minute * 60 + tm.second, 0),
            "IW" => number(tm.iso_week, 2),
            "IYYY" => number(tm.iso_year, 4),
            "IYY" => number(tm.iso_year % 1000, 3),
            "IY" => number(tm.iso_year % 100, 2),
            "I" => number(tm.iso_year % 10, 1),
            "J" => number(tm.julian, 0),
            "MM" => number(tm.month, 2),
            "Q" => number((tm.month - 1) / 3 + 1, 0),
            "WW" => number((tm.yday - 1) / 7 + 1, 2),
            "W" => number((tm.day - 1) / 7 + 1, 0),
            "Y,YYY" => {
                let y = tm.year_abs();
                out.push_str(&format!("{},{:03}", y / 1000, y % 1000));
                if let Some(upper) = th {
                    out.push_str(ordinal(y, upper));
                }
            }
            "YYYY" => number(tm.year_abs(), 4),
            "YYY" => number(tm.year_abs() % 1000, 3),
            "YY" => number(tm.year_abs() % 100, 2),
            "Y" => number(tm.year_abs() % 10, 1),
            "TZ" => {
                if let Some((abbrev, _)) = &tm.zone {
                    out.push_str(&if kw == "tz" {
                        abbrev.to_ascii_lowercase()
                    } else {
                        abbrev.clone()
                    });
                }
            }
            "TZH" => {
                let o = tm.zone.as_ref().map_or(0, |z| z.1);
                let sign = if o < 0 { '-' } else { '+' };
                out.push_str(&format!("{sign}{:02}", o.abs() / 3600));
            }
            "TZM" => {
                let o = tm.zone.as_ref().map_or(0, |z| z.1);
                out.push_str(&format!("{:02}", o.abs() % 3600 / 60));
            }
            "OF" => out.push_str(&offset_text(tm.zone.as_ref().map_or(0, |z| z.1), false)),
            ff if ff.starts_with("FF") => {
                let digits: u32 = ff[2..].parse().unwrap_or(6);
                let v = tm.micros / 10_i64.pow(6 - digits);
                out.push_str(&format!("{v:0width$}", width = digits as usize));
            }
            _ => out.push_str(kw),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// numbers

enum Num {
    Int(i128),
    /// The value and the most significant digits it has (6 for real, 15 for double).
    Float(f64, usize),
    /// Unscaled value and scale.
    Decimal(i128, i32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumTok {
    Nine,
    Zero,
    Point,
    Group,
    S,
    Mi,
    Pl,
    Sg,
    Pr,
    Eeee,
    Rn(bool),
    V,
    Th(bool),
    Char(char),
}

/// The digits of `|n|` rounded to `post` decimals: (integer digits, `post` fraction digits).
fn digits(n: &Num, post: usize) -> (bool, String, String) {
    let (negative, int, frac) = match n {
        Num::Int(v) => (*v < 0, v.unsigned_abs().to_string(), String::new()),
        Num::Float(v, max) => {
            // the shortest digits that read back as the value, rounded as a numeric would
            // be (a literal like 0.5 is a numeric in Postgres), to at most `max` significant
            // digits as Postgres limits a float's
            let s = if v.is_finite() {
                format!("{}", v.abs())
            } else {
                "0".into()
            };
            let (i, f) = s.split_once('.').unwrap_or((&s, ""));
            let int_len = i.trim_start_matches('0').len().max(1);
            let limit = max.saturating_sub(int_len);
            let f = &f[..f.len().min(limit)];
            (
                v.is_sign_negative() && *v != 0.0,
                i.to_string(),
                f.to_string(),
            )
        }
        Num::Decimal(v, scale) => {
            let abs = v.unsigned_abs().to_string();
            let scale = (*scale).max(0) as usize;
            let abs = format!("{abs:0>width$}", width = scale + 1);
            let (i, f) = abs.split_at(abs.len() - scale);
            (*v < 0, i.to_string(), f.to_string())
        }
    };
    // round (half away from zero) or extend the fraction to `post` digits
    let (mut int, mut frac) = (int.into_bytes(), frac.into_bytes());
    if frac.len() > post {
        let up = frac[post] >= b'5';
        frac.truncate(post);
        if up {
            let mut carry = true;
            for d in frac.iter_mut().rev().chain(int.iter_mut().rev()) {
                if *d == b'9' {
                    *d = b'0';
                } else {
                    *d += 1;
                    carry = false;
                    break;
                }
            }
            if carry {
                int.insert(0, b'1');
            }
        }
    }
    frac.resize(post, b'0');
    let mut int = String::from_utf8(int).expect("digits");
    let frac = String::from_utf8(frac).expect("digits");
    let trimmed = int.trim_start_matches('0').to_string();
    int = trimmed;
    let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
    (negative && !zero, int, frac)
}

fn roman(mut n: i128) -> Option<String> {
    if !(1..=3999).contains(&n) {
        return None;
    }
    let table = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut out = String::new();
    for (v, s) in table {
        while n >= v {
            out.push_str(s);
            n -= v;
        }
    }
    Some(out)
}

fn num_tokens(template: &str) -> (Vec<NumTok>, bool) {
    let mut toks = Vec::new();
    let mut fm = false;
    let mut i = 0;
    let b = template.as_bytes();
    while i < b.len() {
        let rest = &template[i..];
        let up = |s: &str| rest.len() >= s.len() && rest[..s.len()].eq_ignore_ascii_case(s);
        let (tok, len) = if up("FM") {
            fm = true;
            i += 2;
            continue;
        } else if up("EEEE") {
            (NumTok::Eeee, 4)
        } else if up("MI") {
            (NumTok::Mi, 2)
        } else if up("PL") {
            (NumTok::Pl, 2)
        } else if up("SG") {
            (NumTok::Sg, 2)
        } else if up("PR") {
            (NumTok::Pr, 2)
        } else if up("RN") {
            (NumTok::Rn(rest.starts_with('r')), 2)
        } else if up("TH") {
            (NumTok::Th(rest.starts_with('T')), 2)
        } else {
            let c = rest.chars().next().expect("not at the end");
            let tok = match c {
                '9' => NumTok::Nine,
                '0' => NumTok::Zero,
                '.' | 'D' | 'd' => NumTok::Point,
                ',' | 'G' | 'g' => NumTok::Group,
                'S' | 's' => NumTok::S,
                'V' | 'v' => NumTok::V,
                '"' => {
                    let mut lit = String::new();
                    let used = literal(&template[i + 1..], &mut lit);
                    toks.extend(lit.chars().map(NumTok::Char));
                    i += 1 + used;
                    continue;
                }
                c => NumTok::Char(c),
            };
            (tok, c.len_utf8())
        };
        toks.push(tok);
        i += len;
    }
    (toks, fm)
}

fn format_number(n: Num, toks: &[NumTok], fm: bool) -> String {
    if let Some(lower) = toks.iter().find_map(|t| match t {
        NumTok::Rn(lower) => Some(*lower),
        _ => None,
    }) {
        let (negative, int, _) = digits(&n, 0);
        let value = int.parse::<i128>().ok().filter(|_| !negative);
        let text = match value.and_then(roman) {
            Some(r) if lower => r.to_ascii_lowercase(),
            Some(r) => r,
            None => "#".repeat(15),
        };
        return if fm { text } else { format!("{text:>15}") };
    }
    // digit positions before and after the decimal point, and after V (a multiplier)
    let (mut pre, mut post, mut multi) = (0usize, 0usize, 0u32);
    let mut zero_start = None;
    let (mut point, mut v) = (false, false);
    for t in toks {
        match t {
            NumTok::Nine | NumTok::Zero if v => multi += 1,
            NumTok::Nine | NumTok::Zero if point => post += 1,
            NumTok::Nine | NumTok::Zero => {
                pre += 1;
                if *t == NumTok::Zero && zero_start.is_none() {
                    zero_start = Some(pre);
                }
            }
            NumTok::Point => point = true,
            NumTok::V => v = true,
            _ => {}
        }
    }
    let n = if multi > 0 {
        let scale = 10i128.pow(multi);
        match n {
            Num::Int(v) => Num::Int(v.saturating_mul(scale)),
            Num::Float(v, max) => Num::Float(v * scale as f64, max),
            Num::Decimal(v, s) => Num::Decimal(v.saturating_mul(scale), s),
        }
    } else {
        n
    };
    if toks.contains(&NumTok::Eeee) {
        return format_eeee(&n, post, fm);
    }
    let (negative, mut int, frac) = digits(&n, post);
    let pre = pre + multi as usize;
    // (a zero integer part takes a position too)
    let overflow = int.len().max(1) > pre;
    // fill mode drops the trailing zeros of 9 positions after the point
    let frac_kinds: Vec<NumTok> = toks
        .iter()
        .skip_while(|t| **t != NumTok::Point)
        .filter(|t| matches!(t, NumTok::Nine | NumTok::Zero))
        .copied()
        .collect();
    let mut keep_frac = post;
    if fm {
        while keep_frac > 0
            && frac.as_bytes()[keep_frac - 1] == b'0'
            && frac_kinds[keep_frac - 1] == NumTok::Nine
        {
            keep_frac -= 1;
        }
    }
    // a zero integer part shows its 0 unless digits after the point follow it
    if int.is_empty() && (post == 0 || keep_frac == 0) && pre > 0 {
        int.push('0');
    }
    let first_digit = pre - int.len().min(pre);
    let mut out = String::new();
    // where the number begins (its first digit, zero or point), for a floating sign
    let mut number_start: Option<usize> = None;
    let (mut pos, mut frac_pos) = (0, 0);
    let (mut point, mut digits_done) = (false, false);
    let mut leading_s = false;
    for (i, t) in toks.iter().enumerate() {
        let digits_after = toks[i + 1..]
            .iter()
            .any(|t| matches!(t, NumTok::Nine | NumTok::Zero | NumTok::Point));
        match t {
            NumTok::Nine | NumTok::Zero if !point => {
                pos += 1;
                let c = if overflow {
                    Some('#')
                } else if pos > first_digit {
                    Some(int.as_bytes()[pos - first_digit - 1] as char)
                } else if zero_start.is_some_and(|z| pos >= z) {
                    Some('0')
                } else {
                    None
                };
                match c {
                    Some(c) => {
                        number_start.get_or_insert(out.len());
                        out.push(c);
                    }
                    None if !fm => out.push(' '),
                    None => {}
                }
            }
            NumTok::Nine | NumTok::Zero => {
                frac_pos += 1;
                if overflow {
                    out.push('#');
                } else if frac_pos <= keep_frac {
                    out.push(frac.as_bytes()[frac_pos - 1] as char);
                }
            }
            NumTok::Point => {
                point = true;
                // (a point without digit positions after it is not shown)
                if post > 0 || overflow {
                    number_start.get_or_insert(out.len());
                    out.push('.');
                }
            }
            NumTok::V => {}
            NumTok::Group => {
                if number_start.is_some() {
                    out.push(',');
                } else if !fm {
                    out.push(' ');
                }
            }
            NumTok::S if digits_after && !digits_done => leading_s = true,
            NumTok::S => out.push(if negative { '-' } else { '+' }),
            NumTok::Mi => {
                if negative {
                    out.push('-');
                } else if !fm {
                    out.push(' ');
                }
            }
            NumTok::Pl => {
                if !negative {
                    out.push('+');
                } else if !fm {
                    out.push(' ');
                }
            }
            NumTok::Sg => out.push(if negative { '-' } else { '+' }),
            NumTok::Pr => {
                if negative {
                    out.push('>');
                } else if !fm {
                    out.push(' ');
                }
            }
            NumTok::Th(upper) => {
                if !negative && !overflow {
                    out.push_str(ordinal(int.parse::<i64>().unwrap_or(0), *upper));
                }
            }
            NumTok::Char(c) => out.push(*c),
            NumTok::Eeee | NumTok::Rn(_) => {}
        }
        if !digits_after {
            digits_done = true;
        }
    }
    // the sign: before the number, in a place of its own, unless a pattern put it elsewhere
    let positional = toks.iter().any(|t| matches!(t, NumTok::Mi | NumTok::Sg))
        || (toks.contains(&NumTok::S) && !leading_s);
    let start = number_start.unwrap_or(out.len());
    if toks.contains(&NumTok::Pr) {
        if negative {
            out.insert(start, '<');
        } else if !fm {
            out.insert(start, ' ');
        }
    } else if leading_s {
        out.insert(start, if negative { '-' } else { '+' });
    } else if !positional {
        if negative {
            out.insert(start, '-');
        } else if !fm {
            out.insert(start, ' ');
        }
    }
    out
}

fn format_eeee(n: &Num, post: usize, fm: bool) -> String {
    let v = match n {
        Num::Int(v) => *v as f64,
        Num::Float(v, _) => *v,
        Num::Decimal(v, s) => *v as f64 / 10f64.powi(*s),
    };
    let s = format!("{:.*e}", post, v.abs());
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if v < 0.0 {
        "-"
    } else if fm {
        ""
    } else {
        " "
    };
    format!(
        "{sign}{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_as_postgres_prints_them() {
        let cases = [
            (Num::Int(5), "999", "   5"),
            (Num::Int(-5), "999", "  -5"),
            (Num::Int(-5), "FM999", "-5"),
            (Num::Int(5), "000", " 005"),
            (Num::Int(1234), "9,999", " 1,234"),
            (Num::Decimal(12345, 1), "9999.99", " 1234.50"),
            (Num::Decimal(12345, 1), "FM9999.99", "1234.5"),
            (Num::Decimal(-125, 3), "FM9.99", "-.13"),
            (Num::Float(0.5, 15), "9.99", "  .50"),
            (Num::Int(12345), "999", " ###"),
            (Num::Int(-12), "999PR", " <12>"),
            (Num::Int(1994), "RN", "        MCMXCIV"),
        ];
        for (n, f, want) in cases {
            let (toks, fm) = num_tokens(f);
            assert_eq!(format_number(n, &toks, fm), want, "{f}");
        }
    }
}
