//! The session's time zone (`TimeZone`): how a `timestamptz` is printed, and how one written
//! without an offset is read. A zone of the IANA database (daylight saving time included), or
//! a fixed offset written the way Postgres reads one:
//!
//! - a bare number of hours, `+02`, `-2`, `5`: ISO 8601, hours east of UTC (Postgres shows it
//!   as `<+02>-02`, the POSIX spelling of the same);
//! - anything else with an offset, `UTC+3`, `EST5`, `<+02>-02`, `+05:30`: POSIX, hours *west*
//!   of UTC, so `UTC+3` prints `-03`.

use chrono::{DateTime, LocalResult, Offset, TimeZone as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zone {
    /// Seconds east of UTC.
    Fixed(i32),
    Named(chrono_tz::Tz),
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::UTC
    }
}

impl Zone {
    pub const UTC: Zone = Zone::Fixed(0);

    /// The zone a `TimeZone` value names (as the settings module stores it: database names in
    /// the database's spelling). A value that is neither is UTC; the settings module refuses
    /// such values before they get here.
    pub fn from_setting(value: &str) -> Zone {
        let v = value.trim();
        if let Ok(tz) = v.parse::<chrono_tz::Tz>() {
            return Zone::Named(tz);
        }
        offset_of(v).map_or(Zone::UTC, Zone::Fixed)
    }

    /// The zone as Arrow (and DataFusion's `execution.time_zone`) names it: a database name,
    /// or `±HH:MM` east of UTC.
    pub fn arrow_name(&self) -> String {
        match self {
            Zone::Named(tz) => tz.name().to_string(),
            Zone::Fixed(secs) => {
                let sign = if *secs < 0 { '-' } else { '+' };
                let abs = secs.abs();
                format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
            }
        }
    }

    /// The zone [`Zone::arrow_name`] names (anything else: UTC).
    pub fn from_arrow(name: &str) -> Zone {
        if let Ok(tz) = name.parse::<chrono_tz::Tz>() {
            return Zone::Named(tz);
        }
        let (sign, rest) = match name.as_bytes().first() {
            Some(b'-') => (-1, &name[1..]),
            Some(b'+') => (1, &name[1..]),
            _ => return Zone::UTC,
        };
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        match (h.parse::<i32>(), m.parse::<i32>()) {
            (Ok(h), Ok(m)) => Zone::Fixed(sign * (h * 3600 + m * 60)),
            _ => Zone::UTC,
        }
    }

    /// Seconds east of UTC at an instant (µs since the epoch).
    pub fn offset_at(&self, utc_micros: i64) -> i32 {
        match self {
            Zone::Fixed(s) => *s,
            Zone::Named(tz) => DateTime::from_timestamp_micros(utc_micros).map_or(0, |dt| {
                tz.offset_from_utc_datetime(&dt.naive_utc())
                    .fix()
                    .local_minus_utc()
            }),
        }
    }

    /// The instant of a wall-clock time here (`local_micros`: µs since the epoch as if the
    /// wall clock were UTC). As Postgres resolves them: a time that occurs twice (the hour
    /// clocks go back) is read in standard time, one that is skipped (the hour they go
    /// forward) with the offset from before the change.
    pub fn local_to_utc(&self, local_micros: i64) -> i64 {
        let offset = match self {
            Zone::Fixed(s) => *s,
            Zone::Named(tz) => {
                let Some(naive) = DateTime::from_timestamp_micros(local_micros) else {
                    return local_micros;
                };
                let naive = naive.naive_utc();
                match tz.offset_from_local_datetime(&naive) {
                    LocalResult::Single(o) => o.fix().local_minus_utc(),
                    LocalResult::Ambiguous(a, b) => {
                        a.fix().local_minus_utc().min(b.fix().local_minus_utc())
                    }
                    LocalResult::None => tz
                        .offset_from_utc_datetime(&(naive - chrono::Duration::hours(24)))
                        .fix()
                        .local_minus_utc(),
                }
            }
        };
        local_micros - offset as i64 * 1_000_000
    }
}

/// A fixed offset setting's seconds east of UTC (see the module documentation).
pub fn offset_of(v: &str) -> Option<i32> {
    let (rest, named) = if let Some(r) = v.strip_prefix('<') {
        (r.split_once('>')?.1, true)
    } else {
        let r = v.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        (r, r.len() != v.len())
    };
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    if digits.is_empty() {
        return None;
    }
    let mut parts = digits.split(':');
    let mut next = |max: i32| -> Option<i32> {
        match parts.next() {
            None => Some(0),
            Some(p) if (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|n| *n <= max)
            }
            Some(_) => None,
        }
    };
    let (h, m, s) = (next(15)?, next(59)?, next(59)?);
    if parts.next().is_some() {
        return None;
    }
    let secs = sign * (h * 3600 + m * 60 + s);
    let iso = !named && !digits.contains(':');
    Some(if iso { secs } else { -secs })
}

/// How Postgres shows an ISO offset setting (`+02` → `<+02>-02`); other values unchanged.
pub fn canonical_offset(v: &str) -> String {
    let digits = v.trim_start_matches(['+', '-']);
    if !digits.is_empty() && digits.len() <= 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let hours: i32 = digits.parse().unwrap_or(0);
        let east = if v.starts_with('-') { -hours } else { hours };
        let sign = |n: i32| if n < 0 { '-' } else { '+' };
        return format!("<{}{:02}>{}{:02}", sign(east), hours, sign(-east), hours);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_micros()
    }

    /// The offsets PostgreSQL 15 printed for these settings (checked side by side).
    #[test]
    fn offsets_read_as_postgres_reads_them() {
        for (setting, east) in [
            ("<+02>-02", 7200),
            ("<-02>+02", -7200),
            ("UTC+3", -3 * 3600),
            ("EST5", -5 * 3600),
            ("+05:30", -(5 * 3600 + 1800)),
            ("-05:30", 5 * 3600 + 1800),
            ("+02", 7200),
            ("5", 5 * 3600),
        ] {
            assert_eq!(Zone::from_setting(setting), Zone::Fixed(east), "{setting}");
        }
        assert_eq!(canonical_offset("+02"), "<+02>-02");
        assert_eq!(canonical_offset("-2"), "<-02>+02");
        assert_eq!(canonical_offset("5"), "<+05>-05");
        assert_eq!(canonical_offset("+05:30"), "+05:30");
        for z in [Zone::Fixed(19800), Zone::Fixed(-7200), Zone::UTC] {
            assert_eq!(Zone::from_arrow(&z.arrow_name()), z);
        }
        let ny = Zone::from_setting("America/New_York");
        assert_eq!(Zone::from_arrow(&ny.arrow_name()), ny);
    }

    #[test]
    fn named_zones_follow_daylight_saving_time() {
        let ny = Zone::from_setting("America/New_York");
        assert_eq!(ny.offset_at(at("2024-01-01 10:00")), -5 * 3600);
        assert_eq!(ny.offset_at(at("2024-07-01 10:00")), -4 * 3600);
        let ams = Zone::from_setting("Europe/Amsterdam");
        // skipped: read with the offset before the change (+01), so 03:30+02
        assert_eq!(
            ams.local_to_utc(at("2024-03-31 02:30")),
            at("2024-03-31 01:30")
        );
        // twice: standard time (+01)
        assert_eq!(
            ams.local_to_utc(at("2024-10-27 02:30")),
            at("2024-10-27 01:30")
        );
        let kolkata = Zone::from_setting("Asia/Kolkata");
        assert_eq!(kolkata.offset_at(at("2024-01-01 10:00")), 5 * 3600 + 1800);
    }
}
