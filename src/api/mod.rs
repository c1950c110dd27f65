//! The Media API's vocabulary, shared by the proxy and the origin: SIDs, routes, the Media JSON
//! and the error body (see shared/spec/media-api.md).

mod error;
mod media;
mod reject;
mod route;
mod sid;

pub use error::{ApiError, ErrorCode};
pub use media::{Links, Media, MediaSetItem, MediaSetRecord, MediaSetRequest};
pub use reject::RejectReason;
pub use route::{Route, RouteError, RouteKind};
pub use sid::{AccountSid, MediaSid, ServiceSid, Sid, SidKind};

/// The largest upload the Media API accepts: 150 MB as the upstream counts them (150 MiB).
pub const MAX_MEDIA_SIZE: u64 = 157_286_400;

/// How long a `content_direct_temporary` URL stays valid, in seconds.
pub const TEMPORARY_URL_TTL_SECS: u64 = 300;
