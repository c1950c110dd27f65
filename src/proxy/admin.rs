//! The operator's listener (`server.metrics_listen`): `/metrics`, `/healthz`, `/readyz`, and
//! `DELETE /cache/{IS}/{ME}`. It is never the client port, so nothing here is reachable by the
//! chat server's users.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use arc_swap::ArcSwap;

use super::gateway::Settings;
use crate::api::{MediaSid, ServiceSid};
use crate::cache::Cache;
use crate::metrics;
use crate::quota::Quota;

pub struct AdminApp {
    /// The proxy's client listener: ready means it accepts connections.
    proxy_listen: SocketAddr,
    /// The quota backend: it must answer too while uploads are refused without it
    /// (`on_backend_error: deny`, as the settings in force say: a reload may change it).
    quota: Arc<dyn Quota>,
    settings: Arc<ArcSwap<Settings>>,
    cache: &'static Cache,
}

const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl AdminApp {
    pub fn new(
        proxy_listen: SocketAddr,
        quota: Arc<dyn Quota>,
        settings: Arc<ArcSwap<Settings>>,
        cache: &'static Cache,
    ) -> AdminApp {
        AdminApp {
            proxy_listen,
            quota,
            settings,
            cache,
        }
    }

    /// `DELETE /cache/{IS}/{ME}`: drops the metadata and the content cached for one media.
    fn purge(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        if method != Method::DELETE {
            let mut response = json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"status":"method_not_allowed"}"#.into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("DELETE"));
            return response;
        }
        let mut sids = path.trim_start_matches("/cache/").split('/');
        let service = sids.next().and_then(ServiceSid::parse);
        let media = sids.next().and_then(MediaSid::parse);
        match (service, media, sids.next()) {
            (Some(service), Some(media), None) => {
                let purged = self.cache.purge_media(&service, &media);
                log::info!("cache purge {service}/{media}: {purged} entries");
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "purged", "entries": purged}).to_string(),
                )
            }
            _ => json(
                StatusCode::BAD_REQUEST,
                r#"{"status":"bad_request","reason":"expected /cache/IS…/ME…"}"#.into(),
            ),
        }
    }

    /// Ready when the configuration is loaded (it is, or this would not run), the client
    /// listener accepts, and a quota backend that uploads depend on answers. An upstream outage
    /// does not make the sidecar unready: that would take the chat server out with it.
    async fn readiness(&self) -> Result<(), String> {
        let needs_quota = self.settings.load().needs_quota_backend();
        if needs_quota && !self.quota.reachable().await {
            return Err("the quota backend does not answer and on_backend_error is deny".into());
        }
        let probe = reachable(self.proxy_listen);
        match tokio::time::timeout(READY_PROBE_TIMEOUT, tokio::net::TcpStream::connect(probe)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "proxy listener {} not accepting: {e}",
                self.proxy_listen
            )),
            Err(_) => Err(format!(
                "proxy listener {} did not answer",
                self.proxy_listen
            )),
        }
    }
}

/// A wildcard listen address is probed through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        super::client_limits::keep_alive_as_asked(session);
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let (body, content_type) = metrics::render();
                answer(StatusCode::OK, &content_type, body)
            }
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            "/readyz" => match self.readiness().await {
                Ok(()) => json(StatusCode::OK, r#"{"status":"ready"}"#.into()),
                Err(reason) => {
                    let body = serde_json::json!({"status": "not_ready", "reason": reason});
                    json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                }
            },
            _ if path.starts_with("/cache/") => {
                let peer = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(SocketAddr::ip);
                if !purge_allowed_from(peer) {
                    return json(
                        StatusCode::FORBIDDEN,
                        r#"{"status":"forbidden","reason":"purges are taken from loopback only"}"#
                            .into(),
                    );
                }
                self.purge(&session.req_header().method.clone(), &path)
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"status":"not_found"}"#.into()),
        }
    }
}

/// A purge changes what the sidecar does: it is taken only from the sidecar's own host (or pod:
/// `kubectl exec`), while `/metrics` and the probes may be exposed more widely (the shipped
/// Kubernetes manifest listens on every address for Prometheus and the kubelet).
fn purge_allowed_from(peer: Option<IpAddr>) -> bool {
    match peer {
        Some(IpAddr::V4(ip)) => ip.is_loopback(),
        Some(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

fn json(status: StatusCode, body: String) -> Response<Vec<u8>> {
    answer(status, "application/json", body.into_bytes())
}

fn answer(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_are_taken_from_loopback_only() {
        for allowed in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(purge_allowed_from(Some(ip)), "{allowed}");
        }
        for refused in ["10.0.0.7", "192.168.1.1", "::ffff:10.0.0.7", "fd00::1"] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(!purge_allowed_from(Some(ip)), "{refused}");
        }
        // A Unix socket or an unknown peer: no.
        assert!(!purge_allowed_from(None));
    }
}
