//! Injectable faults: 429 with Retry-After, 5xx, slow replies and dropped connections.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{Shared, lock};

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// A 5xx status.
    ServerError(u16),
    /// The reply is delayed, then answered normally.
    Slow(Duration),
    /// The connection drops in the middle of the body.
    Drop,
}

/// Which requests fail: every `every`-th request gets the next kind, in turn.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// 0 disables faults.
    pub every: u64,
    pub kinds: Vec<FaultKind>,
}

impl FaultPlan {
    /// Every `every`-th request fails with each kind in turn.
    pub fn every(every: u64, kinds: Vec<FaultKind>) -> FaultPlan {
        FaultPlan { every, kinds }
    }
}

/// What a handler does about faults for this request.
pub enum Injected {
    /// Answer with this instead.
    Respond(Response),
    /// Answer normally, after the delay.
    Delay(Duration),
    /// Answer normally, but drop the connection in the middle of the body.
    DropBody,
    None,
}

/// Counts the request and decides whether it fails.
pub fn inject(shared: &Shared) -> Injected {
    let n = shared
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    let plan = lock(&shared.faults).clone();
    if plan.every == 0 || plan.kinds.is_empty() || !n.is_multiple_of(plan.every) {
        return Injected::None;
    }
    let kind = &plan.kinds[((n / plan.every) as usize) % plan.kinds.len()];
    match kind {
        FaultKind::TooManyRequests { retry_after_secs } => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string())
                    .unwrap_or(HeaderValue::from_static("1")),
            );
            Injected::Respond(r)
        }
        FaultKind::ServerError(code) => Injected::Respond(
            (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "simulated server error",
            )
                .into_response(),
        ),
        FaultKind::Slow(d) => Injected::Delay(*d),
        FaultKind::Drop => Injected::DropBody,
    }
}

/// Counts the request and applies its fault: `Err` is the answer to send instead, `Ok(true)`
/// asks the handler to answer with a body that breaks off (after any delay was slept).
pub async fn apply(shared: &Shared) -> Result<bool, Response> {
    match inject(shared) {
        Injected::Respond(r) => Err(r),
        Injected::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(false)
        }
        Injected::DropBody => Ok(true),
        Injected::None => Ok(false),
    }
}

/// A 200 whose body breaks off after a few bytes (the client sees a dropped connection).
pub fn dropped_body(content_type: &'static str, body: String) -> Response {
    let cut = body.len().min(16);
    let head = Bytes::copy_from_slice(&body.as_bytes()[..cut]);
    let stream = futures_util::stream::iter(vec![
        Ok::<Bytes, std::io::Error>(head),
        Err(std::io::Error::other("simulated dropped connection")),
    ]);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
