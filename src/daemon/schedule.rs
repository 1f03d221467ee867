//! When a source runs: a cron schedule (6 fields, seconds first, evaluated in UTC) for pull
//! kinds, a fixed interval for push kinds; and its next tick.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::sources::Trigger;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<cron::Schedule>),
    Every(chrono::Duration),
}

impl Schedule {
    /// Parses `sec min hour day month weekday [year]`.
    pub fn parse(expr: &str) -> Result<Schedule, cron::error::Error> {
        cron::Schedule::from_str(expr).map(|s| Schedule::Cron(Box::new(s)))
    }

    /// A source's trigger as a schedule.
    pub fn of(t: Trigger<'_>) -> Result<Schedule, cron::error::Error> {
        match t {
            Trigger::Cron(c) => Schedule::parse(c),
            Trigger::Every(secs) => Ok(Schedule::Every(chrono::Duration::seconds(
                secs.max(1) as i64
            ))),
        }
    }

    /// The first tick strictly after `t`; far in the future when the schedule has no more
    /// (a schedule limited to past years).
    pub fn next_after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Cron(c) => c.after(&t).next().unwrap_or(DateTime::<Utc>::MAX_UTC),
            Schedule::Every(d) => t + *d,
        }
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
        let push = Schedule::of(Trigger::Every(5)).unwrap();
        assert_eq!(rfc(push.next_after(t)), "2025-01-01T10:15:05Z");
    }

    fn rfc(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}
