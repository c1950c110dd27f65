//! Micro-benchmarks of the per-request work that runs before any byte goes upstream, each also
//! reporting the heap allocations one call makes (a counting allocator wraps the system's).
//! Run: `cargo bench --bench micro`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use mediagate::api::{Route, ServiceSid};
use mediagate::config::{Config, Uploads};
use mediagate::policy::{check_head, UploadRules};
use mediagate::quota::{Limits, MemoryQuota, Outcome, Quota};

/// The system allocator, counting allocations (and reallocations).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Benchmarks `f`, first printing how many allocations one call of it makes.
fn bench(c: &mut Criterion, name: &str, mut f: impl FnMut()) {
    const CALLS: u64 = 1000;
    // A first call may fill lazy statics: not a per-call cost.
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..CALLS {
        f();
    }
    let per_call = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / CALLS as f64;
    println!("{name}: {per_call} allocations per call");
    c.bench_function(name, |b| b.iter(&mut f));
}

fn route_parsing(c: &mut Criterion) {
    let path = "/v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef/Content";
    bench(c, "route_parse_content", || {
        black_box(Route::parse(black_box(&Method::GET), black_box(path)).ok());
    });
    bench(c, "route_parse_bad_sid", || {
        black_box(
            Route::parse(
                black_box(&Method::POST),
                black_box("/v1/Services/IS123/Media"),
            )
            .ok(),
        );
    });
}

fn sid_parsing(c: &mut Criterion) {
    bench(c, "service_sid_parse", || {
        black_box(ServiceSid::parse(black_box(
            "IS0123456789abcdef0123456789abcdef",
        )));
    });
}

fn config_loading(c: &mut Criterion) {
    let yaml = include_str!("../config/mediagate.yaml");
    let lookup = |name: &str| Some(format!("value-of-{name}"));
    bench(c, "config_reference_load", || {
        black_box(Config::from_yaml(black_box(yaml), &lookup).ok());
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
    bench(c, "policy_raw_head_and_sniff_64k", || {
        let mut guard = check_head(&rules, black_box(&raw)).unwrap();
        guard.inspect_early(black_box(&png), false).unwrap();
    });

    let mut form = b"--bnd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    form.extend_from_slice(&png[..64 * 1024 - form.len()]);
    let mut multipart = HeaderMap::new();
    multipart.insert(
        "content-type",
        "multipart/form-data; boundary=bnd".parse().unwrap(),
    );
    bench(c, "policy_multipart_head_and_sniff_64k", || {
        let mut guard = check_head(&rules, black_box(&multipart)).unwrap();
        guard.inspect_early(black_box(&form), false).unwrap();
    });

    let mut text = "plain words, ünïcödé ".repeat(4000).into_bytes();
    text.truncate(64 * 1024);
    let mut plain = HeaderMap::new();
    plain.insert("content-type", "text/plain".parse().unwrap());
    bench(c, "policy_text_utf8_check_64k", || {
        let mut guard = check_head(&rules, black_box(&plain)).unwrap();
        let _ = guard.inspect_early(black_box(&text), false);
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
    bench(c, "quota_memory_admit_and_settle", || {
        runtime.block_on(async {
            let permit = quota
                .admit(black_box(&service), limits, 4096)
                .await
                .unwrap();
            drop(permit.settle(Outcome::Stored { bytes: 4096 }));
        })
    });
}

fn cache_key(c: &mut Criterion) {
    let service =
        mediagate::api::ServiceSid::parse("IS0123456789abcdef0123456789abcdef").expect("service");
    let media =
        mediagate::api::MediaSid::parse("ME0123456789abcdef0123456789abcdef").expect("media");
    bench(c, "cache_key_content", || {
        black_box(mediagate::cache::key(
            black_box(&service),
            black_box(&media),
            mediagate::cache::Kind::Content,
        ));
    });
    // The form a plain hit answered before pingora-cache looks its entry up by.
    bench(c, "cache_compact_key_metadata", || {
        black_box(mediagate::cache::compact_key(
            black_box(&service),
            black_box(&media),
            mediagate::cache::Kind::Metadata,
        ));
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
