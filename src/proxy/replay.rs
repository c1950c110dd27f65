//! Sending a spooled upload upstream again (`uploads.retry`), on a connection of its own: the
//! request head the proxy would send, the body from the spool, the answer read whole (the Media
//! JSON, or an error).

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncReadExt;

use super::content::{answer_head, own_session};
use crate::spool::Spool;

/// The chunks the spool is read in.
const CHUNK: usize = 64 * 1024;
/// The largest answer read back: uploads are answered with a small JSON.
const MAX_ANSWER: usize = 1 << 20;

pub struct Replayer {
    connector: Connector,
}

impl Replayer {
    pub fn new(conf: &ServerConf) -> Replayer {
        Replayer {
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }

    /// Sends `head` with the spooled body; the upstream's answer head, and its whole body or
    /// why it could not be read.
    pub async fn send(
        &self,
        peer: &HttpPeer,
        mut head: RequestHeader,
        spool: &mut Spool,
    ) -> Result<(ResponseHeader, Result<Bytes>)> {
        head.remove_header(&http::header::TRANSFER_ENCODING);
        head.insert_header(http::header::CONTENT_LENGTH, spool.len().to_string())?;
        let mut body = spool
            .reader()
            .await
            .map_err(|e| Error::because(ErrorType::FileReadError, "the spooled upload", e))?;
        // A new connection: the pooled ones may be what just failed.
        let (mut session, _) = own_session(&self.connector, peer).await?;
        session
            .write_request_header(Box::new(head))
            .await
            .map_err(|e| e.into_up())?;
        let mut left = spool.len();
        let mut buffer = vec![0u8; CHUNK];
        while left > 0 {
            let n = body
                .read(&mut buffer)
                .await
                .map_err(|e| Error::because(ErrorType::FileReadError, "the spooled upload", e))?;
            if n == 0 {
                return Error::e_explain(ErrorType::FileReadError, "the spool ended early");
            }
            left = left.saturating_sub(n as u64);
            session
                .write_request_body(Bytes::copy_from_slice(&buffer[..n]), left == 0)
                .await
                .map_err(|e| e.into_up())?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| e.into_up())?;
        let response = answer_head(&mut session).await?;
        let answer = read_answer(&mut session).await;
        Ok((response, answer))
    }
}

/// The hop-by-hop headers (RFC 9110 7.6.1), which end at the proxy.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// The client's request head as pingora forwards it on the first try: HTTP/1.1, and neither
/// the hop-by-hop headers nor those the client's `Connection` header names.
pub fn forwarded_head(client: &RequestHeader) -> RequestHeader {
    let mut head = client.clone();
    head.set_version(http::Version::HTTP_11);
    let nominated: Vec<String> = client
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|option| option.trim().to_ascii_lowercase())
        .filter(|option| !option.is_empty())
        .collect();
    for name in nominated.iter().map(String::as_str).chain(HOP_BY_HOP) {
        head.remove_header(name);
    }
    head
}

/// The answer's body, whole. An error here comes after the upstream answered: the caller must
/// not take it for an upload the upstream never received.
async fn read_answer(session: &mut HttpSession) -> Result<Bytes> {
    let mut answer = BytesMut::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.into_up())?
    {
        if answer.len() + chunk.len() > MAX_ANSWER {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "an upload answer over 1 MiB")
                .map_err(|e| e.into_up());
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer.freeze())
}
