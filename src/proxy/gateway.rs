//! The pingora `ProxyHttp` implementation: one method per phase, each short, in the order pingora
//! runs them. The decisions live in `access`, `credentials` and `upstream`; this file wires them
//! to the phases and to the metrics.

use std::collections::HashSet;
use std::time::Instant;

use async_trait::async_trait;
use http::Method;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::access::AccessControl;
use super::credentials::Injector;
use super::reject::{self, Rejection};
use super::upstream::UpstreamTarget;
use crate::api::{ApiError, ErrorCode, Route, RouteKind, ServiceSid};
use crate::config::Config;
use crate::metrics::metrics;

pub struct Gateway {
    access: AccessControl,
    credentials: Injector,
    upstream: UpstreamTarget,
    /// Services named in the configuration: the only `service` label values besides `other`.
    listed_services: HashSet<ServiceSid>,
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    started: Instant,
    route: Option<Route>,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Gateway, String> {
        Ok(Gateway {
            access: AccessControl::new(config),
            credentials: Injector::new(config)?,
            upstream: UpstreamTarget::new(&config.upstream)?,
            listed_services: config.services.keys().cloned().collect(),
        })
    }

    fn service_label<'a>(&self, route: Option<&'a Route>) -> &'a str {
        match route {
            Some(route) if self.listed_services.contains(route.service()) => {
                route.service().as_str()
            }
            _ => "other",
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
        }
    }

    /// Request head: only Media API routes with well-formed SIDs, and only for clients the
    /// access rules admit, go on. Everything else is answered here and never reaches upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let head = session.req_header();
        let route = match Route::parse(&head.method, head.uri.path()) {
            Ok(route) => route,
            Err(e) => {
                reject::send(session, &Rejection::from_route(e)).await?;
                return Ok(true);
            }
        };
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(rejection) = self.access.check(authorization, route.service()) {
            reject::send(session, &rejection).await?;
            return Ok(true);
        }
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.upstream.peer().await
    }

    /// Upstream request head: the client's credentials out, the service's Basic in, and the
    /// upstream's own Host.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            // request_filter answers every request it does not route: this cannot be reached.
            return Error::e_explain(
                ErrorType::InternalError,
                "proxying a request without a route",
            );
        };
        self.credentials.apply(request, route.service());
        request.insert_header(http::header::HOST, self.upstream.host_header().clone())?;
        Ok(())
    }

    /// No answer from upstream: the client gets the error JSON, 502 or 504.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = classify_failure(e);
        if let Some(kind) = upstream_error_kind(e) {
            metrics().upstream_errors.with_label_values(&[kind]).inc();
        }
        let status = match &error {
            Some(error) if session.response_written().is_none() => {
                if let Err(write_error) = reject::respond(session, error, &[]).await {
                    log::debug!("cannot send the error answer: {write_error}");
                }
                error.status
            }
            Some(error) => error.status,
            None => 0,
        };
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// After the last byte: one place records the request in the metrics.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let route = ctx.route.as_ref();
        let route_label = route.map_or(RouteKind::Other, Route::kind).label();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let m = metrics();
        m.requests
            .with_label_values(&[
                route_label,
                method_label(&session.req_header().method),
                &status.to_string(),
                self.service_label(route),
            ])
            .inc();
        m.request_duration
            .with_label_values(&[route_label])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    }
}

/// The answer for a request pingora could not proxy; `None` when the client is gone.
fn classify_failure(e: &Error) -> Option<ApiError> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(code)) if *code >= 400 => Some(ApiError::new(
            *code,
            if *code >= 500 {
                ErrorCode::Internal
            } else {
                ErrorCode::BadRequest
            },
            "The request could not be completed",
        )),
        (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
            Some(ApiError::new(
                504,
                ErrorCode::UpstreamTimeout,
                "The Media API did not answer in time",
            ))
        }
        (ErrorSource::Upstream, _) => Some(ApiError::new(
            502,
            ErrorCode::UpstreamUnavailable,
            "The Media API could not be reached",
        )),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
        (ErrorSource::Downstream, ReadTimedout) => Some(ApiError::new(
            408,
            ErrorCode::BadRequest,
            "The request was not received in time",
        )),
        (ErrorSource::Downstream, _) => {
            Some(ApiError::bad_request("The request could not be read"))
        }
        _ => Some(ApiError::internal()),
    }
}

/// The `kind` label of `mediagate_upstream_errors_total`, for failures on the upstream side.
fn upstream_error_kind(e: &Error) -> Option<&'static str> {
    use ErrorType::*;
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => "timeout",
        ConnectionClosed | ReadError | WriteError => "reset",
        HTTPStatus(code) if *code >= 500 => "status_5xx",
        _ => "connect",
    })
}
