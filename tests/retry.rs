//! Uploads that survive an upstream fault (`uploads.retry`): the origin is killed in the middle of
//! an upload, with retrying off and on.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

/// A proxy allowing one upload a minute, with `retry` as its `uploads.retry` block.
fn config(origin: &Origin, spool: &std::path::Path, attempts: u32) -> ProxyConfig {
    ProxyConfig::to(&origin.url).with(&format!(
        "quotas:\n  uploads_per_minute: 1\nuploads:\n  retry:\n    attempts: {attempts}\n    backoff: 1s\n    spool_dir: {}\n    spool_max: 64MiB\n",
        spool.display()
    ))
}

const SIZE: usize = 2 * 1024 * 1024;
const FIRST: usize = 256 * 1024;

/// Starts an upload of `body`, sends its first part, and waits until the origin is receiving it.
fn upload_started(
    proxy: &Proxy,
    origin: &Origin,
    service: &str,
    body: &[u8],
) -> std::net::TcpStream {
    let length = body.len().to_string();
    let stream = open_upload(
        proxy.listen,
        &format!("/v1/Services/{service}/Media"),
        &[("Content-Type", "image/png"), ("Content-Length", &length)],
        &body[..FIRST],
    );
    assert!(
        wait_for(Duration::from_secs(10), || !origin
            .requests_for(service)
            .is_empty()),
        "the upload never reached the origin"
    );
    stream
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn without_retry_a_killed_origin_means_502_nothing_stored_and_the_quota_refunded() {
    let mut origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&origin, spool.path(), 0));
    let service = new_service();
    let body = png_bytes(SIZE);
    let mut stream = upload_started(&proxy, &origin, &service, &body);
    origin.stop();
    // The rest may no longer be wanted: the proxy may answer before it is sent.
    let _ = stream.write_all(&body[FIRST..]);
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 502, "{answer:?}");
    origin.restart();
    assert!(origin.files_in("content").is_empty(), "nothing stored");
    // The failed upload did not use the one upload a minute.
    let (status, _) = mediagate::process::http_request(
        proxy.listen,
        "POST",
        &format!("/v1/Services/{service}/Media"),
        &[("Content-Type", "image/png")],
        &png_bytes(1000),
    )
    .unwrap();
    assert_eq!(status, 201);
}

#[test]
fn with_retry_the_client_gets_one_201_and_the_origin_one_media() {
    let mut origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    // A crash's leftover is swept at start.
    std::fs::write(spool.path().join("upload-4294967294-7.spool"), b"left over").unwrap();
    let proxy = Proxy::start(config(&origin, spool.path(), 3));
    assert_eq!(spool_files(spool.path()), 0);
    let service = new_service();
    let body = png_bytes(SIZE);
    let mut stream = upload_started(&proxy, &origin, &service, &body);
    assert_eq!(spool_files(spool.path()), 1, "the upload is spooled");
    origin.crash_and_restart();
    stream.write_all(&body[FIRST..]).unwrap();
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 201, "{answer:?}\n{}", proxy.log());
    let media: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(origin.stored_uploads(&service), 1);
    assert_eq!(media["size"], SIZE);
    let stored = origin.files_in("content");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        sha256_hex(&std::fs::read(&stored[0]).unwrap()),
        sha256_hex(&body)
    );
    proxy.wait_recorded(1);
    assert!(proxy.metric("mediagate_upload_replays_total", &[]).unwrap() >= 1.0);
    assert!(
        wait_for(Duration::from_secs(5), || spool_files(spool.path()) == 0),
        "the spool file is removed"
    );
}

#[test]
fn an_upload_whose_upstream_refused_the_connection_is_replayed_whole() {
    let mut origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let mut config = config(&origin, spool.path(), 3);
    config.log_level = "info";
    let proxy = Proxy::start(config);
    let service = new_service();
    // Small enough to be one chunk: the first chunk is read for inspection before any
    // connection, and must not be lost when the connection is refused.
    let body = png_bytes(5000);
    origin.stop();
    let listen = proxy.listen;
    let path = format!("/v1/Services/{service}/Media");
    let sent = body.clone();
    let upload = std::thread::spawn(move || {
        mediagate::process::http_request(
            listen,
            "POST",
            &path,
            &[("Content-Type", "image/png")],
            &sent,
        )
        .expect("upload")
    });
    assert!(
        wait_for(Duration::from_secs(10), || proxy
            .log()
            .contains("replaying it in")),
        "{}",
        proxy.log()
    );
    origin.restart();
    let (status, answer) = upload.join().unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let stored = origin.files_in("content");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        sha256_hex(&std::fs::read(&stored[0]).unwrap()),
        sha256_hex(&body)
    );
}

#[test]
fn past_spool_max_an_upload_streams_unspooled() {
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url).with(&format!(
        "uploads:\n  retry:\n    attempts: 2\n    spool_dir: {}\n    spool_max: 1MiB\n",
        spool.path().display()
    )));
    let (status, _) = mediagate::process::http_request(
        proxy.listen,
        "POST",
        &format!("/v1/Services/{}/Media", new_service()),
        &[("Content-Type", "image/png")],
        &png_bytes(SIZE),
    )
    .unwrap();
    assert_eq!(status, 201);
    proxy.wait_recorded(1);
    assert_eq!(
        proxy.metric("mediagate_uploads_unspooled_total", &[]),
        Some(1.0)
    );
    assert_eq!(spool_files(spool.path()), 0);
}

/// A proxy retrying `attempts` times, 100 ms apart, in front of a scripted upstream whose reads
/// time out after 1 s.
fn proxy_before(upstream: &ScriptedUpstream, spool: &std::path::Path, attempts: u32) -> Proxy {
    let mut config = ProxyConfig::to(&upstream.url).with(&format!(
        "uploads:\n  retry:\n    attempts: {attempts}\n    backoff: 100ms\n    spool_dir: {}\n",
        spool.display()
    ));
    config.read_timeout = "1s";
    Proxy::start(config)
}

fn upload_to(proxy: &Proxy) -> (u16, serde_json::Value) {
    let (status, body) = mediagate::process::http_request(
        proxy.listen,
        "POST",
        &format!("/v1/Services/{}/Media", new_service()),
        &[("Content-Type", "image/png")],
        &png_bytes(5000),
    )
    .expect("an answer");
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[test]
fn a_replay_the_upstream_never_answers_times_out_with_504() {
    // The first try is answered 503; the replay's connection is accepted and never read.
    let upstream = ScriptedUpstream::start(vec![Script::Answer(503), Script::Silent]);
    let spool = tempfile::tempdir().unwrap();
    let proxy = proxy_before(&upstream, spool.path(), 1);
    let (status, error) = upload_to(&proxy);
    assert_eq!(status, 504, "{error}\n{}", proxy.log());
    assert_eq!(error["code"], 91504);
    assert_eq!(upstream.uploads(), 1);
    proxy.wait_recorded(1);
    assert_eq!(
        proxy.metric("mediagate_upstream_errors_total", &[("kind", "timeout")]),
        Some(1.0)
    );
}

#[test]
fn replays_whose_answer_breaks_off_end_with_the_upstreams_failure() {
    // (the replay's answer, attempts, the client's status): the first try is answered 503 each
    // time. A replay's 201 that stops mid-body may have been stored: a third try could store it
    // twice, so there is none (502). A last replay that breaks off after a 503 head: the
    // client hears of the upstream's failure (91502) with its status, not of an internal error.
    for (replay, attempts, expected) in [(Script::Cut(201), 3, 502), (Script::Cut(503), 1, 503)] {
        let upstream = ScriptedUpstream::start(vec![Script::Answer(503), replay]);
        let spool = tempfile::tempdir().unwrap();
        let proxy = proxy_before(&upstream, spool.path(), attempts);
        let (status, error) = upload_to(&proxy);
        assert_eq!(status, expected, "{error}\n{}", proxy.log());
        assert_eq!(error["code"], 91502);
        assert_eq!(upstream.uploads(), 2, "one replay, then no more");
    }
}

#[test]
fn a_replay_sends_the_head_the_first_try_sent() {
    let upstream = ScriptedUpstream::start(vec![Script::Answer(503)]);
    let spool = tempfile::tempdir().unwrap();
    let proxy = proxy_before(&upstream, spool.path(), 1);
    let service = new_service();
    let body = png_bytes(5000);
    // An absolute-form target naming another host, hop-by-hop headers and one the client's
    // `Connection` names: none of them is for the upstream.
    let mut stream = std::net::TcpStream::connect(proxy.listen).unwrap();
    write!(
        stream,
        "POST http://elsewhere.example/v1/Services/{service}/Media HTTP/1.1\r\nHost: elsewhere.example\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 201, "{answer:?}\n{}", proxy.log());
    let heads = upstream.heads();
    assert_eq!(heads.len(), 2);
    for (which, head) in ["first try", "replay"].iter().zip(&heads) {
        let lower = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("POST /v1/Services/{service}/Media HTTP/1.1\r\n")),
            "{which}: {head}"
        );
        for gone in [
            "\r\nx-hop:",
            "\r\nkeep-alive:",
            "\r\nte:",
            "elsewhere.example",
        ] {
            assert!(!lower.contains(gone), "{which} has {gone:?}: {head}");
        }
        assert!(
            lower.contains("\r\nauthorization: basic "),
            "{which}: {head}"
        );
    }
}
