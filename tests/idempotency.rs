//! `Idempotency-Key`: repeats of an upload get the first upload's answer, never a second Media;
//! with one sidecar (memory) and with a fleet sharing a real redis-server.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use support::*;

struct Answer {
    status: StatusCode,
    replayed: bool,
    reason: Option<String>,
    json: Value,
}

async fn upload(proxy: &Proxy, service: &str, key: Option<&str>, body: &[u8]) -> Answer {
    let mut request = client()
        .post(proxy.url(&format!("/v1/Services/{service}/Media")))
        .header("Content-Type", "image/png")
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("upload");
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let reason = header("mediagate-reject");
    let json = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        reason,
        json,
    }
}

/// Sends the head and the first 1,000 bytes of an upload of `body` under `key`, and returns the
/// connection once the origin has the upload's head: the upload is running. `body` must be over
/// 64 KiB, so that it streams rather than being read whole first.
fn start_upload(
    proxy: &Proxy,
    origin: &Origin,
    service: &str,
    key: &str,
    body: &[u8],
) -> std::net::TcpStream {
    let stream = send_upload(proxy, service, key, body, 1000);
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(service)
        .is_empty()));
    stream
}

/// Sends the head of an upload of `body` under `key` and its first `sent` bytes on a raw
/// connection, and returns the connection.
fn send_upload(
    proxy: &Proxy,
    service: &str,
    key: &str,
    body: &[u8],
    sent: usize,
) -> std::net::TcpStream {
    open_upload(
        proxy.listen,
        &format!("/v1/Services/{service}/Media"),
        &[
            ("Content-Type", "image/png"),
            ("Content-Length", &body.len().to_string()),
            ("Idempotency-Key", key),
        ],
        &body[..sent],
    )
}

#[tokio::test]
async fn five_concurrent_repeats_make_one_media_and_share_its_answer() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let body = png_bytes(300_000);
    let answers = join_all((0..5).map(|_| upload(&proxy, &service, Some("retry-1"), &body))).await;
    let sid = answers[0].json["sid"].clone();
    assert!(sid.is_string(), "{}", answers[0].json);
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.json["sid"], sid);
    }
    assert_eq!(answers.iter().filter(|a| a.replayed).count(), 4);
    assert_eq!(origin.stored_uploads(&service), 1);

    // Later, sequentially: the same answer again.
    let again = upload(&proxy, &service, Some("retry-1"), &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(again.json["sid"], sid);
    assert_eq!(origin.stored_uploads(&service), 1);
    proxy.wait_recorded(6);
    assert_eq!(
        proxy.metric("mediagate_idempotent_replays_total", &[]),
        Some(5.0)
    );
}

#[tokio::test]
async fn a_different_body_under_the_same_key_is_refused() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let first = upload(&proxy, &service, Some("k"), &png_bytes(1000)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let other = upload(&proxy, &service, Some("k"), &png_bytes(1001)).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.reason.as_deref(), Some("idempotency_conflict"));
    assert_eq!(other.json["code"], 91424);
    assert_eq!(origin.stored_uploads(&service), 1);

    // Keys are per service, and uploads without a key are never matched.
    let elsewhere = new_service();
    let there = upload(&proxy, &elsewhere, Some("k"), &png_bytes(1001)).await;
    assert_eq!(there.status, StatusCode::CREATED);
    assert!(!there.replayed);
    for _ in 0..2 {
        let plain = upload(&proxy, &service, None, &png_bytes(1000)).await;
        assert_eq!(plain.status, StatusCode::CREATED);
        assert!(!plain.replayed);
    }
    assert_eq!(origin.stored_uploads(&service), 3);

    let bad = upload(&proxy, &service, Some("tab\tkey"), &png_bytes(10)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_failed_upload_frees_its_key_for_the_retry() {
    let mut origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let body = png_bytes(5000);
    origin.stop();
    let failed = upload(&proxy, &service, Some("after-outage"), &body).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    origin.restart();
    let retried = upload(&proxy, &service, Some("after-outage"), &body).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.replayed);
    let repeat = upload(&proxy, &service, Some("after-outage"), &body).await;
    assert!(repeat.replayed);
    assert_eq!(repeat.json["sid"], retried.json["sid"]);
    assert_eq!(origin.stored_uploads(&service), 1);
}

#[tokio::test]
async fn a_fleet_sharing_redis_makes_one_media_per_key() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let config =
        || ProxyConfig::to(&origin.url).with(&format!("quotas:\n  backend: {}\n", redis.url()));
    let (a, b) = (Proxy::start(config()), Proxy::start(config()));
    let service = new_service();
    let body = png_bytes(200_000);
    let sends = (0..6).map(|i| {
        let proxy = if i % 2 == 0 { &a } else { &b };
        upload(proxy, &service, Some("fleet-key"), &body)
    });
    let answers = join_all(sends).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.json);
        assert_eq!(answer.json["sid"], answers[0].json["sid"]);
    }
    assert_eq!(answers.iter().filter(|a| a.replayed).count(), 5);
    assert_eq!(origin.stored_uploads(&service), 1);
    let conflict = upload(&b, &service, Some("fleet-key"), &png_bytes(10)).await;
    assert_eq!(conflict.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// In Redis a running upload's key is a lease (`quotas.slot_lease`), renewed while the upload
/// runs: an upload that outlasts several leases keeps its key, and a repeat sent meanwhile gets
/// its answer rather than making a second Media.
#[tokio::test]
async fn an_upload_longer_than_the_lease_keeps_its_key() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url).with(&format!(
        "quotas:\n  backend: {}\n  slot_lease: 1s\n",
        redis.url()
    )));
    let service = new_service();
    let body = png_bytes(200_000);
    let mut first = start_upload(&proxy, &origin, &service, "long-upload", &body);
    // Three leases pass with the upload still running.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A repeat sent now finds the key held: it waits, and nothing of it goes upstream.
    let mut repeat = send_upload(&proxy, &service, "long-upload", &body, body.len());
    let waiting = || proxy.metric("mediagate_idempotent_waiting", &[]);
    assert!(
        wait_for(Duration::from_secs(10), || waiting() == Some(1.0)),
        "the repeat does not wait: {:?}",
        waiting()
    );
    assert_eq!(origin.requests_for(&service).len(), 1);

    std::io::Write::write_all(&mut first, &body[1000..]).unwrap();
    let (status, answer) = read_answer(&mut first);
    assert_eq!(status, 201, "{answer}");
    let repeat = read_response(&mut repeat);
    assert_eq!(repeat.status, 201, "{}", repeat.body);
    assert_eq!(
        repeat.header("idempotent-replayed"),
        Some("true"),
        "the repeat ran as a new upload"
    );
    let first: Value = serde_json::from_str(&answer).expect("Media JSON");
    let repeat: Value = serde_json::from_str(&repeat.body).expect("Media JSON");
    assert_eq!(repeat["sid"], first["sid"]);
    assert_eq!(origin.stored_uploads(&service), 1);
    assert_eq!(waiting(), Some(0.0));
}

/// A sidecar killed in the middle of an upload frees its key one lease later: the client's
/// retry through another sidecar waits that long, then runs as a new upload (the first never
/// completed).
#[tokio::test]
async fn a_killed_sidecars_key_frees_one_lease_later() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let config = || {
        ProxyConfig::to(&origin.url).with(&format!(
            "quotas:\n  backend: {}\n  slot_lease: 1s\n",
            redis.url()
        ))
    };
    let mut doomed = Proxy::start(config());
    let survivor = Proxy::start(config());
    let service = new_service();
    let body = png_bytes(200_000);
    let _first = start_upload(&doomed, &origin, &service, "orphaned", &body);

    // kill -9: nobody abandons the claim; only its lease ends it.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let retry = upload(&survivor, &service, Some("orphaned"), &body);
    let retry = tokio::time::timeout(Duration::from_secs(20), retry)
        .await
        .expect("the dead sidecar's key was never freed");
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.json);
    assert!(!retry.replayed);
    assert_eq!(origin.stored_uploads(&service), 1);
}

#[tokio::test]
async fn an_answer_cut_off_mid_body_is_not_kept_for_the_retry() {
    let upstream = ScriptedUpstream::start(vec![Script::Cut(201)]);
    let proxy = Proxy::start(ProxyConfig::to(&upstream.url));
    let service = new_service();
    let body = png_bytes(5000);
    let cut = upload(&proxy, &service, Some("cut-answer"), &body).await;
    assert_eq!(cut.json, Value::Null, "the client got a whole answer");

    // The retry is not given the cut answer as the first's: it goes upstream again.
    let retried = upload(&proxy, &service, Some("cut-answer"), &body).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(!retried.replayed);
    assert_eq!(retried.json["sid"], SCRIPTED_MEDIA_SID);
    assert_eq!(upstream.uploads(), 2);
}

/// Closes `stream` with a reset (SO_LINGER 0), as a client that aborts does.
fn reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
}

#[tokio::test]
async fn an_answer_without_a_body_is_kept_for_the_retry() {
    let upstream = ScriptedUpstream::start(vec![Script::Empty]);
    let proxy = Proxy::start(ProxyConfig::to(&upstream.url));
    let service = new_service();
    let body = png_bytes(5000);
    let first = upload(&proxy, &service, Some("empty-answer"), &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retried = upload(&proxy, &service, Some("empty-answer"), &body).await;
    assert_eq!(retried.status, StatusCode::CREATED);
    assert!(retried.replayed, "the retry went upstream again");
    assert_eq!(upstream.uploads(), 1);
}

#[tokio::test]
async fn a_client_that_leaves_after_its_whole_body_gets_the_answer_on_its_retry() {
    let service = new_service();
    let body = png_bytes(200_000);
    for (key, abort) in [("left-closed", false), ("left-reset", true)] {
        let (answer, held) = std::sync::mpsc::channel();
        let upstream = ScriptedUpstream::start(vec![Script::HeldUntil(held)]);
        let proxy = Proxy::start(ProxyConfig::to(&upstream.url));
        let stream = send_upload(&proxy, &service, key, &body, body.len());
        // The whole body has gone through the proxy: the client leaves, then the answer comes.
        upstream
            .received
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        if abort {
            reset(stream);
        } else {
            drop(stream);
        }
        // Time for the proxy to see it go before the answer comes (the order under test).
        tokio::time::sleep(Duration::from_millis(300)).await;
        answer.send(()).unwrap();

        let retried = upload(&proxy, &service, Some(key), &body).await;
        assert_eq!(retried.status, StatusCode::CREATED, "{key}");
        assert!(retried.replayed, "{key}: the retry went upstream again");
        assert_eq!(retried.json["sid"], SCRIPTED_MEDIA_SID, "{key}");
        assert_eq!(upstream.uploads(), 1, "{key}");
    }
}
