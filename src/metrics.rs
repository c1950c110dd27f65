//! Every metric family, in one place, under the names of spec/metrics.md (extend, never rename).
//! They live in the default Prometheus registry that pingora-prometheus also uses, so `/metrics`
//! shows them beside pingora's own.
//!
//! The proxy records a request once, in its `logging` phase, through [`RequestMetrics`], whose
//! label sets are resolved at start: recording is plain handle updates, with no label strings
//! built per request.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use pingora_prometheus::prometheus::{
    self, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};

use crate::api::{RejectReason, RouteKind, ServiceSid};
use crate::cache;

/// Latency buckets, 0.5 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Size buckets, 1 KiB to 256 MiB (powers of four).
const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
];

/// The `kind` values of `mediagate_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "status_5xx"];

pub struct Metrics {
    /// `route`, `method`, `status`, `service`.
    pub requests: IntCounterVec,
    /// `route`.
    pub request_duration: HistogramVec,
    /// `route`.
    pub upstream_duration: HistogramVec,
    /// `route`, `service`.
    pub request_bytes: IntCounterVec,
    /// `route`, `service`.
    pub response_bytes: IntCounterVec,
    /// `service`.
    pub upload_size: HistogramVec,
    /// `service`.
    pub uploads_in_flight: IntGaugeVec,
    /// `reason` (as in `Mediagate-Reject`), `service`.
    pub rejections: IntCounterVec,
    /// `kind`, `result`.
    pub cache_requests: IntCounterVec,
    /// `kind`.
    pub cache_bytes: IntGaugeVec,
    /// `kind`.
    pub cache_evictions: IntCounterVec,
    /// Bytes buffered by cache fills in progress (bounded by `cache.memory`).
    pub cache_fill_bytes: IntGauge,
    /// `kind`: answers not kept because fills in progress held their whole bound.
    pub cache_fills_skipped: IntCounterVec,
    /// `kind`: hits answered from the storage before pingora-cache (`proxy::fresh_hit`).
    pub cache_early_hits: IntCounterVec,
    /// `kind`: `connect`, `timeout`, `reset`, `status_5xx`.
    pub upstream_errors: IntCounterVec,
    /// Failed calls to the quota backend.
    pub quota_backend_errors: IntCounter,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Repeated uploads answered with the first one's answer (`Idempotency-Key`).
    pub idempotent_replays: IntCounter,
    /// Repeated uploads waiting for the first upload under their key to end.
    pub idempotent_waiting: IntGauge,
    /// Spooled uploads sent upstream again after a failure (`uploads.retry`).
    pub upload_replays: IntCounter,
    /// Uploads that streamed without a spool (budget spent, disk error): not retried.
    pub uploads_unspooled: IntCounter,
    /// `reason`: why a client connection was cut off (see `proxy::client_limits`).
    pub clients_refused: IntCounterVec,
    /// Client connections open on `server.listen`.
    pub client_connections: IntGauge,
    /// `result`: `ok`, `error`.
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
}

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn histograms(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register_histogram_vec!(name, help, labels, buckets.to_vec())
        .unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(name, help, labels).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge!(name, help).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).unwrap_or_else(|e| panic!("register {name}: {e}"))
}

// Registering a family twice is a programming error, found by the first test that scrapes.
static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: counters(
            "mediagate_requests_total",
            "Requests answered, by final status.",
            &["route", "method", "status", "service"],
        ),
        request_duration: histograms(
            "mediagate_request_duration_seconds",
            "Time from request head to last response byte.",
            &["route"],
            LATENCY_BUCKETS,
        ),
        upstream_duration: histograms(
            "mediagate_upstream_duration_seconds",
            "Time spent waiting on the upstream: from sending the request to its answer's head.",
            &["route"],
            LATENCY_BUCKETS,
        ),
        request_bytes: counters(
            "mediagate_request_bytes_total",
            "Body bytes received from clients.",
            &["route", "service"],
        ),
        response_bytes: counters(
            "mediagate_response_bytes_total",
            "Body bytes sent to clients.",
            &["route", "service"],
        ),
        upload_size: histograms(
            "mediagate_upload_size_bytes",
            "Size of accepted uploads.",
            &["service"],
            SIZE_BUCKETS,
        ),
        uploads_in_flight: gauges(
            "mediagate_uploads_in_flight",
            "Uploads currently streaming.",
            &["service"],
        ),
        rejections: counters(
            "mediagate_rejections_total",
            "Requests refused by mediagate, by reason (as in the Mediagate-Reject header).",
            &["reason", "service"],
        ),
        cache_requests: counters(
            "mediagate_cache_requests_total",
            "Cacheable reads, by kind and cache result.",
            &["kind", "result"],
        ),
        cache_bytes: gauges(
            "mediagate_cache_bytes",
            "Bytes held in the cache.",
            &["kind"],
        ),
        cache_evictions: counters(
            "mediagate_cache_evictions_total",
            "Cache entries evicted.",
            &["kind"],
        ),
        cache_fill_bytes: gauge(
            "mediagate_cache_fill_bytes",
            "Bytes buffered by cache fills in progress, at most cache.memory.",
        ),
        cache_fills_skipped: counters(
            "mediagate_cache_fills_skipped_total",
            "Answers served but not cached because cache fills in progress held cache.memory.",
            &["kind"],
        ),
        cache_early_hits: counters(
            "mediagate_cache_early_hits_total",
            "Cache hits of plain GETs answered from memory before pingora-cache's hit path; also counted as hit in mediagate_cache_requests_total.",
            &["kind"],
        ),
        upstream_errors: counters(
            "mediagate_upstream_errors_total",
            "Failures talking to the upstream, by kind.",
            &["kind"],
        ),
        quota_backend_errors: counter(
            "mediagate_quota_backend_errors_total",
            "Failed calls to the quota backend.",
        ),
        upload_replays: counter(
            "mediagate_upload_replays_total",
            "Spooled uploads sent upstream again after the upstream failed them.",
        ),
        clients_refused: counters(
            "mediagate_clients_refused_total",
            "Client connections cut off by a limit, by reason.",
            &["reason"],
        ),
        uploads_unspooled: counter(
            "mediagate_uploads_unspooled_total",
            "Uploads streamed without a spool (spool_max reached or a disk error), so not retried.",
        ),
        idempotent_replays: counter(
            "mediagate_idempotent_replays_total",
            "Repeated uploads answered with the first upload's answer (Idempotency-Key).",
        ),
        idempotent_waiting: gauge(
            "mediagate_idempotent_waiting",
            "Repeated uploads waiting for the upload running under their Idempotency-Key.",
        ),
        access_log_dropped: counter(
            "mediagate_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind.",
        ),
        client_connections: gauge(
            "mediagate_client_connections",
            "Client connections open on server.listen.",
        ),
        config_reloads: counters(
            "mediagate_config_reloads_total",
            "Configuration reloads (SIGHUP), by result.",
            &["result"],
        ),
        build_info: gauges(
            "mediagate_build_info",
            "Always 1; the version label says which build runs.",
            &["version"],
        ),
    };
    // Families with fixed label values are exported from the start, at zero, so dashboards
    // and alerts find every series before the first event.
    for kind in cache::Kind::ALL.map(cache::Kind::label) {
        m.cache_bytes.with_label_values(&[kind]);
        m.cache_evictions.with_label_values(&[kind]);
        m.cache_fills_skipped.with_label_values(&[kind]);
        m.cache_early_hits.with_label_values(&[kind]);
        for result in cache::Outcome::ALL.map(cache::Outcome::label) {
            m.cache_requests.with_label_values(&[kind, result]);
        }
    }
    for kind in UPSTREAM_ERROR_KINDS {
        m.upstream_errors.with_label_values(&[kind]);
    }
    for result in ["ok", "error"] {
        m.config_reloads.with_label_values(&[result]);
    }
    m
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Sets the build info gauge; called once at start.
pub fn init() {
    metrics()
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
}

/// The Prometheus text exposition of everything registered.
pub fn render() -> (Vec<u8>, String) {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buffer) {
        log::error!("metrics: cannot encode: {e}");
    }
    (buffer, encoder.format_type().to_string())
}

/// What one request did, for the metrics (and the access log).
#[derive(Debug, Clone)]
pub struct RequestRecord<'a> {
    pub route: RouteKind,
    pub method: &'static str,
    pub status: u16,
    /// The request's service, when its path named a valid one.
    pub service: Option<&'a ServiceSid>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    /// The size of an upload the upstream accepted.
    pub uploaded: Option<u64>,
    pub rejected: Option<RejectReason>,
    pub upstream_error: Option<&'static str>,
    /// What the cache did, for cacheable reads.
    pub cache: Option<(cache::Kind, cache::Outcome)>,
}

const ROUTES: usize = RouteKind::ALL.len();

fn route_index(route: RouteKind) -> usize {
    RouteKind::ALL
        .iter()
        .position(|r| *r == route)
        .unwrap_or(ROUTES - 1)
}

fn reason_index(reason: RejectReason) -> usize {
    RejectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

/// One service label's handles.
struct ServiceHandles {
    label: String,
    request_bytes: [IntCounter; ROUTES],
    response_bytes: [IntCounter; ROUTES],
    upload_size: Histogram,
    in_flight: IntGauge,
    rejections: [IntCounter; RejectReason::ALL.len()],
}

impl ServiceHandles {
    fn new(label: &str) -> ServiceHandles {
        let m = metrics();
        let per_route = |family: &IntCounterVec| {
            RouteKind::ALL.map(|route| family.with_label_values(&[route.label(), label]))
        };
        ServiceHandles {
            label: label.to_string(),
            request_bytes: per_route(&m.request_bytes),
            response_bytes: per_route(&m.response_bytes),
            upload_size: m.upload_size.with_label_values(&[label]),
            in_flight: m.uploads_in_flight.with_label_values(&[label]),
            rejections: RejectReason::ALL
                .map(|reason| m.rejections.with_label_values(&[reason.label(), label])),
        }
    }
}

/// The label sets of one proxy's configuration, resolved once: every service under
/// `services:` has its own, every other service shares `other`.
pub struct RequestMetrics {
    durations: [Histogram; ROUTES],
    upstream_durations: [Histogram; ROUTES],
    services: HashMap<ServiceSid, ServiceHandles>,
    other: ServiceHandles,
    /// `"0"` to `"599"`: status label values without formatting per request.
    statuses: Vec<String>,
    /// `mediagate_cache_requests_total`, by kind then outcome.
    cache_requests: [[IntCounter; cache::Outcome::ALL.len()]; cache::Kind::ALL.len()],
}

impl RequestMetrics {
    pub fn new<'a>(services: impl IntoIterator<Item = &'a ServiceSid>) -> RequestMetrics {
        let m = metrics();
        RequestMetrics {
            durations: RouteKind::ALL.map(|r| m.request_duration.with_label_values(&[r.label()])),
            upstream_durations: RouteKind::ALL
                .map(|r| m.upstream_duration.with_label_values(&[r.label()])),
            services: services
                .into_iter()
                .map(|sid| (*sid, ServiceHandles::new(sid.as_str())))
                .collect(),
            other: ServiceHandles::new("other"),
            statuses: (0..600).map(|s| s.to_string()).collect(),
            cache_requests: cache::Kind::ALL.map(|kind| {
                cache::Outcome::ALL.map(|outcome| {
                    m.cache_requests
                        .with_label_values(&[kind.label(), outcome.label()])
                })
            }),
        }
    }

    fn service(&self, sid: Option<&ServiceSid>) -> &ServiceHandles {
        sid.and_then(|sid| self.services.get(sid))
            .unwrap_or(&self.other)
    }

    /// The `service` label value for a request.
    pub fn service_label(&self, sid: Option<&ServiceSid>) -> &str {
        &self.service(sid).label
    }

    /// The in-flight gauge of a service, for the upload's lifetime.
    pub fn upload_started(&self, sid: &ServiceSid) -> InFlight {
        InFlight::count(self.service(Some(sid)).in_flight.clone())
    }

    /// Records a finished request in every family it touches.
    pub fn record(&self, r: &RequestRecord) {
        let route = route_index(r.route);
        let service = self.service(r.service);
        self.durations[route].observe(r.duration.as_secs_f64());
        if let Some(upstream) = r.upstream {
            self.upstream_durations[route].observe(upstream.as_secs_f64());
        }
        service.request_bytes[route].inc_by(r.bytes_in);
        service.response_bytes[route].inc_by(r.bytes_out);
        if let Some(size) = r.uploaded {
            service.upload_size.observe(size as f64);
        }
        if let Some(reason) = r.rejected {
            service.rejections[reason_index(reason)].inc();
        }
        if let Some((kind, outcome)) = r.cache {
            self.cache_requests[kind as usize][outcome as usize].inc();
        }
        if let Some(kind) = r.upstream_error {
            metrics().upstream_errors.with_label_values(&[kind]).inc();
        }
        // Last, so that a request counted here has all its other metrics recorded.
        let status = self
            .statuses
            .get(r.status as usize)
            .map_or("0", String::as_str);
        metrics()
            .requests
            .with_label_values(&[r.route.label(), r.method, status, &service.label])
            .inc();
    }
}

/// Something counted in a gauge until this is dropped, on every path: an upload in
/// `mediagate_uploads_in_flight`, a repeat in `mediagate_idempotent_waiting`.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn count(gauge: IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
