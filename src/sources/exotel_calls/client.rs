//! HTTP requests to Exotel's Bulk Call Details API (`GET /v1/Accounts/<sid>/Calls.json`) with
//! HTTP Basic auth (API key : API token): one window's pages, oldest first, following the
//! cursor in `Metadata`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use reqwest::header::{AUTHORIZATION, HeaderName};

use crate::http::{HttpClient, excerpt};
use crate::secret::Secret;
use crate::settings::{Problems, validate_base_url, validate_secret};
use crate::sources::{SourceError, secret_from};

use super::model::CallsAnswer;

/// Checks the keys of an Exotel account that every Exotel pull kind has: `account_sid`,
/// `base_url`, and the API key and token as `<name>_env` or `<name>_file`.
pub fn validate_account(
    table: &str,
    account_sid: &str,
    base_url: &str,
    key: (&Option<String>, &Option<PathBuf>),
    token: (&Option<String>, &Option<PathBuf>),
    problems: &mut Problems,
) {
    validate_base_url(table, base_url, problems);
    validate_secret(table, "api_key", key.0, key.1, problems);
    validate_secret(table, "api_token", token.0, token.1, problems);
    if account_sid.trim().is_empty() {
        problems.push(table, Some("account_sid"), "must not be empty");
    }
}

/// The `Authorization: Basic …` header of an Exotel API key and token.
pub fn basic_auth(
    source_name: &str,
    key: (&Option<String>, &Option<PathBuf>),
    token: (&Option<String>, &Option<PathBuf>),
) -> Result<(HeaderName, Secret), SourceError> {
    use base64::Engine;
    let key = secret_from(source_name, key.0, key.1)?;
    let token = secret_from(source_name, token.0, token.1)?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        key.expose(),
        token.expose()
    ));
    Ok((AUTHORIZATION, Secret::new(format!("Basic {basic}"))))
}

/// A UTC time as the account's local `YYYY-MM-DD HH:MM:SS` (what `DateCreated=` compares).
pub fn local_text(tz: Tz, t: DateTime<Utc>) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The call-details API of one account, bound to one source.
pub struct CallsClient {
    http: HttpClient,
    base_url: String,
    path: String,
    tz: Tz,
}

impl CallsClient {
    /// Builds the client for `account_sid` (times in `tz`).
    pub fn new(
        source_name: &str,
        base_url: &str,
        account_sid: &str,
        http: &crate::settings::HttpConfig,
        auth: (HeaderName, Secret),
        tz: Tz,
    ) -> Result<Self, SourceError> {
        Ok(CallsClient {
            http: HttpClient::new(source_name, http, Some(auth))?,
            base_url: base_url.to_string(),
            path: format!("/v1/Accounts/{account_sid}/Calls.json"),
            tz,
        })
    }

    /// The source name, for errors.
    pub fn source_name(&self) -> &str {
        self.http.source_name()
    }

    /// The first page's query of the window `[from, to)`: created from `from` to the last
    /// second before `to` (both bounds of `DateCreated` are inclusive), oldest first.
    pub fn first_query(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        page_size: u32,
    ) -> Vec<(String, String)> {
        let last = (to - chrono::Duration::seconds(1)).max(from);
        vec![
            (
                "DateCreated".into(),
                format!(
                    "gte:{};lte:{}",
                    local_text(self.tz, from),
                    local_text(self.tz, last)
                ),
            ),
            ("SortBy".into(), "DateCreated:asc".into()),
            ("PageSize".into(), page_size.to_string()),
        ]
    }

    /// The page `query` names (`first_query`, then each `next_query`).
    pub async fn page(&self, query: &[(String, String)]) -> Result<CallsAnswer, SourceError> {
        let mut url = self.http.url(&self.base_url, &self.path)?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = self.http.get_ok(&url).await?.body;
        serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
            source_name: self.source_name().to_string(),
            reason: format!(
                "the call-details answer is not {{\"Metadata\": …, \"Calls\": [...]}}: {e}{}",
                excerpt(&body)
            ),
        })
    }

    /// The query of the page after `answer`, `None` on the last page. `NextPageUri` is
    /// relative to the vendor's host: only its query is taken, on our own path (so a
    /// `base_url` with a path prefix, a proxy, keeps working), over the current query (a
    /// filter it leaves out stays); without the field, an `After` cursor is added to the
    /// current query. An explicit `"NextPageUri": null` ends the window (the vendor's word
    /// that this is the last page), whatever `After` holds.
    pub fn next_query(
        &self,
        current: &[(String, String)],
        answer: &CallsAnswer,
    ) -> Option<Vec<(String, String)>> {
        let m = &answer.metadata;
        // An explicit `"NextPageUri": null` is the last page, whatever `After` holds.
        if m.next_page_uri == Some(None) {
            return None;
        }
        if let Some(uri) = m
            .next_page_uri
            .as_ref()
            .and_then(|u| u.as_deref())
            .filter(|u| !u.trim().is_empty())
        {
            let query = uri.split_once('?').map_or("", |(_, q)| q);
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if !pairs.is_empty() {
                let mut q: Vec<(String, String)> = current
                    .iter()
                    .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
                    .cloned()
                    .collect();
                q.extend(pairs);
                return Some(q);
            }
        }
        let after = match &m.after {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return None,
        };
        let mut q: Vec<(String, String)> = current
            .iter()
            .filter(|(k, _)| k != "After")
            .cloned()
            .collect();
        q.push(("After".into(), after));
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> CallsClient {
        let auth = (AUTHORIZATION, Secret::new("Basic x"));
        let http = crate::settings::HttpConfig::default();
        CallsClient::new(
            "ex",
            "http://127.0.0.1:9/exotel",
            "acct",
            &http,
            auth,
            chrono_tz::Asia::Kolkata,
        )
        .unwrap()
    }

    fn answer(metadata: serde_json::Value) -> CallsAnswer {
        serde_json::from_value(serde_json::json!({"Metadata": metadata, "Calls": []})).unwrap()
    }

    #[test]
    fn the_next_page_follows_next_page_uri_or_the_after_cursor_on_our_own_query() {
        let c = client();
        let t = crate::sources::window::parse_day("2026-11-01").unwrap();
        let first = c.first_query(t, t + chrono::Duration::days(1), 100);
        // Kolkata is 5 h 30 min ahead; the upper bound is the last second of the window.
        assert_eq!(
            first[0].1,
            "gte:2026-11-01 05:30:00;lte:2026-11-02 05:29:59"
        );
        let next = c
            .next_query(
                &first,
                &answer(serde_json::json!({"NextPageUri": "/v1/Accounts/acct/Calls.json?PageSize=100&After=abc%3D", "After": "abc="})),
            )
            .unwrap();
        assert!(next.contains(&("After".into(), "abc=".into())), "{next:?}");
        assert!(
            next.contains(&first[0]),
            "the date filter is kept: {next:?}"
        );
        assert_eq!(next.iter().filter(|(k, _)| k == "PageSize").count(), 1);
        // Without `NextPageUri` the `After` cursor leads on...
        let by_after = c
            .next_query(&next, &answer(serde_json::json!({"After": "def"})))
            .unwrap();
        assert_eq!(by_after.iter().filter(|(k, _)| k == "After").count(), 1);
        assert!(by_after.contains(&("After".into(), "def".into())));
        assert_eq!(
            c.next_query(&first, &answer(serde_json::json!({"NextPageUri": null}))),
            None
        );
        // ...and an explicit `null` ends the window even when the last page carries one.
        assert_eq!(
            c.next_query(
                &next,
                &answer(serde_json::json!({"NextPageUri": null, "After": "def"}))
            ),
            None
        );
    }
}
