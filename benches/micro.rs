//! Micro-benchmarks of the per-request work that runs before any byte goes upstream.
//! Run: `cargo bench --bench micro`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::Method;
use mediagate::api::{Route, ServiceSid};
use mediagate::config::Config;

fn route_parsing(c: &mut Criterion) {
    let path = "/v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef/Content";
    c.bench_function("route_parse_content", |b| {
        b.iter(|| Route::parse(black_box(&Method::GET), black_box(path)))
    });
    c.bench_function("route_parse_bad_sid", |b| {
        b.iter(|| {
            Route::parse(
                black_box(&Method::POST),
                black_box("/v1/Services/IS123/Media"),
            )
        })
    });
}

fn sid_parsing(c: &mut Criterion) {
    c.bench_function("service_sid_parse", |b| {
        b.iter(|| ServiceSid::parse(black_box("IS0123456789abcdef0123456789abcdef")))
    });
}

fn config_loading(c: &mut Criterion) {
    let yaml = include_str!("../config/mediagate.yaml");
    let lookup = |name: &str| Some(format!("value-of-{name}"));
    c.bench_function("config_reference_load", |b| {
        b.iter(|| Config::from_yaml(black_box(yaml), &lookup))
    });
}

criterion_group!(benches, route_parsing, sid_parsing, config_loading);
criterion_main!(benches);
