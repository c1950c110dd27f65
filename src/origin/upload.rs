//! Receiving an upload's bytes in any of the three styles the Media API sees: a raw body, or a
//! multipart form whose file part is named `file` (with `?Category=`) or `Media` (with a
//! `FileName` text field). Bytes stream into a staging file; nothing is buffered whole.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::body;
use super::store::{Staged, Store};
use crate::api::{ApiError, ErrorCode, MAX_MEDIA_SIZE};

/// An upload whose bytes are all in, not yet committed.
pub struct Received {
    pub staged: Staged,
    pub content_type: String,
    /// The multipart file part's filename, else the `FileName` field.
    pub filename: Option<String>,
}

/// The type to record when the client gave none. curl's default form type means "not given".
const UNTYPED: &str = "application/octet-stream";

pub fn is_multipart(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
    })
}

/// A raw upload: the body is the file, its type the request's `Content-Type`.
pub async fn receive_raw<S>(
    store: &Store,
    body: S,
    content_type: Option<&str>,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    let mut staged = store.stage().await.map_err(io_error)?;
    copy_into(&mut staged, body, read_error).await?;
    Ok(Received {
        staged,
        content_type: media_type_or_untyped(content_type),
        filename: None,
    })
}

/// A multipart upload: the part named `file` or `Media` is the file. The body is read to its
/// end, past the closing delimiter, before the upload counts as received: a body cut off after
/// the form is not a complete request.
pub async fn receive_multipart<S>(
    store: &Store,
    body: S,
    content_type: &str,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin + Send + 'static,
{
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad_request("multipart/form-data without a boundary"))?;
    let body = GuardedForm::new(body, &boundary);
    let read = read_form(store, multer::Multipart::new(body.clone(), boundary)).await;
    // A failure the guard saw (a limit, a broken connection, a timeout) says more than the
    // parser's "failed to read stream".
    let received = read.map_err(|e| body.failure().unwrap_or(e))?;
    body.read_to_end().await?;
    Ok(received)
}

async fn read_form(
    store: &Store,
    mut form: multer::Multipart<'static>,
) -> Result<Received, ApiError> {
    let mut file: Option<(Staged, String, Option<String>)> = None;
    let mut filename_field: Option<String> = None;
    while let Some(mut field) = form.next_field().await.map_err(body_error)? {
        match field.name() {
            Some("file") | Some("Media") if file.is_none() => {
                let part_type = field.content_type().map(|m| m.to_string());
                let part_name = field.file_name().map(str::to_string);
                let mut staged = store.stage().await.map_err(io_error)?;
                copy_into(&mut staged, &mut field, body_error).await?;
                file = Some((
                    staged,
                    media_type_or_untyped(part_type.as_deref()),
                    part_name,
                ));
            }
            Some("FileName") => {
                filename_field = Some(read_short_text(&mut field).await?);
            }
            // Other fields are read past: a client may send more than we need.
            _ => while field.chunk().await.map_err(body_error)?.is_some() {},
        }
    }
    let (staged, content_type, part_name) = file.ok_or_else(|| {
        ApiError::bad_request(
            "multipart upload without a file part (expected a part named \"file\" or \"Media\")",
        )
    })?;
    // An empty name is no name: the next source is asked.
    let non_empty = |name: Option<String>| name.filter(|n| !n.is_empty());
    Ok(Received {
        staged,
        content_type,
        filename: non_empty(part_name).or(non_empty(filename_field)),
    })
}

/// The longest `FileName` field taken.
const MAX_FILENAME: usize = 1024;

async fn read_short_text(field: &mut multer::Field<'_>) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(body_error)? {
        if text.len() + chunk.len() > MAX_FILENAME {
            return Err(ApiError::bad_request(format!(
                "FileName is longer than {MAX_FILENAME} bytes"
            )));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).map_err(|_| ApiError::bad_request("FileName is not UTF-8"))
}

/// Streams `body` into `staged`, refusing anything past the Media API's maximum size.
async fn copy_into<S, E>(
    staged: &mut Staged,
    mut body: S,
    error: impl Fn(E) -> ApiError,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(&error)?;
        if staged.size() + chunk.len() as u64 > MAX_MEDIA_SIZE {
            return Err(ApiError::too_large(MAX_MEDIA_SIZE));
        }
        staged.write(&chunk).await.map_err(io_error)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bounds on a form's own bytes
//
// multer keeps everything before the first delimiter, and a part's head until its blank line,
// in one buffer that it searches again from its start with every chunk that arrives: without a
// bound, a body with no delimiter (or a head with no end) costs memory up to its whole size and
// CPU quadratic in it. `FormScan` follows the same landmarks in the bytes as they pass, across
// chunk boundaries, and stops the body once one of these is exceeded.

/// The most bytes before the first delimiter, and in one part's head (from its delimiter to
/// the blank line that ends it).
pub const MAX_FORM_HEAD: usize = 16 * 1024;
/// The most bytes after the closing delimiter.
pub const MAX_EPILOGUE: usize = 64 * 1024;
/// What a whole form may hold beyond the largest file: delimiters, heads, other fields.
pub const FORM_ALLOWANCE: u64 = 1024 * 1024;

/// Where a form's bytes are, as multer reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FormStage {
    /// Before the first `--boundary` (found anywhere, as multer does).
    Preamble,
    /// Just after a delimiter: `--` closes the form, anything else starts a part.
    AfterDelimiter,
    /// After `--boundary-`: a second `-` closes the form.
    Dash,
    /// Spaces and tabs after a delimiter, then its CRLF.
    Padding,
    /// The CR of a delimiter line's CRLF was seen.
    PaddingCr,
    /// A part's header lines, up to the blank line (`\r\n\r\n`).
    Head,
    /// A part's content, up to `\r\n--boundary`.
    Content,
    /// After the closing delimiter: ignored, but bounded.
    Epilogue,
}

/// A form that broke one of the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FormViolation {
    TooLarge,
    Preamble,
    Head,
    Epilogue,
}

impl FormViolation {
    fn to_api_error(self) -> ApiError {
        match self {
            FormViolation::TooLarge => ApiError::too_large(MAX_MEDIA_SIZE),
            FormViolation::Preamble => ApiError::bad_request(format!(
                "no multipart boundary within the first {} KiB of the body",
                MAX_FORM_HEAD / 1024
            )),
            FormViolation::Head => ApiError::bad_request(format!(
                "a multipart part's head is longer than {} KiB",
                MAX_FORM_HEAD / 1024
            )),
            FormViolation::Epilogue => ApiError::bad_request(format!(
                "more than {} KiB after the closing multipart boundary",
                MAX_EPILOGUE / 1024
            )),
        }
    }
}

/// Follows a multipart body chunk by chunk, in time linear in its size.
struct FormScan {
    /// `--boundary`.
    delimiter: Vec<u8>,
    /// `\r\n--boundary`.
    content_end: Vec<u8>,
    stage: FormStage,
    /// Bytes seen in the current stage; for a part's head, since the end of its delimiter.
    in_stage: usize,
    /// The current stage's last bytes, fewer than its landmark: one may be split over chunks.
    tail: Vec<u8>,
    total: u64,
}

impl FormScan {
    fn new(boundary: &str) -> FormScan {
        FormScan {
            delimiter: format!("--{boundary}").into_bytes(),
            content_end: format!("\r\n--{boundary}").into_bytes(),
            stage: FormStage::Preamble,
            in_stage: 0,
            tail: Vec::new(),
            total: 0,
        }
    }

    fn enter(&mut self, stage: FormStage) {
        self.stage = stage;
        self.in_stage = 0;
        self.tail.clear();
    }

    /// The most bytes the stage may span, its landmark included.
    fn limit(&self) -> Option<usize> {
        match self.stage {
            FormStage::Preamble => Some(MAX_FORM_HEAD + self.delimiter.len()),
            FormStage::AfterDelimiter
            | FormStage::Dash
            | FormStage::Padding
            | FormStage::PaddingCr
            | FormStage::Head => Some(MAX_FORM_HEAD),
            FormStage::Epilogue => Some(MAX_EPILOGUE),
            FormStage::Content => None,
        }
    }

    fn count(&mut self, bytes: usize) -> Result<(), FormViolation> {
        self.in_stage += bytes;
        match self.limit() {
            Some(limit) if self.in_stage > limit => Err(match self.stage {
                FormStage::Preamble => FormViolation::Preamble,
                FormStage::Epilogue => FormViolation::Epilogue,
                _ => FormViolation::Head,
            }),
            _ => Ok(()),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), FormViolation> {
        self.total += chunk.len() as u64;
        if self.total > MAX_MEDIA_SIZE + FORM_ALLOWANCE {
            return Err(FormViolation::TooLarge);
        }
        let mut rest = chunk;
        while let Some(&byte) = rest.first() {
            let landmark = match self.stage {
                FormStage::Preamble => self.delimiter.clone(),
                FormStage::Head => b"\r\n\r\n".to_vec(),
                FormStage::Content => self.content_end.clone(),
                FormStage::Epilogue => {
                    return self.count(rest.len());
                }
                FormStage::AfterDelimiter
                | FormStage::Dash
                | FormStage::Padding
                | FormStage::PaddingCr => {
                    // One byte at a time, counted in the part head's bytes.
                    self.count(1)?;
                    rest = &rest[1..];
                    self.stage = match (self.stage, byte) {
                        (FormStage::AfterDelimiter, b'-') => FormStage::Dash,
                        (FormStage::Dash, b'-') => {
                            self.enter(FormStage::Epilogue);
                            continue;
                        }
                        (FormStage::AfterDelimiter | FormStage::Padding, b' ' | b'\t') => {
                            FormStage::Padding
                        }
                        (FormStage::AfterDelimiter | FormStage::Padding, b'\r') => {
                            FormStage::PaddingCr
                        }
                        // The head proper starts after the delimiter line's CRLF, and so
                        // does multer's search for its end. Any other byte here makes
                        // multer refuse the form; the scan goes on as if a head began.
                        _ => FormStage::Head,
                    };
                    continue;
                }
            };
            match self.find(rest, &landmark) {
                Some(end) => {
                    self.count(end)?;
                    rest = &rest[end..];
                    self.enter(match self.stage {
                        FormStage::Head => FormStage::Content,
                        _ => FormStage::AfterDelimiter,
                    });
                }
                None => {
                    self.count(rest.len())?;
                    self.keep_tail(rest, landmark.len() - 1);
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    /// Where `landmark` ends in `rest` (an offset just past it), counting a start in the tail.
    fn find(&self, rest: &[u8], landmark: &[u8]) -> Option<usize> {
        if !self.tail.is_empty() {
            let take = rest.len().min(landmark.len() - 1);
            let mut window = self.tail.clone();
            window.extend_from_slice(&rest[..take]);
            if let Some(at) = memchr::memmem::find(&window, landmark) {
                return Some(at + landmark.len() - self.tail.len());
            }
        }
        memchr::memmem::find(rest, landmark).map(|at| at + landmark.len())
    }

    fn keep_tail(&mut self, rest: &[u8], keep: usize) {
        if rest.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&rest[rest.len() - keep..]);
        } else {
            self.tail.extend_from_slice(rest);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }
}

/// A multipart body on its way to multer, scanned by `FormScan`, and kept where the handler
/// can read its rest once multer is done: multer stops at the closing delimiter.
struct GuardedForm<S> {
    shared: Arc<Mutex<Guarded<S>>>,
}

struct Guarded<S> {
    body: S,
    scan: FormScan,
    /// Why the body stopped, once it did.
    failure: Option<ApiError>,
    ended: bool,
}

impl<S> Clone for GuardedForm<S> {
    fn clone(&self) -> Self {
        GuardedForm {
            shared: self.shared.clone(),
        }
    }
}

impl<S> GuardedForm<S>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    fn new(body: S, boundary: &str) -> GuardedForm<S> {
        GuardedForm {
            shared: Arc::new(Mutex::new(Guarded {
                body,
                scan: FormScan::new(boundary),
                failure: None,
                ended: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guarded<S>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure(&self) -> Option<ApiError> {
        self.lock().failure.clone()
    }

    /// Reads what follows the form (its epilogue, within `MAX_EPILOGUE`) to the body's clean end.
    async fn read_to_end(&self) -> Result<(), ApiError> {
        let mut rest = self.clone();
        while let Some(chunk) = rest.next().await {
            if chunk.is_err() {
                return Err(self
                    .failure()
                    .unwrap_or_else(|| ApiError::bad_request("the upload body broke off")));
            }
        }
        Ok(())
    }
}

impl<S> Stream for GuardedForm<S>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Unpin,
{
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut guarded = self.lock();
        if let Some(failure) = &guarded.failure {
            return Poll::Ready(Some(Err(io::Error::other(failure.message.clone()))));
        }
        if guarded.ended {
            return Poll::Ready(None);
        }
        let item = match Pin::new(&mut guarded.body).poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match item {
            Some(Ok(chunk)) => match guarded.scan.feed(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(violation) => {
                    let failure = violation.to_api_error();
                    let error = io::Error::other(failure.message.clone());
                    guarded.failure = Some(failure);
                    Poll::Ready(Some(Err(error)))
                }
            },
            Some(Err(e)) => {
                guarded.failure = Some(read_error(io::Error::new(e.kind(), e.to_string())));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                guarded.ended = true;
                Poll::Ready(None)
            }
        }
    }
}

/// The media type without parameters; missing or curl's form default: octet-stream.
fn media_type_or_untyped(content_type: Option<&str>) -> String {
    let essence = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence.is_empty() || essence == "application/x-www-form-urlencoded" {
        UNTYPED.to_string()
    } else {
        essence
    }
}

fn body_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the upload body could not be read: {e}"))
}

/// A body read that failed: 408 when the client went quiet, 400 otherwise.
fn read_error(e: io::Error) -> ApiError {
    if body::is_timeout(&e) {
        body_timeout(&e)
    } else {
        body_error(e)
    }
}

pub fn body_timeout(e: &io::Error) -> ApiError {
    ApiError::new(408, ErrorCode::HeadTimeout, format!("request body: {e}"))
}

fn io_error(e: io::Error) -> ApiError {
    log::error!("origin store: {e}");
    ApiError::internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_drops_parameters_and_curls_default() {
        assert_eq!(
            media_type_or_untyped(Some("Image/PNG; charset=x")),
            "image/png"
        );
        assert_eq!(
            media_type_or_untyped(Some("application/x-www-form-urlencoded")),
            UNTYPED
        );
        assert_eq!(media_type_or_untyped(None), UNTYPED);
    }

    const BOUNDARY: &str = "b0undary";

    fn form(preamble: &[u8], head: &[u8], content: &[u8], epilogue: &[u8]) -> Vec<u8> {
        let mut body = preamble.to_vec();
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(head);
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--").as_bytes());
        body.extend_from_slice(epilogue);
        body
    }

    const HEAD: &[u8] = b"Content-Disposition: form-data; name=\"file\"";

    /// Feeds `body` in chunks of `size` bytes: the outcome and the stage reached.
    fn scan(body: &[u8], size: usize) -> (Result<(), FormViolation>, FormStage) {
        let mut scan = FormScan::new(BOUNDARY);
        let outcome = body.chunks(size).try_for_each(|chunk| scan.feed(chunk));
        (outcome, scan.stage)
    }

    /// The same outcome whatever the chunking, landmarks split anywhere.
    fn scan_all_ways(body: &[u8]) -> Result<(), FormViolation> {
        let (outcome, stage) = scan(body, body.len().max(1));
        for size in [1, 2, 3, 7, 10, 11, 4096] {
            assert_eq!(scan(body, size), (outcome, stage), "chunks of {size}");
        }
        if outcome.is_ok() {
            assert_eq!(stage, FormStage::Epilogue);
        }
        outcome
    }

    #[test]
    fn well_formed_forms_pass_however_chunked() {
        // Content that holds near-landmarks: a bare `--boundary`, `\r\n--b0und`, blank lines.
        let content = format!("x--{BOUNDARY}y\r\n--b0und\r\n\r\nz\r\n-").into_bytes();
        assert_eq!(scan_all_ways(&form(b"", HEAD, &content, b"\r\n")), Ok(()));
        assert_eq!(scan_all_ways(&form(b"", HEAD, b"", b"")), Ok(()));
        // Two parts, transport padding after a delimiter, a preamble and an epilogue.
        let mut two = b"preamble\r\n".to_vec();
        two.extend_from_slice(format!("--{BOUNDARY} \t\r\n").as_bytes());
        two.extend_from_slice(b"Content-Disposition: form-data; name=\"FileName\"\r\n\r\na.png");
        two.extend_from_slice(&form(b"\r\n", HEAD, b"bytes", b"\r\nepilogue")[2..]);
        assert_eq!(scan_all_ways(&two), Ok(()));
        // Up to the limits exactly.
        let preamble = vec![b'p'; MAX_FORM_HEAD];
        let head = vec![b'h'; MAX_FORM_HEAD - "\r\n".len() - "\r\n\r\n".len()];
        let epilogue = vec![b'e'; MAX_EPILOGUE];
        assert_eq!(
            scan_all_ways(&form(&preamble, &head, b"", &epilogue)),
            Ok(())
        );
    }

    #[test]
    fn a_body_without_a_delimiter_stops_after_the_preamble_limit() {
        let body = vec![b'x'; 1 << 20];
        assert_eq!(scan_all_ways(&body), Err(FormViolation::Preamble));
        // It stops there, not at the end of the body.
        let mut scan = FormScan::new(BOUNDARY);
        let stopped = body.chunks(1024).position(|c| scan.feed(c).is_err());
        // The 17th KiB: past 16 KiB and the delimiter's length.
        assert_eq!(stopped, Some(MAX_FORM_HEAD / 1024));
        let preamble = vec![b'p'; MAX_FORM_HEAD + 1];
        assert_eq!(
            scan_all_ways(&form(&preamble, HEAD, b"", b"")),
            Err(FormViolation::Preamble)
        );
    }

    #[test]
    fn a_head_without_an_end_stops_after_the_head_limit() {
        let mut body = format!("--{BOUNDARY}\r\n").into_bytes();
        body.extend_from_slice(HEAD);
        for _ in 0..(1 << 20) / 16 {
            body.extend_from_slice(b"\r\nX-Fill: aaaaa");
        }
        assert_eq!(scan_all_ways(&body), Err(FormViolation::Head));
        let head = vec![b'h'; MAX_FORM_HEAD];
        assert_eq!(
            scan_all_ways(&form(b"", &head, b"", b"")),
            Err(FormViolation::Head)
        );
        // Transport padding counts as the head's.
        let mut padded = format!("--{BOUNDARY}").into_bytes();
        padded.extend(std::iter::repeat_n(b' ', MAX_FORM_HEAD + 1));
        assert_eq!(scan_all_ways(&padded), Err(FormViolation::Head));
        // So does a second part's head.
        let mut second = form(b"", HEAD, b"one", b"");
        second.truncate(second.len() - 2);
        second.extend_from_slice(b"\r\n");
        second.extend(std::iter::repeat_n(b'h', MAX_FORM_HEAD));
        assert_eq!(scan_all_ways(&second), Err(FormViolation::Head));
    }

    #[test]
    fn the_epilogue_is_bounded() {
        let epilogue = vec![b'e'; MAX_EPILOGUE + 1];
        assert_eq!(
            scan_all_ways(&form(b"", HEAD, b"", &epilogue)),
            Err(FormViolation::Epilogue)
        );
    }

    #[test]
    fn the_whole_form_is_bounded() {
        let mut scan = FormScan::new(BOUNDARY);
        let mut head = format!("--{BOUNDARY}\r\n").into_bytes();
        head.extend_from_slice(HEAD);
        head.extend_from_slice(b"\r\n\r\n");
        scan.feed(&head).expect("a head");
        assert_eq!(scan.stage, FormStage::Content);
        let chunk = vec![0u8; 1 << 20];
        let mut fed = head.len() as u64;
        let outcome = loop {
            if let Err(violation) = scan.feed(&chunk) {
                break violation;
            }
            fed += chunk.len() as u64;
            assert!(fed <= MAX_MEDIA_SIZE + FORM_ALLOWANCE, "past the bound");
        };
        assert_eq!(outcome, FormViolation::TooLarge);
        assert!(fed + chunk.len() as u64 > MAX_MEDIA_SIZE + FORM_ALLOWANCE);
    }
}
