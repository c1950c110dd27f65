//! Per-service quotas through real proxies: the memory backend alone, and the Redis backend
//! shared by several proxies with a real redis-server.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use support::*;

const SERVICE: &str = "IS55555555555555555555555555555555";

fn quota_config(origin: &Origin, quotas: &str) -> ProxyConfig {
    ProxyConfig::to(&origin.url).with(&format!("quotas:\n{quotas}services:\n  {SERVICE}: {{}}\n"))
}

async fn upload(proxy: &Proxy, bytes: usize) -> reqwest::Response {
    client()
        .post(proxy.url(&format!("/v1/Services/{SERVICE}/Media")))
        .header("Content-Type", "text/plain")
        .body(vec![b'q'; bytes])
        .send()
        .await
        .expect("upload")
}

/// Sends `count` uploads at once, spread over `proxies`; answers (status, reason, Retry-After).
async fn burst(proxies: &[&Proxy], count: usize, bytes: usize) -> Vec<(u16, String, Option<u64>)> {
    let requests = (0..count).map(|i| upload(proxies[i % proxies.len()], bytes));
    let mut answers = Vec::new();
    for response in join_all(requests).await {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let reason = header("mediagate-reject").unwrap_or_default();
        let retry_after = header("retry-after").and_then(|v| v.parse().ok());
        answers.push((response.status().as_u16(), reason, retry_after));
    }
    answers
}

fn count(answers: &[(u16, String, Option<u64>)], status: u16) -> usize {
    answers.iter().filter(|(s, _, _)| *s == status).count()
}

#[tokio::test]
async fn memory_uploads_per_minute_admits_exactly_the_limit() {
    let origin = Origin::start();
    let proxy = Proxy::start(quota_config(&origin, "  uploads_per_minute: 50\n"));
    let answers = burst(&[&proxy], 200, 100).await;
    assert_eq!(count(&answers, 201), 50, "{answers:?}");
    assert_eq!(count(&answers, 429), 150);
    for (status, reason, retry_after) in &answers {
        if *status == 429 {
            assert_eq!(reason, "quota_uploads");
            assert!(
                retry_after.is_some_and(|s| (1..=65).contains(&s)),
                "{retry_after:?}"
            );
        }
    }
    let stored = origin
        .requests_for(SERVICE)
        .iter()
        .filter(|e| e["status"] == 201)
        .count();
    assert_eq!(stored, 50);
    proxy.wait_recorded(200);
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "quota_uploads"), ("service", SERVICE)]
        ),
        Some(150.0)
    );
}

#[tokio::test]
async fn memory_bytes_per_hour_never_admits_more_than_the_limit() {
    let origin = Origin::start();
    let limit = 100 * 1024;
    let proxy = Proxy::start(quota_config(
        &origin,
        &format!("  bytes_per_hour: {limit}\n"),
    ));
    let sizes: Vec<usize> = (0..40).map(|i| 1000 + (i * 7919) % 12000).collect();
    let requests = sizes.iter().map(|&size| upload(&proxy, size));
    let mut admitted = 0;
    let mut refused = 0;
    for (response, size) in join_all(requests).await.into_iter().zip(&sizes) {
        match response.status() {
            StatusCode::CREATED => admitted += size,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(response.headers()["mediagate-reject"], "quota_bytes");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        admitted <= limit,
        "{admitted} bytes admitted over a limit of {limit}"
    );
    assert!(
        refused > 0 && admitted > limit / 2,
        "admitted {admitted}, refused {refused}"
    );
}

#[tokio::test]
async fn memory_concurrency_is_held_and_a_vanished_client_gives_its_slot_back() {
    let origin = Origin::start();
    let proxy = Proxy::start(quota_config(&origin, "  concurrent_uploads: 2\n"));
    let path = format!("/v1/Services/{SERVICE}/Media");
    let slow = |first: &[u8]| {
        open_upload(
            proxy.listen,
            &path,
            &[("Content-Type", "text/plain"), ("Content-Length", "100000")],
            first,
        )
    };
    let first = slow(b"slow one ");
    let _second = slow(b"slow two ");
    // Both hold their slot once the origin has their heads.
    assert!(wait_for(Duration::from_secs(10), || origin
        .requests_for(SERVICE)
        .len()
        == 2));

    let refused = upload(&proxy, 10).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["mediagate-reject"], "quota_concurrency");
    assert!(refused.headers().contains_key("retry-after"));

    // The first client disconnects mid-upload: its slot comes back.
    drop(first);
    let mut last = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..200 {
        last = upload(&proxy, 10).await.status();
        if last != StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last, StatusCode::CREATED);
}

/// An upload refused while its client still has most of its body to send (the proxy reads past
/// it for a while, so that the client gets its answer), then a corrected retry at once, on a
/// service with one concurrency slot: the retry finds the slot free, the refused upload still
/// open. Several rounds, since with Redis the slot is freed by a call of its own.
async fn retry_right_after_a_refusal_finds_the_slot_free(proxy: &Proxy) {
    let refusal = || {
        let mut refused = open_upload(
            proxy.listen,
            &format!("/v1/Services/{SERVICE}/Media"),
            &[("Content-Type", "image/png"), ("Content-Length", "100000")],
            &[b't'; 10_000],
        );
        let answer = read_answer(&mut refused);
        (refused, answer)
    };
    for _ in 0..5 {
        // The last round's upload gives its slot back once its settling has run (after its
        // answer, with Redis): until then this one is refused for the slot instead.
        let (mut refused, (mut status, mut body)) = refusal();
        for _ in 0..100 {
            if status != 429 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            (refused, (status, body)) = refusal();
        }
        assert_eq!(status, 415, "{body}");
        let retry = upload(proxy, 10).await;
        assert_eq!(retry.status(), StatusCode::CREATED, "{:?}", retry.headers());
        drop(refused);
    }
}

#[tokio::test]
async fn a_refused_upload_gives_its_slot_back_as_it_is_answered() {
    let origin = Origin::start();
    let proxy = Proxy::start(quota_config(&origin, "  concurrent_uploads: 1\n"));
    retry_right_after_a_refusal_finds_the_slot_free(&proxy).await;
}

#[tokio::test]
async fn redis_a_refused_upload_gives_its_slot_back_as_it_is_answered() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let proxy = Proxy::start(redis_config(&origin, &redis, "  concurrent_uploads: 1\n"));
    retry_right_after_a_refusal_finds_the_slot_free(&proxy).await;
}

#[tokio::test]
async fn retry_after_lets_the_next_upload_through_when_honoured() {
    let origin = Origin::start();
    let proxy = Proxy::start(quota_config(&origin, "  uploads_per_minute: 1\n"));
    assert_eq!(upload(&proxy, 10).await.status(), StatusCode::CREATED);
    let refused = upload(&proxy, 10).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=65).contains(&wait), "Retry-After {wait}");
    // Honouring it is the point of this test: it waits the full minute it was told.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(upload(&proxy, 10).await.status(), StatusCode::CREATED);
}

fn redis_config(origin: &Origin, redis: &RedisServer, quotas: &str) -> ProxyConfig {
    quota_config(origin, &format!("  backend: {}\n{quotas}", redis.url()))
}

#[tokio::test]
async fn redis_three_proxies_share_one_limit_exactly() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(redis_config(&origin, &redis, "  uploads_per_minute: 60\n")))
        .collect();
    let refs: Vec<&Proxy> = proxies.iter().collect();
    let answers = burst(&refs, 300, 100).await;
    assert_eq!(count(&answers, 201), 60, "{answers:?}");
    assert_eq!(count(&answers, 429), 240);
    assert!(answers
        .iter()
        .filter(|a| a.0 == 429)
        .all(|a| a.1 == "quota_uploads" && a.2.is_some()));
}

#[tokio::test]
async fn redis_counts_of_an_upload_cut_off_by_shutdown_go_back_to_the_fleet() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let quotas = "  bytes_per_hour: 300000\n";
    let mut config = redis_config(&origin, &redis, quotas);
    config.grace_period = "1s";
    let mut stopping = Proxy::start(config);
    let other = Proxy::start(redis_config(&origin, &redis, quotas));
    // An upload of 200,000 bytes still streaming when the sidecar stops (a rolling deploy): it
    // outlasts the grace period and is cut off.
    let _cut = open_upload(
        stopping.listen,
        &format!("/v1/Services/{SERVICE}/Media"),
        &[("Content-Type", "text/plain"), ("Content-Length", "200000")],
        &[b'q'; 1000],
    );
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(SERVICE)
        .is_empty()));
    signal(&stopping.child, nix::sys::signal::Signal::SIGTERM);
    let exit = wait_exit(&mut stopping.child, Duration::from_secs(15)).expect("it stops");
    assert!(exit.success(), "{exit}");
    // Nothing was stored: the hour's 300,000 bytes are all there again, for the client's retry
    // on another sidecar (it got 429 for an hour: the cut upload's bytes stayed counted).
    let retry = upload(&other, 200_000).await;
    assert_eq!(retry.status(), StatusCode::CREATED, "{:?}", retry.headers());
}

#[tokio::test]
async fn redis_slots_of_a_killed_sidecar_come_back_after_their_lease() {
    let redis = RedisServer::start();
    let origin = Origin::start();
    let quotas = "  concurrent_uploads: 2\n  slot_lease: 2s\n";
    let mut doomed = Proxy::start(redis_config(&origin, &redis, quotas));
    let survivor = Proxy::start(redis_config(&origin, &redis, quotas));
    let path = format!("/v1/Services/{SERVICE}/Media");
    let head = [("Content-Type", "text/plain"), ("Content-Length", "100000")];
    let _a = open_upload(doomed.listen, &path, &head, b"held ");
    let _b = open_upload(doomed.listen, &path, &head, b"held ");
    assert!(wait_for(Duration::from_secs(10), || origin
        .requests_for(SERVICE)
        .len()
        == 2));
    assert_eq!(
        upload(&survivor, 10).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // While their sidecar lives, the slots outlive their lease: it renews them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        upload(&survivor, 10).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // kill -9: nobody releases the slots; only their leases end them.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let started = std::time::Instant::now();
    let mut status = StatusCode::TOO_MANY_REQUESTS;
    while started.elapsed() < Duration::from_secs(15) && status == StatusCode::TOO_MANY_REQUESTS {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = upload(&survivor, 10).await.status();
    }
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "slots came back before their lease could end"
    );
}

#[tokio::test]
async fn redis_outage_follows_on_backend_error_and_admission_resumes() {
    let redis = RedisServer::start();
    let port = redis.port;
    let origin = Origin::start();
    let quotas = "  uploads_per_minute: 1000\n";
    let allow = Proxy::start(redis_config(
        &origin,
        &redis,
        &format!("{quotas}  on_backend_error: allow\n"),
    ));
    let deny = Proxy::start(redis_config(
        &origin,
        &redis,
        &format!("{quotas}  on_backend_error: deny\n"),
    ));
    assert_eq!(upload(&allow, 10).await.status(), StatusCode::CREATED);
    assert_eq!(upload(&deny, 10).await.status(), StatusCode::CREATED);

    let ready = |proxy: &Proxy| {
        mediagate::process::http_request(proxy.metrics, "GET", "/readyz", &[], &[])
            .map(|(status, _)| status)
            .unwrap_or(0)
    };
    assert_eq!(ready(&deny), 200);

    redis.stop();
    // Uploads depend on Redis with deny: not ready while it is away. With allow they do not.
    assert_eq!(ready(&deny), 503);
    assert_eq!(ready(&allow), 200);
    assert_eq!(upload(&allow, 10).await.status(), StatusCode::CREATED);
    let refused = upload(&deny, 10).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["mediagate-reject"], "quota_backend");
    assert!(refused.headers().contains_key("retry-after"));
    for proxy in [&allow, &deny] {
        let errors = proxy
            .metric("mediagate_quota_backend_errors_total", &[])
            .unwrap_or(0.0);
        assert!(errors >= 1.0, "backend errors counted: {errors}");
    }

    // A reload that swaps their on_backend_error swaps their readiness with it.
    for (proxy, choice) in [(&allow, "deny"), (&deny, "allow")] {
        proxy.rewrite_config(&quota_config(
            &origin,
            &format!(
                "  backend: redis://127.0.0.1:{port}/0\n{quotas}  on_backend_error: {choice}\n"
            ),
        ));
        signal(&proxy.child, nix::sys::signal::Signal::SIGHUP);
        assert!(
            wait_for(Duration::from_secs(10), || proxy
                .metric("mediagate_config_reloads_total", &[("result", "ok")])
                == Some(1.0)),
            "{}",
            proxy.log()
        );
    }
    assert_eq!(ready(&allow), 503, "reloaded to deny");
    assert_eq!(ready(&deny), 200, "reloaded to allow");
    assert_eq!(upload(&deny, 10).await.status(), StatusCode::CREATED);

    let _back = RedisServer::start_on(port);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = upload(&deny, 10).await.status();
        if status == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        StatusCode::CREATED,
        "admission did not resume after Redis came back"
    );
    assert_eq!(ready(&deny), 200);
}

#[tokio::test]
async fn a_redis_down_from_the_start_costs_each_upload_its_timeout_not_a_queue() {
    let origin = Origin::start();
    // Nothing listens there: each attempt to connect fails, and the connection manager would
    // retry after a backoff of a second or more while the uploads behind it waited.
    let nowhere = format!("redis://127.0.0.1:{}/0", free_port());
    let proxy = Proxy::start(quota_config(
        &origin,
        &format!("  backend: {nowhere}\n  uploads_per_minute: 1000\n  on_backend_error: allow\n"),
    ));
    let started = std::time::Instant::now();
    let answers = join_all((0..8).map(|_| upload(&proxy, 10))).await;
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::CREATED);
    }
    // Each upload waits at most the backend's 500 ms (then goes on, as `allow` says), and
    // they wait side by side: eight in a queue would take eight backoffs, 8 s or more.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    let errors = proxy
        .metric("mediagate_quota_backend_errors_total", &[])
        .unwrap_or(0.0);
    assert!(errors >= 8.0, "{errors}");
}

#[tokio::test]
async fn an_upload_larger_than_the_hours_bytes_is_413_and_one_of_unknown_size_still_fits() {
    let origin = Origin::start();
    // Smaller than the default max_size (150 MiB): the hour can never hold an upload that big.
    let proxy = Proxy::start(quota_config(&origin, "  bytes_per_hour: 10KiB\n"));
    let too_big = upload(&proxy, 20 * 1024).await;
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_big.headers()["mediagate-reject"], "too_large");
    // A 429 would promise a time at which it fits: there is none.
    assert!(!too_big.headers().contains_key("retry-after"));

    // Without a declared size an upload reserves the most it may be: at most the hour's bytes,
    // not max_size, which would never fit.
    let chunked = client()
        .post(proxy.url(&format!("/v1/Services/{SERVICE}/Media")))
        .header("Content-Type", "text/plain")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(vec![b'q'; 3000]),
            Ok(vec![b'q'; 2000]),
        ])))
        .send()
        .await
        .expect("upload");
    assert_eq!(chunked.status(), StatusCode::CREATED);
    // Settled to its 5,000 bytes: 5 KiB of the hour are left for a declared upload.
    assert_eq!(upload(&proxy, 5000).await.status(), StatusCode::CREATED);
    assert_eq!(
        upload(&proxy, 1000).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_failed_upload_gives_back_only_what_its_own_admission_counted() {
    // Two sidecars share Redis with different limits for one service: the first counts no
    // uploads per minute (only a slot), the second counts two a minute.
    let redis = RedisServer::start();
    let origin = Origin::start();
    let slots_only = Proxy::start(redis_config(&origin, &redis, "  concurrent_uploads: 1\n"));
    let per_minute = Proxy::start(redis_config(&origin, &redis, "  uploads_per_minute: 2\n"));
    let body = vec![b'q'; 100_000];
    let length = body.len().to_string();
    let held = open_upload(
        slots_only.listen,
        &format!("/v1/Services/{SERVICE}/Media"),
        &[("Content-Type", "text/plain"), ("Content-Length", &length)],
        &body[..1000],
    );
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(SERVICE)
        .is_empty()));
    assert_eq!(upload(&per_minute, 10).await.status(), StatusCode::CREATED);
    // The held upload fails: its refund must not take back the other sidecar's count.
    drop(held);
    // Its slot frees when its settling has run.
    let mut status = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..100 {
        status = upload(&slots_only, 10).await.status();
        if status == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::CREATED, "{}", slots_only.log());
    assert_eq!(upload(&per_minute, 10).await.status(), StatusCode::CREATED);
    let third = upload(&per_minute, 10).await;
    assert_eq!(
        third.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a third upload in a minute"
    );
}
