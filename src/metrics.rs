//! Every metric family, in one place, under the names of spec/metrics.md (extend, never rename).
//! They live in the default Prometheus registry that pingora-prometheus also uses, so `/metrics`
//! shows them beside pingora's own.

use std::sync::LazyLock;

use pingora_prometheus::prometheus::{
    self, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
};

/// Latency buckets, 0.5 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct Metrics {
    /// `route`, `method`, `status`, `service`.
    pub requests: IntCounterVec,
    /// `route`.
    pub request_duration: HistogramVec,
    /// `reason` (as in `Mediagate-Reject`), `service`.
    pub rejections: IntCounterVec,
    /// `kind`: `connect`, `timeout`, `reset`, `status_5xx`.
    pub upstream_errors: IntCounterVec,
    /// Failed calls to the quota backend.
    pub quota_backend_errors: IntCounter,
    pub build_info: IntGaugeVec,
}

// Registering a family twice is a programming error, found by the first test that scrapes.
static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: register_int_counter_vec!(
        "mediagate_requests_total",
        "Requests answered, by final status.",
        &["route", "method", "status", "service"]
    )
    .expect("register mediagate_requests_total"),
    request_duration: register_histogram_vec!(
        "mediagate_request_duration_seconds",
        "Time from request head to last response byte.",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register mediagate_request_duration_seconds"),
    rejections: register_int_counter_vec!(
        "mediagate_rejections_total",
        "Requests refused by mediagate, by reason (as in the Mediagate-Reject header).",
        &["reason", "service"]
    )
    .expect("register mediagate_rejections_total"),
    upstream_errors: register_int_counter_vec!(
        "mediagate_upstream_errors_total",
        "Failures talking to the upstream, by kind.",
        &["kind"]
    )
    .expect("register mediagate_upstream_errors_total"),
    quota_backend_errors: register_int_counter!(
        "mediagate_quota_backend_errors_total",
        "Failed calls to the quota backend."
    )
    .expect("register mediagate_quota_backend_errors_total"),
    build_info: register_int_gauge_vec!(
        "mediagate_build_info",
        "Always 1; the version label says which build runs.",
        &["version"]
    )
    .expect("register mediagate_build_info"),
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
