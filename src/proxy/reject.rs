//! Refusals the sidecar answers itself: the Media API's error JSON, the `Mediagate-Reject`
//! header with the reason of spec/config.md, and a closed connection when the body went unread.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::api::{ApiError, ErrorCode, RouteError};

/// The `Mediagate-Reject` reasons this build can give (spec/config.md lists the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Unauthorized,
    ForbiddenService,
    BadSid,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::ForbiddenService => "forbidden_service",
            RejectReason::BadSid => "bad_sid",
        }
    }
}

/// A refusal: the error to send and, for policy refusals, the reason header.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub error: ApiError,
    pub reason: Option<RejectReason>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Rejection {
    pub fn new(error: ApiError, reason: RejectReason) -> Rejection {
        Rejection {
            error,
            reason: Some(reason),
            allow: None,
        }
    }

    pub fn unauthorized() -> Rejection {
        Rejection::new(
            ApiError::new(
                401,
                ErrorCode::Unauthorized,
                "A valid bearer token for this sidecar is required",
            ),
            RejectReason::Unauthorized,
        )
    }

    pub fn forbidden_service() -> Rejection {
        Rejection::new(
            ApiError::new(
                403,
                ErrorCode::ForbiddenService,
                "This service may not be used through this sidecar",
            ),
            RejectReason::ForbiddenService,
        )
    }

    pub fn from_route(error: RouteError) -> Rejection {
        match error {
            RouteError::BadSid => Rejection::new(ApiError::invalid_sid(), RejectReason::BadSid),
            RouteError::NotFound => Rejection {
                error: ApiError::resource_not_found(),
                reason: None,
                allow: None,
            },
            RouteError::MethodNotAllowed(allow) => Rejection {
                error: ApiError::method_not_allowed(),
                reason: None,
                allow: Some(allow),
            },
        }
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

pub async fn send(session: &mut Session, rejection: &Rejection) -> Result<()> {
    let mut extra = Vec::with_capacity(2);
    if let Some(reason) = rejection.reason {
        extra.push(("Mediagate-Reject", reason.label()));
    }
    if let Some(allow) = rejection.allow {
        extra.push(("Allow", allow));
    }
    respond(session, &rejection.error, &extra).await
}
