//! Refusals the sidecar answers itself: the Media API's error JSON, the `Mediagate-Reject`
//! header with the reason of spec/config.md, and a closed connection when the body went unread.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::api::{ApiError, RejectReason, RouteError};
use crate::policy::Refusal;
use crate::quota::OverQuota;

/// A refusal: the error to send and, for policy refusals, the reason header.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub error: ApiError,
    pub reason: Option<RejectReason>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// The `Retry-After` header, in whole seconds.
    pub retry_after: Option<u64>,
}

impl Rejection {
    pub fn new(error: ApiError, reason: RejectReason) -> Rejection {
        Rejection {
            error,
            reason: Some(reason),
            allow: None,
            retry_after: None,
        }
    }

    /// A refusal for one of the contract's reasons, with its status and code.
    pub fn because(reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection::new(
            ApiError::new(reason.status(), reason.code(), message),
            reason,
        )
    }

    /// An upload over its service's quota: 429 with `Retry-After`.
    pub fn over_quota(over: &OverQuota) -> Rejection {
        Rejection {
            retry_after: Some(over.retry_after),
            ..Rejection::because(over.reason, over.message())
        }
    }

    /// The quota backend is down and the configuration says deny: 503, try again in a second.
    pub fn quota_backend() -> Rejection {
        Rejection {
            retry_after: Some(1),
            ..Rejection::because(
                RejectReason::QuotaBackend,
                "Upload quotas cannot be checked right now",
            )
        }
    }

    /// A refusal with no reason of the contract: the error alone.
    pub fn plain(error: ApiError) -> Rejection {
        Rejection {
            error,
            reason: None,
            allow: None,
            retry_after: None,
        }
    }

    /// An upload whose first bytes could not be kept for the upstream after inspection.
    pub fn unreplayable() -> Rejection {
        Rejection::plain(ApiError::bad_request(
            "The request head and the first body bytes are too large to inspect",
        ))
    }

    pub fn unauthorized() -> Rejection {
        Rejection::because(
            RejectReason::Unauthorized,
            "A valid bearer token for this sidecar is required",
        )
    }

    pub fn forbidden_service() -> Rejection {
        Rejection::because(
            RejectReason::ForbiddenService,
            "This service may not be used through this sidecar",
        )
    }

    pub fn from_route(error: RouteError) -> Rejection {
        match error {
            RouteError::BadSid => Rejection::new(ApiError::invalid_sid(), RejectReason::BadSid),
            RouteError::NotFound => Rejection::plain(ApiError::resource_not_found()),
            RouteError::MethodNotAllowed(allow) => Rejection {
                allow: Some(allow),
                ..Rejection::plain(ApiError::method_not_allowed())
            },
        }
    }
}

impl From<Refusal> for Rejection {
    fn from(refusal: Refusal) -> Rejection {
        Rejection::because(refusal.reason, refusal.message)
    }
}

/// Writes `error` as the whole answer. When the request's body was not read, the connection is
/// closed after the answer rather than reused, so unread bytes are never taken for a request.
pub async fn respond(
    session: &mut Session,
    error: &ApiError,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let body = Bytes::from(error.to_json());
    let mut header = ResponseHeader::build(error.status, Some(4 + extra.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in extra {
        header.insert_header(*name, *value)?;
    }
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

pub async fn send(session: &mut Session, rejection: &Rejection, request_id: &str) -> Result<()> {
    let mut extra = Vec::with_capacity(4);
    extra.push(("X-Request-Id", request_id));
    let retry_after = rejection.retry_after.map(|s| s.to_string());
    if let Some(seconds) = &retry_after {
        extra.push(("Retry-After", seconds.as_str()));
    }
    if let Some(reason) = rejection.reason {
        extra.push(("Mediagate-Reject", reason.label()));
    }
    if let Some(allow) = rejection.allow {
        extra.push(("Allow", allow));
    }
    respond(session, &rejection.error, &extra).await
}

/// How much of an unread body is read and dropped after a refusal, and for how long at most.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what is left of the request body, within bounds, before the connection is
/// closed: closing on unread bytes makes the kernel send a reset, which can destroy the answer
/// before the client has read it.
pub async fn linger(session: &mut Session) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    while left > 0 && !session.is_body_done() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => left = left.saturating_sub(chunk.len()),
            _ => break,
        }
    }
}
