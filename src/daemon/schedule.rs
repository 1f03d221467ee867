//! A source's cron schedule (6 fields, seconds first, evaluated in UTC) and its next tick.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule(cron::Schedule);

impl Schedule {
    /// Parses `sec min hour day month weekday [year]`.
    pub fn parse(expr: &str) -> Result<Schedule, cron::error::Error> {
        cron::Schedule::from_str(expr).map(Schedule)
    }

    /// The first tick strictly after `t`; far in the future when the schedule has no more
    /// (a schedule limited to past years).
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        self.0.after(&t).next().unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_in_utc_and_strictly_after() {
        let s = Schedule::parse("0 */15 * * * *").unwrap();
        let t = DateTime::parse_from_rfc3339("2025-01-01T10:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            rfc(s.next_after(t)),
            "2025-01-01T10:30:00Z",
            "a tick at t itself is not after t"
        );
        let every = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(rfc(every.next_after(t)), "2025-01-01T10:15:02Z");
        assert!(Schedule::parse("whenever").is_err());
    }

    fn rfc(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}
