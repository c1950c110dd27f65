//! Where requests go: `upstream.url` (the API), or the host of a signed content URL, resolved
//! and turned into pingora peers with the configured timeouts. Connections are pooled by
//! pingora (`upstream.keepalive_pool`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::Upstream;

/// How long a DNS answer is used before asking again.
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How many hosts' answers are kept: the API and a media host or two in practice.
const DNS_CACHE_HOSTS: usize = 64;
/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// A host to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

pub struct UpstreamTarget {
    api: Endpoint,
    host_header: HeaderValue,
    connect_timeout: Duration,
    read_timeout: Duration,
    dns: RwLock<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl UpstreamTarget {
    pub fn new(config: &Upstream) -> Result<UpstreamTarget, String> {
        let url = &config.url;
        Ok(UpstreamTarget {
            api: Endpoint {
                host: url.host.clone(),
                port: url.port,
                tls: url.tls,
            },
            host_header: HeaderValue::try_from(url.authority())
                .map_err(|_| format!("upstream.url: \"{url}\" is not a valid Host"))?,
            connect_timeout: config.connect_timeout.get(),
            read_timeout: config.read_timeout.get(),
            dns: RwLock::default(),
        })
    }

    /// The API's endpoint.
    pub fn api(&self) -> &Endpoint {
        &self.api
    }

    /// The `Host` header API requests carry.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// A peer for the API.
    pub async fn peer(&self) -> Result<Box<HttpPeer>> {
        self.peer_for(&self.api).await
    }

    /// A peer for any endpoint, with the API's timeouts.
    pub async fn peer_for(&self, endpoint: &Endpoint) -> Result<Box<HttpPeer>> {
        let addr = self.address(endpoint).await?;
        // Always the host, IP literals included: pingora skips certificate verification for a
        // peer with an empty SNI, and rustls verifies an IP against the certificate's IP SANs.
        let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        Ok(Box::new(peer))
    }

    async fn address(&self, endpoint: &Endpoint) -> Result<SocketAddr> {
        if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, endpoint.port));
        }
        let key = (endpoint.host.clone(), endpoint.port);
        let cached = self
            .dns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if let Some((addr, at)) = cached {
            if at.elapsed() < DNS_REFRESH {
                return Ok(addr);
            }
        }
        let addr = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectNoRoute,
                    format!("cannot resolve {}", endpoint.host),
                )
                .into_up()
            })?;
        let mut dns = self.dns.write().unwrap_or_else(|p| p.into_inner());
        if dns.len() >= DNS_CACHE_HOSTS {
            dns.clear();
        }
        dns.insert(key, (addr, Instant::now()));
        Ok(addr)
    }
}
