//! What the webhook intake needs from this kind: the delivery identity of a callback
//! (`LegSid` + `EventType`), or why the body is unusable.

use super::model::LegCallback;
use crate::sources::Received;

/// A StatusCallback body: its unique delivery key (`LegSid:EventType`).
pub fn receive(content_type: Option<&str>, body: &[u8]) -> Result<Received, String> {
    Ok(Received {
        key: LegCallback::parse(content_type, body)?.delivery_key()?,
        job: None,
    })
}
