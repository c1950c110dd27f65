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

    /// A peer for a signed content URL from the API's redirect (see `redirect_allowed`).
    pub async fn media_peer(&self, endpoint: &Endpoint) -> Result<Box<HttpPeer>> {
        let addr = self.address(endpoint).await?;
        let api = self.address(&self.api).await?;
        if let Err(why) = redirect_allowed(&self.api, api.ip(), endpoint, addr.ip()) {
            return Err(Error::explain(ErrorType::ConnectProxyFailure, why).into_up());
        }
        Ok(self.peer_at(addr, endpoint))
    }

    /// A peer for the API.
    async fn peer_for(&self, endpoint: &Endpoint) -> Result<Box<HttpPeer>> {
        let addr = self.address(endpoint).await?;
        Ok(self.peer_at(addr, endpoint))
    }

    fn peer_at(&self, addr: SocketAddr, endpoint: &Endpoint) -> Box<HttpPeer> {
        // Always the host, IP literals included: pingora skips certificate verification for a
        // peer with an empty SNI, and rustls verifies an IP against the certificate's IP SANs.
        let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
        // pingora gives the TCP connect and then the TLS handshake each `connection_timeout`;
        // the total bounds both together, as `upstream.connect_timeout` promises.
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        Box::new(peer)
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

/// The API decides where a media's bytes are, but the sidecar does not follow it anywhere: not
/// from HTTPS down to HTTP, and not to an internal address (loopback, private, link-local,
/// reserved, …) other than the API's own (a local origin serving its own signed URLs, a test).
/// A compromised or spoofed API could otherwise have the sidecar fetch, cache and serve what
/// only the sidecar's network can reach (a metadata service, an admin port).
fn redirect_allowed(
    api: &Endpoint,
    api_ip: IpAddr,
    target: &Endpoint,
    target_ip: IpAddr,
) -> Result<(), &'static str> {
    if api.tls && !target.tls {
        return Err("the content redirect leaves HTTPS");
    }
    if is_internal(target_ip) && (target_ip, target.port) != (api_ip, api.port) {
        return Err("the content redirect points inside the network");
    }
    Ok(())
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || a == 0 // 0.0.0.0/8, "this network"
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, protocol assignments
                || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || a >= 240 // 240.0.0.0/4, reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        }
    }
}

/// The IPv4 address an IPv6 one reaches: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, where a gateway forwards to the IPv4 address) and 6to4
/// (`2002:ab:cd::/16`). A local-use NAT64 address (`64:ff9b:1::/48`) counts as `0.0.0.0`:
/// internal, wherever it leads.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let low = |hi: u16, lo: u16| std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        [0, 0, 0, 0, 0, 0, hi, lo] if !v6.is_loopback() && !v6.is_unspecified() => {
            Some(low(hi, lo))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        // Local-use NAT64 (RFC 8215): the prefix length varies, the gateway is inside.
        [0x64, 0xff9b, 1, ..] => Some(std::net::Ipv4Addr::UNSPECIFIED),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(tls: bool) -> Endpoint {
        Endpoint {
            host: "h".into(),
            port: 443,
            tls,
        }
    }

    #[test]
    fn redirects_stay_on_https_and_outside_the_network() {
        let public: IpAddr = "34.1.2.3".parse().unwrap();
        let https = endpoint(true);
        let http = endpoint(false);
        assert_eq!(redirect_allowed(&https, public, &https, public), Ok(()));
        assert!(redirect_allowed(&https, public, &http, public).is_err());
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::10.0.0.5",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "224.0.0.1",
            "ff02::1",
            "fec0::1",
            "0.1.2.3",
            "64:ff9b:1::a00:5",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(
                redirect_allowed(&https, public, &https, ip).is_err(),
                "{internal}"
            );
        }
        // A local API (the local origin, tests) may redirect to itself, and nowhere else
        // inside.
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(redirect_allowed(&http, loopback, &http, loopback), Ok(()));
        for elsewhere in ["127.0.0.2", "169.254.169.254", "10.0.0.5"] {
            let ip: IpAddr = elsewhere.parse().unwrap();
            assert!(
                redirect_allowed(&http, loopback, &http, ip).is_err(),
                "{elsewhere}"
            );
        }
        // Nor to another port of its host (the metrics listener, another service).
        let other_port = Endpoint {
            port: 9108,
            ..endpoint(false)
        };
        assert!(redirect_allowed(&http, loopback, &other_port, loopback).is_err());
        // Public addresses inside the special blocks' neighbours stay public.
        for outside in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "198.20.0.1",
            "100.128.0.1",
        ] {
            let ip: IpAddr = outside.parse().unwrap();
            assert!(!is_internal(ip), "{outside}");
        }
    }
}
