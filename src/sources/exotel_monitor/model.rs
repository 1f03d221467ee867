//! Exotel's Listen/Whisper/Barge monitor-leg StatusCallback, in the vendor's spelling:
//! `LegSid`, `CallSid`, `AccountSid`, `DateCreated`, … sent as JSON or as a form, per the
//! leg's `StatusCallbackContentType`.

use std::collections::BTreeMap;

/// The callback's fields as sent (JSON numbers and booleans kept as their text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegCallback(pub BTreeMap<String, String>);

impl LegCallback {
    /// Parses a JSON object or a form body, by `Content-Type` (a body that starts with `{` is
    /// read as JSON whatever it says; Exotel's doc shows JSON sent as a form's look-alike).
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<LegCallback, String> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if ct.contains("json") || looks_json {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            let obj = v
                .as_object()
                .ok_or_else(|| "the JSON body is not an object".to_string())?;
            let mut m = BTreeMap::new();
            for (k, v) in obj {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                m.insert(k.clone(), text);
            }
            return Ok(LegCallback(m));
        }
        if ct.contains("x-www-form-urlencoded") || ct.is_empty() {
            if std::str::from_utf8(body).is_err() {
                return Err("the form body is not UTF-8".into());
            }
            let m: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
            if m.is_empty() {
                return Err("the form body is empty".into());
            }
            return Ok(LegCallback(m));
        }
        Err(format!(
            "Content-Type {ct:?} is neither JSON nor a form (application/x-www-form-urlencoded)"
        ))
    }

    /// A field, trimmed; an empty one is absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The delivery identity: `LegSid` + `EventType` (a leg sends one callback per event).
    pub fn delivery_key(&self) -> Result<String, String> {
        let leg = self
            .get("LegSid")
            .ok_or_else(|| "the callback has no LegSid".to_string())?;
        Ok(format!("{leg}:{}", self.get("EventType").unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_bodies_give_the_same_fields() {
        let j = LegCallback::parse(
            Some("application/json"),
            br#"{"LegSid":"L1","EventType":"terminal","OnCallDuration":52,"Status":"completed"}"#,
        )
        .unwrap();
        let f = LegCallback::parse(
            Some("application/x-www-form-urlencoded"),
            b"LegSid=L1&EventType=terminal&OnCallDuration=52&Status=completed",
        )
        .unwrap();
        assert_eq!(j, f);
        assert_eq!(j.delivery_key().unwrap(), "L1:terminal");
        assert!(LegCallback::parse(Some("application/json"), b"garbage").is_err());
        assert!(LegCallback::parse(Some("text/xml"), b"<a/>").is_err());
        let no_leg = LegCallback::parse(Some("application/json"), br#"{"CallSid":"C"}"#).unwrap();
        assert!(no_leg.delivery_key().is_err());
    }
}
