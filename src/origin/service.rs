//! The origin's request handling: one `handle` that routes with the shared `api::Route` and one
//! function per route.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::SeekFrom;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::auth::Account;
use super::body::{self, IdleTimeout, RequestBody};
use super::journal::Journal;
use super::signing::{Signer, UrlRefused};
use super::store::{MediaRecord, NewMedia, Store};
use super::upload::{self, Received};
use crate::api::{
    ApiError, ErrorCode, Links, Media, MediaSetRecord, MediaSetRequest, MediaSid, Route,
    RouteError, ServiceSid, MAX_MEDIA_SIZE,
};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Everything a request needs: the store, the signing key, the account, the journal.
pub struct Origin {
    pub store: Store,
    pub signer: Signer,
    pub account: Account,
    pub journal: Journal,
    /// `https` when serving TLS: the scheme of the temporary URLs it hands out.
    pub scheme: &'static str,
    /// Used for temporary URLs when a request carries no Host header.
    pub fallback_host: String,
    /// Sent with every successful read when set (`--cache-control`).
    pub cache_control: Option<http::HeaderValue>,
    /// The longest wait for a request body's next bytes.
    pub body_idle: Duration,
}

const JOURNAL_PATH: &str = "/_origin/requests";
const MEDIA_SET_MAX_BODY: usize = 1 << 20;

impl Origin {
    /// Answers one request that came in on a connection from `peer`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        if req.uri().path() == JOURNAL_PATH {
            return Ok(json_response(StatusCode::OK, self.journal.to_json()));
        }
        // A temporary URL's query is its signature: the journal keeps only its path.
        let target = match req.uri().path_and_query() {
            Some(pq) if pq.path().starts_with("/v1/") => pq.as_str(),
            _ => req.uri().path(),
        };
        let pending = self
            .journal
            .start(req.method().as_str(), target, req.headers(), peer);
        let req = req.map(|body| IdleTimeout::new(body, self.body_idle));
        let mut response = self.route(req).await.unwrap_or_else(error_response);
        if let Some(value) = &self.cache_control {
            if response.status().is_success() || response.status().is_redirection() {
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, value.clone());
            }
        }
        pending.answered(response.status().as_u16());
        Ok(response)
    }

    async fn route(&self, req: Request<RequestBody>) -> Result<Response<Body>, ApiError> {
        if let Some(media) = temporary_url_media(req.uri().path()) {
            return self.serve_temporary(&req, &media).await;
        }
        let route = match Route::parse(req.method(), req.uri().path()) {
            Ok(route) => route,
            Err(RouteError::NotFound) => return Err(ApiError::resource_not_found()),
            Err(RouteError::BadSid) => return Err(ApiError::invalid_sid()),
            Err(RouteError::MethodNotAllowed(allow)) => return Ok(method_not_allowed(allow)),
        };
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !self.account.admits(authorization) {
            return Err(ApiError::authenticate());
        }
        match route {
            Route::Upload { service } => self.upload(req, service).await,
            Route::Metadata { service, media } => self.metadata(&req, &service, &media).await,
            Route::Content { service, media } => self.content(&req, &service, &media).await,
            Route::MediaSet { service } => self.media_set(req, &service).await,
        }
    }

    /// `POST /v1/Services/{IS}/Media`: 201 with the Media JSON once the bytes are durable.
    async fn upload(
        &self,
        req: Request<RequestBody>,
        service: ServiceSid,
    ) -> Result<Response<Body>, ApiError> {
        let query = query_params(req.uri().query());
        let category = query.get("Category").map(String::as_str).unwrap_or("media");
        if !matches!(category, "media" | "body" | "history") {
            return Err(ApiError::bad_request(format!(
                "Invalid Category \"{category}\": expected media, body or history"
            )));
        }
        let content_size = declared_size(req.headers(), "content-size")?;
        let content_length = declared_size(req.headers(), header::CONTENT_LENGTH.as_str())?;
        if content_size.max(content_length).unwrap_or(0) > MAX_MEDIA_SIZE {
            return Err(ApiError::too_large(MAX_MEDIA_SIZE));
        }
        let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_string);
        let body = req.into_body().into_data_stream();
        let received = if upload::is_multipart(content_type.as_deref()) {
            let content_type = content_type.unwrap_or_default();
            upload::receive_multipart(&self.store, body, &content_type).await?
        } else {
            let received = upload::receive_raw(&self.store, body, content_type.as_deref()).await?;
            // Content-Size is the raw body's size: the file's, here.
            if let Some(declared) = content_size.filter(|&d| d != received.staged.size()) {
                return Err(ApiError::bad_request(format!(
                    "Content-Size says {declared} bytes, the body had {}",
                    received.staged.size()
                )));
            }
            received
        };
        let record = self
            .store_upload(service, category, received, query.get("Filename").cloned())
            .await?;
        let media = self.media_json(&record, None);
        Ok(json_response(StatusCode::CREATED, to_json(&media)))
    }

    async fn store_upload(
        &self,
        service: ServiceSid,
        category: &str,
        received: Received,
        filename_param: Option<String>,
    ) -> Result<MediaRecord, ApiError> {
        let new = NewMedia {
            sid: MediaSid::generate().to_string(),
            service_sid: service.to_string(),
            account_sid: self.account.sid.clone(),
            date_created: now_iso8601(),
            category: category.to_string(),
            content_type: received.content_type,
            // An empty name is no name, wherever it came from.
            filename: received
                .filename
                .or(filename_param.filter(|name| !name.is_empty())),
        };
        self.store.commit(received.staged, new).await.map_err(|e| {
            log::error!("origin store: cannot commit an upload: {e}");
            ApiError::internal()
        })
    }

    /// `GET /v1/Services/{IS}/Media/{ME}`: the Media JSON with a fresh temporary URL.
    async fn metadata(
        &self,
        req: &Request<RequestBody>,
        service: &ServiceSid,
        media: &MediaSid,
    ) -> Result<Response<Body>, ApiError> {
        let record = self.find(service, media).await?;
        let media = self.media_json(&record, Some(&self.base_url(req)));
        Ok(json_response(StatusCode::OK, to_json(&media)))
    }

    /// `GET …/Content`: a redirect to the temporary URL, as the real service answers.
    async fn content(
        &self,
        req: &Request<RequestBody>,
        service: &ServiceSid,
        media: &MediaSid,
    ) -> Result<Response<Body>, ApiError> {
        let record = self.find(service, media).await?;
        let location = self.signer.temporary_url(&self.base_url(req), &record.sid);
        Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location)
            .header(header::CONTENT_LENGTH, 0)
            .body(empty())
            .unwrap_or_else(|_| error_response(ApiError::internal())))
    }

    /// `POST …/MediaSet` with `{"command":"get","list":[{"media_sid":…}]}`.
    async fn media_set(
        &self,
        req: Request<RequestBody>,
        service: &ServiceSid,
    ) -> Result<Response<Body>, ApiError> {
        let base = self.base_url(&req);
        let body = Limited::new(req.into_body(), MEDIA_SET_MAX_BODY)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<std::io::Error>() {
                Some(e) if body::is_timeout(e) => upload::body_timeout(e),
                _ => ApiError::bad_request(format!("MediaSet body: {e}")),
            })?
            .to_bytes();
        let request: MediaSetRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("MediaSet body is not valid: {e}")))?;
        if request.command != "get" {
            return Err(ApiError::bad_request(format!(
                "MediaSet command \"{}\" is not supported: expected \"get\"",
                request.command
            )));
        }
        let mut records = Vec::with_capacity(request.list.len());
        for item in &request.list {
            let media = MediaSid::parse(&item.media_sid).ok_or_else(ApiError::invalid_sid)?;
            // Unknown media are left out of the answer rather than failing the whole set.
            if let Some(record) = self.find_in(service, &media).await? {
                records.push(MediaSetRecord {
                    media_record: self.media_json(&record, Some(&base)),
                });
            }
        }
        Ok(json_response(StatusCode::OK, to_json(&records)))
    }

    /// `GET /{ME}?Expires=…&Signature=…`: the bytes, no credentials needed.
    async fn serve_temporary(
        &self,
        req: &Request<RequestBody>,
        media: &str,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(method_not_allowed("GET, HEAD"));
        }
        let query = query_params(req.uri().query());
        let param = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
        if let Err(refused) = self
            .signer
            .verify(media, param("Expires"), param("Signature"))
        {
            let why = match refused {
                UrlRefused::Expired => "This temporary URL has expired",
                UrlRefused::BadSignature | UrlRefused::Malformed => {
                    "This temporary URL's signature is not valid"
                }
            };
            return Err(ApiError::new(403, ErrorCode::UrlExpired, why));
        }
        let record = self
            .store
            .find(media)
            .await
            .map_err(store_error)?
            .ok_or_else(ApiError::media_not_found)?;
        self.serve_bytes(req, &record).await
    }

    async fn serve_bytes(
        &self,
        req: &Request<RequestBody>,
        record: &MediaRecord,
    ) -> Result<Response<Body>, ApiError> {
        let etag = format!("\"{}\"", record.sha256);
        let builder = Response::builder()
            .header(header::CONTENT_TYPE, &record.content_type)
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes");
        if header_str(req.headers(), header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, &etag))
        {
            return Ok(builder
                .status(StatusCode::NOT_MODIFIED)
                .body(empty())
                .unwrap_or_else(|_| error_response(ApiError::internal())));
        }
        let size = record.size;
        let range = header_str(req.headers(), header::RANGE).map(|r| parse_range(r, size));
        let (status, start, len, builder) = match range {
            Some(RangeAnswer::Unsatisfiable) => {
                return Ok(builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(empty())
                    .unwrap_or_else(|_| error_response(ApiError::internal())));
            }
            Some(RangeAnswer::Part { start, end }) => (
                StatusCode::PARTIAL_CONTENT,
                start,
                end - start + 1,
                builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
            ),
            Some(RangeAnswer::Whole) | None => (StatusCode::OK, 0, size, builder),
        };
        let builder = builder.status(status).header(header::CONTENT_LENGTH, len);
        let body = if req.method() == Method::HEAD {
            empty()
        } else {
            self.file_body(record, start, len).await?
        };
        Ok(builder
            .body(body)
            .unwrap_or_else(|_| error_response(ApiError::internal())))
    }

    async fn file_body(
        &self,
        record: &MediaRecord,
        start: u64,
        len: u64,
    ) -> Result<Body, ApiError> {
        let mut file = tokio::fs::File::open(self.store.content_path(&record.sha256))
            .await
            .map_err(store_error)?;
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(store_error)?;
        let stream = ReaderStream::new(file.take(len));
        Ok(BodyExt::boxed(StreamBody::new(
            futures_util::StreamExt::map(stream, |chunk| chunk.map(Frame::data)),
        )))
    }

    async fn find(&self, service: &ServiceSid, media: &MediaSid) -> Result<MediaRecord, ApiError> {
        self.find_in(service, media)
            .await?
            .ok_or_else(ApiError::media_not_found)
    }

    /// A media of this service; one of another service is as unknown as a missing one.
    async fn find_in(
        &self,
        service: &ServiceSid,
        media: &MediaSid,
    ) -> Result<Option<MediaRecord>, ApiError> {
        let record = self.store.find(media.as_str()).await.map_err(store_error)?;
        Ok(record.filter(|r| r.service_sid == service.as_str()))
    }

    fn media_json(&self, record: &MediaRecord, temporary_base: Option<&str>) -> Media {
        let url = format!("/v1/Services/{}/Media/{}", record.service_sid, record.sid);
        Media {
            sid: record.sid.clone(),
            service_sid: record.service_sid.clone(),
            account_sid: record.account_sid.clone(),
            date_created: record.date_created.clone(),
            date_upload_updated: record.date_created.clone(),
            date_updated: record.date_created.clone(),
            channel_sid: None,
            message_sid: None,
            author: "system".into(),
            category: record.category.clone(),
            size: record.size,
            content_type: record.content_type.clone(),
            filename: record.filename.clone(),
            links: Links {
                content: format!("{url}/Content"),
                content_direct_temporary: temporary_base
                    .map(|base| self.signer.temporary_url(base, &record.sid)),
            },
            url,
            is_multipart_upstream: false,
        }
    }

    /// `scheme://host` as the client reached this origin.
    fn base_url(&self, req: &Request<RequestBody>) -> String {
        let host = header_str(req.headers(), header::HOST).unwrap_or(&self.fallback_host);
        format!("{}://{host}", self.scheme)
    }
}

/// `/{ME…}`: the path of a temporary URL.
fn temporary_url_media(path: &str) -> Option<String> {
    let sid = path.strip_prefix('/')?;
    MediaSid::parse(sid).map(|m| m.to_string())
}

enum RangeAnswer {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`). Several ranges or a header that is
/// not a valid range (RFC 9110 says to ignore it) get the whole content; a valid range that
/// selects nothing (`bytes=-0`, a start past the end) is unsatisfiable.
fn parse_range(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    // 1*DIGIT only: `parse` would also take a sign.
    let number = |s: &str| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    let (start, end) = match (number(first), number(last)) {
        (None, Some(0)) if first.is_empty() => return RangeAnswer::Unsatisfiable,
        (None, Some(suffix)) if first.is_empty() => {
            (size.saturating_sub(suffix), size.saturating_sub(1))
        }
        (Some(start), None) if last.is_empty() => (start, size.saturating_sub(1)),
        (Some(start), Some(end)) if start <= end => (start, end.min(size.saturating_sub(1))),
        _ => return RangeAnswer::Whole,
    };
    if size == 0 || start >= size {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Part { start, end }
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 13.1.2): `W/"x"` matches `"x"`.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = |tag: &str| {
        let tag = tag.trim();
        tag.strip_prefix("W/").unwrap_or(tag).to_string()
    };
    let etag = opaque(etag);
    if_none_match.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || opaque(candidate) == etag
    })
}

/// A size header: absent is `None`; present, it must be plain decimal digits.
fn declared_size(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("{name} must be a whole number of bytes")))
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn now_iso8601() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn store_error(e: std::io::Error) -> ApiError {
    log::error!("origin store: {e}");
    ApiError::internal()
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let len = body.len();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    response
}

/// 405 with the methods the resource does serve.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error_response(ApiError::method_not_allowed());
    response
        .headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn error_response(error: ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, error.to_json());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Option<(u64, u64)> {
        match parse_range(value, size) {
            RangeAnswer::Part { start, end } => Some((start, end)),
            RangeAnswer::Whole => None,
            RangeAnswer::Unsatisfiable => Some((u64::MAX, u64::MAX)),
        }
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(range("bytes=100-", 100), Some((u64::MAX, u64::MAX)));
        assert_eq!(range("bytes=0-1,5-6", 100), None);
        assert_eq!(range("items=0-1", 100), None);
        assert_eq!(range("bytes=9-1", 100), None);
    }

    #[test]
    fn invalid_ranges_are_ignored_and_empty_ones_unsatisfiable() {
        const UNSATISFIABLE: Option<(u64, u64)> = Some((u64::MAX, u64::MAX));
        // Not a valid range at all: the whole content.
        for invalid in [
            "bytes=-x",
            "bytes=-",
            "bytes=x-",
            "bytes=x-9",
            "bytes=0-x",
            "bytes=+1-5",
            "bytes=-+5",
            "bytes=--5",
            "bytes=5",
            "bytes=",
        ] {
            assert_eq!(range(invalid, 100), None, "{invalid}");
        }
        // Valid, but selecting nothing.
        assert_eq!(range("bytes=-0", 100), UNSATISFIABLE);
        assert_eq!(range("bytes=0-", 0), UNSATISFIABLE);
        assert_eq!(range("bytes=-5", 0), UNSATISFIABLE);
        // A suffix longer than the content is all of it.
        assert_eq!(range("bytes=-500", 100), Some((0, 99)));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"x\", W/\"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abcd\"", etag));
        assert!(!etag_matches("W/\"x\"", etag));
        assert!(!etag_matches("abc", etag));
    }
}
