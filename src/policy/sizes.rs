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

/// Reads the size headers. (Framing as such, `Content-Length` against `Transfer-Encoding`, is
/// checked for every request by the proxy before this runs.)
pub fn declared(headers: &HeaderMap) -> Result<Declared, SizeError> {
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

    use crate::test_util::headers;

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
        let ok = declared(&headers(&[
            ("content-length", "10"),
            ("content-size", "10"),
        ]))
        .unwrap();
        assert_eq!(ok.expected(), Some(10));
        assert!(declared(&headers(&[
            ("content-length", "10"),
            ("content-size", "11")
        ]))
        .is_err());
        assert_eq!(
            declared(&headers(&[("content-size", "7")]))
                .unwrap()
                .expected(),
            Some(7)
        );
        assert_eq!(declared(&headers(&[])).unwrap().expected(), None);
    }

    #[test]
    fn repeated_or_conflicting_framing_is_refused() {
        assert!(declared(&headers(&[
            ("content-length", "10"),
            ("content-length", "10")
        ]))
        .is_err());
        assert!(declared(&headers(&[("content-size", "1"), ("content-size", "1")])).is_err());
        assert!(declared(&headers(&[("content-size", "-1")])).is_err());
    }
}
