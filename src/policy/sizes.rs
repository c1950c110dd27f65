//! The declared size of an upload: `Content-Length` (HTTP's) and `Content-Size` (the Media
//! API's). Each must be one plain decimal number; when both are given they must agree.

use http::HeaderMap;

/// What the request head says about its body's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declared {
    pub content_length: Option<u64>,
    pub content_size: Option<u64>,
}

impl Declared {
    /// The length the body must have, when the head says.
    pub fn expected(&self) -> Option<u64> {
        self.content_size.or(self.content_length)
    }
}

/// Why the size headers cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError(pub String);

/// Reads the size headers. `raw_head` is the request head as received, when the parser may
/// have dropped a header: HTTP parsers (pingora's among them) remove `Content-Length` when
/// `Transfer-Encoding` is present, and both together are a request-smuggling pattern we refuse.
pub fn declared(headers: &HeaderMap, raw_head: Option<&[u8]>) -> Result<Declared, SizeError> {
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    let length_too = headers.contains_key(http::header::CONTENT_LENGTH)
        || raw_head.is_some_and(|raw| has_header_line(raw, b"content-length"));
    if chunked && length_too {
        return Err(SizeError(
            "Content-Length and Transfer-Encoding together".into(),
        ));
    }
    let declared = Declared {
        content_length: single_size(headers, "content-length")?,
        content_size: single_size(headers, "content-size")?,
    };
    if let (Some(length), Some(size)) = (declared.content_length, declared.content_size) {
        if length != size {
            return Err(SizeError(format!(
                "Content-Size {size} disagrees with Content-Length {length}"
            )));
        }
    }
    Ok(declared)
}

/// At most one value, and that a plain decimal number that fits in 64 bits.
fn single_size(headers: &HeaderMap, name: &str) -> Result<Option<u64>, SizeError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SizeError(format!("{name} is given more than once")));
    }
    let text = value.to_str().unwrap_or("");
    parse_decimal(text).map(Some).ok_or_else(|| {
        SizeError(format!(
            "{name} must be a plain number of bytes, got {text:?}"
        ))
    })
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

/// Digits only: no sign, no spaces, no exponent, no overflow.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn declared_from(map: &HeaderMap) -> Result<Declared, SizeError> {
        declared(map, None)
    }

    #[test]
    fn a_length_the_parser_dropped_for_chunked_is_still_seen() {
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(declared(&chunked, Some(raw)).is_err());
        let raw = b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(declared(&chunked, Some(raw)).is_ok());
    }

    #[test]
    fn plain_numbers_only() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "1e3",
            " 10",
            "10 ",
            "0x10",
            "18446744073709551616",
            "1,2",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn both_headers_must_agree() {
        let ok = declared_from(&headers(&[
            ("content-length", "10"),
            ("content-size", "10"),
        ]))
        .unwrap();
        assert_eq!(ok.expected(), Some(10));
        assert!(declared_from(&headers(&[
            ("content-length", "10"),
            ("content-size", "11")
        ]))
        .is_err());
        assert_eq!(
            declared_from(&headers(&[("content-size", "7")]))
                .unwrap()
                .expected(),
            Some(7)
        );
        assert_eq!(declared_from(&headers(&[])).unwrap().expected(), None);
    }

    #[test]
    fn repeated_or_conflicting_framing_is_refused() {
        assert!(declared_from(&headers(&[
            ("content-length", "10"),
            ("content-length", "10")
        ]))
        .is_err());
        assert!(declared_from(&headers(&[("content-size", "1"), ("content-size", "1")])).is_err());
        assert!(declared_from(&headers(&[
            ("content-length", "10"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(declared_from(&headers(&[("content-size", "-1")])).is_err());
    }
}
