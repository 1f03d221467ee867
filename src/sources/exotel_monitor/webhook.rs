//! What the webhook intake needs from this kind: the delivery identity of a callback
//! (`LegSid` + `EventType`), or why the body is unusable.

use super::model::LegCallback;

/// The unique delivery key of a StatusCallback body.
pub fn delivery_key(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    LegCallback::parse(content_type, body)?.delivery_key()
}
