//! The session side of idempotent uploads (see `crate::idempotency`): reading a repeat's body to
//! compare it with the first's, and answering it with the first upload's answer.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::idempotency::{Answer, BodyHasher};

/// The header a client names its upload with.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Marks an answer that is the first upload's, sent again.
const REPLAYED: &str = "idempotent-replayed";

/// Reads a repeat's whole body and fingerprints it; `None` when it is longer than `max` bytes
/// (then it cannot be the first upload's, which the policy held to `max`).
pub async fn fingerprint(session: &mut Session, max: u64) -> Result<Option<[u8; 32]>> {
    let mut hasher = BodyHasher::default();
    let mut total = 0u64;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len() as u64;
        if total > max {
            return Ok(None);
        }
        hasher.update(&chunk);
    }
    Ok(Some(hasher.finish()))
}

/// Sends the first upload's answer.
pub async fn replay(session: &mut Session, answer: &Answer, request_id: &str) -> Result<()> {
    let mut header = ResponseHeader::build(answer.status, Some(5))?;
    header.insert_header(http::header::CONTENT_TYPE, answer.content_type.as_str())?;
    header.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    header.insert_header(REPLAYED, "true")?;
    header.insert_header("x-request-id", request_id)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::clone(&answer.body)), true)
        .await
}
