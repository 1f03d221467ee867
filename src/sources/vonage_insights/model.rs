//! Vonage AI Studio insights as the vendor spells it: the search answer and a session hit.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The answer of `GET /insights/sessions`. `page_size`/`page_number` come back as strings and
/// are not needed.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchAnswer {
    /// Sessions matching the query, over all pages.
    pub total: u64,
    /// This page's sessions.
    #[serde(default)]
    pub hits: Vec<serde_json::Value>,
}

/// A session (one hit). Only the mapped fields are typed; the hit is kept whole as `raw`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Session {
    pub id: Option<String>,
    pub session_start_time: Option<String>,
    pub session_end_time: Option<String>,
    /// `in_progress` or `ended`.
    pub status: Option<String>,
    pub language: Option<String>,
    /// Caller phone number (a string or a number).
    pub source: Option<serde_json::Value>,
    /// Agent phone number (a string or a number).
    pub destination: Option<serde_json::Value>,
    pub agent_information: Option<AgentInformation>,
    pub channel_data: Option<ChannelData>,
    pub tags_list: Option<Vec<TagEntry>>,
    /// Entries of one key each: `user`/`client` for the caller, the agent's id otherwise.
    pub transcription: Option<Vec<BTreeMap<String, serde_json::Value>>>,
}

/// `agent_information`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AgentInformation {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// `channel_data`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelData {
    /// Milliseconds.
    pub duration: Option<f64>,
    pub audio_url: Option<String>,
    /// `in_progress` or `ended`.
    pub call_status: Option<String>,
}

/// One `tags_list` entry.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TagEntry {
    pub tag: Option<String>,
}

impl Session {
    /// Whether the session is still going on (by `status` or `channel_data.call_status`).
    pub fn in_progress(&self) -> bool {
        let open = |s: Option<&str>| s.is_some_and(|s| s.eq_ignore_ascii_case("in_progress"));
        open(self.status.as_deref())
            || open(
                self.channel_data
                    .as_ref()
                    .and_then(|c| c.call_status.as_deref()),
            )
    }
}

/// A JSON scalar as text (phone numbers come as strings or numbers).
pub fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
