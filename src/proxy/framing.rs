//! One unambiguous way to tell where a request's body ends, checked for every request before
//! anything else reads it: the request-smuggling patterns that survive pingora's parser are
//! refused here. (pingora itself refuses obsolete line folding, a final encoding other than
//! chunked, and malformed chunk sizes. It takes a comma list of equal `Content-Length`s, as RFC
//! 9110 allows, where the connection's watcher, `client_limits`, reads one number: such a
//! list is refused here, so that the two always agree on where a body ends.)

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Refuses several `Content-Length` headers, one that is not a single decimal number, and
/// `Content-Length` with `Transfer-Encoding`.
/// `raw_head` is the head as received: pingora drops `Content-Length` when `Transfer-Encoding`
/// is present (RFC 9112 lets it), so only the raw head still shows the pair.
pub fn check(headers: &HeaderMap, raw_head: Option<&[u8]>) -> Result<(), &'static str> {
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err("Content-Length is given more than once");
    }
    if let Some(length) = headers.get(CONTENT_LENGTH) {
        if !is_one_number(length.as_bytes()) {
            return Err("Content-Length is not one decimal number");
        }
    }
    // The raw head is read only when it matters: with a Transfer-Encoding.
    let length_too =
        || lengths > 0 || raw_head.is_some_and(|raw| has_header_line(raw, b"content-length"));
    if headers.contains_key(TRANSFER_ENCODING) && length_too() {
        return Err("Content-Length and Transfer-Encoding together");
    }
    Ok(())
}

/// Digits only (white space around them aside: not part of a value), within a `u64`.
fn is_one_number(value: &[u8]) -> bool {
    let digits = value.trim_ascii();
    !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(digits).is_ok_and(|d| d.parse::<u64>().is_ok())
}

/// Whether a raw head has a header line named `name` (lower case).
fn has_header_line(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..].trim_ascii_start().starts_with(b":")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::headers;

    #[test]
    fn one_length_or_chunked_passes() {
        assert!(check(&headers(&[("content-length", "5")]), None).is_ok());
        assert!(check(&headers(&[("transfer-encoding", "chunked")]), None).is_ok());
        assert!(check(&headers(&[]), None).is_ok());
    }

    #[test]
    fn repeated_lengths_and_length_with_chunked_are_refused() {
        assert!(check(
            &headers(&[("content-length", "5"), ("content-length", "5")]),
            None
        )
        .is_err());
        let both = headers(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert!(check(&both, None).is_err());
    }

    #[test]
    fn a_length_is_one_decimal_number() {
        for bad in [
            "9000, 9000",
            "9000,9000",
            "+5",
            "-1",
            "5 5",
            "0x10",
            "",
            "18446744073709551616",
        ] {
            assert!(
                check(&headers(&[("content-length", bad)]), None).is_err(),
                "{bad:?}"
            );
        }
        for good in ["0", "9000", " 12 "] {
            assert!(
                check(&headers(&[("content-length", good)]), None).is_ok(),
                "{good:?}"
            );
        }
    }

    #[test]
    fn a_length_the_parser_dropped_for_chunked_is_still_seen() {
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check(&chunked, Some(raw)).is_err());
        let raw = b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check(&chunked, Some(raw)).is_ok());
    }
}
