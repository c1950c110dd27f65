//! What the origin received, served at `GET /_origin/requests` so tests and people can see what
//! reached the upstream through the proxy: method, path, which credentials came with it (the
//! Basic user name only, never a password or token) and the answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use std::net::SocketAddr;

use http::HeaderMap;
use serde::Serialize;

const KEEP: usize = 10_000;

/// The most bytes kept of a text field taken from a request (method, path, request id, user
/// name). Heads may be tens of KiB long: kept whole, 10,000 entries could hold gigabytes; capped,
/// they hold a few tens of MB at most.
pub const MAX_FIELD: usize = 512;

/// What replaces the rest of a field cut at `MAX_FIELD`.
pub const TRUNCATED: &str = "…[truncated]";

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub id: u64,
    pub method: String,
    /// The path and query.
    pub path: String,
    /// `basic:<user>`, `bearer`, `other` or `none`.
    pub auth: String,
    /// Whether an `X-Twilio-Token` header came along.
    pub twilio_token: bool,
    /// The `X-Request-Id` it carried.
    pub request_id: Option<String>,
    /// The client's address: requests on one kept-alive connection share it.
    pub peer: String,
    /// The answer's status; `null` while the request is still being served, 0 when it was
    /// abandoned (the client went away) before an answer.
    pub status: Option<u16>,
}

#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: VecDeque<Entry>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a request as it arrives; the guard records its answer.
    pub fn start(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Pending {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        if inner.entries.len() == KEEP {
            inner.entries.pop_front();
        }
        inner.entries.push_back(Entry {
            id,
            method: capped(method),
            path: capped(path),
            auth: capped(&describe_auth(headers)),
            twilio_token: headers.contains_key("x-twilio-token"),
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(capped),
            peer: peer.to_string(),
            status: None,
        });
        Pending {
            journal: self.clone(),
            id,
            status: 0,
        }
    }

    fn finish(&self, id: u64, status: u16) {
        if let Some(entry) = self.lock().entries.iter_mut().rev().find(|e| e.id == id) {
            entry.status = Some(status);
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let inner = self.lock();
        serde_json::to_vec(&inner.entries).unwrap_or_default()
    }
}

/// A request being served. Dropped without `answered` (the connection went away), it is
/// recorded with status 0.
pub struct Pending {
    journal: Journal,
    id: u64,
    status: u16,
}

impl Pending {
    pub fn answered(mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.journal.finish(self.id, self.status);
    }
}

fn describe_auth(headers: &HeaderMap) -> String {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return "none".into();
    };
    let value = value.to_str().unwrap_or("");
    match super::auth::basic_user(value) {
        Some(user) => format!("basic:{user}"),
        None if value.len() >= 7 && value[..7].eq_ignore_ascii_case("bearer ") => "bearer".into(),
        None => "other".into(),
    }
}

/// `text` itself when it is at most `MAX_FIELD` bytes; else its first bytes, cut at a character
/// boundary, and `TRUNCATED`.
fn capped(text: &str) -> String {
    if text.len() <= MAX_FIELD {
        return text.to_string();
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_capped_and_marked() {
        let journal = Journal::default();
        let path = format!("/v1/Services/{}", "x".repeat(64 * 1024));
        // Two bytes a character, after "basic:a": byte 512 falls inside one.
        let user = format!("a{}", "é".repeat(20_000));
        let credentials = format!("{user}:secret");
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {basic}").parse().expect("header value"),
        );
        headers.insert(
            "x-request-id",
            "r".repeat(60_000).parse().expect("header value"),
        );
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("address");
        drop(journal.start(&"M".repeat(10_000), &path, &headers, peer));

        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&journal.to_json()).expect("journal JSON");
        let entry = &entries[0];
        for field in ["method", "path", "auth", "request_id"] {
            let text = entry[field].as_str().expect(field);
            assert!(
                text.len() <= MAX_FIELD + TRUNCATED.len(),
                "{field}: {}",
                text.len()
            );
            assert!(text.ends_with(TRUNCATED), "{field}");
        }
        assert!(entry["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/Services/xxx")));
        assert!(entry["auth"]
            .as_str()
            .is_some_and(|a| a.starts_with("basic:aéé")));
        assert_eq!(entry["status"], 0);
    }

    #[test]
    fn short_fields_are_kept_whole() {
        assert_eq!(capped("/v1/Services"), "/v1/Services");
        let exact = "a".repeat(MAX_FIELD);
        assert_eq!(capped(&exact), exact);
        assert_eq!(capped(&format!("{exact}b")), format!("{exact}{TRUNCATED}"));
    }
}
