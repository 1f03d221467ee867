//! Monitor-leg callbacks → rows of the `monitor_legs` table. Exotel's times carry no offset:
//! they are read in the source's time zone (an IANA name) and stored as UTC.

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use chrono::{NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use super::model::LegCallback;
use crate::schema::monitor_legs_schema;

/// `YYYY-MM-DD HH:MM:SS` in `tz` → µs since the epoch (UTC). An hour that a DST change makes
/// ambiguous takes its earlier reading; a skipped one is an error.
pub fn local_time(tz: Tz, field: &str, v: &str) -> Result<i64, String> {
    let naive = NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%d %H:%M:%S")
        .map_err(|_| format!("{field} {v:?} is not YYYY-MM-DD HH:MM:SS"))?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_micros())
        .ok_or_else(|| format!("{field} {v:?} does not exist in {tz}"))
}

/// Builders for one page of monitor legs.
pub struct LegBatch {
    tz: Tz,
    text: Vec<StringBuilder>,
    times: Vec<TimestampMicrosecondBuilder>,
    duration: Int64Builder,
    raw: StringBuilder,
    received: TimestampMicrosecondBuilder,
    len: usize,
}

/// The text columns, in schema order, with the callback field each comes from (the first
/// two are `leg_sid` and `delivery_key`).
const TEXT: [(&str, &str); 10] = [
    ("leg_sid", "LegSid"),
    ("delivery_key", ""),
    ("call_sid", "CallSid"),
    ("account_sid", "AccountSid"),
    ("phone_number", "PhoneNumber"),
    ("status", "Status"),
    ("origin", "Origin"),
    ("last_action", "LastAction"),
    ("custom_field", "CustomField"),
    ("event_type", "EventType"),
];
const TIMES: [&str; 4] = ["DateCreated", "DateUpdated", "StartTime", "EndTime"];

impl LegBatch {
    pub fn new(tz: Tz) -> LegBatch {
        let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        LegBatch {
            tz,
            text: (0..TEXT.len()).map(|_| StringBuilder::new()).collect(),
            times: (0..TIMES.len()).map(|_| ts()).collect(),
            duration: Int64Builder::new(),
            raw: StringBuilder::new(),
            received: ts(),
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one callback; the `Err` is the reject reason (nothing is appended then).
    pub fn append(
        &mut self,
        cb: &LegCallback,
        key: &str,
        raw: &str,
        received_at_us: i64,
    ) -> Result<(), String> {
        let leg = cb.get("LegSid").ok_or("the callback has no LegSid")?;
        let mut times = [None; 4];
        for (i, f) in TIMES.iter().enumerate() {
            times[i] = cb.get(f).map(|v| local_time(self.tz, f, v)).transpose()?;
        }
        let duration = cb
            .get("OnCallDuration")
            .map(|d| {
                d.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .map(|v| v.round() as i64)
                    .ok_or_else(|| format!("OnCallDuration {d:?} is not a number of seconds"))
            })
            .transpose()?;
        for (i, (_, field)) in TEXT.iter().enumerate() {
            let v = match i {
                0 => Some(leg),
                1 => Some(key),
                _ => cb.get(field),
            };
            self.text[i].append_option(v);
        }
        for (b, t) in self.times.iter_mut().zip(times) {
            b.append_option(t);
        }
        self.duration.append_option(duration);
        self.raw.append_value(raw);
        self.received.append_value(received_at_us);
        self.len += 1;
        Ok(())
    }

    /// The rows so far as a batch of the `monitor_legs` schema.
    pub fn finish(mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut cols: Vec<ArrayRef> = Vec::new();
        for b in &mut self.text {
            cols.push(Arc::new(b.finish()));
        }
        for b in &mut self.times {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.duration.finish()));
        cols.push(Arc::new(self.raw.finish()));
        cols.push(Arc::new(self.received.finish()));
        RecordBatch::try_new(monitor_legs_schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kolkata_times_are_stored_as_utc() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let t = local_time(tz, "StartTime", "2021-02-08 19:33:59").unwrap();
        assert_eq!(
            chrono::DateTime::from_timestamp_micros(t)
                .unwrap()
                .to_rfc3339(),
            "2021-02-08T14:03:59+00:00"
        );
        let cb = LegCallback::parse(
            Some("application/json"),
            br#"{"LegSid":"L1","CallSid":"C1","StartTime":"2021-02-08 19:33:59","EndTime":"2021-02-08 19:34:32","OnCallDuration":"52","EventType":"terminal"}"#,
        )
        .unwrap();
        let mut b = LegBatch::new(tz);
        b.append(&cb, "L1:terminal", "{}", 7).unwrap();
        let bad = LegCallback::parse(
            Some("application/json"),
            br#"{"LegSid":"L2","StartTime":"yesterday"}"#,
        )
        .unwrap();
        assert!(
            b.append(&bad, "L2:", "{}", 7)
                .unwrap_err()
                .contains("StartTime")
        );
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), monitor_legs_schema());
    }
}
