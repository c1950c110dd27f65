//! Helpers for the unit tests.

use http::HeaderMap;

/// A header map from `(name, value)` pairs, repeated names kept.
pub fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, value.parse().expect("a valid header value"));
    }
    map
}
