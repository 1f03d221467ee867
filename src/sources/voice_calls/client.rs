//! HTTP requests to the voice-calls API: the list, a call's detail, its EPA results.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;

use crate::http::{HttpClient, HttpError, excerpt, redact_url};
use crate::secret::Secret;
use crate::sources::SourceError;

use super::model::{EpaResults, list_items};

/// The voice-calls API, bound to one source.
#[derive(Clone)]
pub struct VoiceCallsClient {
    http: HttpClient,
    base_url: String,
}

impl VoiceCallsClient {
    /// Builds the client; the token goes into `Authorization: Bearer`.
    pub fn new(
        source_name: &str,
        base_url: &str,
        http: &crate::settings::HttpConfig,
        token: &Secret,
    ) -> Result<Self, SourceError> {
        let bearer = Secret::new(format!("Bearer {}", token.expose()));
        Ok(VoiceCallsClient {
            http: HttpClient::new(source_name, http, Some((AUTHORIZATION, bearer)))?,
            base_url: base_url.to_string(),
        })
    }

    /// The source name, for errors.
    pub fn source_name(&self) -> &str {
        self.http.source_name()
    }

    fn protocol(&self, reason: String) -> SourceError {
        SourceError::Protocol {
            source_name: self.source_name().to_string(),
            reason,
        }
    }

    /// One list page of calls whose start lies in `[date_from, date_to]` (RFC 3339).
    pub async fn list(
        &self,
        date_from: &str,
        date_to: &str,
        page: u32,
        page_size: u32,
    ) -> Result<Vec<serde_json::Value>, SourceError> {
        let mut url = self.http.url(&self.base_url, "/api/v1/voice-calls")?;
        url.query_pairs_mut()
            .append_pair("dateFrom", date_from)
            .append_pair("dateTo", date_to)
            .append_pair("page", &page.to_string())
            .append_pair("pageSize", &page_size.to_string());
        let body = self.http.get_ok(&url).await?.body;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("the call list is not JSON: {e}")))?;
        match list_items(&value) {
            Some(items) => Ok(items.clone()),
            None => Err(self.protocol(format!(
                "the call list has no array (expected a bare array or items/data/results/voiceCalls){}",
                excerpt(&body)
            ))),
        }
    }

    fn call_url(&self, id: &str, tail: Option<&str>) -> Result<reqwest::Url, SourceError> {
        let mut url = self.http.url(&self.base_url, "/api/v1/voice-calls")?;
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| self.protocol("base_url cannot take a path".into()))?;
            segs.push(id);
            if let Some(t) = tail {
                segs.push(t);
            }
        }
        Ok(url)
    }

    /// A call's detail (with its transcript) as received; `None` when the API says 404.
    pub async fn detail(&self, id: &str) -> Result<Option<Bytes>, SourceError> {
        let url = self.call_url(id, None)?;
        self.get_optional(&url).await
    }

    /// A fresh signed recording URL (valid about 15 minutes); `None` when the API says 404.
    pub async fn recording_url(&self, id: &str) -> Result<Option<String>, SourceError> {
        let url = self.call_url(id, Some("recording-url"))?;
        let Some(body) = self.get_optional(&url).await? else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            self.protocol(format!("the recording URL answer of {id} is not JSON: {e}"))
        })?;
        match v.get("recordingUrl").and_then(|u| u.as_str()) {
            Some(u) => Ok(Some(u.to_string())),
            None => Err(self.protocol(format!(
                "the recording URL answer of {id} has no recordingUrl"
            ))),
        }
    }

    /// A call's EPA results; `None` when the API says 404 (no survey).
    pub async fn epa_results(&self, id: &str) -> Result<Option<EpaResults>, SourceError> {
        let url = self.call_url(id, Some("epa-results"))?;
        match self.get_optional(&url).await? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| self.protocol(format!("EPA results of {id} are not valid: {e}"))),
        }
    }

    async fn get_optional(&self, url: &reqwest::Url) -> Result<Option<Bytes>, SourceError> {
        let r = self.http.get(url).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(HttpError::Status {
                source_name: self.source_name().to_string(),
                status: r.status.as_u16(),
                url: redact_url(url),
                detail: excerpt(&r.body),
            }
            .into());
        }
        Ok(Some(r.body))
    }
}
