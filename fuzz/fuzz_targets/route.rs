//! `Route::parse` on any method and path.
//!
//! Input: the first byte picks the method (`byte % 8`: 0 GET, 1 HEAD, 2 POST, 3 PUT, 4 DELETE,
//! 5 PATCH, 6 OPTIONS, 7 an extension method), the rest is the path (UTF-8).
//!
//! Checks:
//! - an accepted path is exactly the canonical spelling of the route it parsed to (no other
//!   spelling of a Media API path is ever accepted), its SIDs are `IS`/`ME` + 32 lowercase hex,
//!   and the method is one the route allows;
//! - the canonical path of a parsed route parses back to the same route;
//! - `MethodNotAllowed(allow)` names methods that the same path is accepted with;
//! - `NotFound` and `BadSid` depend on the path only, never on the method.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use mediagate::api::{Route, RouteError, RouteKind};

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE",
];

fn canonical(route: &Route) -> String {
    match route {
        Route::Upload { service } => format!("/v1/Services/{service}/Media"),
        Route::MediaSet { service } => format!("/v1/Services/{service}/MediaSet"),
        Route::Metadata { service, media } => format!("/v1/Services/{service}/Media/{media}"),
        Route::Content { service, media } => {
            format!("/v1/Services/{service}/Media/{media}/Content")
        }
    }
}

/// The SID grammar, written out independently of `Sid::parse`.
fn well_formed_sid(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|digits| {
        digits.len() == 32
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn allowed(route: &Route) -> &'static [&'static str] {
    match route {
        Route::Upload { .. } | Route::MediaSet { .. } => &["POST"],
        Route::Metadata { .. } | Route::Content { .. } => &["GET", "HEAD"],
    }
}

fn check_route(method: &Method, path: &str, route: &Route) {
    assert_eq!(
        canonical(route),
        path,
        "accepted a non-canonical path for {route:?}"
    );
    assert!(well_formed_sid(route.service().as_str(), "IS"));
    if let Some(media) = route.media() {
        assert!(well_formed_sid(media.as_str(), "ME"));
    }
    assert!(
        allowed(route).contains(&method.as_str()),
        "{method} accepted for {route:?}"
    );
    let kind = match route {
        Route::Upload { .. } => RouteKind::Upload,
        Route::Metadata { .. } => RouteKind::Metadata,
        Route::Content { .. } => RouteKind::Content,
        Route::MediaSet { .. } => RouteKind::MediaSet,
    };
    assert_eq!(route.kind(), kind);
    assert_eq!(
        route.media().is_some(),
        matches!(kind, RouteKind::Metadata | RouteKind::Content)
    );
    for m in allowed(route) {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        assert_eq!(Route::parse(&m, &canonical(route)).as_ref(), Ok(route));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, path)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(selector % 8)].as_bytes()).unwrap();
    match Route::parse(&method, path) {
        Ok(route) => check_route(&method, path, &route),
        Err(RouteError::MethodNotAllowed(allow)) => {
            let names: Vec<&str> = allow.split(", ").collect();
            assert!(
                !names.contains(&method.as_str()),
                "{method} refused but listed in {allow}"
            );
            for name in names {
                let m = Method::from_bytes(name.as_bytes()).unwrap();
                let route = Route::parse(&m, path)
                    .unwrap_or_else(|e| panic!("Allow: {allow}, but {name} gives {e:?}"));
                check_route(&m, path, &route);
            }
        }
        Err(e) => {
            // Not the Media API, or a malformed SID: the same answer whatever the method.
            for name in METHODS {
                let m = Method::from_bytes(name.as_bytes()).unwrap();
                assert_eq!(Route::parse(&m, path), Err(e.clone()), "{name} {path:?}");
            }
        }
    }
});
