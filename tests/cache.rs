//! The cache, through a real proxy in front of a real origin: what the origin's journal saw is
//! the proof of what was served from the cache.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use support::*;

/// The media's metadata and content paths under `service`.
fn paths(service: &str, media: &str) -> (String, String) {
    let metadata = format!("/v1/Services/{service}/Media/{media}");
    let content = format!("{metadata}/Content");
    (metadata, content)
}

/// Stores `bytes` at the origin and answers the media SID.
async fn stored(origin: &Origin, service: &str, bytes: &[u8], content_type: &str) -> String {
    let media = origin.upload(service, bytes, content_type).await;
    media["sid"].as_str().expect("media sid").to_string()
}

/// `count` PNGs of `len` bytes, each different, stored at the origin: (media SID, bytes).
async fn stored_pngs(
    origin: &Origin,
    service: &str,
    count: u8,
    len: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut media = Vec::new();
    for i in 0..count {
        let mut bytes = png_bytes(len);
        bytes[100] = i;
        media.push((stored(origin, service, &bytes, "image/png").await, bytes));
    }
    media
}

struct Read {
    status: StatusCode,
    cache: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Read {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("read through the proxy");
    let status = response.status();
    let headers = response.headers().clone();
    let cache = headers
        .get("mediagate-cache")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.bytes().await.expect("body").to_vec();
    Read {
        status,
        cache,
        headers,
        body,
    }
}

/// The origin's GETs of exactly this path (the API's; temporary URLs are journalled as `/{ME}`).
fn origin_gets(origin: &Origin, path: &str) -> Vec<Value> {
    origin
        .journal()
        .into_iter()
        .filter(|e| e["method"] == "GET" && e["path"] == path)
        .collect()
}

/// How many times the media host answered `status` for a media: the fetches of its temporary
/// URL, journalled as `/{ME}`.
fn media_host_fetches(origin: &Origin, media: &str, status: u64) -> usize {
    origin
        .journal()
        .into_iter()
        .filter(|e| e["path"] == format!("/{media}") && e["status"] == status)
        .count()
}

fn start(origin: &Origin, cache: &str) -> Proxy {
    Proxy::start(ProxyConfig::to(&origin.url).with(cache))
}

fn origin_with(args: &[&str]) -> Origin {
    Origin::start_with(OriginOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..OriginOptions::default()
    })
}

fn cache_count(proxy: &Proxy, kind: &str, result: &str) -> f64 {
    proxy
        .metric(
            "mediagate_cache_requests_total",
            &[("kind", kind), ("result", result)],
        )
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_second_read_is_a_hit_and_the_origin_saw_one_request() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let media = stored(&origin, &service, &png_bytes(3000), "image/png").await;
    let (metadata, _) = paths(&service, &media);

    let first = get(&proxy, &metadata, &[("x-request-id", "first-read")]).await;
    let second = get(&proxy, &metadata, &[("x-request-id", "second-read")]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(first.body, second.body);
    let json: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(json["sid"], media.as_str());
    // A hit carries its own request's id, not the one of the request that filled the entry.
    assert_eq!(second.headers["x-request-id"], "second-read");
    assert_eq!(origin_gets(&origin, &metadata).len(), 1);

    proxy.wait_recorded(2);
    assert_eq!(cache_count(&proxy, "metadata", "miss"), 1.0);
    assert_eq!(cache_count(&proxy, "metadata", "hit"), 1.0);
    assert!(
        proxy
            .metric("mediagate_cache_bytes", &[("kind", "metadata")])
            .unwrap()
            > 0.0
    );
    // A miss is logged after its fill completes, which may be after the next read's hit.
    let log = proxy.access_log_lines(2);
    let mut caches: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["cache"].to_string())
        .collect();
    caches.sort();
    assert_eq!(caches, ["\"hit\"", "\"miss\""]);
}

/// An answer's headers but those that belong to one request: its id and the entry's `Age`.
fn lasting_headers(read: &Read) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = read
        .headers
        .iter()
        .filter(|(name, _)| !["x-request-id", "age"].contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    headers
}

#[tokio::test]
async fn a_plain_hit_answered_before_pingora_cache_matches_its_hit_path() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let media = stored(&origin, &service, &png_bytes(3000), "image/png").await;
    let (metadata, content) = paths(&service, &media);
    for (kind, path) in [("metadata", &metadata), ("content", &content)] {
        let filled = get(&proxy, path, &[]).await;
        assert_eq!(filled.cache.as_deref(), Some("miss"), "{kind}");
        let early = get(&proxy, path, &[("x-request-id", "early")]).await;
        // A condition that does not hold takes the read through pingora-cache's hit path, and
        // still gets the whole answer.
        let condition = ("if-none-match", "\"not-this-entry\"");
        let through = get(&proxy, path, &[("x-request-id", "through"), condition]).await;
        for read in [&early, &through] {
            assert_eq!(read.status, StatusCode::OK, "{kind}");
            assert_eq!(read.cache.as_deref(), Some("hit"), "{kind}");
            assert_eq!(read.body, filled.body, "{kind}");
            let age: u64 = read.headers["age"].to_str().unwrap().parse().unwrap();
            assert!(age < 60, "{kind}: age {age}");
        }
        assert_eq!(early.headers["x-request-id"], "early");
        assert_eq!(through.headers["x-request-id"], "through");
        assert_eq!(lasting_headers(&early), lasting_headers(&through), "{kind}");
        assert_eq!(early.headers["accept-ranges"], "bytes", "{kind}");
    }
    assert_eq!(origin_gets(&origin, &metadata).len(), 1);

    proxy.wait_recorded(6);
    for kind in ["metadata", "content"] {
        assert_eq!(cache_count(&proxy, kind, "hit"), 2.0, "{kind}");
        let early = proxy.metric("mediagate_cache_early_hits_total", &[("kind", kind)]);
        assert_eq!(early, Some(1.0), "{kind}");
    }
}

#[tokio::test]
async fn on_the_wire_a_plain_hit_is_the_answer_of_pingora_caches_hit_path() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let media = stored(&origin, &service, b"a plain hit", "text/plain").await;
    let (metadata, _) = paths(&service, &media);
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("miss")
    );
    let listen = proxy.listen;
    // Both on one keep-alive connection: the first answered early, the second (its condition
    // does not hold) by pingora-cache's hit path.
    let (early, through) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(listen).expect("connect");
        let mut ask = |extra: &str| {
            let head = format!("GET {metadata} HTTP/1.1\r\nHost: {listen}\r\n{extra}\r\n");
            stream.write_all(head.as_bytes()).expect("send");
            read_response(&mut stream)
        };
        (ask(""), ask("If-None-Match: \"not-this-entry\"\r\n"))
    })
    .await
    .expect("raw reads");
    // Byte for byte but for the request's own id and the entry's age: the same status line,
    // the same header lines in the same order and case, the same body.
    let lasting = |answer: &RawResponse| -> Vec<(String, String)> {
        let per_request = ["x-request-id", "age"];
        answer
            .headers
            .iter()
            .filter(|(name, _)| !per_request.contains(&name.to_ascii_lowercase().as_str()))
            .cloned()
            .collect()
    };
    for answer in [&early, &through] {
        assert_eq!((answer.version.as_str(), answer.status), ("HTTP/1.1", 200));
        assert!(answer.header("age").is_some(), "{answer:?}");
        assert_eq!(answer.header("mediagate-cache"), Some("hit"));
    }
    assert_eq!(lasting(&early), lasting(&through));
    assert_eq!(early.body, through.body);
    proxy.wait_recorded(3);
    let early_hits = proxy.metric("mediagate_cache_early_hits_total", &[("kind", "metadata")]);
    assert_eq!(early_hits, Some(1.0));
    assert_eq!(cache_count(&proxy, "metadata", "hit"), 2.0);
}

#[tokio::test]
async fn fifty_concurrent_first_reads_make_one_upstream_fetch() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let bytes = png_bytes(256 * 1024);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (metadata, content) = paths(&service, &media);

    for path in [&metadata, &content] {
        let reads = join_all((0..50).map(|_| get(&proxy, path, &[]))).await;
        let first = &reads[0].body;
        for read in &reads {
            assert_eq!(read.status, StatusCode::OK, "{path}");
            assert_eq!(
                &read.body, first,
                "{path}: every reader gets the same answer"
            );
        }
        assert_eq!(origin_gets(&origin, path).len(), 1, "{path}");
    }
    assert_eq!(
        sha256_hex(&get(&proxy, &content, &[]).await.body),
        sha256_hex(&bytes)
    );
    // The signed URL was fetched once as well.
    let signed: Vec<Value> = origin
        .journal()
        .into_iter()
        .filter(|e| e["path"] == format!("/{media}"))
        .collect();
    assert_eq!(signed.len(), 1);
}

#[tokio::test]
async fn content_is_fetched_once_through_the_redirect_and_served_with_ranges_and_304() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let bytes = png_bytes(100_000);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);

    let first = get(&proxy, &content, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache.as_deref(), Some("miss"));
    assert!(first.headers.get("location").is_none());
    assert_eq!(first.headers["content-type"], "image/png");
    assert_eq!(first.headers["content-length"], bytes.len().to_string());
    assert_eq!(sha256_hex(&first.body), sha256_hex(&bytes));
    let etag = first.headers["etag"].to_str().unwrap().to_string();

    let hit = get(&proxy, &content, &[]).await;
    assert_eq!(hit.cache.as_deref(), Some("hit"));
    assert_eq!(sha256_hex(&hit.body), sha256_hex(&bytes));
    assert_eq!(hit.headers["content-length"], bytes.len().to_string());
    assert_eq!(hit.headers["etag"], etag.as_str());
    // A hit read whole says it takes ranges, once (the cached head keeps the header).
    let accepts = hit
        .headers
        .get_all("accept-ranges")
        .iter()
        .collect::<Vec<_>>();
    assert_eq!(accepts, ["bytes"]);

    let range = get(&proxy, &content, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.body, &bytes[1000..2000]);
    assert!(range.headers.get("accept-ranges").is_none());
    assert_eq!(
        range.headers["content-range"],
        format!("bytes 1000-1999/{}", bytes.len()).as_str()
    );
    let tail = get(&proxy, &content, &[("range", "bytes=-10")]).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.body, &bytes[bytes.len() - 10..]);
    let outside = get(&proxy, &content, &[("range", "bytes=200000-")]).await;
    assert_eq!(outside.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let nothing = get(&proxy, &content, &[("range", "bytes=-0")]).await;
    assert_eq!(nothing.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        nothing.headers["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    let unchanged = get(&proxy, &content, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.body.is_empty());
    let changed = get(&proxy, &content, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(sha256_hex(&changed.body), sha256_hex(&bytes));

    // One API request (the redirect) with the service's credentials, one fetch of the signed
    // URL with none.
    let api = origin_gets(&origin, &content);
    assert_eq!(api.len(), 1);
    assert_eq!(api[0]["auth"], format!("basic:{ACCOUNT}"));
    let signed: Vec<Value> = origin
        .journal()
        .into_iter()
        .filter(|e| e["path"] == format!("/{media}"))
        .collect();
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0]["auth"], "none");
}

#[tokio::test]
async fn the_read_that_fills_the_cache_gets_the_whole_answer_then_ranges_and_304s_follow() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let bytes = png_bytes(300_000);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    // The fill must complete even though the client asked for a part or for nothing: the
    // range is ignored (RFC 9110 allows it), and so is the validator.
    let range = get(&proxy, &content, &[("range", "bytes=100-199")]).await;
    assert_eq!(range.status, StatusCode::OK);
    assert_eq!(range.cache.as_deref(), Some("miss"));
    assert_eq!(sha256_hex(&range.body), sha256_hex(&bytes));
    let hit = get(&proxy, &content, &[("range", "bytes=100-199")]).await;
    assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hit.cache.as_deref(), Some("hit"));
    assert_eq!(hit.body, &bytes[100..200]);

    let service = new_service();
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);
    let first = get(&proxy, &content, &[("if-none-match", &etag)]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache.as_deref(), Some("miss"));
    let second = get(&proxy, &content, &[("if-none-match", &etag)]).await;
    assert_eq!(second.status, StatusCode::NOT_MODIFIED);
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(origin_gets(&origin, &content).len(), 1);
}

#[tokio::test]
async fn metadata_expires_before_its_temporary_url() {
    // URLs valid 193 s: the metadata may be kept 3 s (193 − 190), though metadata_ttl is 60 s.
    let origin = origin_with(&["--url-ttl", "193"]);
    let proxy = start(&origin, "cache:\n  metadata_ttl: 60s\n");
    let service = new_service();
    let media = stored(&origin, &service, b"hello", "text/plain").await;
    let (metadata, _) = paths(&service, &media);

    let filled = Instant::now();
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("hit")
    );
    // Polls until the entry expires: the interval only bounds the measurement's precision.
    let expired = loop {
        if get(&proxy, &metadata, &[]).await.cache.as_deref() == Some("miss") {
            break filled.elapsed();
        }
        assert!(
            filled.elapsed() < Duration::from_secs(20),
            "the metadata never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Within the URL's validity less the margin (whole seconds: up to 1 s early), and long
    // before metadata_ttl.
    assert!(expired >= Duration::from_secs(2), "{expired:?}");
    assert!(expired < Duration::from_secs(20), "{expired:?}");

    // A URL with less than the margin left is never kept at all.
    let short = origin_with(&["--url-ttl", "180"]);
    let proxy = start(&short, "");
    let media = stored(&short, &service, b"hello", "text/plain").await;
    let (metadata, _) = paths(&service, &media);
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, &metadata, &[]).await.cache.as_deref(),
            Some("miss")
        );
    }
    assert_eq!(origin_gets(&short, &metadata).len(), 2);
}

#[tokio::test]
async fn no_store_from_the_upstream_is_obeyed() {
    let origin = origin_with(&["--cache-control", "no-store"]);
    let proxy = start(&origin, "");
    let service = new_service();
    let bytes = png_bytes(2000);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (metadata, content) = paths(&service, &media);
    for path in [&metadata, &content] {
        for _ in 0..2 {
            let read = get(&proxy, path, &[]).await;
            assert_eq!(read.status, StatusCode::OK);
            assert_eq!(read.cache.as_deref(), Some("miss"));
        }
        assert_eq!(origin_gets(&origin, path).len(), 2, "{path}");
    }
    proxy.wait_recorded(4);
    assert_eq!(
        proxy.metric("mediagate_cache_bytes", &[("kind", "content")]),
        Some(0.0)
    );
    assert_eq!(
        proxy.metric("mediagate_cache_bytes", &[("kind", "metadata")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_token_for_one_service_never_reads_another_services_cached_media() {
    let origin = Origin::start();
    let a = new_service();
    let b = new_service();
    let proxy = start(
        &origin,
        &format!(
            "access:\n  tokens:\n    - token: token-a\n      services: [{a}]\n    - token: token-b\n      services: [{b}]\n"
        ),
    );
    let media = stored(&origin, &b, &png_bytes(1000), "image/png").await;
    let (b_metadata, b_content) = paths(&b, &media);
    let bearer_a = [("authorization", "Bearer token-a")];
    let bearer_b = [("authorization", "Bearer token-b")];
    for path in [&b_metadata, &b_content] {
        assert_eq!(get(&proxy, path, &bearer_b).await.status, StatusCode::OK);
        assert_eq!(
            get(&proxy, path, &bearer_b).await.cache.as_deref(),
            Some("hit")
        );
        // A's token on B's path: refused before the cache.
        let refused = get(&proxy, path, &bearer_a).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.cache, None);
    }
    // A's path with B's media: a different key, so the origin is asked, and says 404.
    let (a_metadata, a_content) = paths(&a, &media);
    for path in [&a_metadata, &a_content] {
        let read = get(&proxy, path, &bearer_a).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(read.cache.as_deref(), Some("miss"));
    }
    assert_eq!(origin_gets(&origin, &a_metadata).len(), 1);
}

/// The proxy's resident memory, from /proc.
fn rss_bytes(proxy: &Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn three_times_the_memory_bound_of_content_stays_within_it() {
    const MIB: u64 = 1024 * 1024;
    let origin = Origin::start();
    let proxy = start(&origin, "cache:\n  memory: 8MiB\n  max_object: 1MiB\n");
    let service = new_service();
    let media = stored_pngs(&origin, &service, 24, 1000 * 1000).await;
    for (sid, bytes) in &media {
        let read = get(&proxy, &paths(&service, sid).1, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(sha256_hex(&read.body), sha256_hex(bytes));
    }
    proxy.wait_recorded(media.len());
    let held = || {
        proxy
            .metric("mediagate_cache_bytes", &[("kind", "content")])
            .unwrap()
    };
    // Evicted entries are dropped by a task pingora spawns right after each admission.
    assert!(
        wait_for(Duration::from_secs(5), || held() <= (8 * MIB) as f64),
        "the cache holds {} bytes",
        held()
    );
    assert!(
        held() >= (4 * MIB) as f64,
        "the cache keeps what fits: {}",
        held()
    );
    let evicted = proxy
        .metric("mediagate_cache_evictions_total", &[("kind", "content")])
        .unwrap();
    assert!(evicted >= 16.0, "{evicted} evictions");
    let rss = rss_bytes(&proxy);
    assert!(rss <= 8 * MIB + 64 * MIB, "RSS {} MiB", rss / MIB);
    // What is still held is served from memory.
    let contents: Vec<String> = media
        .iter()
        .map(|(sid, _)| paths(&service, sid).1)
        .collect();
    let hits = join_all(contents.iter().map(|path| get(&proxy, path, &[])))
        .await
        .iter()
        .filter(|read| read.cache.as_deref() == Some("hit"))
        .count();
    assert!(hits >= 1, "{hits} hits");
}

/// A content read that takes its answer's head and then stops reading, on a connection with a
/// small receive buffer: the proxy's fill for it stalls once the socket buffers are full (the
/// proxy's send buffer grows to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default, so a body
/// of 12 MiB stalls). Answers the connection and the body's length.
async fn stalled_read(proxy: &Proxy, path: &str) -> (tokio::net::TcpStream, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stream = socket.connect(proxy.listen).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: mediagate\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.expect("the answer's head");
        head.push(byte);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    (stream, length)
}

const MIB: usize = 1024 * 1024;

/// A proxy whose fills share `memory` (30 MiB in most tests: content fills may take all but a
/// sixteenth, 28.1 MiB) among media of up to 12 MiB, `cache` adding keys. Its cache lock's age
/// (connect + read timeout) is past every wait of the tests that use it: no reader there is
/// let through by the lock's age.
fn fill_bound_proxy(origin: &Origin, memory: &str, send_timeout: &str, cache: &str) -> Proxy {
    let mut config = ProxyConfig::to(&origin.url).with(&format!(
        "cache:\n  memory: {memory}\n  max_object: 12MiB\n{cache}"
    ));
    config.read_timeout = "60s";
    config.server_extra = format!("  send_timeout: {send_timeout}\n");
    Proxy::start(config)
}

/// The room fills in progress hold.
fn fill_bytes(proxy: &Proxy) -> f64 {
    proxy.metric("mediagate_cache_fill_bytes", &[]).unwrap()
}

fn content_fills_skipped(proxy: &Proxy) -> f64 {
    proxy
        .metric(
            "mediagate_cache_fills_skipped_total",
            &[("kind", "content")],
        )
        .unwrap()
}

#[tokio::test]
async fn fills_in_progress_stay_within_the_memory_bound_and_one_past_it_is_served_not_kept() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::start();
    // The stalled readers stay until the end, however slow the machine.
    let proxy = fill_bound_proxy(&origin, "30MiB", "0s", "");
    let service = new_service();
    let media: Vec<(String, Vec<u8>)> = stored_pngs(&origin, &service, 3, 12 * MIB)
        .await
        .into_iter()
        .map(|(sid, bytes)| (paths(&service, &sid).1, bytes))
        .collect();
    let filling = || fill_bytes(&proxy);
    let skipped = || content_fills_skipped(&proxy);

    // Two stalled first reads hold 24 MiB of fills (their Content-Length, taken up front); the
    // third would pass 30 MiB, so its answer is served but not kept.
    let mut readers = Vec::new();
    for (n, (path, _)) in media.iter().enumerate() {
        readers.push(stalled_read(&proxy, path).await);
        let expected = (12 * MIB * (n + 1).min(2)) as f64;
        assert!(
            wait_for(Duration::from_secs(10), || filling() == expected),
            "fills hold {} bytes after {} stalled reads",
            filling(),
            n + 1
        );
    }
    assert_eq!(skipped(), 1.0);

    // The third answer was not taken for the cache from its head on, so its key is not
    // locked by the stalled read: another read of it goes upstream at once.
    let (third, third_bytes) = &media[2];
    let again = tokio::time::timeout(Duration::from_secs(20), get(&proxy, third, &[]))
        .await
        .expect("a read of the third media waited on its stalled first read");
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(sha256_hex(&again.body), sha256_hex(third_bytes));
    assert_eq!(skipped(), 2.0);

    // Every reader still gets its whole answer.
    for ((mut stream, length), (_, bytes)) in readers.into_iter().zip(&media) {
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(bytes));
    }
    assert!(wait_for(Duration::from_secs(10), || filling() == 0.0));
    // In order: the third read fills, and its admission may evict one of the first two.
    let mut results = Vec::new();
    for (path, _) in &media {
        results.push(get(&proxy, path, &[]).await.cache);
    }
    assert_eq!(
        results,
        [Some("hit".into()), Some("hit".into()), Some("miss".into())],
        "the two fills with room were kept, the third was not"
    );
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_frees_its_fill_and_the_readers_behind_it() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::start();
    // Long enough for the reads below that do read (on a busy machine too), short next to
    // the cache lock's age: a reader behind the stalled one is let through by the cut-off.
    let proxy = fill_bound_proxy(&origin, "30MiB", "3s", "");
    let service = new_service();
    let (sid, bytes) = stored_pngs(&origin, &service, 1, 12 * MIB)
        .await
        .pop()
        .unwrap();
    let path = paths(&service, &sid).1;
    let cut_off = || {
        proxy
            .metric(
                "mediagate_clients_refused_total",
                &[("reason", "send_timeout")],
            )
            .unwrap()
    };
    assert_eq!(cut_off(), 0.0);

    let (mut stalled, length) = stalled_read(&proxy, &path).await;
    // Its fill took its room with the answer's head (unless it was cut off already).
    assert!(wait_for(Duration::from_secs(10), || {
        fill_bytes(&proxy) == (12 * MIB) as f64 || cut_off() == 1.0
    }));
    // A second reader waits on the stalled read's fill.
    let behind = tokio::time::timeout(Duration::from_secs(30), get(&proxy, &path, &[]))
        .await
        .expect("the reader behind the stalled one was held");
    assert_eq!(behind.status, StatusCode::OK);
    assert_eq!(sha256_hex(&behind.body), sha256_hex(&bytes));
    assert_eq!(cut_off(), 1.0, "the reader that took nothing was cut off");
    // The stalled reader's connection was reset before the end of its answer: what the proxy's
    // kernel still held for it was dropped, not sent on.
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut received))
        .await
        .expect("the stalled reader's connection was closed");
    assert!(
        matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    assert!(
        received.len() < length,
        "{} of {length} bytes",
        received.len()
    );
    // Its fill ended with it (pingora fills as it sends), so the reader behind it fetched and
    // filled in its place: the room is free again and the media cached.
    assert!(wait_for(Duration::from_secs(10), || fill_bytes(&proxy) == 0.0));
    let read = get(&proxy, &path, &[]).await;
    assert_eq!(read.cache.as_deref(), Some("hit"));
    assert_eq!(sha256_hex(&read.body), sha256_hex(&bytes));
    assert_eq!(origin_gets(&origin, &path).len(), 2);
}

#[tokio::test]
async fn a_stale_content_entry_is_renewed_by_a_304_even_when_no_fill_has_room() {
    let origin = Origin::start();
    let proxy = fill_bound_proxy(&origin, "30MiB", "0s", "  content_ttl: 1s\n");
    let service = new_service();
    let media = stored_pngs(&origin, &service, 3, 12 * MIB).await;
    let (sid, bytes) = &media[0];
    let path = paths(&service, sid).1;
    let fetched = |status: u64| media_host_fetches(&origin, sid, status);
    assert_eq!(get(&proxy, &path, &[]).await.cache.as_deref(), Some("miss"));
    assert_eq!(fetched(200), 1);

    // Two stalled first reads of the others hold 24 MiB of the 30 MiB fill room: a 12 MiB
    // answer has no room left.
    let _stalled = [
        stalled_read(&proxy, &paths(&service, &media[1].0).1).await,
        stalled_read(&proxy, &paths(&service, &media[2].0).1).await,
    ];
    assert!(wait_for(Duration::from_secs(10), || fill_bytes(&proxy)
        == (24 * MIB) as f64));

    // Once the entry is stale, a read revalidates it: the temporary URL is asked with the
    // entry's ETag and answers 304. Polled until then (reads before it are hits).
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetched(304) == 0 {
        assert!(Instant::now() < deadline, "the entry was never revalidated");
        let read = get(&proxy, &path, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        // Served from the cache, confirmed or not.
        assert_eq!(read.cache.as_deref(), Some("hit"));
        assert_eq!(sha256_hex(&read.body), sha256_hex(bytes));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Renewed without its bytes and without fill room: nothing skipped, and the media is still
    // served from the cache (a hit, or one more 304), its bytes never fetched again.
    assert_eq!(content_fills_skipped(&proxy), 0.0);
    let read = get(&proxy, &path, &[]).await;
    assert_eq!(read.cache.as_deref(), Some("hit"));
    assert_eq!(sha256_hex(&read.body), sha256_hex(bytes));
    assert_eq!(fetched(200), 1, "the bytes were fetched once");
}

#[tokio::test]
async fn an_object_over_max_object_is_served_whole_and_not_cached_and_then_bypasses_the_cache() {
    let origin = Origin::start();
    let proxy = start(&origin, "cache:\n  max_object: 64KiB\n");
    let service = new_service();
    let bytes = png_bytes(200 * 1024);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);
    let fetched = |status: u64| media_host_fetches(&origin, &media, status);
    // The first read finds out the size: fetched for the cache, not kept.
    for outcome in ["miss", "bypass"] {
        let read = get(&proxy, &content, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.cache.as_deref(), Some(outcome));
        assert_eq!(sha256_hex(&read.body), sha256_hex(&bytes));
    }
    assert_eq!(origin_gets(&origin, &content).len(), 2);
    // From then on a range read is the media host's to answer: only its range is fetched (each
    // one used to fetch the whole media, the client waiting for all before its range).
    let read = get(&proxy, &content, &[("range", "bytes=150000-150099")]).await;
    assert_eq!(read.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(read.cache.as_deref(), Some("bypass"));
    assert_eq!(read.body, &bytes[150_000..150_100]);
    assert_eq!((fetched(200), fetched(206)), (2, 1));
    proxy.wait_recorded(3);
    assert_eq!(
        proxy.metric("mediagate_cache_bytes", &[("kind", "content")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn purge_on_the_metrics_listener_drops_both_kinds() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let media = stored(&origin, &service, &png_bytes(1000), "image/png").await;
    let (metadata, content) = paths(&service, &media);
    for path in [&metadata, &content] {
        get(&proxy, path, &[]).await;
        assert_eq!(get(&proxy, path, &[]).await.cache.as_deref(), Some("hit"));
    }
    // Not on the client port: that is not the Media API.
    let client_port = client()
        .delete(proxy.url(&format!("/cache/{service}/{media}")))
        .send()
        .await
        .unwrap();
    assert_eq!(client_port.status(), StatusCode::NOT_FOUND);
    let purge_url = format!("http://{}/cache/{service}/{media}", proxy.metrics);
    let purged = client().delete(&purge_url).send().await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    let answer: Value = purged.json().await.unwrap();
    assert_eq!(answer["entries"], 2);
    for path in [&metadata, &content] {
        assert_eq!(get(&proxy, path, &[]).await.cache.as_deref(), Some("miss"));
        assert_eq!(origin_gets(&origin, path).len(), 2);
    }
    let wrong_method = client().get(&purge_url).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bad = client()
        .delete(format!("http://{}/cache/nope/{media}", proxy.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_failed_fill_releases_the_readers_waiting_on_it() {
    let mut origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let media = stored(&origin, &service, &png_bytes(1000), "image/png").await;
    let (metadata, content) = paths(&service, &media);
    origin.stop();
    for path in [&metadata, &content] {
        let reads = tokio::time::timeout(
            Duration::from_secs(30),
            join_all((0..20).map(|_| get(&proxy, path, &[]))),
        )
        .await
        .expect("every waiting reader is answered");
        for read in reads {
            assert_eq!(read.status, StatusCode::BAD_GATEWAY, "{path}");
        }
    }
    origin.restart();
    for path in [&metadata, &content] {
        let read = get(&proxy, path, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.cache.as_deref(), Some("miss"));
    }
}

#[tokio::test]
async fn with_redirects_not_followed_the_redirect_passes_through_uncached() {
    let origin = Origin::start();
    let proxy = start(&origin, "cache:\n  follow_content_redirects: false\n");
    let service = new_service();
    let media = stored(&origin, &service, &png_bytes(1000), "image/png").await;
    let (_, content) = paths(&service, &media);
    for _ in 0..2 {
        let read = get(&proxy, &content, &[]).await;
        assert_eq!(read.status, StatusCode::FOUND);
        assert_eq!(read.cache.as_deref(), Some("bypass"));
        assert!(read.headers["location"]
            .to_str()
            .unwrap()
            .contains("Signature="));
    }
    assert_eq!(origin_gets(&origin, &content).len(), 2);
    proxy.wait_recorded(2);
    assert_eq!(cache_count(&proxy, "content", "bypass"), 2.0);
}

#[tokio::test]
async fn not_found_is_kept_for_the_negative_ttl_only_when_set() {
    let origin = Origin::start();
    let service = new_service();
    let missing = "ME0123456789abcdef0123456789abcdef";
    let (metadata, _) = paths(&service, missing);
    let proxy = start(&origin, "");
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, &metadata, &[]).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(origin_gets(&origin, &metadata).len(), 2);
    drop(proxy);
    let proxy = start(&origin, "cache:\n  negative_ttl: 5s\n");
    for _ in 0..2 {
        assert_eq!(
            get(&proxy, &metadata, &[]).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(origin_gets(&origin, &metadata).len(), 3);
}

#[tokio::test]
async fn the_response_header_can_be_turned_off() {
    let origin = Origin::start();
    let proxy = start(&origin, "cache:\n  response_header: false\n");
    let service = new_service();
    let media = stored(&origin, &service, b"hi", "text/plain").await;
    let path = paths(&service, &media).0;
    // The second read is a hit, answered before pingora-cache (`proxy::fresh_hit`).
    for _ in 0..2 {
        let read = get(&proxy, &path, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.cache, None);
    }
    proxy.wait_recorded(2);
    assert_eq!(cache_count(&proxy, "metadata", "hit"), 1.0);
    let early = proxy.metric("mediagate_cache_early_hits_total", &[("kind", "metadata")]);
    assert_eq!(early, Some(1.0));
}

#[tokio::test]
async fn head_is_answered_from_the_cache_and_never_abandons_a_fill() {
    let origin = Origin::start();
    let proxy = start(&origin, "");
    let service = new_service();
    let bytes = png_bytes(200_000);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (metadata, content) = paths(&service, &media);
    for path in [&metadata, &content] {
        let head = |proxy: &Proxy| client().head(proxy.url(path)).send();
        let first = head(&proxy).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK, "{path}");
        let started = Instant::now();
        let read = get(&proxy, path, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        // Answered at once, not after a lock timeout.
        assert!(started.elapsed() < Duration::from_secs(3), "{path}");
        let cached = head(&proxy).await.unwrap();
        assert_eq!(cached.status(), StatusCode::OK);
        assert_eq!(cached.headers()["mediagate-cache"], "hit");
        assert_eq!(
            cached.headers()["content-length"],
            read.body.len().to_string().as_str()
        );
    }

    // A HEAD among concurrent GETs of a new media: the GETs still make one fill between them.
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);
    let head = client().head(proxy.url(&content)).send();
    let gets = join_all((0..10).map(|_| get(&proxy, &content, &[])));
    let (head, gets) = tokio::join!(head, gets);
    assert_eq!(head.unwrap().status(), StatusCode::OK);
    for read in gets {
        assert_eq!(sha256_hex(&read.body), sha256_hex(&bytes));
    }
    let signed_gets = origin_gets(&origin, &format!("/{media}"));
    assert_eq!(signed_gets.len(), 1, "{signed_gets:?}");
}

#[tokio::test]
async fn a_head_on_an_expired_entry_goes_upstream_as_a_head_and_a_get_renews_the_entry() {
    let origin = Origin::start();
    // Two seconds: the reads right after a fill must find it fresh on a busy machine too.
    let proxy = start(&origin, "cache:\n  metadata_ttl: 2s\n");
    let service = new_service();
    let media = stored(&origin, &service, b"hello", "text/plain").await;
    let (metadata, _) = paths(&service, &media);
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("hit")
    );
    // Past the TTL (kept in whole seconds): the entry is expired, still held.
    tokio::time::sleep(Duration::from_millis(3100)).await;

    // The HEAD holds the key's lock as the one to renew it, but a HEAD would end before a
    // body reached the cache: it goes upstream as a HEAD and leaves the renewal to a GET.
    let head = client().head(proxy.url(&metadata)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let heads = origin
        .journal()
        .into_iter()
        .filter(|e| e["method"] == "HEAD" && e["path"] == metadata.as_str())
        .count();
    assert_eq!(heads, 1);
    assert_eq!(origin_gets(&origin, &metadata).len(), 1);

    let renewed = get(&proxy, &metadata, &[]).await;
    assert_eq!(renewed.status, StatusCode::OK);
    assert_eq!(origin_gets(&origin, &metadata).len(), 2);
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("hit")
    );
}

#[tokio::test]
async fn content_fills_held_by_slow_readers_leave_room_for_metadata() {
    let origin = Origin::start();
    // Two 12 MiB fills would take all of 24 MiB; content fills may take 22.5 MiB of it.
    let proxy = fill_bound_proxy(&origin, "24MiB", "0s", "");
    let service = new_service();
    let media = stored_pngs(&origin, &service, 2, 12 * MIB).await;
    let mut readers = Vec::new();
    for (sid, _) in &media {
        readers.push(stalled_read(&proxy, &paths(&service, sid).1).await);
    }
    assert!(
        wait_for(Duration::from_secs(10), || fill_bytes(&proxy)
            == (12 * MIB) as f64),
        "fills hold {} bytes",
        fill_bytes(&proxy)
    );
    assert_eq!(content_fills_skipped(&proxy), 1.0);

    // While the stalled reads hold their fill, metadata is still cached.
    let (metadata, _) = paths(&service, &media[0].0);
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        get(&proxy, &metadata, &[]).await.cache.as_deref(),
        Some("hit")
    );
    drop(readers);
}

#[tokio::test]
async fn an_answer_whose_body_ends_with_the_connection_is_not_kept() {
    // Without Content-Length or chunking, a connection cut short could not be told from the
    // body's end: such an answer is served, never kept.
    let upstream = ScriptedUpstream::start(vec![Script::Unframed, Script::Unframed]);
    let proxy = Proxy::start(ProxyConfig::to(&upstream.url));
    let path = format!("/v1/Services/{}/Media/{SCRIPTED_MEDIA_SID}", new_service());
    for n in 1..=2 {
        let read = get(&proxy, &path, &[]).await;
        assert_eq!(read.status, StatusCode::OK, "read {n}");
        assert_eq!(read.cache.as_deref(), Some("miss"), "read {n}");
        let json: Value = serde_json::from_slice(&read.body).unwrap();
        assert_eq!(json["sid"], SCRIPTED_MEDIA_SID);
    }
    assert_eq!(upstream.uploads(), 2, "both reads went upstream");
}

#[tokio::test]
async fn with_the_cache_off_content_redirects_are_still_followed() {
    // `cache.memory: 0` turns caching off, not `follow_content_redirects`: a client that can
    // reach the media host only through the sidecar still gets the bytes.
    let origin = Origin::start();
    let proxy = start(&origin, "cache:\n  memory: 0\n");
    let service = new_service();
    let bytes = png_bytes(3000);
    let media = stored(&origin, &service, &bytes, "image/png").await;
    let (_, content) = paths(&service, &media);
    for _ in 0..2 {
        let read = get(&proxy, &content, &[]).await;
        assert_eq!(read.status, StatusCode::OK);
        assert!(!read.headers.contains_key("location"));
        assert_eq!(read.body, bytes);
        assert_eq!(read.cache.as_deref(), Some("bypass"));
    }
    // Each read asked the API for the redirect: nothing was kept.
    assert_eq!(origin_gets(&origin, &content).len(), 2);
    // The client's range and validators reach the media host, which answers them.
    let part = get(&proxy, &content, &[("Range", "bytes=10-109")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.body, &bytes[10..110]);
    let etag = part.headers["etag"].to_str().unwrap().to_string();
    let unchanged = get(&proxy, &content, &[("If-None-Match", &etag)]).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
}
