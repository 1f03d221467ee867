//! `callsync check`'s question to each kind: one cheap authenticated request that tells
//! whether the credential, host and parameters work, exporting nothing.

use super::{
    BoxFuture, SourceConfig, SourceError, exotel_analyze, exotel_calls, secret_from, voice_calls,
    voicegain, vonage_insights, window,
};

impl SourceConfig {
    /// One cheap authenticated request (the last hour's first record), with at most two
    /// attempts: whether the credential, host and parameters work. Exports nothing. `Ok` says
    /// what was checked.
    pub fn check<'a>(&'a self, source_name: &'a str) -> BoxFuture<'a, Result<String, SourceError>> {
        Box::pin(async move {
            let to = chrono::Utc::now();
            let from = to - chrono::Duration::hours(1);
            let quick = |h: &crate::settings::HttpConfig| crate::settings::HttpConfig {
                max_attempts: h.max_attempts.min(2),
                backoff_max_ms: h.backoff_max_ms.min(1000),
                backoff_initial_ms: h.backoff_initial_ms.min(1000),
                ..h.clone()
            };
            match self {
                SourceConfig::Voicegain(c) => {
                    let c = voicegain::VoicegainConfig {
                        per_page: 1,
                        http: quick(&c.http),
                        ..c.clone()
                    };
                    let token = secret_from(source_name, &c.token_env, &c.token_file)?;
                    let client = voicegain::client::VoicegainClient::new(source_name, &c, &token)?;
                    client
                        .range_page(&window::rfc3339(from), &window::rfc3339(to), 1)
                        .await?;
                }
                SourceConfig::VonageInsights(c) => {
                    let key = secret_from(source_name, &c.api_key_env, &c.api_key_file)?;
                    let client = vonage_insights::client::VonageClient::new(
                        source_name,
                        &c.base_url,
                        &quick(&c.http),
                        key,
                    )?;
                    client.search(from, to, 0, 1).await?;
                }
                // A monitor-leg source calls nothing: Exotel calls it. Its token must load.
                SourceConfig::ExotelMonitor(c) => {
                    secret_from(source_name, &c.webhook_token_env, &c.webhook_token_file)?;
                    return Ok(format!(
                        "webhook only: token loaded, URL /webhooks/{source_name}/…; nothing is called"
                    ));
                }
                // Analysis: one authenticated GET of the call-details API.
                SourceConfig::ExotelAnalyze(c) => {
                    let c = exotel_analyze::ExotelAnalyzeConfig {
                        http: quick(&c.http),
                        ..c.clone()
                    };
                    exotel_analyze::Analyzer::new(source_name, &c)?
                        .check()
                        .await?;
                    return Ok(format!(
                        "{} call-details API reached, credential accepted; webhook token loaded",
                        self.kind()
                    ));
                }
                SourceConfig::ExotelCalls(c) => {
                    let c = exotel_calls::ExotelCallsConfig {
                        http: quick(&c.http),
                        ..c.clone()
                    };
                    c.check(source_name).await?;
                    return Ok(format!(
                        "{} call-details API reached, credential accepted",
                        self.kind()
                    ));
                }
                SourceConfig::VoiceCalls(c) => {
                    let token = secret_from(source_name, &c.token_env, &c.token_file)?;
                    let client = voice_calls::client::VoiceCallsClient::new(
                        source_name,
                        &c.base_url,
                        &quick(&c.http),
                        &token,
                    )?;
                    client
                        .list(&window::rfc3339(from), &window::rfc3339(to), 1, 1)
                        .await?;
                }
            }
            Ok(format!("{} reached, credential accepted", self.kind()))
        })
    }
}
