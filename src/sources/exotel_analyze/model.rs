//! ExoVoiceAnalyze as Exotel spells it: the submission's answer and the result webhook
//! (`success`, `reason`, `job_id`, `callSID`, `summary`/`sentiment`/`category` each with a
//! `confidence`, and `transcript` as one line per utterance).

use serde::Deserialize;

/// The answer to a submission (`ExoVoiceAnalyze.job_id` when queued).
#[derive(Debug, Clone, Deserialize)]
pub struct SubmitAnswer {
    #[serde(rename = "ExoVoiceAnalyze", default)]
    pub job: Option<SubmittedJob>,
    #[serde(rename = "ResponseData", default)]
    pub error: Option<ResponseData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubmittedJob {
    pub job_id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseData {
    #[serde(rename = "Message", default)]
    pub message: Option<String>,
    #[serde(rename = "Description", default)]
    pub description: Option<String>,
}

/// `{"summary": "...", "confidence": 0.9}` and its kin.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Insight {
    #[serde(alias = "summary", alias = "sentiment", alias = "category")]
    pub value: Option<String>,
    pub confidence: Option<f64>,
}

/// The result webhook.
#[derive(Debug, Clone, Deserialize)]
pub struct AnalyzeResult {
    pub success: bool,
    #[serde(default)]
    pub reason: Option<String>,
    pub job_id: String,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(rename = "callSID", alias = "call_sid", default)]
    pub call_sid: Option<String>,
    #[serde(default)]
    pub summary: Option<Insight>,
    #[serde(default)]
    pub sentiment: Option<Insight>,
    #[serde(default)]
    pub category: Option<Insight>,
    #[serde(default)]
    pub transcript: Option<String>,
}

/// One call of Exotel's call-details API (shared with the `exotel_calls` source).
pub use crate::sources::exotel_calls::model::{Call as ExoCall, CallsAnswer};

impl AnalyzeResult {
    /// Parses a result body (JSON; Exotel posts JSON).
    pub fn parse(body: &[u8]) -> Result<AnalyzeResult, String> {
        serde_json::from_slice(body).map_err(|e| format!("not an ExoVoiceAnalyze result: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_result_and_failure_parse() {
        let ok = AnalyzeResult::parse(br#"{ "success": true, "reason": "", "task_id": "8765Abgt678", "job_id": "5d1c", "callSID": "2c60", "summary": { "summary": "Jason called.", "confidence": 0.9 }, "sentiment": { "sentiment": "NEUTRAL", "confidence": 0.8 }, "category": { "category": "Jobseeker", "confidence": 0.7 }, "transcript": "Hello.\nHi.\n" }"#).unwrap();
        assert_eq!(ok.summary.unwrap().value.as_deref(), Some("Jason called."));
        assert_eq!(ok.sentiment.unwrap().value.as_deref(), Some("NEUTRAL"));
        assert_eq!(ok.category.unwrap().value.as_deref(), Some("Jobseeker"));
        let failed = AnalyzeResult::parse(br#"{ "success": false, "reason": "Forbidden to access recording url of call", "job_id": "d210", "callSID": "9112" }"#).unwrap();
        assert!(!failed.success);
    }
}
