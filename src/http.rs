//! The one HTTP client every source uses: timeouts, retries with backoff and jitter,
//! `Retry-After`, and errors that name the source and status but never a secret.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tracing::{debug, warn};

use crate::secret::Secret;
use crate::settings::HttpConfig;

/// A failed request, after retries where retrying made sense.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("source {source_name}: the vendor rejected the credential (HTTP {status}){detail}")]
    Auth {
        source_name: String,
        status: u16,
        /// A short excerpt of the vendor's answer, prefixed with ": ", or empty.
        detail: String,
    },
    #[error("source {source_name}: HTTP {status} from {url}{detail}")]
    Status {
        source_name: String,
        status: u16,
        url: String,
        detail: String,
    },
    #[error("source {source_name}: giving up after {attempts} attempts on {url}: {last}")]
    Exhausted {
        source_name: String,
        attempts: u32,
        url: String,
        last: String,
    },
    #[error("source {source_name}: invalid URL {url}: {reason}")]
    Url {
        source_name: String,
        url: String,
        reason: String,
    },
}

impl HttpError {
    /// The HTTP status, when the vendor answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Auth { status, .. } | HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A complete response: the body is read whole (pages are bounded by the page size).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A client bound to one source: its name goes into every error and log line.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    source_name: String,
    policy: HttpConfig,
    auth: Option<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("source_name", &self.source_name)
            .field(
                "auth",
                &self.auth.as_ref().map(|(n, _)| (n.as_str(), "***")),
            )
            .finish()
    }
}

/// How a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Download {
    /// The body is in the file, synced.
    Done { bytes: u64 },
    /// The server answered this (non-retryable) status.
    Refused { status: u16 },
}

/// What to do with one attempt's outcome.
enum Outcome {
    Done(Response),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl HttpClient {
    /// Builds a client for `source_name` that sends `auth` (header name and secret value,
    /// e.g. `Authorization` and `Bearer <JWT>`) on every request.
    pub fn new(
        source_name: &str,
        policy: &HttpConfig,
        auth: Option<(HeaderName, Secret)>,
    ) -> Result<HttpClient, HttpError> {
        let inner = reqwest::Client::builder()
            .connect_timeout(policy.connect_timeout())
            .timeout(policy.timeout())
            .user_agent(concat!("callsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Url {
                source_name: source_name.to_string(),
                url: String::new(),
                reason: e.to_string(),
            })?;
        let auth = match auth {
            Some((name, secret)) => {
                let mut v = HeaderValue::from_str(secret.expose()).map_err(|_| HttpError::Url {
                    source_name: source_name.to_string(),
                    url: String::new(),
                    reason: "the credential contains characters not allowed in a header".into(),
                })?;
                v.set_sensitive(true);
                Some((name, v))
            }
            None => None,
        };
        Ok(HttpClient {
            inner,
            source_name: source_name.to_string(),
            policy: policy.clone(),
            auth,
        })
    }

    /// The source this client belongs to.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Parses `base` joined with `path` (base path kept, e.g. `https://h/v1` + `/sa/call`).
    pub fn url(&self, base: &str, path: &str) -> Result<Url, HttpError> {
        let joined = format!("{}{}", base.trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| HttpError::Url {
            source_name: self.source_name.clone(),
            url: joined,
            reason: e.to_string(),
        })
    }

    /// GET with retries. 2xx and non-retryable statuses other than 401/403 come back as a
    /// `Response` (the caller decides what a 404 means); 401/403 fail at once; 429, 5xx,
    /// timeouts and dropped connections are retried until `max_attempts`.
    pub async fn get(&self, url: &Url) -> Result<Response, HttpError> {
        self.request(url, None).await
    }

    /// POST of a JSON body, with the same retries as `get` (callers make the request safe to
    /// repeat: a retried POST may reach the vendor twice).
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<Response, HttpError> {
        self.request(url, Some(body)).await
    }

    async fn request(
        &self,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, HttpError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.attempt(url, body).await?;
            match outcome {
                Outcome::Done(r) => return Ok(r),
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    self.back_off(url, attempt, reason, retry_after).await?;
                }
            }
        }
    }

    /// GET that also treats any non-2xx answer as an error.
    pub async fn get_ok(&self, url: &Url) -> Result<Response, HttpError> {
        let r = self.get(url).await?;
        if r.status.is_success() {
            Ok(r)
        } else {
            Err(HttpError::Status {
                source_name: self.source_name.clone(),
                status: r.status.as_u16(),
                url: redact_url(url),
                detail: excerpt(&r.body),
            })
        }
    }

    /// Streams a GET's body into `dest` (created or truncated per attempt), with the same
    /// retries as `get`. Any other non-2xx status, 401/403 included, comes back as
    /// `Download::Refused` for the caller to judge (a signed URL answers 403 once expired).
    pub async fn download(&self, url: &Url, dest: &std::path::Path) -> Result<Download, HttpError> {
        use tokio::io::AsyncWriteExt;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (reason, retry_after) = match self.send(url, None).await {
                Err(e) => (describe(&e), None),
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(retry) = retryable(status, resp.headers()) {
                        retry
                    } else if !status.is_success() {
                        return Ok(Download::Refused {
                            status: status.as_u16(),
                        });
                    } else {
                        let io = |e: std::io::Error| HttpError::Url {
                            source_name: self.source_name.clone(),
                            url: dest.display().to_string(),
                            reason: format!("writing the download: {e}"),
                        };
                        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
                        let mut resp = resp;
                        let mut bytes = 0u64;
                        let streamed = loop {
                            match resp.chunk().await {
                                Ok(Some(chunk)) => {
                                    bytes += chunk.len() as u64;
                                    file.write_all(&chunk).await.map_err(io)?;
                                }
                                Ok(None) => break Ok(()),
                                Err(e) => break Err(describe(&e)),
                            }
                        };
                        match streamed {
                            Ok(()) => {
                                file.sync_all().await.map_err(io)?;
                                return Ok(Download::Done { bytes });
                            }
                            Err(reason) => (format!("reading the body: {reason}"), None),
                        }
                    }
                }
            };
            self.back_off(url, attempt, reason, retry_after).await?;
        }
    }

    /// After a failed attempt: give up once `max_attempts` is reached, else wait (backoff or
    /// the vendor's `Retry-After`) before the next one.
    async fn back_off(
        &self,
        url: &Url,
        attempt: u32,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Result<(), HttpError> {
        if attempt >= self.policy.max_attempts {
            return Err(HttpError::Exhausted {
                source_name: self.source_name.clone(),
                attempts: attempt,
                url: redact_url(url),
                last: reason,
            });
        }
        let delay = self.delay(attempt, retry_after);
        crate::telemetry::http_retry(&self.source_name);
        warn!(
            source = %self.source_name,
            attempt,
            delay_ms = delay.as_millis() as u64,
            reason = %reason,
            "Request failed, retrying."
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn send(
        &self,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = match body {
            None => self.inner.get(url.clone()),
            Some(b) => self
                .inner
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string()),
        };
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.clone());
        }
        let method = if body.is_some() { "POST" } else { "GET" };
        debug!(source = %self.source_name, method, url = %redact_url(url), "Request.");
        let r = req.send().await;
        crate::telemetry::http_response(
            &self.source_name,
            r.as_ref().ok().map(|r| r.status().as_u16()),
        );
        r
    }

    async fn attempt(
        &self,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Outcome, HttpError> {
        let resp = match self.send(url, body).await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Outcome::Retry {
                    reason: describe(&e),
                    retry_after: None,
                });
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(HttpError::Auth {
                source_name: self.source_name.clone(),
                status: status.as_u16(),
                detail: excerpt(&body),
            });
        }
        if let Some((reason, retry_after)) = retryable(status, &headers) {
            return Ok(Outcome::Retry {
                reason,
                retry_after,
            });
        }
        match resp.bytes().await {
            Ok(body) => Ok(Outcome::Done(Response {
                status,
                headers,
                body,
            })),
            Err(e) => Ok(Outcome::Retry {
                reason: format!("reading the body: {}", describe(&e)),
                retry_after: None,
            }),
        }
    }

    /// Exponential backoff with full jitter, or the vendor's `Retry-After` (capped).
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = Duration::from_millis(self.policy.backoff_max_ms);
        if let Some(ra) = retry_after {
            return ra.min(cap);
        }
        let base = self
            .policy
            .backoff_initial_ms
            .saturating_mul(1u64 << (attempt - 1).min(20));
        let ceiling = base.min(self.policy.backoff_max_ms);
        // Half fixed, half random: never zero, never in lock step with other clients.
        let half = ceiling / 2;
        Duration::from_millis(half + fastrand::u64(0..=half.max(1)))
    }
}

/// For 429 and 5xx: the retry reason and the vendor's `Retry-After`, if any.
fn retryable(status: StatusCode, headers: &HeaderMap) -> Option<(String, Option<Duration>)> {
    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
        return None;
    }
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    Some((format!("HTTP {}", status.as_u16()), retry_after))
}

/// `Retry-After` as seconds; HTTP-date forms are ignored (backoff applies instead).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The URL without its query string: queries may carry vendor parameters that users
/// consider sensitive, and they make log lines long.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped"
    } else {
        "request failed"
    };
    // The error's URL is stripped: the source error text is enough.
    let mut msg = kind.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    if let Some(s) = src.take() {
        msg.push_str(&format!(": {s}"));
    }
    msg
}

/// At most 200 characters of a vendor's answer, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let short: String = text.chars().take(200).collect();
    format!(": {short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after_with_a_cap() {
        let policy = HttpConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..HttpConfig::default()
        };
        let c = HttpClient::new("s", &policy, None).unwrap();
        for _ in 0..50 {
            let d1 = c.delay(1, None).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d8 = c.delay(8, None).as_millis();
            assert!((500..=1000).contains(&d8), "{d8}");
        }
        assert_eq!(
            c.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn debug_output_hides_the_credential() {
        let c = HttpClient::new(
            "s",
            &HttpConfig::default(),
            Some((reqwest::header::AUTHORIZATION, Secret::new("Bearer sekrit"))),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
