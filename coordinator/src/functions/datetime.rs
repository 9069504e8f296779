//! Postgres' interval functions DataFusion lacks: `justify_hours`, `justify_days`,
//! `justify_interval`, and `age(timestamp, timestamp)` / `age(timestamp)` (the symbolic
//! difference in years, months and days, as Postgres computes it; a `timestamptz` in the
//! session's zone: the analyzer relabels it, see `checked.rs`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, IntervalMonthDayNanoBuilder};
use arrow::datatypes::{DataType, IntervalMonthDayNano, IntervalUnit};
use chrono::{DateTime, Datelike, Timelike};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use orochi_common::error::{DbError, SqlState};
use orochi_common::interval::Interval;
use orochi_common::zone::Zone;
use orochi_worker::dferror::db_to_df;

const DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    JustifyHours,
    JustifyDays,
    JustifyInterval,
    Age,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalFunction {
    kind: Kind,
    signature: Signature,
}

pub fn udfs() -> Vec<ScalarUDF> {
    let mut out: Vec<ScalarUDF> = [Kind::JustifyHours, Kind::JustifyDays, Kind::JustifyInterval]
        .into_iter()
        .map(|kind| {
            ScalarUDF::new_from_impl(IntervalFunction {
                kind,
                signature: Signature::any(1, Volatility::Immutable),
            })
        })
        .collect();
    out.push(ScalarUDF::new_from_impl(IntervalFunction {
        kind: Kind::Age,
        // age(t) reads the current date
        signature: Signature::variadic_any(Volatility::Stable),
    }));
    out
}

fn interval_type() -> DataType {
    DataType::Interval(IntervalUnit::MonthDayNano)
}

impl ScalarUDFImpl for IntervalFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::JustifyHours => "justify_hours",
            Kind::JustifyDays => "justify_days",
            Kind::JustifyInterval => "justify_interval",
            Kind::Age => "age",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let ok = match self.kind {
            Kind::Age => {
                (1..=2).contains(&args.len())
                    && args
                        .iter()
                        .all(|t| matches!(t, DataType::Timestamp(..) | DataType::Date32))
            }
            _ => {
                args.len() == 1 && matches!(args[0], DataType::Interval(_) | DataType::Duration(_))
            }
        };
        if !ok {
            let types: Vec<String> = args.iter().map(|t| t.to_string()).collect();
            return Err(db_to_df(DbError::new(
                SqlState::UndefinedFunction,
                format!(
                    "function {}({}) does not exist",
                    self.name(),
                    types.join(", ")
                ),
            )));
        }
        Ok(interval_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<_>>()?;
        let mut out = IntervalMonthDayNanoBuilder::with_capacity(n);
        for r in 0..n {
            if arrays.iter().any(|a| a.is_null(r)) {
                out.append_null();
                continue;
            }
            let i = match self.kind {
                Kind::Age => {
                    let later = if arrays.len() == 2 {
                        local_micros(&arrays[0], r)?
                    } else {
                        // midnight of the current date, in the session's zone
                        let zone = args
                            .config_options
                            .execution
                            .time_zone
                            .as_deref()
                            .map_or(Zone::UTC, Zone::from_arrow);
                        let now = chrono::Utc::now().timestamp_micros();
                        let local = now + zone.offset_at(now) as i64 * 1_000_000;
                        local.div_euclid(DAY) * DAY
                    };
                    age(later, local_micros(arrays.last().expect("an argument"), r)?)
                }
                kind => {
                    let i = crate::pgwire::encode::interval_at(arrays[0].as_ref(), r)
                        .map_err(db_to_df)?;
                    match kind {
                        Kind::JustifyHours => justify_hours(i),
                        Kind::JustifyDays => justify_days(i),
                        _ => justify_interval(i),
                    }
                }
            };
            out.append_value(IntervalMonthDayNano::new(
                i.months,
                i.days,
                i.micros.saturating_mul(1_000),
            ));
        }
        crate::checked::shaped_like_input(scalar, Arc::new(out.finish()))
    }
}

/// A timestamp (or date) value as µs of its wall clock: a timestamptz in the zone it is
/// labelled with.
fn local_micros(a: &ArrayRef, r: usize) -> Result<i64> {
    Ok(match a.data_type() {
        DataType::Date32 => a.as_primitive::<arrow::datatypes::Date32Type>().value(r) as i64 * DAY,
        DataType::Timestamp(_, tz) => {
            let v = timestamp_micros(a, r)?;
            match tz {
                Some(label) => v + Zone::from_arrow(label).offset_at(v) as i64 * 1_000_000,
                None => v,
            }
        }
        other => {
            return Err(db_to_df(DbError::internal(format!(
                "age of a {other} value"
            ))));
        }
    })
}

/// Row `r` of a timestamp array of any unit, in µs since the epoch (UTC for a timestamptz).
pub(super) fn timestamp_micros(a: &dyn Array, r: usize) -> Result<i64> {
    match orochi_common::datum::Datum::from_arrow(a, r, orochi_common::types::SqlType::Timestamp)
        .map_err(db_to_df)?
    {
        orochi_common::datum::Datum::Timestamp(v) | orochi_common::datum::Datum::Timestamptz(v) => {
            Ok(v)
        }
        other => Err(db_to_df(DbError::internal(format!(
            "{other:?} is not a timestamp"
        )))),
    }
}

/// Makes the signs of days and time agree, borrowing a day.
fn borrow_day(days: &mut i64, micros: &mut i64) {
    if *days > 0 && *micros < 0 {
        *micros += DAY;
        *days -= 1;
    } else if *days < 0 && *micros > 0 {
        *micros -= DAY;
        *days += 1;
    }
}

/// Makes the sign of months agree with the days (and the time), borrowing a month of 30 days.
fn borrow_month(months: &mut i64, days: &mut i64, micros: i64) {
    if *months > 0 && (*days < 0 || (*days == 0 && micros < 0)) {
        *days += 30;
        *months -= 1;
    } else if *months < 0 && (*days > 0 || (*days == 0 && micros > 0)) {
        *days -= 30;
        *months += 1;
    }
}

/// An interval of these (clamped) fields.
fn fields(months: i64, days: i64, micros: i64) -> Interval {
    let clamp = |v: i64| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    Interval {
        months: clamp(months),
        days: clamp(days),
        micros,
    }
}

/// Whole days of the time part move into days (the signs of the two then agree).
fn justify_hours(i: Interval) -> Interval {
    let mut days = i.days as i64 + i.micros / DAY;
    let mut micros = i.micros % DAY;
    borrow_day(&mut days, &mut micros);
    fields(i.months as i64, days, micros)
}

/// Whole 30-day periods of the days move into months (the signs then agree).
fn justify_days(i: Interval) -> Interval {
    let mut months = i.months as i64 + i.days as i64 / 30;
    let mut days = i.days as i64 % 30;
    borrow_month(&mut months, &mut days, i.micros);
    fields(months, days, i.micros)
}

/// Both, as Postgres' `justify_interval` does: the signs of months, days and time agree.
fn justify_interval(i: Interval) -> Interval {
    let mut days = i.days as i64 + i.micros / DAY;
    let mut micros = i.micros % DAY;
    let mut months = i.months as i64 + days / 30;
    days %= 30;
    borrow_month(&mut months, &mut days, micros);
    borrow_day(&mut days, &mut micros);
    fields(months, days, micros)
}

fn days_in_month(year: i32, month: u32) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if leap => 29,
        _ => 28,
    }
}

/// `age(later, earlier)`: field by field, negative fields borrowed from the next larger one
/// (a month borrowed as the days of the earlier timestamp's month), as Postgres computes it.
fn age(t1: i64, t2: i64) -> Interval {
    let (Some(a), Some(b)) = (
        DateTime::from_timestamp_micros(t1),
        DateTime::from_timestamp_micros(t2),
    ) else {
        return Interval::default();
    };
    let (a, b) = (a.naive_utc(), b.naive_utc());
    let flip = t1 < t2;
    let sign = if flip { -1 } else { 1 };
    let micros_of = |t: &chrono::NaiveDateTime| (t.nanosecond() / 1_000) as i64;
    let mut fsec = sign * (micros_of(&a) - micros_of(&b));
    let mut sec = sign * (a.second() as i64 - b.second() as i64);
    let mut min = sign * (a.minute() as i64 - b.minute() as i64);
    let mut hour = sign * (a.hour() as i64 - b.hour() as i64);
    let mut mday = sign * (a.day() as i64 - b.day() as i64);
    let mut mon = sign * (a.month() as i64 - b.month() as i64);
    let mut year = sign * (a.year() as i64 - b.year() as i64);
    while fsec < 0 {
        fsec += 1_000_000;
        sec -= 1;
    }
    while sec < 0 {
        sec += 60;
        min -= 1;
    }
    while min < 0 {
        min += 60;
        hour -= 1;
    }
    while hour < 0 {
        hour += 24;
        mday -= 1;
    }
    while mday < 0 {
        let (y, m) = if flip {
            (a.year(), a.month())
        } else {
            (b.year(), b.month())
        };
        mday += days_in_month(y, m);
        mon -= 1;
    }
    while mon < 0 {
        mon += 12;
        year -= 1;
    }
    Interval {
        months: (sign * (year * 12 + mon)) as i32,
        days: (sign * mday) as i32,
        micros: sign * (((hour * 60 + min) * 60 + sec) * 1_000_000 + fsec),
    }
}
