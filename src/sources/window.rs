//! Time windows for the windowed sources (Vonage insights, voice-calls): where a run starts,
//! how far it may read (`now - settle_secs`), which unfinished calls hold the cursor, and the
//! cursor stored after each window.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{Cursor, LakeFacts, SourceError, decode_cursor};

/// The stored cursor of a windowed source: every call that started before `from` is
/// exported, except that `from` holds at the start of the earliest call still in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCursor {
    /// RFC 3339, UTC.
    pub from: String,
}

/// One day: the default `lookback_secs`.
pub fn default_lookback_secs() -> u64 {
    86_400
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

/// The timing settings a windowed source takes from its config.
#[derive(Debug, Clone, Copy)]
pub struct WindowSettings {
    /// Days per window.
    pub window_days: u32,
    /// Windows end this many seconds before now.
    pub settle_secs: u64,
    /// An incremental run re-lists this many seconds before `now - settle_secs` (late
    /// arrivals); 0 turns it off. Backfills ignore it.
    pub lookback_secs: u64,
    /// An unfinished call older than this is exported as it is.
    pub max_open_age_secs: u64,
}

/// A safe window cursor for a state rebuilt from the lake: `max_open_age_secs` before the
/// latest start in its files (a call still in progress when a sync passed it held the cursor
/// at its start, and no call stays held longer than that), or the marker's cursor when it is
/// earlier. Re-listed calls are skipped by key.
pub fn repair_cursor(
    facts: &LakeFacts,
    marker: Option<&Cursor>,
    w: WindowSettings,
) -> Option<Cursor> {
    let from_lake = facts
        .max_started_at
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| t - chrono::Duration::seconds(w.max_open_age_secs as i64));
    let from_marker = marker
        .and_then(|m| serde_json::from_value::<WindowCursor>(m.clone()).ok())
        .and_then(|c| parse_time(&c.from))
        .and_then(DateTime::from_timestamp_micros);
    let from = match (from_lake, from_marker) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(serde_json::json!({ "from": rfc3339(whole_second(from)) }))
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
    /// The stored cursor this run started from: a cursor it returns never goes below it.
    floor: Option<DateTime<Utc>>,
}

fn stored_position(
    source_name: &str,
    cursor: Option<&Cursor>,
) -> Result<Option<DateTime<Utc>>, SourceError> {
    decode_cursor::<WindowCursor>(source_name, cursor)?
        .map(|c| {
            parse_time(&c.from)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| SourceError::Cursor {
                    source_name: source_name.to_string(),
                    reason: format!("{:?} is not a time", c.from),
                })
        })
        .transpose()
}

impl WindowClock {
    /// An incremental run: from the earlier of the stored cursor (or `start_date`) and
    /// `now - settle_secs - lookback_secs` (never before `start_date`), to `now - settle_secs`.
    /// The re-listed lookback catches calls the vendor lists late; the cursors this run
    /// returns never go below the stored one.
    pub fn incremental(
        source_name: &str,
        start_date: &str,
        cursor: Option<&Cursor>,
        w: WindowSettings,
    ) -> Result<WindowClock, SourceError> {
        let start = parse_day(start_date).ok_or_else(|| SourceError::Cursor {
            source_name: source_name.to_string(),
            reason: format!("start_date {start_date:?} is not YYYY-MM-DD"),
        })?;
        let stored = stored_position(source_name, cursor)?;
        let now = Utc::now();
        let horizon = now - chrono::Duration::seconds(w.settle_secs as i64);
        let lookback_start =
            (horizon - chrono::Duration::seconds(w.lookback_secs as i64)).max(start);
        let pos = stored.unwrap_or(start).min(lookback_start);
        let mut clock = WindowClock::bounded(pos, horizon, w.window_days, w.max_open_age_secs);
        clock.floor = stored;
        Ok(clock)
    }

    /// A run over `[from, to)` (a backfill), resumed at `cursor` when one is stored, and
    /// never past `now - settle_secs`. No lookback.
    pub fn range(
        source_name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: Option<&Cursor>,
        w: WindowSettings,
    ) -> Result<WindowClock, SourceError> {
        let pos = stored_position(source_name, cursor)?.unwrap_or(from);
        let end = to.min(Utc::now() - chrono::Duration::seconds(w.settle_secs as i64));
        Ok(WindowClock::bounded(
            pos,
            end,
            w.window_days,
            w.max_open_age_secs,
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
            floor: None,
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

    /// Ends the current window at `to`; returns the cursor that is safe to store now: `to`,
    /// or the start of the earliest call still in progress, but never below the stored cursor
    /// (a call in progress found in the re-listed lookback is listed again by the next runs
    /// while it is inside their lookback).
    pub fn finish_window(&mut self, to: DateTime<Utc>) -> Cursor {
        self.pos = to;
        let mut from = self
            .hold
            .and_then(DateTime::from_timestamp_micros)
            .map_or(to, |h| h.min(to));
        if let Some(floor) = self.floor {
            from = from.max(floor);
        }
        serde_json::json!({ "from": rfc3339(from) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_relists_its_lookback_and_never_moves_the_cursor_back() {
        let w = WindowSettings {
            window_days: 7,
            settle_secs: 300,
            lookback_secs: 86_400,
            max_open_age_secs: 86_400,
        };
        let now = Utc::now();
        let stored = whole_second(now - chrono::Duration::seconds(600));
        let cursor = serde_json::json!({ "from": rfc3339(stored) });
        let mut c = WindowClock::incremental("vn", "2020-01-01", Some(&cursor), w).unwrap();
        let (from, to) = c.current().unwrap();
        let want = now - chrono::Duration::seconds(300 + 86_400);
        assert!((from - want).num_seconds().abs() <= 2, "{from} vs {want}");
        // A call in progress inside the lookback, before the stored cursor, does not pull the
        // cursor back.
        c.hold_at((stored - chrono::Duration::hours(3)).timestamp_micros());
        let back = c.finish_window(to);
        assert_eq!(back["from"], rfc3339(stored));
        // start_date bounds the lookback; no cursor: from start_date.
        let today = now.format("%Y-%m-%d").to_string();
        let c = WindowClock::incremental("vn", &today, Some(&cursor), w).unwrap();
        assert_eq!(
            c.current().unwrap().0,
            parse_day(&today).unwrap().min(stored)
        );
        let c = WindowClock::incremental("vn", "2020-01-01", None, w).unwrap();
        assert_eq!(c.current().unwrap().0, parse_day("2020-01-01").unwrap());
        // lookback 0: from the stored cursor.
        let w0 = WindowSettings {
            lookback_secs: 0,
            ..w
        };
        let c = WindowClock::incremental("vn", "2020-01-01", Some(&cursor), w0).unwrap();
        assert_eq!(c.current().unwrap().0, stored);
    }

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
