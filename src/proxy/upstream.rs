//! Where requests go: `upstream.url`, resolved and turned into a pingora peer with the
//! configured timeouts. Connections are pooled by pingora (`upstream.keepalive_pool`).

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::Upstream;

/// How long a DNS answer for the upstream host is used before asking again.
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct UpstreamTarget {
    host: String,
    port: u16,
    tls: bool,
    host_header: HeaderValue,
    connect_timeout: Duration,
    read_timeout: Duration,
    literal: Option<IpAddr>,
    resolved: RwLock<Option<(SocketAddr, Instant)>>,
}

impl UpstreamTarget {
    pub fn new(config: &Upstream) -> Result<UpstreamTarget, String> {
        let url = &config.url;
        Ok(UpstreamTarget {
            host: url.host.clone(),
            port: url.port,
            tls: url.tls,
            host_header: HeaderValue::try_from(url.authority())
                .map_err(|_| format!("upstream.url: \"{url}\" is not a valid Host"))?,
            connect_timeout: config.connect_timeout.get(),
            read_timeout: config.read_timeout.get(),
            literal: url.host.parse().ok(),
            resolved: RwLock::new(None),
        })
    }

    /// The `Host` header upstream requests carry.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    pub async fn peer(&self) -> Result<Box<HttpPeer>> {
        let addr = self.address().await?;
        // Always the host, IP literals included: pingora skips certificate verification for a
        // peer with an empty SNI, and rustls verifies an IP against the certificate's IP SANs.
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        Ok(Box::new(peer))
    }

    async fn address(&self) -> Result<SocketAddr> {
        if let Some(ip) = self.literal {
            return Ok(SocketAddr::new(ip, self.port));
        }
        if let Some((addr, at)) = *self.resolved.read().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < DNS_REFRESH {
                return Ok(addr);
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectNoRoute,
                    format!("cannot resolve {}", self.host),
                )
                .into_up()
            })?;
        *self.resolved.write().unwrap_or_else(|p| p.into_inner()) = Some((addr, Instant::now()));
        Ok(addr)
    }
}
