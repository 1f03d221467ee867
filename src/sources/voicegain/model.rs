//! Voicegain's CSV export as the vendor spells it: column names, the time format, the cursor.

use serde::{Deserialize, Serialize};

/// The stored cursor: the highest exported callId (the next run asks for calls after it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgCursor {
    pub after_call_id: u64,
}

/// Positions of the columns callsync reads, looked up by header name once per page
/// (the vendor documents names, not an order).
#[derive(Debug, Default, Clone)]
pub struct Columns {
    pub call_id: Option<usize>,
    pub start_time: Option<usize>,
    pub end_time: Option<usize>,
    pub duration: Option<usize>,
    pub direction: Option<usize>,
    pub external_endpoint: Option<usize>,
    pub internal_endpoint: Option<usize>,
    pub recording: Option<usize>,
    pub agent_id: Option<usize>,
    pub agent_name: Option<usize>,
    pub queue_name: Option<usize>,
    pub sentiment: Option<usize>,
    pub notes: Option<usize>,
    pub tags: Option<usize>,
    pub topics: Option<usize>,
    pub progress_phase: Option<usize>,
    pub language: Option<usize>,
}

impl Columns {
    /// Maps header names to positions.
    pub fn from_headers<'a>(headers: impl Iterator<Item = &'a str>) -> Columns {
        let mut c = Columns::default();
        for (i, h) in headers.enumerate() {
            let slot = match h.trim() {
                "callId" => &mut c.call_id,
                "startTime" => &mut c.start_time,
                "endTime" => &mut c.end_time,
                "duration" => &mut c.duration,
                "direction" => &mut c.direction,
                "externalEndpoint" => &mut c.external_endpoint,
                "internalEndpoint" => &mut c.internal_endpoint,
                "recording" => &mut c.recording,
                "agent.id" => &mut c.agent_id,
                "agent.name" => &mut c.agent_name,
                "queue.name" => &mut c.queue_name,
                "sentiment" => &mut c.sentiment,
                "notes" => &mut c.notes,
                "tags" => &mut c.tags,
                "topics" => &mut c.topics,
                "progressPhase" => &mut c.progress_phase,
                "language" => &mut c.language,
                _ => continue,
            };
            *slot = Some(i);
        }
        c
    }
}

/// `str::trim`, with a fast path for the common field that has no white space at its ends.
pub fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(&a), Some(&b)) if a > b' ' && a < 0x80 && b > b' ' && b < 0x80 => s,
        _ => s.trim(),
    }
}

/// Whether a `progressPhase` is final (DONE or ERROR; the vendor's doc also spells ERRROR).
pub fn is_final_phase(phase: &str) -> bool {
    let p = trim(phase);
    p.eq_ignore_ascii_case("DONE")
        || p.eq_ignore_ascii_case("ERROR")
        || p.eq_ignore_ascii_case("ERRROR")
}

/// Parses `MM-DD-YYYY h:mm:ss AM/PM` (UTC) into microseconds since the epoch.
/// Hand-written: a format string per row is measurably slower on 100k-row pages.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = trim(s).as_bytes();
    // MM-DD-YYYY
    if b.len() < 18 || b[2] != b'-' || b[5] != b'-' || b[10] != b' ' {
        return None;
    }
    let month = digits(&b[0..2])?;
    let day = digits(&b[3..5])?;
    let year = digits(&b[6..10])?;
    let rest = &b[11..];
    let colon = rest.iter().position(|&c| c == b':')?;
    if !(1..=2).contains(&colon) || rest.len() < colon + 9 {
        return None;
    }
    let hour12 = digits(&rest[..colon])?;
    let t = &rest[colon..];
    // ":mm:ss AM"
    if t[0] != b':' || t[3] != b':' || t[6] != b' ' || t.len() != 9 {
        return None;
    }
    let minute = digits(&t[1..3])?;
    let second = digits(&t[4..6])?;
    let pm = match &t[7..9] {
        b"AM" | b"am" => false,
        b"PM" | b"pm" => true,
        _ => return None,
    };
    if !(1..=12).contains(&hour12) || minute > 59 || second > 59 {
        return None;
    }
    let hour = (hour12 % 12) + if pm { 12 } else { 0 };
    let days = days_from_civil(year as i64, month, day)?;
    Some(((days * 86_400) + hour as i64 * 3600 + minute as i64 * 60 + second as i64) * 1_000_000)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date, or `None` if the date does not exist.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > month_days[(m - 1) as usize] {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};

    fn micros(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.from_utc_datetime(
            &NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, s)
                .unwrap(),
        )
        .timestamp_micros()
    }

    #[test]
    fn the_vendor_example_is_the_12th_of_may() {
        assert_eq!(
            parse_time("05-12-2024 6:15:45 PM"),
            Some(micros(2024, 5, 12, 18, 15, 45))
        );
        assert_eq!(
            parse_time("12-31-1999 12:00:00 AM"),
            Some(micros(1999, 12, 31, 0, 0, 0))
        );
        assert_eq!(
            parse_time("01-01-2025 12:30:01 PM"),
            Some(micros(2025, 1, 1, 12, 30, 1))
        );
        assert_eq!(
            parse_time("02-29-2024 11:59:59 PM"),
            Some(micros(2024, 2, 29, 23, 59, 59))
        );
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "2024-05-12 18:15:45",
            "02-30-2024 1:00:00 PM",
            "13-01-2024 1:00:00 PM",
            "05-12-2024 13:15:45 PM",
            "05-12-2024 6:15:45",
            "05-12-2024 6:61:45 PM",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn hand_parser_agrees_with_chrono_over_many_dates() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let t = rng.i64(0..4_102_444_800) * 1_000_000;
            let dt = chrono::DateTime::from_timestamp_micros(t).unwrap();
            let text = dt.format("%m-%d-%Y %-I:%M:%S %p").to_string();
            assert_eq!(parse_time(&text), Some(t), "{text}");
        }
    }
}
