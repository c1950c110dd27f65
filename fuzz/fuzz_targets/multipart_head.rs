//! The multipart part-head parser: `policy::boundary` and `policy::find_file_part`, checked on
//! its own, against the multipart parser of the local origin (multer), and through the upload
//! guard.
//!
//! Input: the request's `Content-Type` value, a `\n`, then the body.
//!
//! Checks:
//! - streaming: on every prefix of the body the scan answers `NeedMore` or exactly what it
//!   answers on the whole body (what the proxy decides does not depend on how much has
//!   arrived); a found part is found on the prefix that ends where its content starts;
//! - a found part's content starts inside the body, right after a CRLF, and its Content-Type
//!   holds no line break;
//! - same part as the origin: when the proxy finds a file part and multer (the origin's
//!   parser, with the boundary it reads from the same header) reads the whole form without
//!   error, the first part multer calls `file` or `Media` (the one the origin stores) is the
//!   part the proxy judged: same content bytes, same Content-Type; and both read the same
//!   boundary from the header;
//! - through `check_head` + `UploadGuard::on_chunk` (sniffing off), the verdict is the same
//!   whether the body arrives in one chunk or two.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use mediagate::policy::{
    boundary, check_head, find_file_part, Refusal, Scan, TypeMatcher, UploadRules,
};

/// Runs a future that never waits on I/O (multer over an in-memory stream) to completion;
/// `None` if it keeps answering `Pending`.
fn run<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

struct OriginField {
    name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// Every field as multer reads the body, or `None` when it refuses the form (then the origin
/// answers 400 and stores nothing).
fn origin_fields(body: &[u8], boundary: &str) -> Option<Vec<OriginField>> {
    let stream = futures_util::stream::iter(vec![Ok::<Bytes, std::io::Error>(
        Bytes::copy_from_slice(body),
    )]);
    let mut form = multer::Multipart::new(stream, boundary);
    run(async move {
        let mut fields = Vec::new();
        while let Some(mut field) = form.next_field().await.ok()? {
            let name = field.name().map(str::to_string);
            let content_type = field
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let mut data = Vec::new();
            while let Some(chunk) = field.chunk().await.ok()? {
                data.extend_from_slice(&chunk);
            }
            fields.push(OriginField {
                name,
                content_type,
                data,
            });
        }
        Some(fields)
    })
    .flatten()
}

fn guard_verdict(content_type: &HeaderValue, body: &[u8], split: usize) -> Result<(), Refusal> {
    let rules = Arc::new(UploadRules {
        max_size: u64::MAX,
        types: TypeMatcher::new(&["image/*".into(), "application/pdf".into()]),
        sniff: false,
        require_content_size: false,
    });
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type.clone());
    let mut guard = check_head(&rules, &headers)?;
    let (first, second) = body.split_at(split.min(body.len()));
    guard.on_chunk(first, second.is_empty())?;
    if !second.is_empty() {
        guard.on_chunk(second, true)?;
    }
    Ok(())
}

fn cut_points(len: usize, body_start: Option<usize>) -> Vec<usize> {
    let mut cuts: Vec<usize> = if len <= 300 {
        (0..len).collect()
    } else {
        (0..len).step_by(len / 97 + 1).collect()
    };
    if let Some(start) = body_start {
        cuts.extend([start.saturating_sub(2), start.saturating_sub(1), start]);
    }
    cuts.retain(|&c| c <= len);
    cuts
}

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(content_type) = std::str::from_utf8(&data[..newline]) else {
        return;
    };
    let body = &data[newline + 1..];

    let ours = boundary(content_type);
    let theirs = multer::parse_boundary(content_type).ok();
    if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
        assert_eq!(
            ours, theirs,
            "the proxy and the origin read different boundaries"
        );
    }
    let Some(ours) = ours else { return };
    assert!(!ours.is_empty() && ours.len() <= 70);

    let scan = find_file_part(body, &ours);
    let found = match &scan {
        Scan::Found(part) => Some(part.clone()),
        _ => None,
    };
    if let Some(part) = &found {
        assert!(part.body_start <= body.len());
        assert!(body[..part.body_start].ends_with(b"\r\n"));
        if let Some(t) = &part.content_type {
            assert!(!t.contains(['\r', '\n']), "{t:?}");
        }
        assert_eq!(find_file_part(&body[..part.body_start], &ours), scan);
    }
    for cut in cut_points(body.len(), found.as_ref().map(|p| p.body_start)) {
        let partial = find_file_part(&body[..cut], &ours);
        assert!(
            partial == Scan::NeedMore || partial == scan,
            "{cut} of {} bytes: {partial:?}, the whole body: {scan:?}",
            body.len()
        );
    }

    // The part the origin stores is the part the proxy judged.
    if let (Some(part), Some(theirs)) = (&found, &theirs) {
        if let Some(fields) = origin_fields(body, theirs) {
            let stored = fields
                .iter()
                .find(|f| matches!(f.name.as_deref(), Some("file" | "Media")));
            if let Some(stored) = stored {
                let rest = &body[part.body_start..];
                assert!(
                    rest.starts_with(&stored.data),
                    "the origin stores other bytes than the proxy judged: {:?} vs {:?}",
                    String::from_utf8_lossy(&stored.data),
                    String::from_utf8_lossy(&rest[..rest.len().min(stored.data.len() + 16)]),
                );
                let closing = format!("\r\n--{theirs}");
                assert!(
                    rest[stored.data.len()..].starts_with(closing.as_bytes()),
                    "the origin's file part ends elsewhere than the proxy's"
                );
                assert_eq!(
                    stored.content_type.as_deref().map(str::trim),
                    part.content_type.as_deref().map(str::trim),
                    "the origin records another Content-Type than the proxy judged"
                );
            }
        }
    }

    // One chunk or two: the same verdict.
    let Ok(header) = HeaderValue::from_str(content_type) else {
        return;
    };
    let whole = guard_verdict(&header, body, body.len());
    let mut splits = vec![1, body.len() / 2, body.len().saturating_sub(1)];
    if let Some(part) = &found {
        splits.extend([part.body_start - 1, part.body_start, part.body_start + 1]);
    }
    for split in splits.into_iter().filter(|&s| s > 0 && s < body.len()) {
        let chunked = guard_verdict(&header, body, split);
        assert_eq!(
            chunked.as_ref().map_err(|r| r.reason),
            whole.as_ref().map_err(|r| r.reason),
            "split at {split}: {chunked:?}, one chunk: {whole:?}"
        );
    }
});
