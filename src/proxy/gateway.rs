//! The pingora `ProxyHttp` implementation: one method per phase, each short, in the order pingora
//! runs them. The decisions live in `access`, `credentials`, `upstream`, `content`, the upload
//! policy, the quotas and the cache rules; this file wires them to the phases, the metrics and
//! the access log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderValue, Method};
use pingora::cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{range_header_filter, FailToProxy, ProxyHttp, RangeType, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::access::AccessControl;
use super::busy_poll::BusyPoll;
use super::client_limits;
use super::content::{self, ContentResolver, SignedUrl};
use super::credentials::Injector;
use super::fresh_hit::{self, BYTES};
use super::idempotent::{self, IDEMPOTENCY_KEY};
use super::reject::{self, Rejection};
use super::replay::{self, Replayer};
use super::upstream::UpstreamTarget;
use crate::access_log::{AccessEntry, AccessLog, Timestamp};
use crate::api::{ApiError, ErrorCode, RejectReason, Route, RouteKind, ServiceSid};
use crate::cache::rules::NotKept;
use crate::cache::{self, Cache, CachePolicy, Kind};
use crate::config::{Config, OnBackendError};
use crate::idempotency::{Answer, BodyHasher, Claim, Claimed, IdempotencyKey, Ledger};
use crate::metrics::{metrics, InFlight, RequestMetrics, RequestRecord};
use crate::policy::{self, UploadGuard, UploadPolicies};
use crate::quota::{LimitBook, Limits, Outcome, Permit, Quota, Refused, Settled};
use crate::spool::{Spool, SpoolDir};

pub struct Gateway {
    /// What the configuration decides, swapped whole when it is reloaded (see `reload`).
    settings: Arc<ArcSwap<Settings>>,
    /// Lives across reloads: the quota counts must not start over.
    quota: Arc<dyn Quota>,
    /// Lives across reloads, as pingora requires: storage, eviction and the fill lock.
    cache: &'static Cache,
    /// Asks the API where a media's bytes are, for the content cache.
    content: ContentResolver,
    /// The `Idempotency-Key`s of uploads; lives across reloads.
    ledger: Arc<dyn Ledger>,
    /// Where uploads are spooled for a replay, when `uploads.retry` is on, and what replays.
    spool: Option<Arc<SpoolDir>>,
    replayer: Replayer,
    access_log: AccessLog,
    /// `server.busy_poll`, when on: told of each request event.
    busy_poll: Option<Arc<BusyPoll>>,
}

/// Everything a reload may change. A request keeps the settings it started with.
pub struct Settings {
    access: AccessControl,
    uploads: UploadPolicies,
    limits: LimitBook,
    on_quota_backend_error: OnBackendError,
    credentials: Injector,
    upstream: UpstreamTarget,
    cache: CachePolicy,
    /// Whether `Idempotency-Key` is honoured (`uploads.idempotency_ttl` above zero).
    idempotency: bool,
    /// `uploads.retry`: replays, and the wait before the first.
    retry_attempts: u32,
    retry_backoff: Duration,
    metrics: RequestMetrics,
}

impl Settings {
    /// Whether uploads are refused while the quota backend cannot be asked.
    pub fn needs_quota_backend(&self) -> bool {
        self.on_quota_backend_error == OnBackendError::Deny
    }

    pub fn new(config: &Config) -> Result<Settings, String> {
        Ok(Settings {
            access: AccessControl::new(config),
            uploads: UploadPolicies::new(config),
            limits: LimitBook::new(config),
            on_quota_backend_error: config.quotas.on_backend_error,
            credentials: Injector::new(config)?,
            upstream: UpstreamTarget::new(&config.upstream)?,
            cache: CachePolicy::new(config),
            idempotency: !config.uploads.idempotency_ttl.get().is_zero(),
            retry_attempts: config.uploads.retry.attempts,
            retry_backoff: config.uploads.retry.backoff.get(),
            metrics: RequestMetrics::new(config.services.keys()),
        })
    }
}

/// The header that carries a request's id, to the upstream and back to the client.
const REQUEST_ID: &str = "x-request-id";
/// The longest a repeat waits for the first upload under its key before it is told to come back.
const IDEMPOTENT_WAIT: Duration = Duration::from_secs(5 * 60);
/// The only encoding asked for when the answer may be cached.
const IDENTITY: &str = "identity";
/// Uploads declared this small or smaller are read whole before they go upstream (pingora's
/// retry buffer holds 64 KiB): one write upstream instead of one per read from the client.
const READ_WHOLE_UP_TO: u64 = 64 * 1024;
/// The header that tells the client what the cache did.
const CACHE_HEADER: &str = "mediagate-cache";
/// Headers added to a cached head on each hit: `Age` (pingora), the request id, and
/// `Mediagate-Cache` or `Accept-Ranges` when the kept one is not the answer's, with room to
/// spare.
const HEADERS_ADDED_PER_HIT: usize = 6;

/// What one request carries from phase to phase.
///
/// pingora moves the context by value into its per-request futures, about four copies into
/// freshly allocated memory per request: state only uploads, refusals and content misses use is
/// boxed, which keeps a cache hit's context small (some 300 bytes, instead of 970).
pub struct RequestCtx {
    started: Instant,
    settings: Arc<Settings>,
    /// The client's `X-Request-Id` when usable, else one made here. Kept as a header value: it
    /// goes upstream and back to the client on every request, shared rather than copied.
    request_id: HeaderValue,
    route: Option<Route>,
    /// An upload's byte count and inspection, while its body streams.
    upload: Option<Box<UploadGuard>>,
    /// An upload's quota reservation, settled in `logging`.
    permit: Option<Permit>,
    /// A refusal decided while the body was streaming, for `fail_to_proxy` to send.
    refusal: Option<Box<Rejection>>,
    /// Why the request was refused, if it was: for the metrics.
    rejected: Option<RejectReason>,
    /// Whether mediagate answered the client's `Expect: 100-continue` itself.
    continued: bool,
    /// Counts the upload in `mediagate_uploads_in_flight` while it streams.
    in_flight: Option<InFlight>,
    /// When the request went upstream, and how long its answer's head took.
    upstream_sent: Option<Instant>,
    upstream_waited: Option<Duration>,
    /// The `kind` of an upstream failure, for `mediagate_upstream_errors_total`.
    upstream_error: Option<&'static str>,
    /// The status the upstream answered with.
    upstream_status: Option<u16>,
    /// For a cacheable read: its kind, and whether the cache was consulted.
    cache: Option<CacheUse>,
    /// Where a content miss fetches the bytes, once the API has said.
    signed: Option<Box<SignedUrl>>,
    /// An upload's claim on its `Idempotency-Key`, its body's fingerprint as it streams, and
    /// the upstream's answer as it comes back, for repeats.
    claim: Option<Box<Claim>>,
    fingerprint: Option<Box<BodyHasher>>,
    answer: Option<Box<AnswerCapture>>,
    /// An upload's body, spooled for a replay (`uploads.retry`).
    spool: Option<Box<Spool>>,
    /// The upstream's 502/503/504 to an upload that will be replayed.
    retry_status: Option<u16>,
    /// Whether the body has started on its way upstream (`request_body_filter` ran). Until it
    /// has, the first chunk, read for inspection, is only in pingora's retry buffer.
    body_forwarded: bool,
    /// Whether a replay of the upload answered the client.
    replayed: bool,
}

/// The upstream's answer to an idempotent upload, kept for repeats.
struct AnswerCapture {
    content_type: String,
    body: bytes::BytesMut,
    /// Past `idempotency::MAX_ANSWER`: not kept, and the key is given up.
    too_long: bool,
    /// The body has reached its end: an answer cut off on the way is never kept.
    whole: bool,
}

impl AnswerCapture {
    /// The capture of a successful answer whose body follows, if it has one: one without is
    /// whole at its head (pingora calls no body filter for it).
    fn of_head(head: &ResponseHeader) -> Box<AnswerCapture> {
        let empty = head.status == http::StatusCode::NO_CONTENT
            || head
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() == b"0");
        Self::of(head, b"", empty)
    }

    /// The capture of a successful answer at hand whole.
    fn whole(head: &ResponseHeader, body: &[u8]) -> Box<AnswerCapture> {
        Self::of(head, body, true)
    }

    fn of(head: &ResponseHeader, body: &[u8], whole: bool) -> Box<AnswerCapture> {
        let content_type = head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        Box::new(AnswerCapture {
            content_type: content_type.to_string(),
            body: bytes::BytesMut::from(body),
            too_long: false,
            whole,
        })
    }
}

/// What became of an upload's `Idempotency-Key`.
enum Idempotency {
    /// No key, a first upload under it, or no ledger to ask: the upload goes on.
    Proceed,
    /// A repeat: answered (with the first's answer, or a refusal).
    Answered,
}

/// How a cacheable read used the cache.
#[derive(Clone, Copy)]
struct CacheUse {
    kind: Kind,
    /// False when the cache was bypassed (off, or content redirects not followed).
    consulted: bool,
    /// A content read whose redirect the sidecar follows itself, cached or not.
    follows: bool,
    /// Answered in `request_filter` from a fresh entry (`fresh_hit`), before pingora-cache.
    answered_early: bool,
}

impl CacheUse {
    /// How a read of `kind` uses the cache under `policy`.
    fn of(kind: Kind, policy: &CachePolicy) -> CacheUse {
        CacheUse {
            kind,
            consulted: policy.serves(kind),
            follows: kind == Kind::Content && policy.follow_content_redirects,
            answered_early: false,
        }
    }
}

/// What the gateway keeps for the life of the process, whatever reloads bring.
pub struct Lasting {
    pub quota: Arc<dyn Quota>,
    pub cache: &'static Cache,
    pub content: ContentResolver,
    pub ledger: Arc<dyn Ledger>,
    pub spool: Option<Arc<SpoolDir>>,
    pub replayer: Replayer,
    pub busy_poll: Option<Arc<BusyPoll>>,
    pub access_log: AccessLog,
}

impl Gateway {
    pub fn new(settings: Arc<ArcSwap<Settings>>, lasting: Lasting) -> Gateway {
        Gateway {
            settings,
            quota: lasting.quota,
            cache: lasting.cache,
            content: lasting.content,
            ledger: lasting.ledger,
            spool: lasting.spool,
            replayer: lasting.replayer,
            busy_poll: lasting.busy_poll,
            access_log: lasting.access_log,
        }
    }

    /// A request event: with `server.busy_poll` on, the worker polls rather than sleeps for a
    /// while, since the next event (the upstream's answer, the client's next request) is near.
    fn keep_polling(&self) {
        if let Some(busy_poll) = &self.busy_poll {
            busy_poll.touch();
        }
    }

    /// An upload's part of `request_filter`: its `Idempotency-Key`, then its admission.
    /// Returns whether the request was answered here.
    async fn filter_upload(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        service: &ServiceSid,
    ) -> Result<bool> {
        if let Idempotency::Answered = self.idempotency(session, ctx, service).await? {
            return Ok(true);
        }
        match self.admit_upload(session, ctx, service).await? {
            Ok(guard) => {
                self.start_spool(ctx, guard.declared_size()).await;
                ctx.upload = Some(Box::new(guard));
                // A client that leaves once its body is sent must not stop the proxy from
                // reading the upstream's answer: the quota and the idempotency key are
                // settled by it (stored or not).
                session.downstream_session.set_abort_on_close(false);
                Ok(false)
            }
            Err(rejection) => refuse(session, ctx, rejection).await,
        }
    }

    /// An upload's head checks, then the inspection of its first body chunk when that is
    /// needed. pingora's retry buffer keeps the chunk and replays it upstream (through
    /// `request_body_filter`) once the upload is admitted; it holds 64 KiB, so one chunk is
    /// read here, or the whole body when it is declared that small. What the bytes read cannot
    /// decide is decided while streaming.
    async fn admit_upload(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        service: &ServiceSid,
    ) -> Result<Result<UploadGuard, Rejection>> {
        let settings = ctx.settings.clone();
        let rules = settings.uploads.for_service(service);
        let mut guard = match policy::check_head(rules, &session.req_header().headers) {
            Ok(guard) => guard,
            Err(refusal) => return Ok(Err(refusal.into())),
        };
        // Without a declared size, reserve the most it may be; settling gives back the rest.
        let limits = settings.limits.for_service(service);
        let reserve = match limits.bytes_to_reserve(guard.declared_size(), rules.max_size) {
            Ok(bytes) => bytes,
            Err(per_hour) => {
                return Ok(Err(policy::Refusal::new(
                    RejectReason::TooLarge,
                    format!(
                        "the upload is larger than the {per_hour} bytes this service may upload \
                         in an hour (quotas.bytes_per_hour)"
                    ),
                )
                .into()))
            }
        };
        match self
            .reserve_quota(&settings, service, limits, reserve)
            .await
        {
            Ok(permit) => ctx.permit = Some(permit),
            Err(rejection) => return Ok(Err(rejection)),
        }
        ctx.in_flight = Some(settings.metrics.upload_started(service));
        // Nothing will stream: decide on the empty body now, or it would go up complete.
        let empty = session.is_body_empty() || session.is_body_done();
        if !guard.inspecting() && !is_chunked(session) && !empty {
            return Ok(Ok(guard));
        }
        let (first, end) = if empty {
            (None, true)
        } else {
            if expects_continue(session) {
                // The client waits for this before sending the body we are about to read.
                session.write_continue_response().await?;
                ctx.continued = true;
            }
            let small = guard
                .declared_size()
                .is_some_and(|size| size <= READ_WHOLE_UP_TO);
            let read = match read_first_chunk(session).await? {
                Ok(_) if small => read_rest_into_retry_buffer(session).await?,
                read => read,
            };
            match read {
                Ok(first) => (first, session.is_body_done()),
                Err(rejection) => return Ok(Err(rejection)),
            }
        };
        let first = first.as_deref().unwrap_or_default();
        if end {
            if let Err(refusal) = guard.check_whole(first.len() as u64) {
                return Ok(Err(refusal.into()));
            }
        }
        if !guard.inspecting() {
            return Ok(Ok(guard));
        }
        Ok(guard
            .inspect_early(first, end)
            .map(|()| guard)
            .map_err(Rejection::from))
    }

    /// An upload's `Idempotency-Key`: the first upload under it goes on (and its answer is
    /// kept in `logging`); a repeat waits while the first runs, then gets its answer, or 422
    /// when its body differs. A ledger that cannot be asked lets the upload go on without.
    async fn idempotency(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        service: &ServiceSid,
    ) -> Result<Idempotency> {
        let Some(value) = session.req_header().headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Idempotency::Proceed);
        };
        if !ctx.settings.idempotency {
            return Ok(Idempotency::Proceed);
        }
        let Some(key) = IdempotencyKey::parse(value.as_bytes()) else {
            let error =
                ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters");
            refuse(session, ctx, Rejection::plain(error)).await?;
            return Ok(Idempotency::Answered);
        };
        let give_up = Instant::now() + IDEMPOTENT_WAIT;
        loop {
            if Instant::now() > give_up {
                let pending = Rejection {
                    retry_after: Some(5),
                    ..Rejection::plain(ApiError::new(
                        409,
                        ErrorCode::IdempotencyPending,
                        "The upload under this Idempotency-Key is still running",
                    ))
                };
                refuse(session, ctx, pending).await?;
                return Ok(Idempotency::Answered);
            }
            match self.ledger.claim(service, &key).await {
                Ok(Claimed::First(claim)) => {
                    ctx.claim = Some(Box::new(claim));
                    ctx.fingerprint = Some(Box::default());
                    return Ok(Idempotency::Proceed);
                }
                Ok(Claimed::Done(answer)) => {
                    self.repeat(session, ctx, service, &answer).await?;
                    return Ok(Idempotency::Answered);
                }
                Ok(Claimed::Running) => {
                    let _waiting = InFlight::count(metrics().idempotent_waiting.clone());
                    self.ledger.wait(service, &key).await
                }
                Err(e) => {
                    log::warn!("idempotency ledger: {e}; the upload goes on without it");
                    return Ok(Idempotency::Proceed);
                }
            }
        }
    }

    /// A repeat of a completed upload: the first's answer if the bodies match, else 422.
    async fn repeat(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        service: &ServiceSid,
        answer: &Answer,
    ) -> Result<()> {
        if expects_continue(session) {
            session.write_continue_response().await?;
            ctx.continued = true;
        }
        let max = ctx.settings.uploads.for_service(service).max_size;
        if idempotent::fingerprint(session, max).await? != Some(answer.body_sha256) {
            let conflict = Rejection::because(
                RejectReason::IdempotencyConflict,
                "This Idempotency-Key was used for an upload with a different body",
            );
            return refuse(session, ctx, conflict).await.map(drop);
        }
        metrics().idempotent_replays.inc();
        idempotent::replay(session, answer, ctx.request_id()).await
    }

    /// At the end of an idempotent upload: its answer is kept for repeats when the upstream
    /// stored it, else the key is given up for the client's retry.
    async fn settle_claim(&self, claim: Claim, ctx: &mut RequestCtx, stored: bool) {
        let answer = ctx.answer.take().filter(|a| a.whole && !a.too_long);
        let fingerprint = ctx.fingerprint.take();
        let result = match (answer, fingerprint, ctx.upstream_status) {
            (Some(answer), Some(fingerprint), Some(status)) if stored => {
                let answer = Answer {
                    status,
                    content_type: answer.content_type,
                    body: answer.body.freeze(),
                    body_sha256: fingerprint.finish(),
                };
                self.ledger.complete(claim, answer).await
            }
            _ => self.ledger.abandon(claim).await,
        };
        if let Err(e) = result {
            log::warn!("idempotency ledger: {e}");
        }
    }

    /// Opens the spool of an admitted upload, when retrying is on and the budget has room.
    async fn start_spool(&self, ctx: &mut RequestCtx, declared: Option<u64>) {
        let Some(dir) = &self.spool else { return };
        if ctx.settings.retry_attempts == 0 {
            return;
        }
        ctx.spool = dir.start(declared.unwrap_or(0)).await.map(Box::new);
        if ctx.spool.is_none() {
            metrics().uploads_unspooled.inc();
        }
    }

    /// An upload the upstream failed before answering (or answered 502/503/504): the rest of
    /// the client's body is spooled, then the upload is sent again, after `backoff` and twice
    /// that before each next try, up to `attempts` times.
    async fn retry_upload(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> Retried {
        let retriable = ctx.retry_status.is_some() || e.esource() == &ErrorSource::Upstream;
        let attempts = ctx.settings.retry_attempts;
        if !retriable || attempts == 0 || ctx.spool.is_none() || final_status(session).is_some() {
            return Retried::No;
        }
        let spooled = match spool_unforwarded(session, ctx).await {
            Ok(()) => finish_spooling(session, ctx).await,
            failed => failed,
        };
        match spooled {
            Ok(()) => {}
            // The client left, or the spool could not take the rest: no replay.
            Err(None) => return Retried::No,
            Err(Some(rejection)) => {
                return Retried::Answered(refuse_after_failure(session, ctx, rejection).await)
            }
        }
        let mut backoff = ctx.settings.retry_backoff;
        log::info!(
            "upload {}: the upstream failed it ({e}); replaying it in {backoff:?}",
            ctx.request_id()
        );
        let mut last_failure = None;
        for attempt in 1..=attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            metrics().upload_replays.inc();
            let (head, answer) = match self.replay_once(session, ctx).await {
                Ok(answered) => answered,
                Err(e) => {
                    log::warn!("upload replay {attempt}/{attempts} failed: {e}");
                    last_failure = Some(e);
                    continue;
                }
            };
            let status = head.status.as_u16();
            match answer {
                Ok(body) if !is_retried_status(status) || attempt == attempts => {
                    return Retried::Answered(answer_replay(session, ctx, *head, body).await);
                }
                // The upstream answered as one that took the upload, then its answer broke off:
                // another try could store the upload twice.
                Err(e) if !is_retried_status(status) => {
                    log::warn!(
                        "upload replay {attempt}/{attempts}: the upstream answered {status}, \
                         then its answer broke off ({e}); not sent again"
                    );
                    ctx.upstream_status = Some(status);
                    return Retried::Failed(e);
                }
                _ => {
                    log::info!(
                        "upload replay {attempt}/{attempts}: the upstream answered {status}"
                    );
                    last_failure = Some(Error::explain(
                        ErrorType::HTTPStatus(status),
                        "the upstream failed the upload's last replay",
                    ));
                }
            }
        }
        Retried::Failed(last_failure.unwrap_or_else(|| {
            Error::explain(ErrorType::InternalError, "an upload retried no time")
        }))
    }

    /// One replay of the spooled upload: the head the upstream would have had, the spool.
    async fn replay_once(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<(Box<ResponseHeader>, Result<Bytes>)> {
        let mut head = replay::forwarded_head(session.req_header());
        api_head(&mut head, ctx)?;
        // The body is here, whole: the upstream has nothing to wait for.
        head.remove_header(&http::header::EXPECT);
        let peer = ctx.settings.upstream.peer().await?;
        let Some(spool) = ctx.spool.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "a replay without a spool");
        };
        let (response, body) = self.replayer.send(&peer, head, spool).await?;
        Ok((Box::new(response), body))
    }

    /// Reserves one upload and its declared bytes, and a concurrency slot. When the backend
    /// cannot be asked, `quotas.on_backend_error` decides.
    async fn reserve_quota(
        &self,
        settings: &Settings,
        service: &ServiceSid,
        limits: Limits,
        bytes: u64,
    ) -> Result<Permit, Rejection> {
        match self.quota.admit(service, limits, bytes).await {
            Ok(permit) => Ok(permit),
            Err(Refused::Over(over)) => Err(Rejection::over_quota(&over)),
            Err(Refused::Backend(e)) => {
                metrics().quota_backend_errors.inc();
                log::warn!("quota backend: {e}");
                match settings.on_quota_backend_error {
                    OnBackendError::Allow => Ok(Permit::free()),
                    OnBackendError::Deny => Err(Rejection::quota_backend()),
                }
            }
        }
    }

    /// The API request a content miss sends to learn where the bytes are: the client's path,
    /// the service's credentials, the request id.
    fn api_request(&self, session: &Session, ctx: &RequestCtx) -> Result<RequestHeader> {
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let mut request = RequestHeader::build(Method::GET, path.as_bytes(), None)?;
        if let Some(route) = &ctx.route {
            ctx.settings
                .credentials
                .apply(&mut request, route.service());
        }
        request.insert_header(
            http::header::HOST,
            ctx.settings.upstream.host_header().clone(),
        )?;
        request.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        Ok(request)
    }

    /// Records the finished request: metrics, then the access log line.
    fn record(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        status: u16,
        uploaded: Option<u64>,
        duration: Duration,
    ) {
        let head = session.req_header();
        let route = ctx.route.as_ref();
        let record = RequestRecord {
            route: route.map_or(RouteKind::Other, Route::kind),
            method: method_label(&head.method),
            status,
            service: route.map(Route::service),
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            duration,
            upstream: ctx.upstream_waited,
            uploaded,
            rejected: ctx.rejected,
            upstream_error: ctx.upstream_error,
            cache: cache_outcome(session, ctx),
        };
        ctx.settings.metrics.record(&record);
        let ts = Timestamp::now();
        self.access_log.write(&AccessEntry {
            ts: ts.as_str(),
            request_id: ctx.request_id(),
            method: head.method.as_str(),
            path: head.uri.path(),
            route: record.route.label(),
            service: route.map(|r| r.service().as_str()),
            media: route.and_then(Route::media).map(|m| m.as_str()),
            status,
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            duration,
            upstream: ctx.upstream_waited,
            cache: record.cache.map(|(_, outcome)| outcome.label()),
            reject: ctx.rejected.map(RejectReason::label),
            upstream_error: ctx.upstream_error,
        });
    }

    /// A plain read found fresh in the cache, answered here, before pingora-cache (see
    /// `fresh_hit`). False: the read goes on to pingora-cache as before.
    async fn answer_fresh_hit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(false);
        };
        let (Some(kind), Some(media)) = (Kind::of(route), route.media()) else {
            return Ok(false);
        };
        let usage = CacheUse::of(kind, &ctx.settings.cache);
        if !usage.consulted || !fresh_hit::asks_for_whole_answer(session.req_header()) {
            return Ok(false);
        }
        let key = cache::compact_key(route.service(), media, kind);
        let Some(hit) = self
            .cache
            .storage
            .fresh_hit(key, fresh_hit::served_as_stored)
        else {
            return Ok(false);
        };
        let (mut head, body) = fresh_hit::answer(hit)?;
        ctx.cache = Some(CacheUse {
            answered_early: true,
            ..usage
        });
        mark_answer(&mut head, Some(cache::Outcome::Hit), ctx)?;
        // A failed write is the client's connection failing, as on pingora-cache's hit path:
        // nothing more is sent on it (`classify_failure`).
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(|e| e.into_down())?;
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| e.into_down())?;
        Ok(true)
    }

    /// Whether the cache has room to fill with this answer, judged by its `Content-Length`
    /// (an answer without one takes room as its body comes, or is skipped then). A 304
    /// renews an entry already held (pingora passes the entry's head merged with it) and
    /// fills nothing.
    fn fill_room_for(
        &self,
        kind: cache::Kind,
        response: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> bool {
        ctx.upstream_status == Some(304)
            || cache::rules::content_length(&response.headers)
                .is_none_or(|length| self.cache.storage.has_fill_room(kind, length))
    }
}

/// The client's request id when it is a sane token, else a fresh one.
fn request_id(session: &Session) -> HeaderValue {
    let given = session.req_header().headers.get(REQUEST_ID).filter(|id| {
        (1..=128).contains(&id.len())
            && id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    match given {
        Some(id) => id.clone(),
        None => {
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
            let mut text = [0u8; 32];
            match hex::encode_to_slice(bytes, &mut text) {
                Ok(()) => HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-")),
                Err(_) => HeaderValue::from_static("-"),
            }
        }
    }
}

impl RequestCtx {
    /// The request's id as text (a sane token: checked or made by `request_id`).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default adds its response compression module, switched
    /// off, which still costs allocations and a pass over every answer's head: mediagate never
    /// compresses (cacheable reads ask the API for identity encoding, uploads answer JSON).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            settings: self.settings.load_full(),
            request_id: HeaderValue::from_static(""),
            route: None,
            upload: None,
            permit: None,
            refusal: None,
            rejected: None,
            continued: false,
            in_flight: None,
            upstream_sent: None,
            upstream_waited: None,
            upstream_error: None,
            upstream_status: None,
            cache: None,
            signed: None,
            claim: None,
            fingerprint: None,
            answer: None,
            spool: None,
            retry_status: None,
            body_forwarded: false,
            replayed: false,
        }
    }

    /// Request head: only Media API routes with well-formed SIDs, and only for clients the
    /// access rules admit, go on; an upload must also pass its head checks and the inspection
    /// of its first body chunk. Everything refused here is answered here and never reaches
    /// the upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.keep_polling();
        ctx.request_id = request_id(session);
        let head = session.req_header();
        let route = match Route::parse(&head.method, head.uri.path()) {
            Ok(route) => route,
            Err(e) => return refuse(session, ctx, Rejection::from_route(e)).await,
        };
        // Known from here on, refused or not: the metrics label by it.
        let service = *route.service();
        let is_upload = route.kind() == RouteKind::Upload;
        let is_read = matches!(route.kind(), RouteKind::Metadata | RouteKind::Content);
        ctx.route = Some(route);
        if let Err(why) = check_framing(session) {
            return refuse(
                session,
                ctx,
                Rejection::because(RejectReason::SizeMismatch, why),
            )
            .await;
        }
        let head = session.req_header();
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(rejection) = ctx.settings.access.check(authorization, &service) {
            return refuse(session, ctx, rejection).await;
        }
        if is_read && !session.is_body_empty() {
            // A read's answer may be cached and served to every reader, and a content read is
            // sent on to the media host: nothing of one client's may ride along.
            let error = ApiError::bad_request("a read (GET or HEAD) carries no body");
            return refuse(session, ctx, Rejection::plain(error)).await;
        }
        if is_read && self.answer_fresh_hit(session, ctx).await? {
            return Ok(true);
        }
        if !is_upload && is_chunked(session) {
            // Its first chunk size is read (and checked) before anything goes upstream. Boxed
            // for the reason `filter_upload` is.
            if let Err(rejection) = Box::pin(read_first_chunk(session)).await? {
                return refuse(session, ctx, rejection).await;
            }
        }
        if is_upload {
            // Boxed, like `refuse`: an upload's admission holds more across its awaits than
            // the rest of this hook, and the hook's future is allocated and copied for every
            // request, reads included.
            return Box::pin(self.filter_upload(session, ctx, &service)).await;
        }
        Ok(false)
    }

    /// Each body chunk on its way upstream (the first one replayed from the retry buffer):
    /// counted against the size limits and, while undecided, inspected. A refusal here fails
    /// the request, which cuts the upstream's body short: the upstream stores nothing.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.body_forwarded = true;
        // (pingora calls this once, at the end, for a request without a body too: a content
        // miss's clock, which counts the API's redirect, must not restart there.)
        if end_of_stream && !session.is_body_empty() {
            // The upstream waits on the client until the body's last byte: its own time starts
            // here (a slow client's upload is not the upstream's latency).
            if let Some(sent) = &mut ctx.upstream_sent {
                *sent = Instant::now();
            }
        }
        let chunk = body.as_deref().unwrap_or_default();
        if let Some(fingerprint) = &mut ctx.fingerprint {
            fingerprint.update(chunk);
        }
        let Some(guard) = &mut ctx.upload else {
            return Ok(());
        };
        if let Err(refusal) = guard.on_chunk(chunk, end_of_stream) {
            let status = refusal.reason.status();
            ctx.refusal = Some(Box::new(refusal.into()));
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "upload refused while streaming",
            );
        }
        spool_chunk(ctx, chunk).await;
        Ok(())
    }

    /// Reads of the cache go through `request_cache_filter` first: Media JSON and content are
    /// cached (per kind, when the policy says so); nothing else is.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(kind) = ctx.route.as_ref().and_then(Kind::of) else {
            return Ok(());
        };
        let policy = &ctx.settings.cache;
        let usage = CacheUse::of(kind, policy);
        if usage.consulted {
            self.cache.enable_on(&mut session.cache);
            // Bodies without a Content-Length that grow past the bound stream on, uncached.
            session
                .cache
                .set_max_file_size_bytes(usize::try_from(policy.max_object).unwrap_or(usize::MAX));
        }
        ctx.cache = Some(usage);
        Ok(())
    }

    /// The key: service, media and kind, nothing else from the client (see `cache`).
    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let route = ctx.route.as_ref();
        match (route, route.and_then(Route::media), ctx.cache) {
            (Some(route), Some(media), Some(usage)) => {
                Ok(cache::key(route.service(), media, usage.kind))
            }
            _ => Error::e_explain(
                ErrorType::InternalError,
                "a cache key for an uncached route",
            ),
        }
    }

    /// A lookup missed and this request holds the key's lock: it fetches for everyone waiting.
    /// A HEAD would end once its client has the head, before the body reached the cache,
    /// abandoning the fill; so a HEAD goes upstream as a HEAD, uncached, and the waiters fetch
    /// for themselves.
    fn cache_miss(&self, session: &mut Session, _ctx: &mut RequestCtx) {
        if session.req_header().method == Method::HEAD {
            session
                .cache
                .disable(NoCacheReason::Custom("HEAD fills nothing"));
        } else {
            session.cache.cache_miss();
        }
    }

    /// An expired entry found by a HEAD is treated as a miss, so that `cache_miss` sends the
    /// HEAD upstream uncached: pingora would otherwise have the HEAD renew the entry with a
    /// GET upstream, and abandon that fill once its client had the head.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let stale_head = !is_fresh && session.req_header().method == Method::HEAD;
        Ok(stale_head.then_some(ForcedFreshness::ForceMiss))
    }

    /// A miss (after the cache lock, for one request per key at a time): the API for metadata;
    /// for content, the signed URL the API redirects to, when redirects are followed.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let settings = ctx.settings.clone();
        let upstream = &settings.upstream;
        if let Some(signed) = &ctx.signed {
            return upstream.media_peer(&signed.endpoint).await;
        }
        let api = upstream.peer().await?;
        if !ctx.cache.is_some_and(|u| u.follows) {
            return Ok(api);
        }
        // The redirect's round trip is part of the upstream's time to answer.
        ctx.upstream_sent = Some(Instant::now());
        let request = self.api_request(session, ctx)?;
        // Boxed: the redirect's own round trip is a large future, and inline it would make
        // every call of this method that large, each a copy of it into async_trait's box.
        let resolved =
            Box::pin(
                self.content
                    .resolve(&api, request, upstream.api(), upstream.host_header()),
            )
            .await?;
        match resolved {
            Some(signed) => {
                let peer = upstream.media_peer(&signed.endpoint).await?;
                ctx.signed = Some(Box::new(signed));
                Ok(peer)
            }
            None => Ok(api),
        }
    }

    /// Upstream request head: the client's credentials out, the service's Basic in, and the
    /// upstream's own Host.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The upstream's answer is next.
        self.keep_polling();
        if let Some(signed) = &ctx.signed {
            // A request of our own: nothing of the client's reaches the media host.
            let mut own = signed.request(request.method.clone(), ctx.request_id())?;
            if session.cache.enabled() {
                // Except pingora-cache's validators for a stale entry (it took the client's
                // own out): an unchanged media is then renewed by a 304, not fetched whole.
                content::carry_validators(request, &mut own)?;
            } else {
                // Uncached, the client's range and validators are the media host's to answer.
                content::carry_client_conditions(session.req_header(), &mut own)?;
            }
            *request = own;
            ctx.upstream_sent.get_or_insert_with(Instant::now);
            return Ok(());
        }
        api_head(request, ctx)?;
        if ctx.cache.is_some_and(|usage| usage.consulted) {
            // The answer may be served to every reader: nothing in it may depend on this one.
            request.remove_header(&http::header::COOKIE);
            request.insert_header(http::header::ACCEPT_ENCODING, IDENTITY)?;
        }
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    /// The upstream's answer head: how long it took, and whether it is a failure of its own.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_waited = ctx.upstream_sent.map(|sent| sent.elapsed());
        ctx.upstream_status = Some(response.status.as_u16());
        if ctx.spool.is_some() && is_retried_status(response.status.as_u16()) {
            ctx.upstream_error = Some("status_5xx");
            ctx.retry_status = ctx.upstream_status;
            return Error::e_explain(
                ErrorType::HTTPStatus(response.status.as_u16()),
                "the upstream failed an upload that will be replayed",
            );
        }
        if ctx.claim.is_some() && response.status.is_success() {
            // The body follows, chunk by chunk (`response_body_filter`).
            ctx.answer = Some(AnswerCapture::of_head(response));
        }
        if response.status.is_server_error() {
            ctx.upstream_error = Some("status_5xx");
        }
        Ok(())
    }

    /// An idempotent upload's answer, kept as it passes (see `settle_claim`).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(answer) = &mut ctx.answer else {
            return Ok(None);
        };
        if let Some(chunk) = body.as_ref() {
            if answer.body.len() + chunk.len() > crate::idempotency::MAX_ANSWER {
                answer.too_long = true;
            } else {
                answer.body.extend_from_slice(chunk);
            }
        }
        answer.whole |= end_of_stream;
        Ok(None)
    }

    /// Whether, and how long, the answer is kept: by kind and status, the upstream's
    /// `Cache-Control` and `cache.max_object` (metadata is further bounded by its temporary
    /// URL once its body is in; see `cache::rules`).
    fn response_cache_filter(
        &self,
        _session: &Session,
        response: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(usage) = ctx.cache else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        Ok(match ctx.settings.cache.ttl(usage.kind, response) {
            Ok(_) if !self.fill_room_for(usage.kind, response, ctx) => {
                RespCacheable::Uncacheable(NoCacheReason::Custom(cache::NO_FILL_ROOM))
            }
            Ok(ttl) => {
                let now = std::time::SystemTime::now();
                // Kept without pingora's record of the upstream's header-name case: every hit
                // clones the head twice and adds headers to it, which that record doubles.
                // Names go out in pingora's canonical case instead.
                let mut kept = response.as_owned_parts();
                // The id belongs to the request that filled the entry, not to later readers.
                kept.headers.remove(REQUEST_ID);
                // Kept saying what every later reader of it is told (`set_cache_header`): a hit
                // then adds nothing, where adding a header costs a parse and an allocation.
                if ctx.settings.cache.response_header {
                    kept.headers.insert(
                        CACHE_HEADER,
                        HeaderValue::from_static(cache::Outcome::Hit.label()),
                    );
                }
                // And with the `Accept-Ranges` pingora adds to every hit read whole (see
                // `range_header_filter`).
                if ranges_acceptable(kept.status, &kept.headers) {
                    kept.headers
                        .insert(http::header::ACCEPT_RANGES, HeaderValue::from_static(BYTES));
                }
                // A clone keeps its header map's table size: with room for the headers each
                // hit adds, the first of them does not grow the table (a rehash per hit).
                kept.headers.reserve(HEADERS_ADDED_PER_HIT);
                RespCacheable::Cacheable(CacheMeta::new(now + ttl, now, 0, 0, kept.into()))
            }
            Err(NotKept::TooLarge) => RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge),
            Err(NotKept::Forbidden | NotKept::Status | NotKept::Personal | NotKept::Unframed) => {
                RespCacheable::Uncacheable(NoCacheReason::OriginNotCache)
            }
        })
    }

    /// `If-None-Match` and friends, answered from the cache only (see `filling_the_cache`).
    fn cache_not_modified_filter(
        &self,
        session: &Session,
        response: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<bool> {
        Ok(!filling_the_cache(session)
            && pingora::protocols::http::conditional_filter::not_modified_filter(
                session.req_header(),
                response,
            ))
    }

    /// One `Range` (206, or 416 when it does not fit), answered from the cache only (see
    /// `filling_the_cache`).
    fn range_header_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> RangeType {
        if filling_the_cache(session) {
            return RangeType::None;
        }
        // No `Range`, and the cached head says `Accept-Ranges: bytes` already: all pingora's
        // filter would do is insert that header again (a parse and an allocation per hit).
        let accepted = response.headers.get(http::header::ACCEPT_RANGES);
        if accepted.is_some_and(|value| value == BYTES)
            && response.status == http::StatusCode::OK
            && !session
                .req_header()
                .headers
                .contains_key(http::header::RANGE)
        {
            return RangeType::None;
        }
        // pingora refuses ranges once their count reaches the limit: 2 admits exactly one.
        match range_header_filter(session.req_header(), response, Some(2)) {
            // `bytes=-0` asks for nothing: that cannot be satisfied.
            RangeType::Single(range) if range.is_empty() => {
                unsatisfiable(response, range.end);
                RangeType::Invalid
            }
            range => range,
        }
    }

    /// The answer head on its way to the client, from the upstream or the cache: it carries
    /// the request id and, for cacheable reads, `Mediagate-Cache`.
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let outcome = cache_outcome(session, ctx).map(|(_, outcome)| outcome);
        mark_answer(response, outcome, ctx)
    }

    /// No answer from upstream: a refusal decided while streaming, or the error JSON (502,
    /// 504, …).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(rejection) = ctx.refusal.take() {
            let status = rejection.error.status;
            if final_status(session).is_none() {
                if let Err(write_error) = refuse(session, ctx, *rejection).await {
                    log::debug!("cannot send the refusal: {write_error}");
                }
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        ctx.upstream_error = upstream_error_kind(e).or(ctx.upstream_error);
        let last_failure;
        let e = match self.retry_upload(session, e, ctx).await {
            Retried::Answered(status) => {
                return FailToProxy {
                    error_code: status,
                    can_reuse_downstream: false,
                }
            }
            Retried::Failed(last) => {
                last_failure = last;
                ctx.upstream_error = upstream_error_kind(&last_failure).or(ctx.upstream_error);
                &*last_failure
            }
            Retried::No => e,
        };
        let error = classify_failure(e);
        let status = match &error {
            Some(error) if final_status(session).is_none() => {
                settle_upload(ctx).wait(SETTLE_BEFORE_ANSWER).await;
                let id = [(REQUEST_ID, ctx.request_id())];
                if let Err(write_error) = reject::respond(session, error, &id).await {
                    log::debug!("cannot send the error answer: {write_error}");
                }
                // The rest of an upload's body, as after a refusal: a client still sending
                // would otherwise meet a reset instead of this answer.
                linger_unless_waiting(session, ctx).await;
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

    /// mediagate logs its own refusals and replays; pingora's error line would repeat them (and
    /// call a replayed upload a failure).
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.rejected.is_some() || ctx.replayed
    }

    /// After the last byte, on every path: the quota reservation is settled, and the request
    /// is recorded, once, in the metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // The client may send its next request on this connection soon.
        self.keep_polling();
        // To the last byte answered: not the settling below, which may wait on Redis.
        let duration = ctx.started.elapsed();
        let status = final_status(session)
            .or_else(|| e.and_then(client_limits::status_written))
            .unwrap_or(0);
        let stored = upstream_stored(ctx);
        let sent = ctx.upload.as_deref().map(UploadGuard::received);
        // Not waited for: nothing here depends on the backend having it.
        drop(settle_upload(ctx));
        if let Some(claim) = ctx.claim.take() {
            self.settle_claim(*claim, ctx, stored).await;
        }
        let uploaded = sent.filter(|_| stored);
        self.record(session, ctx, status, uploaded, duration);
    }
}

/// Whether the upstream stored the upload. The upstream's word: a client that vanishes after
/// its body was sent must not get its upload refunded.
fn upstream_stored(ctx: &RequestCtx) -> bool {
    ctx.rejected.is_none() && ctx.upstream_status.is_some_and(|s| (200..300).contains(&s))
}

/// Settles an upload's quota reservation and ends its in-flight count, once: in `logging`, or
/// earlier for an upload refused or failed, before its client has the answer. Lingering over
/// the rest of its body takes up to 2 s after that, and a client that corrects itself and
/// retries at once must find its concurrency slot and its counts given back, in Redis too.
fn settle_upload(ctx: &mut RequestCtx) -> Settled {
    ctx.in_flight = None;
    let Some(permit) = ctx.permit.take() else {
        return Settled::done();
    };
    let sent = ctx.upload.as_deref().map(UploadGuard::received);
    permit.settle(match sent {
        Some(bytes) if upstream_stored(ctx) => Outcome::Stored { bytes },
        _ => Outcome::Failed,
    })
}

/// How long a refusal or an error answer waits for its upload's settle to reach the quota
/// backend (a Redis call and, at worst, a connection: each bounded by 500 ms).
const SETTLE_BEFORE_ANSWER: Duration = Duration::from_secs(1);

/// Answers a refusal, logs it (never the body or a credential), and marks the request for the
/// metrics. Returns pingora's "answered" for `request_filter`.
///
/// Boxed: writing an answer and lingering hold some 1.4 KB across their awaits, and a future
/// embeds the largest of everything it awaits. Unboxed, every `request_filter` (whose future
/// async_trait allocates and copies per request) would carry that for the rare refusal.
fn refuse<'a>(
    session: &'a mut Session,
    ctx: &'a mut RequestCtx,
    rejection: Rejection,
) -> BoxFuture<'a, Result<bool>> {
    Box::pin(send_refusal(session, ctx, rejection))
}

/// `refuse`'s work.
async fn send_refusal(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rejection: Rejection,
) -> Result<bool> {
    ctx.rejected = rejection.reason;
    let head = session.req_header();
    log::info!(
        "refused {} {}: {} {}",
        head.method,
        head.uri.path(),
        rejection.error.status,
        rejection.reason.map_or("", RejectReason::label),
    );
    settle_upload(ctx).wait(SETTLE_BEFORE_ANSWER).await;
    reject::send(session, &rejection, ctx.request_id()).await?;
    linger_unless_waiting(session, ctx).await;
    Ok(true)
}

/// Reads past the rest of a request body after answering early, unless the client still waits
/// for its 100 Continue and so sends no body.
async fn linger_unless_waiting(session: &mut Session, ctx: &RequestCtx) {
    if ctx.continued || !expects_continue(session) {
        reject::linger(session).await;
    }
}

/// What became of an upload the upstream failed.
enum Retried {
    /// Not sent again: retrying is off, the failure was the client's, the upload was not
    /// spooled, or the client already had an answer.
    No,
    /// Sent again (or refused while its body was spooled); the client was answered with this.
    Answered(u16),
    /// Sent again with no answer to give: the client is to be answered for this failure.
    Failed(Box<Error>),
}

/// Refuses an upload whose rest the upload checks refused while it was being spooled, after the
/// upstream failed it.
async fn refuse_after_failure(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rejection: Rejection,
) -> u16 {
    let status = rejection.error.status;
    if let Err(e) = refuse(session, ctx, rejection).await {
        log::debug!("cannot send the refusal: {e}");
    }
    status
}

/// The request's body framing (see `framing`). The raw head is only read when the parser may
/// have dropped a `Content-Length`.
fn check_framing(session: &Session) -> Result<(), &'static str> {
    let headers = &session.req_header().headers;
    let raw_head = headers
        .contains_key(http::header::TRANSFER_ENCODING)
        .then(|| session.as_http1().map(|h1| h1.get_headers_raw_bytes()))
        .flatten();
    super::framing::check(headers, raw_head.as_deref())
}

/// Whether the request's body is chunked.
fn is_chunked(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| {
            v.as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        })
}

/// Reads the body's first chunk before anything goes upstream, kept in pingora's retry buffer
/// to be sent on once the request is let through. Reading it checks its framing (a malformed
/// chunk size is an error here, answered 400, and the upstream never sees the request), and
/// gives the upload policy its first bytes.
async fn read_first_chunk(session: &mut Session) -> Result<Result<Option<Bytes>, Rejection>> {
    session.enable_retry_buffering();
    read_into_retry_buffer(session).await
}

/// After the first chunk, the rest of a small body, into the retry buffer with it: all of it
/// goes upstream in one write and is inspected whole. Returns the body so far.
async fn read_rest_into_retry_buffer(
    session: &mut Session,
) -> Result<Result<Option<Bytes>, Rejection>> {
    while !session.is_body_done() {
        match read_into_retry_buffer(session).await? {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(rejection) => return Ok(Err(rejection)),
        }
    }
    Ok(Ok(session.as_ref().get_retry_buffer()))
}

/// One read of the body while pingora's retry buffer is on.
async fn read_into_retry_buffer(session: &mut Session) -> Result<Result<Option<Bytes>, Rejection>> {
    // A framing error is the client's: answered 400 (see `classify_failure`).
    let read = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?;
    if session.as_ref().retry_buffer_truncated() {
        // pingora could not keep the bytes to replay them upstream (a first chunk can exceed
        // the buffer after a very large head): fail closed rather than lose bytes.
        return Ok(Err(Rejection::unreplayable()));
    }
    Ok(Ok(read))
}

/// Upstream answers that make an upload worth sending again.
fn is_retried_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// Adds an upload chunk to its spool; a spool that cannot take it is dropped (no replay then).
async fn spool_chunk(ctx: &mut RequestCtx, chunk: &[u8]) {
    let Some(spool) = &mut ctx.spool else { return };
    if let Err(e) = spool.write(chunk).await {
        log::warn!("spool: {e}; this upload will not be retried");
        ctx.spool = None;
        metrics().uploads_unspooled.inc();
    }
}

/// The first chunk, when the upstream failed before the body started on its way (a connection
/// refused): it was read for inspection and is only in pingora's retry buffer, so it goes
/// through the checks and into the spool here.
async fn spool_unforwarded(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), Option<Rejection>> {
    if ctx.body_forwarded {
        return Ok(());
    }
    ctx.body_forwarded = true;
    let Some(first) = session.as_ref().get_retry_buffer() else {
        return Ok(());
    };
    let end = session.is_body_done();
    if let Some(guard) = &mut ctx.upload {
        guard
            .on_chunk(&first, end)
            .map_err(|refusal| Some(Rejection::from(refusal)))?;
    }
    if let Some(fingerprint) = &mut ctx.fingerprint {
        fingerprint.update(&first);
    }
    spool_chunk(ctx, &first).await;
    if ctx.spool.is_none() {
        return Err(None);
    }
    Ok(())
}

/// The rest of a failed upload's body, read from the client through the same checks as while
/// streaming, into the spool. `Err(Some)`: a refusal to answer; `Err(None)`: no replay (the
/// client left, or the spool could not take it).
async fn finish_spooling(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), Option<Rejection>> {
    if !session.is_body_done() && expects_continue(session) && !ctx.continued {
        // The client still waits for this before it sends the rest.
        session.write_continue_response().await.map_err(|_| None)?;
        ctx.continued = true;
    }
    while !session.is_body_done() {
        let chunk = session.read_request_body().await.map_err(|_| None)?;
        let end = session.is_body_done();
        let bytes = chunk.as_deref().unwrap_or_default();
        if let Some(guard) = &mut ctx.upload {
            guard
                .on_chunk(bytes, end)
                .map_err(|refusal| Some(Rejection::from(refusal)))?;
        }
        if let Some(fingerprint) = &mut ctx.fingerprint {
            fingerprint.update(bytes);
        }
        spool_chunk(ctx, bytes).await;
        if ctx.spool.is_none() {
            return Err(None);
        }
        if chunk.is_none() {
            break;
        }
    }
    Ok(())
}

/// Answers the client with a replay's answer, and notes it as the upstream's.
async fn answer_replay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut head: ResponseHeader,
    body: Bytes,
) -> u16 {
    let status = head.status.as_u16();
    ctx.upstream_status = Some(status);
    ctx.replayed = true;
    if ctx.claim.is_some() && head.status.is_success() {
        ctx.answer = Some(AnswerCapture::whole(&head, &body));
    }
    head.remove_header(&http::header::TRANSFER_ENCODING);
    head.remove_header(&http::header::CONNECTION);
    let written = async {
        head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        head.insert_header(REQUEST_ID, ctx.request_id.clone())?;
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await
    }
    .await;
    if let Err(e) = written {
        log::debug!("cannot send the replayed upload's answer: {e}");
    }
    status
}

/// An API request's head from the client's: an origin-form target (a client's absolute-form
/// one named a host of its choosing), the client's credentials out, the service's in, the API's
/// `Host`, the request id, and no second `Expect` once the client had its 100.
fn api_head(request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    // From the raw bytes, which pingora keeps for an absolute-form target (and which are the
    // target itself when it is not UTF-8, where the URI is a lossy rendering).
    if let Some(target) = origin_form(request.raw_path()).map(<[u8]>::to_vec) {
        request.set_raw_path(&target)?;
    }
    let Some(route) = &ctx.route else {
        // request_filter answers every request it does not route: this cannot be reached.
        return Error::e_explain(
            ErrorType::InternalError,
            "proxying a request without a route",
        );
    };
    ctx.settings.credentials.apply(request, route.service());
    if ctx.continued {
        request.remove_header(&http::header::EXPECT);
    }
    request.insert_header(
        http::header::HOST,
        ctx.settings.upstream.host_header().clone(),
    )?;
    request.insert_header(REQUEST_ID, ctx.request_id.clone())
}

/// An absolute-form target's origin form (`http://host/p?q` is `/p?q`); `None` for a target in
/// origin form already. A routed target always has a path.
fn origin_form(raw: &[u8]) -> Option<&[u8]> {
    if raw.first() == Some(&b'/') {
        return None;
    }
    let authority = raw.windows(3).position(|w| w == b"://")? + 3;
    let path = raw[authority..].iter().position(|&b| b == b'/')?;
    Some(&raw[authority + path..])
}

/// Turns a range answer into `416 Range Not Satisfiable` for a body of `len` bytes.
fn unsatisfiable(response: &mut ResponseHeader, len: usize) {
    // A known status and well-formed values: these cannot fail.
    let _ = response.set_status(http::StatusCode::RANGE_NOT_SATISFIABLE);
    let _ = response.insert_header(http::header::CONTENT_LENGTH, "0");
    let _ = response.insert_header(http::header::CONTENT_RANGE, format!("bytes */{len}"));
    for name in [
        http::header::ACCEPT_RANGES,
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
    ] {
        response.remove_header(&name);
    }
}

/// Whether this request is filling the cache from the upstream. pingora ends a request once the
/// client's answer is complete; when that answer is a range or a 304, the rest of the upstream
/// body would never reach the cache and the fill would be abandoned (waiters released only
/// by the lock's timeout). So the request that fills gets the whole answer, which RFC 9110
/// allows, and ranges and 304s are answered from the cache from then on.
fn filling_the_cache(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Miss | CachePhase::Expired
    )
}

/// What the cache did for a cacheable read: served it (`hit`, `stale`), was consulted and
/// fetched (`miss`, whether or not the answer was then kept), or was not used (`bypass`).
fn cache_outcome(session: &Session, ctx: &RequestCtx) -> Option<(Kind, cache::Outcome)> {
    let usage = ctx.cache?;
    let outcome = match session.cache.phase() {
        _ if !usage.consulted => cache::Outcome::Bypass,
        _ if usage.answered_early => cache::Outcome::Hit,
        // A stale entry the upstream confirmed (304): its bytes come from the cache.
        CachePhase::Hit | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            cache::Outcome::Hit
        }
        CachePhase::Stale | CachePhase::StaleUpdating => cache::Outcome::Stale,
        CachePhase::Miss => cache::Outcome::Miss,
        // A key known to be too large for the cache, read past it (`cache::predictor`); its
        // phase has moved on to "disabled" once its answer was judged.
        _ if session.cache.predicted_uncacheable_reason().is_some() => cache::Outcome::Bypass,
        _ => cache::Outcome::Miss,
    };
    Some((usage.kind, outcome))
}

/// Whether pingora's range filter would tell the readers of this answer that it takes ranges:
/// a 200 with a `Content-Length` that is a number.
fn ranges_acceptable(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str());
    status == http::StatusCode::OK
        && length.is_some_and(|v| v.is_ok_and(|v| v.trim().parse::<u64>().is_ok()))
}

/// What every answer's head says on its way to the client: the request id and, for cacheable
/// reads (`outcome`), `Mediagate-Cache` when `cache.response_header` is on.
fn mark_answer(
    response: &mut ResponseHeader,
    outcome: Option<cache::Outcome>,
    ctx: &RequestCtx,
) -> Result<()> {
    let label = outcome
        .filter(|_| ctx.settings.cache.response_header)
        .map(cache::Outcome::label);
    set_cache_header(response, label)?;
    response.insert_header(REQUEST_ID, ctx.request_id.clone())
}

/// Makes the answer's `Mediagate-Cache` say `outcome`, or removes it (`None`: not a cacheable
/// read, or `cache.response_header` off). Cached heads are kept with `hit` in it, so a hit's
/// head is usually right as it is; an entry kept while the header was off, or read since it was
/// turned off (a reload), is put right here.
fn set_cache_header(response: &mut ResponseHeader, outcome: Option<&'static str>) -> Result<()> {
    let current = response.headers.get(CACHE_HEADER);
    match outcome {
        Some(label) if current.is_none_or(|value| value != label) => {
            response.insert_header(CACHE_HEADER, HeaderValue::from_static(label))
        }
        None if current.is_some() => {
            response.remove_header(CACHE_HEADER);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The status of the final answer written to the client, if any: a `100 Continue` is not one.
fn final_status(session: &Session) -> Option<u16> {
    session
        .response_written()
        .map(|r| r.status)
        .filter(|status| !status.is_informational())
        .map(|status| status.as_u16())
}

/// Whether the client waits for `100 Continue` before it sends the body.
fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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
        // The upstream answered an upload 502, 503 or 504, and no replay did better.
        (_, HTTPStatus(504)) => Some(ApiError::new(
            504,
            ErrorCode::UpstreamTimeout,
            "The Media API did not answer in time",
        )),
        (_, HTTPStatus(code)) if *code >= 500 => Some(ApiError::new(
            *code,
            ErrorCode::UpstreamUnavailable,
            "The Media API could not take the upload",
        )),
        (_, HTTPStatus(code)) if *code >= 400 => Some(ApiError::new(
            *code,
            ErrorCode::BadRequest,
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
        // pingora's own 60 s limit on each read from the client (with `min_body_rate: 0`, the
        // only one on a body): the code of mediagate's own timeouts on the client.
        (ErrorSource::Downstream, ReadTimedout) => Some(ApiError::new(
            408,
            ErrorCode::HeadTimeout,
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

#[cfg(test)]
mod tests {
    use super::{classify_failure, origin_form};
    use pingora::{Error, ErrorType};

    #[test]
    fn a_client_silent_past_pingoras_read_timeout_gets_the_timeout_code() {
        // With `min_body_rate: 0`, pingora's 60 s per read is the only limit on a body.
        let silent = Error::explain(ErrorType::ReadTimedout, "client").into_down();
        let answer = classify_failure(&silent).expect("an answer");
        assert_eq!((answer.status, answer.code), (408, 91408));
        let gone = Error::explain(ErrorType::ConnectionClosed, "client").into_down();
        assert!(classify_failure(&gone).is_none());
    }

    #[test]
    fn absolute_targets_are_brought_to_origin_form_byte_for_byte() {
        assert_eq!(origin_form(b"/v1/Services/IS1/Media?x=1"), None);
        assert_eq!(
            origin_form(b"http://elsewhere.example/v1/Services/IS1/Media?x=1"),
            Some(&b"/v1/Services/IS1/Media?x=1"[..])
        );
        assert_eq!(
            origin_form(b"https://h:8443/v1/M?q=\xff"),
            Some(&b"/v1/M?q=\xff"[..])
        );
        assert_eq!(origin_form(b"http://host-only"), None);
    }
}
