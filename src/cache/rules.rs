//! How long an answer may be kept, and whether at all: by kind, by the upstream's
//! `Cache-Control`, and for metadata by the temporary URL inside it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;

use super::Kind;
use crate::config::Config;

/// Metadata is dropped this long before the temporary URL inside it expires, so a client never
/// receives a URL it cannot use: Twilio's SDKs reuse a temporary URL for 180 s after they got
/// it, and 10 s more allow for clocks and transit. With the real service's 300 s URLs, metadata
/// may be kept up to 110 s (`cache.metadata_ttl` is 60 s by default).
pub const TEMPORARY_URL_MARGIN: Duration = Duration::from_secs(190);

/// The cache settings a request is served with (reloadable, as is the memory bound: `Cache::resize`).
#[derive(Clone, Debug)]
pub struct CachePolicy {
    pub enabled: bool,
    pub metadata_ttl: Duration,
    pub content_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_object: u64,
    pub follow_content_redirects: bool,
    pub response_header: bool,
}

impl CachePolicy {
    pub fn new(config: &Config) -> CachePolicy {
        let cache = &config.cache;
        CachePolicy {
            enabled: cache.enabled(),
            metadata_ttl: cache.metadata_ttl.get(),
            content_ttl: cache.content_ttl.get(),
            negative_ttl: cache.negative_ttl.get(),
            max_object: cache.max_object.bytes(),
            follow_content_redirects: cache.follow_content_redirects,
            response_header: cache.response_header,
        }
    }

    /// Whether requests of `kind` go through the cache. Content is only cached as the bytes
    /// the sidecar fetches itself; with `follow_content_redirects` off, the upstream's redirect
    /// (to a URL that expires) passes through uncached.
    pub fn serves(&self, kind: Kind) -> bool {
        self.enabled && (kind == Kind::Metadata || self.follow_content_redirects)
    }

    /// How long an answer may be kept, judged on its head; `Err` says why it may not be.
    pub fn ttl(&self, kind: Kind, response: &ResponseHeader) -> Result<Duration, NotKept> {
        if let Some(cc) = CacheControl::from_resp_headers(response) {
            if cc.no_store() || cc.private() || cc.no_cache() {
                return Err(NotKept::Forbidden);
            }
        }
        if !shareable(response) {
            return Err(NotKept::Personal);
        }
        let ttl = match response.status.as_u16() {
            200 => match kind {
                Kind::Metadata => self.metadata_ttl,
                Kind::Content => self.content_ttl,
            },
            404 if !self.negative_ttl.is_zero() => self.negative_ttl,
            _ => return Err(NotKept::Status),
        };
        match content_length(&response.headers) {
            Some(len) if len as u64 > self.max_object => return Err(NotKept::TooLarge),
            Some(_) => {}
            None if !is_chunked(&response.headers) => return Err(NotKept::Unframed),
            None => {}
        }
        let ttl = ttl.min(upstream_max_age(response).unwrap_or(Duration::MAX));
        if ttl.is_zero() {
            return Err(NotKept::Forbidden);
        }
        Ok(ttl)
    }
}

/// Whether one answer can serve every reader: not one that sets a cookie, that is encoded (the
/// proxy asks for `identity`; an upstream that encodes anyway would hand every reader what one
/// accepted), or that varies on anything but the encoding.
fn shareable(response: &ResponseHeader) -> bool {
    let headers = &response.headers;
    let encoded = headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let varies = headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|field| field.trim_ascii())
            .any(|field| !field.is_empty() && !field.eq_ignore_ascii_case(b"accept-encoding"))
    });
    !encoded && !varies && !headers.contains_key(http::header::SET_COOKIE)
}

/// Whether the body is chunked: its end is marked, unlike a body that runs to the connection's
/// close, where a connection cut short cannot be told from the end.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Why an answer is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotKept {
    /// It sets a cookie, is encoded, or varies by request headers (see `shareable`).
    Personal,
    /// `Cache-Control: no-store`, `private`, `no-cache` or a zero max-age.
    Forbidden,
    /// Only 200s (and 404s when `negative_ttl` is set) are kept.
    Status,
    /// Larger than `cache.max_object`.
    TooLarge,
    /// Neither `Content-Length` nor chunked: its body ends with the connection, so one cut
    /// short would be kept as whole.
    Unframed,
}

/// The upstream's `s-maxage` or `max-age`: an upper bound on our TTL.
fn upstream_max_age(response: &ResponseHeader) -> Option<Duration> {
    let cc = CacheControl::from_resp_headers(response)?;
    let secs = cc
        .s_maxage()
        .ok()
        .flatten()
        .or_else(|| cc.max_age().ok().flatten())?;
    Some(Duration::from_secs(u64::from(secs)))
}

pub fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The freshness an answer is stored with, now that its body is known: metadata never
/// outlives the temporary URL inside it (less `TEMPORARY_URL_MARGIN`). `None`: do not store.
pub fn fresh_until_with_body(
    kind: Kind,
    header: &ResponseHeader,
    fresh_until: SystemTime,
    body: &[u8],
) -> Option<SystemTime> {
    if kind != Kind::Metadata || header.status != http::StatusCode::OK {
        return Some(fresh_until);
    }
    let limit = match temporary_url_expiry(body) {
        Ok(Some(expires)) => expires.checked_sub(TEMPORARY_URL_MARGIN)?,
        Ok(None) => return Some(fresh_until),
        // Not the Media JSON: keep nothing we cannot read.
        Err(()) => return None,
    };
    let until = fresh_until.min(limit);
    (until > SystemTime::now()).then_some(until)
}

/// When the `links.content_direct_temporary` URL of a Media JSON expires (its `Expires` query
/// parameter, in epoch seconds). `Ok(None)`: the JSON holds no temporary URL; `Err`: the body
/// is not a Media JSON, or the URL has no readable `Expires`.
fn temporary_url_expiry(body: &[u8]) -> Result<Option<SystemTime>, ()> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|_| ())?;
    let Some(url) = json
        .get("links")
        .and_then(|links| links.get("content_direct_temporary"))
        .and_then(|url| url.as_str())
    else {
        return if json.is_object() { Ok(None) } else { Err(()) };
    };
    let query = url.split_once('?').map(|(_, q)| q).ok_or(())?;
    let expires = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "Expires")
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .ok_or(())?;
    // An absurd value from the upstream is not a reason to panic: it just bounds nothing.
    Ok(UNIX_EPOCH.checked_add(Duration::from_secs(expires)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            enabled: true,
            metadata_ttl: Duration::from_secs(60),
            content_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::ZERO,
            max_object: 1000,
            follow_content_redirects: true,
            response_header: true,
        }
    }

    /// An answer with `headers`; framed by a `Content-Length` unless they frame it themselves.
    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        if !headers
            .iter()
            .any(|(name, _)| ["content-length", "transfer-encoding", "unframed"].contains(name))
        {
            r.insert_header("content-length", "10").unwrap();
        }
        for (name, value) in headers.iter().filter(|(name, _)| *name != "unframed") {
            r.insert_header(name.to_string(), *value).unwrap();
        }
        r
    }

    #[test]
    fn ttl_by_kind_status_and_upstream_directives() {
        let p = policy();
        let ok = response(200, &[]);
        assert_eq!(p.ttl(Kind::Metadata, &ok), Ok(Duration::from_secs(60)));
        assert_eq!(p.ttl(Kind::Content, &ok), Ok(Duration::from_secs(86_400)));
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            let r = response(200, &[("cache-control", cc)]);
            assert_eq!(p.ttl(Kind::Metadata, &r), Err(NotKept::Forbidden), "{cc}");
        }
        for (name, value) in [
            ("set-cookie", "a=b"),
            ("content-encoding", "gzip"),
            ("vary", "Accept-Language"),
            ("vary", "*"),
        ] {
            let r = response(200, &[(name, value)]);
            assert_eq!(p.ttl(Kind::Content, &r), Err(NotKept::Personal), "{name}");
        }
        let vary_encoding = response(200, &[("vary", "Accept-Encoding")]);
        assert!(p.ttl(Kind::Content, &vary_encoding).is_ok());
        assert_eq!(
            temporary_url_expiry(br#"{"links":{"content_direct_temporary":"https://m/x?Expires=99999999999999999999"}}"#),
            Err(())
        );
        assert_eq!(
            temporary_url_expiry(br#"{"links":{"content_direct_temporary":"https://m/x?Expires=18446744073709551615"}}"#),
            Ok(None)
        );
        let short = response(200, &[("cache-control", "public, max-age=5")]);
        assert_eq!(p.ttl(Kind::Content, &short), Ok(Duration::from_secs(5)));
        assert_eq!(
            p.ttl(Kind::Metadata, &response(404, &[])),
            Err(NotKept::Status)
        );
        assert_eq!(
            p.ttl(Kind::Metadata, &response(500, &[])),
            Err(NotKept::Status)
        );
        let big = response(200, &[("content-length", "1001")]);
        assert_eq!(p.ttl(Kind::Content, &big), Err(NotKept::TooLarge));
        let until_close = response(200, &[("unframed", "")]);
        assert_eq!(p.ttl(Kind::Content, &until_close), Err(NotKept::Unframed));
        for coding in ["chunked", "gzip, chunked"] {
            let chunked = response(200, &[("transfer-encoding", coding)]);
            assert!(p.ttl(Kind::Content, &chunked).is_ok(), "{coding}");
        }
        let chunked_first = response(200, &[("transfer-encoding", "chunked, gzip")]);
        assert_eq!(p.ttl(Kind::Content, &chunked_first), Err(NotKept::Unframed));
        let negative = CachePolicy {
            negative_ttl: Duration::from_secs(3),
            ..policy()
        };
        assert_eq!(
            negative.ttl(Kind::Metadata, &response(404, &[])),
            Ok(Duration::from_secs(3))
        );
    }

    fn media_json(expires: u64) -> Vec<u8> {
        format!(
            r#"{{"sid":"ME1","links":{{"content":"/c","content_direct_temporary":"https://m/ME1?Expires={expires}&Signature=ab&Key-Pair-Id=k"}}}}"#
        )
        .into_bytes()
    }

    fn epoch_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn metadata_never_outlives_its_temporary_url() {
        let ok = response(200, &[]);
        let in_a_minute = SystemTime::now() + Duration::from_secs(60);
        let expires = epoch_now() + 200;
        let until = fresh_until_with_body(Kind::Metadata, &ok, in_a_minute, &media_json(expires));
        assert_eq!(
            until,
            Some(UNIX_EPOCH + Duration::from_secs(expires) - TEMPORARY_URL_MARGIN)
        );
        // A URL with less than the margin left: not stored at all.
        let soon = epoch_now() + 180;
        assert_eq!(
            fresh_until_with_body(Kind::Metadata, &ok, in_a_minute, &media_json(soon)),
            None
        );
        // A URL that outlives the TTL leaves the TTL alone.
        let late = epoch_now() + 3600;
        assert_eq!(
            fresh_until_with_body(Kind::Metadata, &ok, in_a_minute, &media_json(late)),
            Some(in_a_minute)
        );
        // Content, and JSON without a temporary URL, keep their freshness.
        assert_eq!(
            fresh_until_with_body(Kind::Content, &ok, in_a_minute, b"\x89PNG"),
            Some(in_a_minute)
        );
        assert_eq!(
            fresh_until_with_body(Kind::Metadata, &ok, in_a_minute, br#"{"sid":"ME1"}"#),
            Some(in_a_minute)
        );
        assert_eq!(
            fresh_until_with_body(Kind::Metadata, &ok, in_a_minute, b"not json"),
            None
        );
    }
}
