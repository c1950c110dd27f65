//! What the origin received, served at `GET /_origin/requests` so tests and people can see what
//! reached the upstream through the proxy: method, path, which credentials came with it (the
//! Basic user name only, never a password or token) and the answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use std::net::SocketAddr;

use http::HeaderMap;
use serde::Serialize;

const KEEP: usize = 10_000;

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
            method: method.to_string(),
            path: path.to_string(),
            auth: describe_auth(headers),
            twilio_token: headers.contains_key("x-twilio-token"),
            request_id: headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
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
