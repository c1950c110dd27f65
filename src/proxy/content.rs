//! `GET …/Content` with `cache.follow_content_redirects`: the API answers with a redirect to a
//! signed URL on another host, valid for minutes. On a cache miss the sidecar asks the API
//! itself (with the service's credentials, as every API request), reads the `Location`, and
//! then proxies the signed URL instead (without credentials: the signature is the
//! authorisation). pingora-cache sees one ordinary answer carrying the bytes and caches it
//! under the media SID; the short-lived URL is never cached nor shown to the client.

use http::{header, HeaderValue, Uri};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::upstream::{Endpoint, POOL_IDLE};

/// A redirect body larger than this is not read: the connection is dropped instead of reused.
const MAX_REDIRECT_BODY: usize = 64 * 1024;

/// Where a media's bytes are: the signed URL's host and the request to send it.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedUrl {
    pub endpoint: Endpoint,
    pub path_and_query: String,
    pub host: HeaderValue,
}

impl SignedUrl {
    /// Reads a `Location`: an absolute `http(s)` URL, or a path on the API itself.
    pub fn parse(location: &[u8], api: &Endpoint, api_host: &HeaderValue) -> Option<SignedUrl> {
        let uri = Uri::try_from(location).ok()?;
        let path_and_query = uri.path_and_query()?.as_str().to_string();
        if !path_and_query.starts_with('/') {
            return None;
        }
        let Some(scheme) = uri.scheme_str() else {
            return Some(SignedUrl {
                endpoint: api.clone(),
                path_and_query,
                host: api_host.clone(),
            });
        };
        let tls = match scheme {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Some(SignedUrl {
            endpoint: Endpoint {
                port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
                host,
                tls,
            },
            path_and_query,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
        })
    }
}

impl SignedUrl {
    /// The request for the bytes: the path and signature, the media host, the request id, and
    /// nothing of the client's (no credential, no cookie, no encoding it happens to accept).
    pub fn request(&self, method: http::Method, request_id: &str) -> Result<RequestHeader> {
        let mut request = RequestHeader::build(method, self.path_and_query.as_bytes(), None)?;
        request.insert_header(header::HOST, self.host.clone())?;
        request.insert_header(header::ACCEPT_ENCODING, "identity")?;
        request.insert_header("x-request-id", request_id)?;
        Ok(request)
    }
}

/// The validators of a revalidation (`If-None-Match`, `If-Modified-Since`), from the request
/// pingora-cache prepared to the proxy's own request for the same bytes.
pub fn carry_validators(prepared: &RequestHeader, own: &mut RequestHeader) -> Result<()> {
    carry(
        prepared,
        own,
        &[header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE],
    )
}

/// With the cache off, the client's own range and validators: the media host answers them
/// (206, 304), as it would have had the client followed the redirect itself. Nothing else of
/// the client's goes.
pub fn carry_client_conditions(client: &RequestHeader, own: &mut RequestHeader) -> Result<()> {
    carry(
        client,
        own,
        &[
            header::RANGE,
            header::IF_RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
        ],
    )
}

fn carry(from: &RequestHeader, to: &mut RequestHeader, names: &[header::HeaderName]) -> Result<()> {
    for name in names {
        if let Some(value) = from.headers.get(name) {
            to.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// A connection for a request of the proxy's own (a content redirect, an upload replay), and
/// whether it was a pooled one. pingora gives the peer's read and write timeouts only to the
/// sessions it proxies on itself; without them a silent API would hold the request forever.
pub async fn own_session(connector: &Connector, peer: &HttpPeer) -> Result<(HttpSession, bool)> {
    let (mut session, reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| e.into_up())?;
    session.set_read_timeout(peer.options.read_timeout);
    session.set_write_timeout(peer.options.write_timeout);
    Ok((session, reused))
}

/// The most interim heads read before an answer's own: an upstream sending `100 Continue`
/// without end would otherwise keep the request waiting past every read timeout.
const MAX_INTERIM_HEADS: usize = 8;

/// Reads the head of an upstream's answer to a request of the proxy's own, past any interim
/// (`100 Continue`) head.
pub async fn answer_head(session: &mut HttpSession) -> Result<ResponseHeader> {
    for _ in 0..=MAX_INTERIM_HEADS {
        session
            .read_response_header()
            .await
            .map_err(|e| e.into_up())?;
        let Some(response) = session.response_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no answer head")
                .map_err(|e| e.into_up());
        };
        if !response.status.is_informational() {
            return Ok(response.clone());
        }
    }
    Error::e_explain(
        ErrorType::InvalidHTTPHeader,
        "interim answer heads without end",
    )
    .map_err(|e| e.into_up())
}

pub struct ContentResolver {
    connector: Connector,
}

impl ContentResolver {
    /// Connects as the proxy does: same CA file and TLS settings.
    pub fn new(conf: &ServerConf) -> ContentResolver {
        ContentResolver {
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }

    /// Sends `request` (a GET of `…/Content`, credentials in) to the API. A redirect gives the
    /// signed URL; any other answer gives `None`, and the request then goes to the API as it
    /// is (a second request, only for answers that are not redirects: errors, mostly).
    pub async fn resolve(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        api: &Endpoint,
        api_host: &HeaderValue,
    ) -> Result<Option<SignedUrl>> {
        match self.ask(peer, request.clone(), api, api_host).await {
            // A pooled connection the API had already closed: once more, on a new one.
            Err((e, true)) => {
                log::debug!("content redirect on a reused connection failed, retrying: {e}");
                self.ask(peer, request, api, api_host)
                    .await
                    .map_err(|(e, _)| e)
            }
            answer => answer.map_err(|(e, _)| e),
        }
    }

    /// One attempt; an error says whether the connection was a reused one.
    async fn ask(
        &self,
        peer: &HttpPeer,
        request: RequestHeader,
        api: &Endpoint,
        api_host: &HeaderValue,
    ) -> Result<Option<SignedUrl>, (Box<Error>, bool)> {
        let (session, reused) = own_session(&self.connector, peer)
            .await
            .map_err(|e| (e, false))?;
        self.exchange(session, peer, request, api, api_host)
            .await
            .map_err(|e| (e, reused))
    }

    async fn exchange(
        &self,
        mut session: HttpSession,
        peer: &HttpPeer,
        request: RequestHeader,
        api: &Endpoint,
        api_host: &HeaderValue,
    ) -> Result<Option<SignedUrl>> {
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| e.into_up())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.into_up())?;
        let response = answer_head(&mut session).await?;
        if !response.status.is_redirection() || response.status == http::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let signed = response
            .headers
            .get(header::LOCATION)
            .and_then(|location| SignedUrl::parse(location.as_bytes(), api, api_host));
        let Some(signed) = signed else {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "the content redirect has no usable Location",
            )
            .map_err(|e| e.into_up());
        };
        // Read the (small) redirect body so that the connection can serve the next request.
        let mut read = 0;
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) if read + chunk.len() <= MAX_REDIRECT_BODY => read += chunk.len(),
                Ok(None) => {
                    self.connector
                        .release_http_session(session, peer, Some(POOL_IDLE))
                        .await;
                    break;
                }
                _ => break,
            }
        }
        Ok(Some(signed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> (Endpoint, HeaderValue) {
        (
            Endpoint {
                host: "mcs.us1.twilio.com".into(),
                port: 443,
                tls: true,
            },
            HeaderValue::from_static("mcs.us1.twilio.com"),
        )
    }

    #[test]
    fn absolute_and_relative_locations() {
        let (api, host) = api();
        let signed = SignedUrl::parse(
            b"https://media.us1.twilio.com/ME1?Expires=1&Signature=a%2Fb&Key-Pair-Id=k",
            &api,
            &host,
        )
        .unwrap();
        assert_eq!(signed.endpoint.host, "media.us1.twilio.com");
        assert_eq!(signed.endpoint.port, 443);
        assert!(signed.endpoint.tls);
        assert_eq!(
            signed.path_and_query,
            "/ME1?Expires=1&Signature=a%2Fb&Key-Pair-Id=k"
        );
        assert_eq!(signed.host, "media.us1.twilio.com");

        let local = SignedUrl::parse(b"http://127.0.0.1:8081/ME1?Expires=1", &api, &host).unwrap();
        assert_eq!(local.endpoint.port, 8081);
        assert!(!local.endpoint.tls);
        assert_eq!(local.host, "127.0.0.1:8081");

        let relative = SignedUrl::parse(b"/ME1?Expires=1", &api, &host).unwrap();
        assert_eq!(relative.endpoint, api);
        assert_eq!(relative.host, host);
    }

    #[test]
    fn unusable_locations_are_refused() {
        let (api, host) = api();
        for bad in [
            &b"ftp://example.com/x"[..],
            b"https://user:pw@example.com/x",
            b"not a url",
            b"",
        ] {
            assert_eq!(SignedUrl::parse(bad, &api, &host), None, "{bad:?}");
        }
    }
}
