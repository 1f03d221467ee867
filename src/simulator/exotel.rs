//! Simulated Exotel Listen/Whisper/Barge StatusCallbacks: monitor legs as Exotel posts them
//! when a supervisor's leg ends, as JSON or as a form (per `StatusCallbackContentType`), with
//! times in the account's time zone and no offset.

use std::time::Duration;

/// One monitor leg's terminal callback.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorLeg {
    pub leg_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub phone_number: String,
    pub status: String,
    pub origin: String,
    pub last_action: String,
    pub custom_field: String,
    pub event_type: String,
    /// Local times in the account's zone, `YYYY-MM-DD HH:MM:SS`.
    pub date_created: String,
    pub date_updated: String,
    pub start_time: String,
    pub end_time: String,
    pub on_call_duration: u32,
    /// Start in UTC, µs (the ground truth for `start_time` with the zone's offset applied).
    pub start_utc_us: i64,
}

impl MonitorLeg {
    /// A random leg that started `ago_secs` before now, in a zone `offset_secs` east of UTC.
    pub fn random(rng: &mut fastrand::Rng, n: u64, ago_secs: i64, offset_secs: i64) -> MonitorLeg {
        let start = chrono::Utc::now().timestamp() - ago_secs;
        let dur = 5 + rng.u32(0..600);
        let local = |t: i64| {
            chrono::DateTime::from_timestamp(t + offset_secs, 0)
                .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        MonitorLeg {
            leg_sid: format!("{:016x}{:016x}", rng.u64(..), n),
            call_sid: format!("{:032x}", rng.u128(..)),
            account_sid: "exotel30m".into(),
            phone_number: format!("0{}", 9_000_000_000u64 + rng.u64(0..999_999_999)),
            status: ["completed", "completed", "no-answer", "busy", "failed"][rng.usize(0..5)]
                .into(),
            origin: "monitor".into(),
            last_action: ["listen", "whisper", "barge"][rng.usize(0..3)].into(),
            custom_field: if rng.bool() {
                "LegsCustom".into()
            } else {
                format!("team=\"{}\", shift=2", rng.u8(1..9))
            },
            event_type: "terminal".into(),
            date_created: local(start),
            date_updated: local(start + dur as i64),
            start_time: local(start),
            end_time: local(start + dur as i64),
            on_call_duration: dur,
            start_utc_us: start * 1_000_000,
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LegSid", self.leg_sid.clone()),
            ("CallSid", self.call_sid.clone()),
            ("AccountSid", self.account_sid.clone()),
            ("DateCreated", self.date_created.clone()),
            ("DateUpdated", self.date_updated.clone()),
            ("StartTime", self.start_time.clone()),
            ("EndTime", self.end_time.clone()),
            ("PhoneNumber", self.phone_number.clone()),
            ("Status", self.status.clone()),
            ("OnCallDuration", self.on_call_duration.to_string()),
            ("Origin", self.origin.clone()),
            ("LastAction", self.last_action.clone()),
            ("CustomField", self.custom_field.clone()),
            ("EventType", self.event_type.clone()),
        ]
    }

    /// The callback as JSON (`StatusCallbackContentType: application/json`).
    pub fn json(&self) -> String {
        let m: serde_json::Map<String, serde_json::Value> = self
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        serde_json::Value::Object(m).to_string()
    }

    /// The callback as a form (`application/x-www-form-urlencoded`).
    pub fn form(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            s.append_pair(k, &v);
        }
        s.finish()
    }
}

/// Posts one callback the way Exotel does; the HTTP status, or `None` when no answer came.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    leg: &MonitorLeg,
    json: bool,
) -> Option<u16> {
    let (ct, body) = if json {
        ("application/json", leg.json())
    } else {
        ("application/x-www-form-urlencoded", leg.form())
    };
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, ct)
        .timeout(Duration::from_secs(15))
        .body(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}
