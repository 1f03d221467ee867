//! HTTP requests to Voicegain's `GET /sa/call` export.

use bytes::Bytes;
use reqwest::header::AUTHORIZATION;

use crate::http::HttpClient;
use crate::secret::Secret;
use crate::sources::SourceError;

use super::VoicegainConfig;

/// Voicegain's API, bound to one source.
pub struct VoicegainClient {
    http: HttpClient,
    base_url: String,
    per_page: u32,
}

impl VoicegainClient {
    /// Builds the client; the JWT goes into `Authorization: Bearer`.
    pub fn new(
        source_name: &str,
        cfg: &VoicegainConfig,
        token: &Secret,
    ) -> Result<Self, SourceError> {
        let bearer = Secret::new(format!("Bearer {}", token.expose()));
        Ok(VoicegainClient {
            http: HttpClient::new(source_name, &cfg.http, Some((AUTHORIZATION, bearer)))?,
            base_url: cfg.base_url.clone(),
            per_page: cfg.per_page,
        })
    }

    /// The source name, for errors.
    pub fn source_name(&self) -> &str {
        self.http.source_name()
    }

    /// One page of the consecutive export after `after_call_id` (no sort parameters: the
    /// vendor answers 400 to sorting together with `consecutive=true`).
    pub async fn consecutive_page(&self, after_call_id: u64) -> Result<Bytes, SourceError> {
        let mut url = self.http.url(&self.base_url, "/sa/call")?;
        url.query_pairs_mut()
            .append_pair("format", "csv")
            .append_pair("consecutive", "true")
            .append_pair("afterCallId", &after_call_id.to_string())
            .append_pair("per_page", &self.per_page.to_string())
            .append_pair("page", "1");
        Ok(self.http.get_ok(&url).await?.body)
    }

    /// One page of the calls started in `[from_time, to_time]` (RFC 3339), for backfill:
    /// no `consecutive`, so unfinished calls are listed too.
    pub async fn range_page(
        &self,
        from_time: &str,
        to_time: &str,
        page: u32,
    ) -> Result<Bytes, SourceError> {
        let mut url = self.http.url(&self.base_url, "/sa/call")?;
        url.query_pairs_mut()
            .append_pair("format", "csv")
            .append_pair("fromTime", from_time)
            .append_pair("toTime", to_time)
            .append_pair("per_page", &self.per_page.to_string())
            .append_pair("page", &page.to_string());
        Ok(self.http.get_ok(&url).await?.body)
    }
}
