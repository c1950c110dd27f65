//! Upload policy as plain functions over headers and the first body bytes: content type, sizes,
//! the multipart file part's head, magic-byte sniffing. Nothing here knows pingora: the proxy
//! hands in values and gets decisions (see `proxy::gateway` for where each runs).

mod content_type;
mod guard;
mod multipart;
mod sizes;
mod sniff;

use std::sync::Arc;

use http::HeaderMap;

pub use content_type::TypeMatcher;
pub use guard::UploadGuard;
// For the fuzz targets in fuzz/ (the parsers as such, outside a request).
pub use multipart::{boundary, find_file_part, FilePart, Scan};
pub use sizes::{declared, parse_decimal, Declared, SizeError};
pub use sniff::{check as sniff_check, executable, ENOUGH as SNIFF_ENOUGH, WINDOW as SNIFF_WINDOW};

use content_type::essence;
use guard::Inspector;

use crate::api::{RejectReason, ServiceSid};
use crate::config::{Config, Uploads};

/// One service's upload rules, compiled once from `uploads` (and the service's overrides).
#[derive(Debug)]
pub struct UploadRules {
    pub max_size: u64,
    pub types: TypeMatcher,
    pub sniff: bool,
    pub require_content_size: bool,
}

impl UploadRules {
    pub fn new(uploads: &Uploads) -> UploadRules {
        UploadRules {
            max_size: uploads.max_size.bytes(),
            types: TypeMatcher::new(&uploads.allowed_types),
            sniff: uploads.sniff,
            require_content_size: uploads.require_content_size,
        }
    }
}

/// The upload rules of every service: the defaults, and each listed service's own.
#[derive(Debug)]
pub struct UploadPolicies {
    default: Arc<UploadRules>,
    per_service: std::collections::HashMap<ServiceSid, Arc<UploadRules>>,
}

impl UploadPolicies {
    pub fn new(config: &Config) -> UploadPolicies {
        UploadPolicies {
            default: Arc::new(UploadRules::new(&config.uploads)),
            per_service: config
                .services
                .keys()
                .map(|sid| (*sid, Arc::new(UploadRules::new(&config.uploads_for(sid)))))
                .collect(),
        }
    }

    pub fn for_service(&self, service: &ServiceSid) -> &Arc<UploadRules> {
        self.per_service.get(service).unwrap_or(&self.default)
    }
}

/// A refused upload: the reason of the contract and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    pub fn too_large(limit: u64) -> Refusal {
        Refusal::new(
            RejectReason::TooLarge,
            format!("the upload is larger than the {limit} bytes allowed"),
        )
    }

    pub fn type_not_allowed(essence: &str) -> Refusal {
        Refusal::new(
            RejectReason::TypeNotAllowed,
            format!("uploads of type {essence} are not allowed"),
        )
    }
}

/// Judges an upload's head. On success, the guard to follow its body with; it holds an
/// inspector when the first bytes must be seen before the upload may go upstream.
pub fn check_head(rules: &Arc<UploadRules>, headers: &HeaderMap) -> Result<UploadGuard, Refusal> {
    refuse_judged_headers_dropped(headers)?;
    let declared =
        sizes::declared(headers).map_err(|e| Refusal::new(RejectReason::SizeMismatch, e.0))?;
    if rules.require_content_size && declared.content_size.is_none() {
        return Err(Refusal::new(
            RejectReason::SizeMismatch,
            "a Content-Size header is required",
        ));
    }
    if declared
        .expected()
        .is_some_and(|size| size > rules.max_size)
    {
        return Err(Refusal::too_large(rules.max_size));
    }
    let inspector = inspector_for(rules, headers)?;
    Ok(UploadGuard::new(rules, declared, inspector))
}

/// A proxy removes the headers its `Connection` header names (RFC 9110 7.6.1), so a client
/// naming one the policy judges would have the upstream receive an upload other than the one
/// judged: a form without its type is stored whole, as an untyped file.
fn refuse_judged_headers_dropped(headers: &HeaderMap) -> Result<(), Refusal> {
    for value in headers.get_all(http::header::CONNECTION) {
        let options = value.to_str().unwrap_or("").split(',').map(str::trim);
        for option in options {
            let reason = if option.eq_ignore_ascii_case("content-type") {
                RejectReason::ContentTypeMissing
            } else if option.eq_ignore_ascii_case("content-size")
                || option.eq_ignore_ascii_case("content-length")
            {
                RejectReason::SizeMismatch
            } else {
                continue;
            };
            return Err(Refusal::new(
                reason,
                format!("the Connection header names {option}, which the upload needs upstream"),
            ));
        }
    }
    Ok(())
}

/// The upload's type from its head: a raw upload's is checked now; a form's is in its body.
fn inspector_for(
    rules: &Arc<UploadRules>,
    headers: &HeaderMap,
) -> Result<Option<Inspector>, Refusal> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let value = values.next().and_then(|v| v.to_str().ok()).unwrap_or("");
    // Upstreams differ on which of two they take, or join them: only one is ever judged.
    if values.next().is_some() {
        return Err(Refusal::new(
            RejectReason::ContentTypeMissing,
            "the upload has more than one Content-Type",
        ));
    }
    let missing = || {
        Refusal::new(
            RejectReason::ContentTypeMissing,
            "the upload has no Content-Type",
        )
    };
    let essence = essence(value).ok_or_else(missing)?;
    if content_type::is_multipart_form(&essence) {
        let boundary = boundary(value).ok_or_else(|| {
            Refusal::new(
                RejectReason::ContentTypeMissing,
                "multipart/form-data without a usable boundary (1 to 70 letters, digits or '()+_,-./:=?)",
            )
        })?;
        return Ok(Some(Inspector::multipart(rules.clone(), boundary)));
    }
    if essence == content_type::FORM_DEFAULT {
        return Err(missing());
    }
    if !rules.types.allows(&essence) {
        return Err(Refusal::type_not_allowed(&essence));
    }
    Ok(rules.sniff.then(|| Inspector::raw(rules.clone(), essence)))
}

#[cfg(test)]
mod tests;
