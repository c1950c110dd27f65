//! Fresh hits of plain reads, answered in `request_filter` straight from the storage.
//!
//! Most reads a sidecar sees are the same few media asked for again: a `GET` with no `Range`
//! and no condition, found fresh in the cache. pingora-cache's hit path spends more on such a
//! read than all of mediagate's own work on it (about 16,000 instructions of a metadata hit's
//! 40,000, `benches/load/instructions.sh`): the lookup through its trait objects, a hit
//! handler, a meta with a second copy of the head, the phase machine, the range and
//! conditional filters. Only the hit path's outcome is needed here, and for these reads it
//! is the stored head and body as they are.
//!
//! So those reads are answered from `MemoryStore::fresh_hit` with the head pingora-cache's hit
//! path would write: the stored head, with `Age` and as HTTP/1.1 (its `cache_hit_header`),
//! then marked as every answer is (`Mediagate-Cache`, the request id). The hit is counted with
//! the eviction manager as pingora-cache counts one. Everything else goes on to pingora-cache
//! as before and is answered there: `HEAD`, `Range`, `If-None-Match`, `If-Modified-Since`,
//! stale and missing entries (renewal, the cache lock), and stored heads its filters would
//! change (anything but a `200` with a `Content-Length` that says `Accept-Ranges: bytes`).
//! The tests in `tests/cache.rs` hold both paths to the same heads and bodies.

use bytes::Bytes;
use http::{header, Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use crate::cache::FreshHit;

/// The one range unit (`Accept-Ranges`).
pub(super) const BYTES: &str = "bytes";

/// Whether the request asks for a whole answer, with nothing for pingora-cache's conditional
/// or range filters to decide: a `GET` without `Range`, `If-None-Match` or
/// `If-Modified-Since` (the conditions those filters read).
pub(super) fn asks_for_whole_answer(request: &RequestHeader) -> bool {
    let headers = &request.headers;
    request.method == Method::GET
        && !headers.contains_key(header::RANGE)
        && !headers.contains_key(header::IF_NONE_MATCH)
        && !headers.contains_key(header::IF_MODIFIED_SINCE)
}

/// Whether pingora-cache's hit path would write this stored head unchanged but for `Age`: a
/// `200` with a `Content-Length` (without one, that path makes the answer chunked) that
/// already says `Accept-Ranges: bytes` (the gateway's `range_header_filter` leaves those
/// alone; every `200` with a length is stored so).
pub(super) fn served_as_stored(head: &ResponseHeader) -> bool {
    head.status == StatusCode::OK
        && head.headers.contains_key(header::CONTENT_LENGTH)
        && head
            .headers
            .get(header::ACCEPT_RANGES)
            .is_some_and(|value| value == BYTES)
}

/// The head and body of the answer, the head as pingora-cache's hit path makes it of a stored
/// one: `Age` in whole seconds, and HTTP/1.1.
pub(super) fn answer(hit: FreshHit) -> Result<(ResponseHeader, Bytes)> {
    let FreshHit {
        header: mut head,
        body,
        age,
    } = hit;
    head.insert_header(header::AGE, age.as_secs())?;
    head.set_version(Version::HTTP_11);
    Ok((head, body))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request(method: Method, headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut request =
            RequestHeader::build(method, b"/v1/Services/IS/Media/ME", None).expect("head");
        for (name, value) in headers {
            request.insert_header(*name, *value).expect("header");
        }
        request
    }

    #[test]
    fn only_a_get_without_range_or_conditions_asks_for_the_whole_answer() {
        assert!(asks_for_whole_answer(&request(Method::GET, &[])));
        assert!(asks_for_whole_answer(&request(
            Method::GET,
            &[("accept", "application/json"), ("x-request-id", "r1")]
        )));
        assert!(!asks_for_whole_answer(&request(Method::HEAD, &[])));
        for condition in ["range", "if-none-match", "if-modified-since"] {
            let asked = request(Method::GET, &[(condition, "x")]);
            assert!(!asks_for_whole_answer(&asked), "{condition}");
        }
    }

    #[test]
    fn only_a_200_with_a_length_that_takes_ranges_is_served_as_stored() {
        let head = |status: u16, length: bool, ranges: Option<&'static str>| {
            let mut head = ResponseHeader::build(status, None).expect("head");
            if length {
                head.insert_header(header::CONTENT_LENGTH, "2")
                    .expect("header");
            }
            if let Some(ranges) = ranges {
                head.insert_header(header::ACCEPT_RANGES, ranges)
                    .expect("header");
            }
            head
        };
        assert!(served_as_stored(&head(200, true, Some("bytes"))));
        assert!(!served_as_stored(&head(200, true, None)));
        assert!(!served_as_stored(&head(200, true, Some("none"))));
        assert!(!served_as_stored(&head(404, true, Some("bytes"))));
        // Chunked when stored: pingora's hit path would rewrite its framing.
        assert!(!served_as_stored(&head(200, false, Some("bytes"))));
    }

    #[test]
    fn the_answer_says_its_age_in_whole_seconds_as_http_1_1() {
        let mut stored = ResponseHeader::build(200, None).expect("head");
        stored.set_version(Version::HTTP_10);
        let hit = FreshHit {
            header: stored,
            body: Bytes::from_static(b"{}"),
            age: Duration::from_millis(2_900),
        };
        let (head, body) = answer(hit).expect("answer");
        assert_eq!(head.headers.get(header::AGE).expect("age"), "2");
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(body, Bytes::from_static(b"{}"));
    }
}
