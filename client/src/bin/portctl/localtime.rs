//! Local time of day for people to read, from the C library's `localtime_r` (which reads `TZ`
//! and /etc/localtime as every other program does).

use std::ffi::CStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A moment as the local clock shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Seconds east of UTC.
    pub utc_offset: i64,
    /// The zone's abbreviation (`UTC`, `CET`), empty if the C library has none.
    pub zone: String,
}

impl LocalTime {
    /// `at` in the local time zone, to the second (rounded down); None before the epoch or if
    /// the C library cannot convert it.
    pub fn of(at: SystemTime) -> Option<LocalTime> {
        let t: libc::time_t = at
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs()
            .try_into()
            .ok()?;
        // SAFETY: an all-zero `tm` is valid (its zone pointer is null until filled in).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe form.
        let filled = unsafe { libc::localtime_r(&t, &mut tm) };
        if filled.is_null() {
            return None;
        }
        let zone = if tm.tm_zone.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null tm_zone points at a NUL-terminated string that the C library
            // keeps for the life of the process.
            unsafe { CStr::from_ptr(tm.tm_zone) }
                .to_string_lossy()
                .into_owned()
        };
        Some(LocalTime {
            year: i64::from(tm.tm_year) + 1900,
            month: u32::try_from(tm.tm_mon + 1).ok()?,
            day: u32::try_from(tm.tm_mday).ok()?,
            hour: u32::try_from(tm.tm_hour).ok()?,
            minute: u32::try_from(tm.tm_min).ok()?,
            second: u32::try_from(tm.tm_sec).ok()?,
            utc_offset: tm.tm_gmtoff,
            zone,
        })
    }
}

impl LocalTime {
    /// `at_ms` (milliseconds since the Unix epoch) to the millisecond:
    /// `2026-11-30 03:40:31.123 CET`; None as for [`LocalTime::of`].
    pub fn show_millis(at_ms: u64) -> Option<String> {
        let local = LocalTime::of(UNIX_EPOCH + std::time::Duration::from_secs(at_ms / 1000))?;
        let mut text = String::new();
        local.write(&mut text, Some(at_ms % 1000)).ok()?;
        Some(text)
    }

    fn write(&self, f: &mut impl std::fmt::Write, millis: Option<u64>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )?;
        if let Some(millis) = millis {
            write!(f, ".{millis:03}")?;
        }
        f.write_str(" ")?;
        if self.zone.is_empty() {
            let sign = if self.utc_offset < 0 { '-' } else { '+' };
            let off = self.utc_offset.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", off / 3600, off / 60 % 60)
        } else {
            f.write_str(&self.zone)
        }
    }
}

/// `2026-11-30 03:40:31 CET`; the offset (`+01:00`) where the zone has no abbreviation.
impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write(f, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (i64::from(m) + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[test]
    fn local_fields_less_the_offset_give_back_the_moment() {
        // Whatever zone the test runs in.
        for secs in [0u64, 1_764_470_506, 1_782_864_000, 4_102_444_800] {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let local = LocalTime::of(at).unwrap();
            let as_if_utc = days_from_civil(local.year, local.month, local.day) * 86_400
                + i64::from(local.hour * 3600 + local.minute * 60 + local.second);
            assert_eq!(as_if_utc - local.utc_offset, secs as i64, "{local:?}");
        }
    }

    #[test]
    fn shows_the_zone_or_else_the_offset() {
        let mut t = LocalTime {
            year: 2026,
            month: 11,
            day: 30,
            hour: 3,
            minute: 4,
            second: 5,
            utc_offset: 3600,
            zone: "CET".into(),
        };
        assert_eq!(t.to_string(), "2026-11-30 03:04:05 CET");
        t.zone.clear();
        assert_eq!(t.to_string(), "2026-11-30 03:04:05 +01:00");
        t.utc_offset = -(9 * 3600 + 30 * 60);
        assert_eq!(t.to_string(), "2026-11-30 03:04:05 -09:30");
    }

    #[test]
    fn shows_milliseconds_when_asked() {
        let at_ms = 1_764_470_506_007;
        let local = LocalTime::of(UNIX_EPOCH + Duration::from_secs(1_764_470_506)).unwrap();
        let shown = LocalTime::show_millis(at_ms).unwrap();
        let second = local.to_string();
        let (date_time, zone) = second.rsplit_once(' ').unwrap();
        assert_eq!(shown, format!("{date_time}.007 {zone}"));
    }
}
