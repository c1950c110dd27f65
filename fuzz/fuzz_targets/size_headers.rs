//! The size headers: `parse_decimal` and `declared` (Content-Length / Content-Size).
//!
//! Input: lines (`\n`-separated). A line starting with `L` is a `Content-Length` value, `S` a
//! `Content-Size` value, anything else an unrelated header; the rest of the line is the value's
//! bytes. Lines that are not valid header values are left out.
//!
//! Checks, against a reference model written out here:
//! - `parse_decimal` accepts exactly the non-empty all-digit strings whose value fits in 64 bits,
//!   and a parsed size round-trips: its decimal spelling is the input without leading zeros, and
//!   that spelling parses back to the same number;
//! - `declared` is `Ok` exactly when each size header appears at most once, each is a plain
//!   number, and both agree when both are given; the sizes it returns are the ones sent, and
//!   `expected()` is `Content-Size`, else `Content-Length`.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mediagate::policy::{declared, parse_decimal, Declared};

/// The reference: digits only, value at most `u64::MAX`.
fn reference_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = text.trim_start_matches('0');
    if significant.len() > 20 {
        return None;
    }
    let mut value: u128 = 0;
    for b in significant.bytes() {
        value = value * 10 + u128::from(b - b'0');
    }
    u64::try_from(value).ok()
}

fn check_decimal(text: &str) {
    let parsed = parse_decimal(text);
    assert_eq!(parsed, reference_decimal(text), "parse_decimal({text:?})");
    if let Some(n) = parsed {
        let spelled = n.to_string();
        let significant = text.trim_start_matches('0');
        let expected = if significant.is_empty() {
            "0"
        } else {
            significant
        };
        assert_eq!(spelled, expected, "{text:?} parsed to {n}");
        assert_eq!(parse_decimal(&spelled), Some(n));
    }
}

fn reference_declared(lengths: &[&HeaderValue], sizes: &[&HeaderValue]) -> Option<Declared> {
    let one = |values: &[&HeaderValue]| -> Option<Option<u64>> {
        match values {
            [] => Some(None),
            [v] => reference_decimal(v.to_str().ok()?).map(Some),
            _ => None,
        }
    };
    let content_length = one(lengths)?;
    let content_size = one(sizes)?;
    if let (Some(l), Some(s)) = (content_length, content_size) {
        if l != s {
            return None;
        }
    }
    Some(Declared {
        content_length,
        content_size,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_decimal(text);
    }
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&selector, value)) = line.split_first() else {
            continue;
        };
        if let Ok(text) = std::str::from_utf8(value) {
            check_decimal(text);
        }
        let name = match selector {
            b'L' => HeaderName::from_static("content-length"),
            b'S' => HeaderName::from_static("content-size"),
            _ => HeaderName::from_static("x-other"),
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let lengths: Vec<&HeaderValue> = headers.get_all("content-length").iter().collect();
    let sizes: Vec<&HeaderValue> = headers.get_all("content-size").iter().collect();
    let expected = reference_declared(&lengths, &sizes);
    match declared(&headers) {
        Ok(got) => {
            assert_eq!(Some(got), expected, "declared() accepted {headers:?}");
            assert_eq!(got.expected(), got.content_size.or(got.content_length));
        }
        Err(e) => {
            assert_eq!(expected, None, "declared() refused {headers:?}: {e:?}");
            assert!(!e.0.is_empty());
        }
    }
});
