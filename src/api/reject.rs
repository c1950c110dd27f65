//! The reasons mediagate gives for saying no, as spec/config.md lists them: the value of the
//! `Mediagate-Reject` header and of the `reason` label of `mediagate_rejections_total`.

use super::ErrorCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Unauthorized,
    ForbiddenService,
    BadSid,
    ContentTypeMissing,
    TypeNotAllowed,
    SniffMismatch,
    SizeMismatch,
    TooLarge,
    QuotaUploads,
    QuotaBytes,
    QuotaConcurrency,
    QuotaBackend,
    /// A repeated `Idempotency-Key` with a different body.
    IdempotencyConflict,
}

impl RejectReason {
    pub const ALL: [RejectReason; 13] = [
        RejectReason::Unauthorized,
        RejectReason::ForbiddenService,
        RejectReason::BadSid,
        RejectReason::ContentTypeMissing,
        RejectReason::TypeNotAllowed,
        RejectReason::SniffMismatch,
        RejectReason::SizeMismatch,
        RejectReason::TooLarge,
        RejectReason::QuotaUploads,
        RejectReason::QuotaBytes,
        RejectReason::QuotaConcurrency,
        RejectReason::QuotaBackend,
        RejectReason::IdempotencyConflict,
    ];

    /// The header and label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::ForbiddenService => "forbidden_service",
            RejectReason::BadSid => "bad_sid",
            RejectReason::ContentTypeMissing => "content_type_missing",
            RejectReason::TypeNotAllowed => "type_not_allowed",
            RejectReason::SniffMismatch => "sniff_mismatch",
            RejectReason::SizeMismatch => "size_mismatch",
            RejectReason::TooLarge => "too_large",
            RejectReason::QuotaUploads => "quota_uploads",
            RejectReason::QuotaBytes => "quota_bytes",
            RejectReason::QuotaConcurrency => "quota_concurrency",
            RejectReason::QuotaBackend => "quota_backend",
            RejectReason::IdempotencyConflict => "idempotency_conflict",
        }
    }

    /// The HTTP status a refusal for this reason answers with.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::Unauthorized => 401,
            RejectReason::ForbiddenService => 403,
            RejectReason::BadSid
            | RejectReason::ContentTypeMissing
            | RejectReason::SizeMismatch => 400,
            RejectReason::TypeNotAllowed | RejectReason::SniffMismatch => 415,
            RejectReason::TooLarge => 413,
            RejectReason::QuotaUploads
            | RejectReason::QuotaBytes
            | RejectReason::QuotaConcurrency => 429,
            RejectReason::QuotaBackend => 503,
            RejectReason::IdempotencyConflict => 422,
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            RejectReason::Unauthorized => ErrorCode::Unauthorized,
            RejectReason::ForbiddenService => ErrorCode::ForbiddenService,
            RejectReason::BadSid => ErrorCode::InvalidSid,
            RejectReason::ContentTypeMissing => ErrorCode::ContentTypeMissing,
            RejectReason::TypeNotAllowed => ErrorCode::TypeNotAllowed,
            RejectReason::SniffMismatch => ErrorCode::SniffMismatch,
            RejectReason::SizeMismatch => ErrorCode::SizeMismatch,
            RejectReason::TooLarge => ErrorCode::TooLarge,
            RejectReason::QuotaUploads => ErrorCode::QuotaUploads,
            RejectReason::QuotaBytes => ErrorCode::QuotaBytes,
            RejectReason::QuotaConcurrency => ErrorCode::QuotaConcurrency,
            RejectReason::QuotaBackend => ErrorCode::QuotaBackend,
            RejectReason::IdempotencyConflict => ErrorCode::IdempotencyConflict,
        }
    }
}
