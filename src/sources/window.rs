//! Time windows for the windowed sources (Vonage insights, voice-calls): where a run starts,
//! how far it may read (`now - settle_secs`), which unfinished calls hold the cursor, and the
//! cursor stored after each window.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{Cursor, SourceError, decode_cursor};

/// The stored cursor of a windowed source: every call that started before `from` is
/// exported, except that `from` holds at the start of the earliest call still in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCursor {
    /// RFC 3339, UTC.
    pub from: String,
}

/// A `YYYY-MM-DD` day as its UTC midnight.
pub fn parse_day(s: &str) -> Option<DateTime<Utc>> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// RFC 3339 with seconds and `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time into µs since the epoch; a time without an offset is read as UTC
/// (Vonage's times have none).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc().timestamp_micros())
}

/// `t` without its fraction of a second.
pub fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// An optional time field of a vendor record (empty counts as absent); the `Err` names it.
pub fn optional_time(field: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse_time(v)
            .map(Some)
            .ok_or_else(|| format!("{field} {v:?} is not an ISO 8601 time")),
    }
}

/// An optional duration field, in `unit_ms` milliseconds per unit; the `Err` names it.
pub fn optional_duration_ms(
    field: &str,
    value: Option<f64>,
    unit_ms: f64,
) -> Result<Option<i64>, String> {
    match value {
        None => Ok(None),
        Some(d) if d.is_finite() && d >= 0.0 => Ok(Some((d * unit_ms).round() as i64)),
        Some(d) => Err(format!("{field} {d} is not a duration")),
    }
}

/// How a windowed run walks time.
#[derive(Debug, Clone)]
pub struct WindowClock {
    /// Start of the next window.
    pub pos: DateTime<Utc>,
    /// No window reaches past this.
    pub end: DateTime<Utc>,
    /// Length of a window.
    pub window: chrono::Duration,
    /// Unfinished calls that started before this are exported as they are.
    pub open_cutoff: i64,
    /// Earliest start of a call still in progress seen in this run.
    hold: Option<i64>,
}

impl WindowClock {
    /// An incremental run: from the stored cursor (or `start_date`) to `now - settle_secs`.
    pub fn incremental(
        source_name: &str,
        start_date: &str,
        cursor: Option<&Cursor>,
        window_days: u32,
        settle_secs: u64,
        max_open_age_secs: u64,
    ) -> Result<WindowClock, SourceError> {
        let start = parse_day(start_date).ok_or_else(|| SourceError::Cursor {
            source_name: source_name.to_string(),
            reason: format!("start_date {start_date:?} is not YYYY-MM-DD"),
        })?;
        WindowClock::range(
            source_name,
            start,
            Utc::now(),
            cursor,
            window_days,
            settle_secs,
            max_open_age_secs,
        )
    }

    /// A run over `[from, to)`, resumed at `cursor` when one is stored, and never past
    /// `now - settle_secs`.
    pub fn range(
        source_name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: Option<&Cursor>,
        window_days: u32,
        settle_secs: u64,
        max_open_age_secs: u64,
    ) -> Result<WindowClock, SourceError> {
        let pos = match decode_cursor::<WindowCursor>(source_name, cursor)? {
            Some(c) => parse_time(&c.from)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| SourceError::Cursor {
                    source_name: source_name.to_string(),
                    reason: format!("{:?} is not a time", c.from),
                })?,
            None => from,
        };
        let end = to.min(Utc::now() - chrono::Duration::seconds(settle_secs as i64));
        Ok(WindowClock::bounded(
            pos,
            end,
            window_days,
            max_open_age_secs,
        ))
    }

    /// A run over `[from, end)`. Both ends are cut to whole seconds, the precision the
    /// vendors' query parameters are sent with.
    pub fn bounded(
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        window_days: u32,
        max_open_age_secs: u64,
    ) -> WindowClock {
        WindowClock {
            pos: whole_second(from),
            end: whole_second(end),
            window: chrono::Duration::days(window_days.max(1) as i64),
            open_cutoff: (Utc::now() - chrono::Duration::seconds(max_open_age_secs as i64))
                .timestamp_micros(),
            hold: None,
        }
    }

    /// The next window `[from, to)`, or `None` when the run has reached its end.
    pub fn current(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        (self.pos < self.end).then(|| (self.pos, (self.pos + self.window).min(self.end)))
    }

    /// Whether a call in progress that started at `start_us` is old enough to export as is.
    pub fn expired(&self, start_us: i64) -> bool {
        start_us < self.open_cutoff
    }

    /// Records a call still in progress: the cursor will not pass its start.
    pub fn hold_at(&mut self, start_us: i64) {
        self.hold = Some(self.hold.map_or(start_us, |h| h.min(start_us)));
    }

    /// Ends the current window at `to`; returns the cursor that is safe to store now.
    pub fn finish_window(&mut self, to: DateTime<Utc>) -> Cursor {
        self.pos = to;
        let from = self
            .hold
            .and_then(DateTime::from_timestamp_micros)
            .map_or(to, |h| h.min(to));
        serde_json::json!({ "from": rfc3339(from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_without_an_offset_are_utc() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5"), Some(1_500_000));
        assert_eq!(parse_time("1970-01-01T01:00:01+01:00"), Some(1_000_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn the_cursor_holds_at_the_earliest_open_call() {
        let t0 = parse_day("2024-01-01").unwrap();
        let mut c = WindowClock::bounded(t0, t0 + chrono::Duration::days(3), 1, 0);
        let (a, b) = c.current().unwrap();
        assert_eq!((a, b), (t0, t0 + chrono::Duration::days(1)));
        assert_eq!(c.finish_window(b)["from"], "2024-01-02T00:00:00Z");
        c.hold_at((t0 + chrono::Duration::hours(30)).timestamp_micros());
        let (_, b) = c.current().unwrap();
        assert_eq!(c.finish_window(b)["from"], "2024-01-02T06:00:00Z");
        let (_, b) = c.current().unwrap();
        assert_eq!(c.finish_window(b)["from"], "2024-01-02T06:00:00Z");
        assert!(c.current().is_none());
    }
}
