//! Following one upload's body as it streams: the byte count against the limits and the
//! declared size, and the inspection of its first bytes (multipart part head, sniffing), which
//! may need more than one chunk.

use std::sync::Arc;

use super::content_type::essence;
use super::multipart::{self, Scan};
use super::sizes::Declared;
use super::{sniff, Refusal, UploadRules};
use crate::api::RejectReason;

/// The most of the body's start kept for inspection: a multipart file head must begin within it.
pub const INSPECT_LIMIT: usize = 64 * 1024;

/// What the inspection of the body's start concluded so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    NeedMore,
    Pass,
    Refuse(Refusal),
}

/// Inspects the start of a body: fed chunk by chunk until it can decide, then done.
#[derive(Debug)]
pub struct Inspector {
    rules: Arc<UploadRules>,
    /// The raw upload's type, or `None` for a multipart form (its type is in the part head).
    raw_type: Option<String>,
    boundary: Option<String>,
    start: Vec<u8>,
}

impl Inspector {
    pub fn raw(rules: Arc<UploadRules>, essence: String) -> Inspector {
        Inspector {
            rules,
            raw_type: Some(essence),
            boundary: None,
            start: Vec::new(),
        }
    }

    pub fn multipart(rules: Arc<UploadRules>, boundary: String) -> Inspector {
        Inspector {
            rules,
            raw_type: None,
            boundary: Some(boundary),
            start: Vec::new(),
        }
    }

    /// Adds the next bytes of the body; `end` when the body is complete.
    pub fn feed(&mut self, bytes: &[u8], end: bool) -> Verdict {
        // A raw body is sniffed on its first bytes; a form's file head may come later.
        let limit = if self.raw_type.is_some() {
            sniff::WINDOW
        } else {
            INSPECT_LIMIT
        };
        let room = limit.saturating_sub(self.start.len());
        // Bytes past the limit are not kept: what is kept is then not the whole body.
        let kept_all = bytes.len() <= room;
        self.start
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        let full = self.start.len() >= limit;
        let content = match (&self.raw_type, &self.boundary) {
            (Some(essence), _) => Content {
                declared: essence.clone(),
                bytes: &self.start[..],
                complete: end && kept_all,
            },
            (None, Some(boundary)) => match self.file_part(boundary, end || full) {
                Ok(Some(found)) => found,
                Ok(None) => return Verdict::NeedMore,
                Err(refusal) => return Verdict::Refuse(refusal),
            },
            (None, None) => return Verdict::Pass,
        };
        if !self.rules.sniff {
            return Verdict::Pass;
        }
        // A file part whose content starts at the end of what is kept for inspection would be
        // judged on a few bytes or none.
        if full && !content.complete && content.bytes.len() < sniff::ENOUGH {
            return Verdict::Refuse(Refusal::new(
                RejectReason::ContentTypeMissing,
                "the file part starts too far into the form to be inspected (its first KiB \
                 must come within the form's first 64 KiB)",
            ));
        }
        // At the body's end, what is at hand is all there will be: judged as it is (a form
        // whose file part lacks its closing delimiter still has its first bytes sniffed).
        if content.bytes.len() < sniff::ENOUGH && !content.complete && !full && !end {
            return Verdict::NeedMore;
        }
        match sniff::check(&content.declared, content.bytes, content.complete) {
            Ok(()) => Verdict::Pass,
            Err(why) => Verdict::Refuse(Refusal::new(RejectReason::SniffMismatch, why)),
        }
    }

    /// The multipart file part's type (checked against the allowed types) and the content
    /// bytes at hand; `None` while its head is still to come. `last` when no more will come.
    fn file_part(&self, boundary: &str, last: bool) -> Result<Option<Content<'_>>, Refusal> {
        let missing = |why: &str| Refusal::new(RejectReason::ContentTypeMissing, why);
        let part = match multipart::find_file_part(&self.start, boundary) {
            Scan::Found(part) => part,
            Scan::NeedMore if last => {
                return Err(missing(
                    "no file part (named \"file\" or \"Media\") in the form's first 64 KiB",
                ))
            }
            Scan::NeedMore => return Ok(None),
            Scan::NoFilePart => {
                return Err(missing("the form has no part named \"file\" or \"Media\""))
            }
            Scan::Malformed(why) => {
                return Err(missing(&format!("the multipart body is malformed: {why}")))
            }
        };
        let declared = part
            .content_type
            .as_deref()
            .and_then(essence)
            .ok_or_else(|| missing("the file part has no Content-Type"))?;
        if !self.rules.types.allows(&declared) {
            return Err(Refusal::type_not_allowed(&declared));
        }
        let rest = &self.start[part.body_start..];
        let rest = &rest[..rest.len().min(sniff::WINDOW)];
        // The part ends at the next delimiter, if it is already in view.
        let closing = format!("\r\n--{boundary}");
        let (bytes, complete) = match multipart::find(rest, closing.as_bytes(), 0) {
            Some(end) => (&rest[..end], true),
            None => (rest, false),
        };
        Ok(Some(Content {
            declared,
            bytes,
            complete,
        }))
    }
}

/// The file's declared type and the first of its bytes at hand.
struct Content<'a> {
    declared: String,
    bytes: &'a [u8],
    /// Whether `bytes` is the whole file.
    complete: bool,
}

/// Follows an upload's body through the proxy: counts it against the limits and feeds its start
/// to the inspector. Every body byte passes `on_chunk` exactly once; `inspect_early` lets the
/// proxy look at the first chunk before going upstream without inspecting it twice.
#[derive(Debug)]
pub struct UploadGuard {
    max_size: u64,
    content_size: Option<u64>,
    /// The body's length as the head declares it.
    declared: Option<u64>,
    received: u64,
    inspector: Option<Inspector>,
    /// Bytes already given to the inspector (by `inspect_early`).
    inspected: u64,
}

impl UploadGuard {
    pub fn new(
        rules: &UploadRules,
        declared: Declared,
        inspector: Option<Inspector>,
    ) -> UploadGuard {
        UploadGuard {
            max_size: rules.max_size,
            content_size: declared.content_size,
            declared: declared.expected(),
            received: 0,
            inspector,
            inspected: 0,
        }
    }

    /// Whether the start of the body still has to be looked at.
    pub fn inspecting(&self) -> bool {
        self.inspector.is_some()
    }

    /// Inspects bytes read ahead of proxying; they will pass `on_chunk` later all the same.
    pub fn inspect_early(&mut self, bytes: &[u8], end: bool) -> Result<(), Refusal> {
        self.inspected += bytes.len() as u64;
        self.inspect(bytes, end)
    }

    /// One chunk of the body on its way upstream; `end` with the last one.
    pub fn on_chunk(&mut self, bytes: &[u8], end: bool) -> Result<(), Refusal> {
        let before = self.received;
        self.received += bytes.len() as u64;
        self.check_size(self.received, end)?;
        // Skip what `inspect_early` has seen already.
        let seen = usize::try_from(self.inspected.saturating_sub(before)).unwrap_or(usize::MAX);
        let fresh = bytes.get(seen..).unwrap_or(&[]);
        self.inspected = self.inspected.max(self.received);
        if fresh.is_empty() && !end {
            return Ok(());
        }
        self.inspect(fresh, end)
    }

    /// Judges the sizes of a body read whole before anything went upstream (`length` bytes),
    /// without counting it: its bytes pass `on_chunk` later all the same. A body already whole
    /// goes upstream complete, so a refusal when it streams would come too late to cut it short.
    pub fn check_whole(&self, length: u64) -> Result<(), Refusal> {
        self.check_size(length, true)
    }

    /// `received` bytes so far against `max_size` and `Content-Size`; `end`: all of them.
    fn check_size(&self, received: u64, end: bool) -> Result<(), Refusal> {
        if received > self.max_size {
            return Err(Refusal::too_large(self.max_size));
        }
        match self.content_size {
            Some(size) if received > size || (end && received < size) => Err(Refusal::new(
                RejectReason::SizeMismatch,
                format!(
                    "Content-Size says {size} bytes, the body {} {received}",
                    if end { "had" } else { "has at least" },
                ),
            )),
            _ => Ok(()),
        }
    }

    fn inspect(&mut self, bytes: &[u8], end: bool) -> Result<(), Refusal> {
        let Some(inspector) = &mut self.inspector else {
            return Ok(());
        };
        match inspector.feed(bytes, end) {
            Verdict::NeedMore if end => {
                // Whatever it still waited for will not come.
                self.inspector = None;
                Ok(())
            }
            Verdict::NeedMore => Ok(()),
            Verdict::Pass => {
                self.inspector = None;
                Ok(())
            }
            Verdict::Refuse(refusal) => Err(refusal),
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// The size the head declares, if it declares one.
    pub fn declared_size(&self) -> Option<u64> {
        self.declared
    }
}
