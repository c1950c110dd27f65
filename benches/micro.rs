//! Micro-benchmarks of the per-request work that runs before any byte goes upstream.
//! Run: `cargo bench --bench micro`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use mediagate::api::{Route, ServiceSid};
use mediagate::config::{Config, Uploads};
use mediagate::policy::{check_head, UploadRules};
use mediagate::quota::{Limits, MemoryQuota, Outcome, Quota};

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

/// The policy's per-upload work before anything goes upstream: the head checks and the sniff of
/// a first chunk of 64 KiB, raw and multipart.
fn upload_policy(c: &mut Criterion) {
    let rules = Arc::new(UploadRules::new(&Uploads::default()));
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(64 * 1024, 7);
    let mut raw = HeaderMap::new();
    raw.insert("content-type", "image/png".parse().unwrap());
    raw.insert("content-length", "10485760".parse().unwrap());
    c.bench_function("policy_raw_head_and_sniff_64k", |b| {
        b.iter(|| {
            let mut guard = check_head(&rules, black_box(&raw)).unwrap();
            guard.inspect_early(black_box(&png), false).unwrap();
        })
    });

    let mut form = b"--bnd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    form.extend_from_slice(&png[..64 * 1024 - form.len()]);
    let mut multipart = HeaderMap::new();
    multipart.insert(
        "content-type",
        "multipart/form-data; boundary=bnd".parse().unwrap(),
    );
    c.bench_function("policy_multipart_head_and_sniff_64k", |b| {
        b.iter(|| {
            let mut guard = check_head(&rules, black_box(&multipart)).unwrap();
            guard.inspect_early(black_box(&form), false).unwrap();
        })
    });

    let mut text = "plain words, ünïcödé ".repeat(4000).into_bytes();
    text.truncate(64 * 1024);
    let mut plain = HeaderMap::new();
    plain.insert("content-type", "text/plain".parse().unwrap());
    c.bench_function("policy_text_utf8_check_64k", |b| {
        b.iter(|| {
            let mut guard = check_head(&rules, black_box(&plain)).unwrap();
            let _ = guard.inspect_early(black_box(&text), false);
        })
    });
}

/// Memory-backend admission and settlement of one upload, all three limits on.
fn quota_admission(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let quota = MemoryQuota::new();
    let service = ServiceSid::generate();
    let limits = Limits {
        uploads_per_minute: u64::MAX / 2,
        bytes_per_hour: u64::MAX / 2,
        concurrent_uploads: 1_000_000,
    };
    c.bench_function("quota_memory_admit_and_settle", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let permit = quota
                    .admit(black_box(&service), limits, 4096)
                    .await
                    .unwrap();
                permit.settle(Outcome::Stored { bytes: 4096 });
            })
        })
    });
}

fn cache_key(c: &mut Criterion) {
    let service =
        mediagate::api::ServiceSid::parse("IS0123456789abcdef0123456789abcdef").expect("service");
    let media =
        mediagate::api::MediaSid::parse("ME0123456789abcdef0123456789abcdef").expect("media");
    c.bench_function("cache_key_content", |b| {
        b.iter(|| {
            mediagate::cache::key(
                black_box(&service),
                black_box(&media),
                mediagate::cache::Kind::Content,
            )
        })
    });
}

criterion_group!(
    benches,
    route_parsing,
    sid_parsing,
    config_loading,
    upload_policy,
    quota_admission,
    cache_key
);
criterion_main!(benches);
