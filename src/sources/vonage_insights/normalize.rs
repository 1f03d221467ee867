//! Vonage insights session hits → call rows of the call schema (or a reject reason).

use crate::record::{CallBatchBuilder, CallRow, StrList, Turn};
use crate::sources::window::{optional_duration_ms, optional_time, parse_time};

use super::KIND;
use super::model::{Session, scalar_text};

/// Transcript turns: `user` or `client` → role `customer`, any other key → role `agent`;
/// the speaker is the key. The vendor gives no offsets.
pub fn turns(s: &Session) -> Option<Vec<Turn>> {
    let entries = s.transcription.as_ref()?;
    Some(
        entries
            .iter()
            .flat_map(|e| e.iter())
            .map(|(key, text)| Turn {
                role: Some(
                    if key == "user" || key == "client" {
                        "customer"
                    } else {
                        "agent"
                    }
                    .to_string(),
                ),
                speaker: Some(key.clone()),
                text: text
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| Some(text.to_string())),
                offset_ms: None,
            })
            .collect(),
    )
}

/// Appends one session; `raw` is the hit as received. The `Err` is the reject reason.
pub fn append(b: &mut CallBatchBuilder, s: &Session, raw: &str) -> Result<(), String> {
    let id =
        s.id.as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .ok_or("the session has no id")?;
    let start = s
        .session_start_time
        .as_deref()
        .ok_or("the session has no session_start_time")?;
    let started_at =
        parse_time(start).ok_or_else(|| format!("session_start_time {start:?} is not ISO 8601"))?;
    let ended_at = optional_time("session_end_time", s.session_end_time.as_deref())?;
    let channel = s.channel_data.as_ref();
    let duration_ms = optional_duration_ms(
        "channel_data.duration",
        channel.and_then(|c| c.duration),
        1.0,
    )?;
    let from = s.source.as_ref().and_then(scalar_text);
    let to = s.destination.as_ref().and_then(scalar_text);
    let tags: Option<Vec<String>> = s
        .tags_list
        .as_ref()
        .map(|t| t.iter().filter_map(|e| e.tag.clone()).collect());
    let agent = s.agent_information.as_ref();
    let turns = turns(s);
    b.append(&CallRow {
        call_id: id,
        source_kind: KIND,
        started_at: Some(started_at),
        ended_at,
        duration_ms,
        from_number: from.as_deref(),
        to_number: to.as_deref(),
        agent_id: agent.and_then(|a| a.id.as_deref()),
        agent_name: agent.and_then(|a| a.name.as_deref()),
        vendor_status: s.status.as_deref(),
        language: s.language.as_deref(),
        tags: tags.as_deref().map(StrList::Items),
        transcript: turns.as_deref(),
        recording_ref: channel.and_then(|c| c.audio_url.as_deref()),
        raw,
        ..CallRow::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcription_keys_map_to_roles_and_speakers() {
        let s: Session = serde_json::from_str(
            r#"{"id":"s1","session_start_time":"2020-10-08T17:09:27.758983",
                "transcription":[{"5f7f":"sup?"},{"user":"Benjamin"},{"client":"hi"}],
                "destination":972523656841,"channel_data":{"duration":27000,"call_status":"ended"}}"#,
        )
        .unwrap();
        let t = turns(&s).unwrap();
        let roles: Vec<_> = t
            .iter()
            .map(|t| (t.role.clone().unwrap(), t.speaker.clone().unwrap()))
            .collect();
        assert_eq!(
            roles,
            [
                ("agent".into(), "5f7f".into()),
                ("customer".into(), "user".into()),
                ("customer".into(), "client".into())
            ]
        );
        let mut b = CallBatchBuilder::new();
        append(&mut b, &s, "{}").unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(
            parse_time("2020-10-08T17:09:27.758983"),
            Some(1_602_176_967_758_983)
        );
    }
}
