//! HTTP requests to `GET /insights/sessions`.

use chrono::{DateTime, Utc};
use reqwest::header::HeaderName;

use crate::http::{HttpClient, HttpError, excerpt};
use crate::secret::Secret;
use crate::sources::SourceError;

use super::model::SearchAnswer;

/// The insights API, bound to one source.
pub struct VonageClient {
    http: HttpClient,
    base_url: String,
}

/// Vendor times have no offset: callsync sends and reads them as UTC.
pub fn vendor_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

impl VonageClient {
    /// Builds the client; the key goes into `X-Vgai-Key`.
    pub fn new(
        source_name: &str,
        base_url: &str,
        http: &crate::settings::HttpConfig,
        key: Secret,
    ) -> Result<Self, SourceError> {
        Ok(VonageClient {
            http: HttpClient::new(
                source_name,
                http,
                Some((HeaderName::from_static("x-vgai-key"), key)),
            )?,
            base_url: base_url.to_string(),
        })
    }

    /// The source name, for errors.
    pub fn source_name(&self) -> &str {
        self.http.source_name()
    }

    /// One page of sessions starting in `[from, to]`, sorted by start time then id.
    pub async fn search(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        page_number: u32,
        page_size: u32,
    ) -> Result<SearchAnswer, SourceError> {
        let mut url = self.http.url(&self.base_url, "/insights/sessions")?;
        url.query_pairs_mut()
            .append_pair("from_date", &vendor_time(from))
            .append_pair("to_date", &vendor_time(to))
            .append_pair("page_number", &page_number.to_string())
            .append_pair("page_size", &page_size.to_string())
            // The second key keeps sessions with the same start time in one order across pages.
            .append_pair("sort_by", "session_start_time:asc,id:asc");
        let body = match self.http.get_ok(&url).await {
            Ok(r) => r.body,
            // The vendor answers an invalid date range with 401, like a bad key: its body says
            // which, so tell them apart.
            Err(HttpError::Auth { status, detail, .. })
                if detail.to_ascii_lowercase().contains("date")
                    || detail.to_ascii_lowercase().contains("range") =>
            {
                return Err(SourceError::Protocol {
                    source_name: self.source_name().to_string(),
                    reason: format!(
                        "the vendor refused the date range {} .. {} (HTTP {status}{detail}); the key itself was not rejected",
                        vendor_time(from),
                        vendor_time(to)
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
            source_name: self.source_name().to_string(),
            reason: format!("the search answer is not valid: {e}{}", excerpt(&body)),
        })
    }
}
