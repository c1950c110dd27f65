//! The error body of the Media API: `{"status", "code", "message", "more_info"}`. Clients read
//! `code` and `message`, so every refusal, the origin's and the proxy's, uses this shape.

use serde::{Deserialize, Serialize};

/// Error codes. Where the Media API has a code for the case, it is used as is so clients need no
/// new handling; the 91xxx codes are mediagate's own and listed in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 20003: missing or wrong HTTP Basic credentials (Twilio's).
    Authenticate,
    /// 4000: malformed SID in the path (Twilio's).
    InvalidSid,
    /// 4041: no such media (Twilio's).
    MediaNotFound,
    /// 20404: no such resource (Twilio's).
    ResourceNotFound,
    /// 91400: the request is malformed (bad parameter, body or header).
    BadRequest,
    /// 91401: no valid bearer token for the sidecar.
    Unauthorized,
    /// 91403: this token may not use this service, or the service is not allowed.
    ForbiddenService,
    /// 91405: a Media API path with a method it does not serve.
    MethodNotAllowed,
    /// 91413: the upload is larger than allowed.
    TooLarge,
    /// 91420: an upload without a media type.
    ContentTypeMissing,
    /// 91421: an upload of a type the policy does not allow.
    TypeNotAllowed,
    /// 91422: an upload whose first bytes disagree with its declared type, or an executable.
    SniffMismatch,
    /// 91423: Content-Size and Content-Length disagree, are malformed, or the body does not match.
    SizeMismatch,
    /// 91429: the service's uploads per minute are used up.
    QuotaUploads,
    /// 91430: the service's bytes per hour are used up.
    QuotaBytes,
    /// 91431: the service has as many uploads in flight as it may.
    QuotaConcurrency,
    /// 91503: the quota backend cannot be reached and the configuration says deny.
    QuotaBackend,
    /// 91424: an `Idempotency-Key` used again with a different body.
    IdempotencyConflict,
    /// 91409: a repeated `Idempotency-Key` whose first upload is still running after long.
    IdempotencyPending,
    /// 91408: a request head that did not arrive within `server.head_timeout`, or a body slower
    /// than `server.min_body_rate` or silent for 60 s (pingora's limit on each read).
    HeadTimeout,
    /// 91432: a request head over `server.max_head_size` or `server.max_headers`.
    HeadTooLarge,
    /// 91533: more client connections than `server.max_connections`.
    TooManyConnections,
    /// 91410: a temporary URL whose signature is wrong or expired.
    UrlExpired,
    /// 91500: something failed inside mediagate.
    Internal,
    /// 91502: the upstream could not be reached or broke the connection.
    UpstreamUnavailable,
    /// 91504: the upstream did not answer in time.
    UpstreamTimeout,
}

impl ErrorCode {
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::Authenticate => 20003,
            ErrorCode::InvalidSid => 4000,
            ErrorCode::MediaNotFound => 4041,
            ErrorCode::ResourceNotFound => 20404,
            ErrorCode::BadRequest => 91400,
            ErrorCode::Unauthorized => 91401,
            ErrorCode::ForbiddenService => 91403,
            ErrorCode::MethodNotAllowed => 91405,
            ErrorCode::TooLarge => 91413,
            ErrorCode::ContentTypeMissing => 91420,
            ErrorCode::TypeNotAllowed => 91421,
            ErrorCode::SniffMismatch => 91422,
            ErrorCode::SizeMismatch => 91423,
            ErrorCode::IdempotencyConflict => 91424,
            ErrorCode::HeadTimeout => 91408,
            ErrorCode::IdempotencyPending => 91409,
            ErrorCode::HeadTooLarge => 91432,
            ErrorCode::TooManyConnections => 91533,
            ErrorCode::QuotaUploads => 91429,
            ErrorCode::QuotaBytes => 91430,
            ErrorCode::QuotaConcurrency => 91431,
            ErrorCode::QuotaBackend => 91503,
            ErrorCode::UrlExpired => 91410,
            ErrorCode::Internal => 91500,
            ErrorCode::UpstreamUnavailable => 91502,
            ErrorCode::UpstreamTimeout => 91504,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub status: u16,
    pub code: u32,
    pub message: String,
    pub more_info: String,
}

impl ApiError {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> ApiError {
        let code = code.number();
        let more_info = if code < 90000 {
            format!("https://www.twilio.com/docs/errors/{code}")
        } else {
            format!("mediagate error {code}: see the README, section Error codes")
        };
        ApiError {
            status,
            code,
            message: message.into(),
            more_info,
        }
    }

    pub fn authenticate() -> ApiError {
        ApiError::new(401, ErrorCode::Authenticate, "Authenticate")
    }

    pub fn invalid_sid() -> ApiError {
        ApiError::new(400, ErrorCode::InvalidSid, "Invalid URI parameter: Sid")
    }

    pub fn media_not_found() -> ApiError {
        ApiError::new(404, ErrorCode::MediaNotFound, "Media not found")
    }

    pub fn resource_not_found() -> ApiError {
        ApiError::new(
            404,
            ErrorCode::ResourceNotFound,
            "The requested resource was not found",
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            ErrorCode::MethodNotAllowed,
            "Method not allowed on this resource",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, ErrorCode::BadRequest, message)
    }

    pub fn too_large(limit: u64) -> ApiError {
        ApiError::new(
            413,
            ErrorCode::TooLarge,
            format!("Media is larger than the maximum of {limit} bytes"),
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(500, ErrorCode::Internal, "Internal error")
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing four plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}
