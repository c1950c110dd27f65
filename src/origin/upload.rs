//! Receiving an upload's bytes in any of the three styles the Media API sees: a raw body, or a
//! multipart form whose file part is named `file` (with `?Category=`) or `Media` (with a
//! `FileName` text field). Bytes stream into a staging file; nothing is buffered whole.

use std::io;

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

/// A multipart upload: the part named `file` or `Media` is the file.
pub async fn receive_multipart<S>(
    store: &Store,
    body: S,
    content_type: &str,
) -> Result<Received, ApiError>
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
{
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| ApiError::bad_request("multipart/form-data without a boundary"))?;
    let mut form = multer::Multipart::new(body, boundary);
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
    Ok(Received {
        staged,
        content_type,
        // An empty name is no name: the next source is asked.
        filename: part_name
            .filter(|n| !n.is_empty())
            .or(filename_field.filter(|n| !n.is_empty())),
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
}
