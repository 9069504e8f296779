//! Postgres' `interval`: months, days and microseconds, kept apart (a month is not a fixed
//! number of days, nor a day of hours, across daylight saving time). Text input in Postgres'
//! syntax (`1 year 2 mons 3 days 04:05:06.5`, `-1 day +02:00`, `90 minutes`, `1.5 hours`,
//! `@ 3 days ago`, ISO 8601 `P1Y2M3DT4H5M6S`) and output in its default `IntervalStyle`
//! (`postgres`).

use crate::error::{DbError, DbResult, SqlState};

/// An interval's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

const MICROS_PER_DAY: f64 = 86_400_000_000.0;

fn bad(s: &str) -> DbError {
    DbError::new(
        SqlState::InvalidDatetimeFormat,
        format!("invalid input syntax for type interval: \"{s}\""),
    )
}

fn out_of_range() -> DbError {
    DbError::new(SqlState::DatetimeFieldOverflow, "interval out of range")
}

/// Accumulates fields, with fractions cascading down as Postgres does (a fraction of a month
/// is days of 30, a fraction of a day is hours of 24).
#[derive(Default)]
struct Acc {
    months: f64,
    days: f64,
    micros: f64,
}

impl Acc {
    fn add(&mut self, value: f64, unit: &str) -> Option<()> {
        let (months, days, micros) = match unit {
            "microsecond" | "microseconds" | "us" | "usec" | "usecs" | "useconds" => {
                (0.0, 0.0, value)
            }
            "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" | "mseconds" => {
                (0.0, 0.0, value * 1e3)
            }
            "second" | "seconds" | "s" | "sec" | "secs" => (0.0, 0.0, value * 1e6),
            "minute" | "minutes" | "m" | "min" | "mins" => (0.0, 0.0, value * 6e7),
            "hour" | "hours" | "h" | "hr" | "hrs" => (0.0, 0.0, value * 3.6e9),
            "day" | "days" | "d" => (0.0, value, 0.0),
            "week" | "weeks" | "w" => (0.0, value * 7.0, 0.0),
            "month" | "months" | "mon" | "mons" => (value, 0.0, 0.0),
            "year" | "years" | "y" | "yr" | "yrs" => (value * 12.0, 0.0, 0.0),
            "decade" | "decades" => (value * 120.0, 0.0, 0.0),
            "century" | "centuries" | "c" => (value * 1200.0, 0.0, 0.0),
            "millennium" | "millennia" | "millenniums" => (value * 12000.0, 0.0, 0.0),
            _ => return None,
        };
        // fractions of months and days cascade down
        let whole_months = months.trunc();
        let days = days + (months - whole_months) * 30.0;
        let whole_days = days.trunc();
        self.months += whole_months;
        self.days += whole_days;
        self.micros += micros + (days - whole_days) * MICROS_PER_DAY;
        Some(())
    }

    fn finish(self, negate: bool) -> DbResult<Interval> {
        let sign = if negate { -1.0 } else { 1.0 };
        let fit = |v: f64| -> DbResult<f64> {
            if v.is_finite() && v.abs() < 9.2e18 {
                Ok(v * sign)
            } else {
                Err(out_of_range())
            }
        };
        let months = fit(self.months)?;
        let days = fit(self.days)?;
        if months.abs() > i32::MAX as f64 || days.abs() > i32::MAX as f64 {
            return Err(out_of_range());
        }
        Ok(Interval {
            months: months as i32,
            days: days as i32,
            micros: fit(self.micros)?.round() as i64,
        })
    }
}

/// `[+-]HH:MM[:SS[.fff]]` or `MM:SS.fff`-less forms Postgres reads as hours and minutes.
fn time_micros(t: &str) -> Option<f64> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let parts: Vec<&str> = body.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return None;
    }
    let h: f64 = parts[0].parse().ok()?;
    let m: f64 = parts[1].parse().ok()?;
    let s: f64 = match parts.get(2) {
        Some(s) => s.parse().ok()?,
        None => 0.0,
    };
    if parts[0].contains('.') || parts[1].contains('.') || m >= 60.0 || s >= 60.0 {
        return None;
    }
    let v = (h * 3600.0 + m * 60.0 + s) * 1e6;
    Some(if neg { -v } else { v })
}

/// ISO 8601 `P[nY][nM][nW][nD][T[nH][nM][nS]]`.
fn iso8601(s: &str) -> Option<Interval> {
    let body = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    let mut acc = Acc::default();
    let mut in_time = false;
    let mut num = String::new();
    for c in body.chars() {
        match c {
            'T' | 't' if num.is_empty() => in_time = true,
            '0'..='9' | '.' | '-' | '+' => num.push(c),
            unit => {
                let v: f64 = num.parse().ok()?;
                num.clear();
                let unit = match (unit.to_ascii_uppercase(), in_time) {
                    ('Y', false) => "years",
                    ('M', false) => "months",
                    ('W', false) => "weeks",
                    ('D', false) => "days",
                    ('H', true) => "hours",
                    ('M', true) => "minutes",
                    ('S', true) => "seconds",
                    _ => return None,
                };
                acc.add(v, unit)?;
            }
        }
    }
    if !num.is_empty() {
        return None;
    }
    acc.finish(false).ok()
}

/// Reads an interval written as Postgres reads one.
pub fn parse_interval(s: &str) -> DbResult<Interval> {
    let t = s.trim();
    if let Some(i) = iso8601(t) {
        return Ok(i);
    }
    let lower = t.to_ascii_lowercase();
    let mut words: Vec<&str> = lower.split_whitespace().collect();
    if words.first() == Some(&"@") {
        words.remove(0);
    }
    let ago = words.last() == Some(&"ago");
    if ago {
        words.pop();
    }
    if words.is_empty() {
        return Err(bad(s));
    }
    let mut acc = Acc::default();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.contains(':') {
            acc.micros += time_micros(w).ok_or_else(|| bad(s))?;
            i += 1;
            continue;
        }
        // a number and its unit, written apart (`3 days`) or together (`3days`)
        let split = w
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(w.len());
        let (number, unit) = w.split_at(split);
        let value: f64 = number.parse().map_err(|_| bad(s))?;
        let unit = if unit.is_empty() {
            match words.get(i + 1) {
                Some(u) if !u.contains(':') && u.parse::<f64>().is_err() => {
                    i += 1;
                    *u
                }
                // a bare number is seconds
                _ => "seconds",
            }
        } else {
            unit
        };
        acc.add(value, unit).ok_or_else(|| bad(s))?;
        i += 1;
    }
    acc.finish(ago)
}

/// `[+-]HH:MM:SS[.ffffff]` of a signed microsecond count (hours may exceed 24).
fn time_text(micros: i64, out: &mut String, lead: &str) {
    use std::fmt::Write as _;
    let neg = micros < 0;
    let abs = micros.unsigned_abs();
    let (h, rest) = (abs / 3_600_000_000, abs % 3_600_000_000);
    let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
    let (sec, frac) = (rest / 1_000_000, rest % 1_000_000);
    let sign = if neg { "-" } else { lead };
    let _ = write!(out, "{sign}{h:02}:{m:02}:{sec:02}");
    if frac > 0 {
        let f = format!("{frac:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

/// Postgres' output of an interval (`IntervalStyle = postgres`).
pub fn format_interval(i: Interval) -> String {
    let mut out = String::new();
    let (years, months) = (i.months / 12, i.months % 12);
    // each field with its own sign; a positive one after a negative one gets a `+`
    let mut before_negative = false;
    for (value, unit) in [
        (years as i64, "year"),
        (months as i64, "mon"),
        (i.days as i64, "day"),
    ] {
        if value == 0 {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if before_negative && value > 0 {
            out.push('+');
        }
        out.push_str(&value.to_string());
        out.push(' ');
        out.push_str(unit);
        if value != 1 {
            out.push('s');
        }
        before_negative = value < 0;
    }
    if out.is_empty() || i.micros != 0 {
        let lead = if before_negative { "+" } else { "" };
        if !out.is_empty() {
            out.push(' ');
        }
        time_text(i.micros, &mut out, lead);
    }
    out
}

/// A duration (the difference of two timestamps) as Postgres' interval of it: whole days,
/// then the time.
pub fn interval_of_duration(micros: i64) -> Interval {
    Interval {
        months: 0,
        days: (micros / 86_400_000_000) as i32,
        micros: micros % 86_400_000_000,
    }
}

/// `interval * factor`, as Postgres multiplies: each field, fractions cascading down.
pub fn multiply(i: Interval, factor: f64) -> DbResult<Interval> {
    let mut acc = Acc::default();
    acc.add(i.months as f64 * factor, "months")
        .ok_or_else(out_of_range)?;
    acc.add(i.days as f64 * factor, "days")
        .ok_or_else(out_of_range)?;
    acc.micros += i.micros as f64 * factor;
    acc.finish(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(months: i32, days: i32, micros: i64) -> Interval {
        Interval {
            months,
            days,
            micros,
        }
    }

    #[test]
    fn reads_postgres_interval_syntax() {
        let h = 3_600_000_000;
        for (text, want) in [
            (
                "1 day 02:03:04",
                iv(0, 1, 2 * h + 3 * 60_000_000 + 4_000_000),
            ),
            ("02:03", iv(0, 0, 2 * h + 3 * 60_000_000)),
            ("1 year 2 mons", iv(14, 0, 0)),
            ("-1 day +02:00", iv(0, -1, 2 * h)),
            ("1.5 hours", iv(0, 0, 3 * h / 2)),
            ("1.5 months", iv(1, 15, 0)),
            ("@ 3 days ago", iv(0, -3, 0)),
            (
                "P1Y2M3DT4H5M6S",
                iv(14, 3, 4 * h + 5 * 60_000_000 + 6_000_000),
            ),
            ("90 minutes", iv(0, 0, 90 * 60_000_000)),
            ("2 weeks", iv(0, 14, 0)),
            ("5", iv(0, 0, 5_000_000)),
        ] {
            assert_eq!(parse_interval(text).unwrap(), want, "{text}");
        }
        for bad in ["", "1 fortnight", "abc", "1:99"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_as_postgres_does() {
        let h = 3_600_000_000;
        for (i, want) in [
            (iv(0, 0, 0), "00:00:00"),
            (
                iv(14, 3, 4 * h + 500_000),
                "1 year 2 mons 3 days 04:00:00.5",
            ),
            (iv(0, -1, 2 * h), "-1 days +02:00:00"),
            (iv(0, 1, 0), "1 day"),
            (iv(0, 0, 30 * h + 15 * 60_000_000), "30:15:00"),
            (iv(-13, 0, -h), "-1 years -1 mons -01:00:00"),
        ] {
            assert_eq!(format_interval(i), want);
        }
    }
}
