//! Metrics, access log and request ids after a scripted mix of requests through a real proxy.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::*;

const TOKEN: &str = "observability-token";
const MAIN: &str = "IS66666666666666666666666666666666";
const ONE_A_MINUTE: &str = "IS77777777777777777777777777777777";
const SMALL_BYTES: &str = "IS88888888888888888888888888888888";
const ONE_AT_A_TIME: &str = "IS99999999999999999999999999999999";

fn config(origin: &Origin) -> ProxyConfig {
    ProxyConfig::to(&origin.url).with(&format!(
        "access:\n  tokens:\n    - token: {TOKEN}\n  allow_unlisted_services: false\nuploads:\n  max_size: 64KiB\nservices:\n  {MAIN}: {{}}\n  {ONE_A_MINUTE}:\n    quotas: {{uploads_per_minute: 1}}\n  {SMALL_BYTES}:\n    quotas: {{bytes_per_hour: 1000}}\n  {ONE_AT_A_TIME}:\n    quotas: {{concurrent_uploads: 1}}\n"
    ))
}

struct Mix<'a> {
    proxy: &'a Proxy,
}

impl Mix<'_> {
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: bool,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = client()
            .request(method.parse().unwrap(), self.proxy.url(path))
            .body(body);
        if token {
            request = request.header("Authorization", format!("Bearer {TOKEN}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        request.send().await.expect("request")
    }

    async fn upload(&self, service: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.send(
            "POST",
            &format!("/v1/Services/{service}/Media"),
            true,
            Some(content_type),
            body,
        )
        .await
    }
}

fn png(len: usize) -> Vec<u8> {
    png_bytes(len)
}

#[tokio::test]
async fn a_scripted_mix_shows_in_every_family_and_in_the_access_log() {
    let origin = Origin::start();
    let mut cfg = config(&origin);
    cfg.log_level = "info";
    let proxy = Proxy::start(cfg);
    let mix = Mix { proxy: &proxy };

    // Accepted uploads: 1000 + 3000 bytes.
    let first = mix.upload(MAIN, "image/png", png(1000)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let sid = first.json::<Value>().await.unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mix.upload(MAIN, "image/png", png(3000)).await.status(),
        StatusCode::CREATED
    );
    // Reads: metadata and content twice each (a miss, then a hit), unknown media 404 (a miss).
    let media = format!("/v1/Services/{MAIN}/Media/{sid}");
    for path in [media.clone(), format!("{media}/Content")] {
        for expected in ["miss", "hit"] {
            let read = mix.send("GET", &path, true, None, vec![]).await;
            assert_eq!(read.status(), StatusCode::OK);
            assert_eq!(read.headers()["mediagate-cache"], expected);
        }
    }
    let unknown = format!(
        "/v1/Services/{MAIN}/Media/{}",
        mediagate::api::MediaSid::generate()
    );
    assert_eq!(
        mix.send("GET", &unknown, true, None, vec![]).await.status(),
        StatusCode::NOT_FOUND
    );
    // One refusal for each reason this configuration can give.
    let refusals = [
        (
            mix.send(
                "POST",
                &format!("/v1/Services/{MAIN}/Media"),
                false,
                Some("image/png"),
                png(10),
            )
            .await,
            "unauthorized",
        ),
        (
            mix.upload(&new_service(), "image/png", png(10)).await,
            "forbidden_service",
        ),
        (
            mix.send("GET", "/v1/Services/ISnope/Media", true, None, vec![])
                .await,
            "bad_sid",
        ),
        (
            mix.upload(MAIN, "application/x-www-form-urlencoded", png(10))
                .await,
            "content_type_missing",
        ),
        (
            mix.upload(MAIN, "application/zip", b"PK\x03\x04zip".to_vec())
                .await,
            "type_not_allowed",
        ),
        (
            mix.upload(
                MAIN,
                "image/png",
                b"\x7fELF\x02\x01\x01\0elf-bytes".to_vec(),
            )
            .await,
            "sniff_mismatch",
        ),
        (
            mix.upload(MAIN, "image/png", png(70_000)).await,
            "too_large",
        ),
    ];
    for (response, reason) in &refusals {
        assert_eq!(response.headers()["mediagate-reject"], *reason);
    }
    let mut sized = client()
        .post(proxy.url(&format!("/v1/Services/{MAIN}/Media")))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "image/png")
        .header("Content-Size", "12")
        .body(png(10));
    sized = sized.header("X-Request-Id", "client-chosen-id-42");
    let sized = sized.send().await.unwrap();
    assert_eq!(sized.headers()["mediagate-reject"], "size_mismatch");
    assert_eq!(sized.headers()["x-request-id"], "client-chosen-id-42");
    assert_eq!(
        mix.upload(ONE_A_MINUTE, "text/plain", b"one".to_vec())
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        mix.upload(ONE_A_MINUTE, "text/plain", b"two".to_vec())
            .await
            .headers()["mediagate-reject"],
        "quota_uploads"
    );
    // 600 of the hour's 1,000 bytes, then 600 more do not fit.
    assert_eq!(
        mix.upload(SMALL_BYTES, "text/plain", vec![b'x'; 600])
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        mix.upload(SMALL_BYTES, "text/plain", vec![b'x'; 600])
            .await
            .headers()["mediagate-reject"],
        "quota_bytes"
    );

    proxy.wait_recorded(19);
    let requests = |labels: &[(&str, &str)]| proxy.metric("mediagate_requests_total", labels);
    assert_eq!(
        requests(&[
            ("route", "upload"),
            ("method", "POST"),
            ("status", "201"),
            ("service", MAIN)
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("route", "metadata"),
            ("method", "GET"),
            ("status", "200"),
            ("service", MAIN)
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("route", "metadata"),
            ("method", "GET"),
            ("status", "404"),
            ("service", MAIN)
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            ("route", "content"),
            ("method", "GET"),
            ("status", "200"),
            ("service", MAIN)
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("route", "upload"),
            ("method", "POST"),
            ("status", "415"),
            ("service", MAIN)
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("route", "upload"),
            ("method", "POST"),
            ("status", "429"),
            ("service", ONE_A_MINUTE)
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            ("route", "upload"),
            ("method", "POST"),
            ("status", "403"),
            ("service", "other")
        ]),
        Some(1.0)
    );
    assert_eq!(
        requests(&[
            ("route", "other"),
            ("method", "GET"),
            ("status", "400"),
            ("service", "other")
        ]),
        Some(1.0)
    );

    for reason in [
        "unauthorized",
        "content_type_missing",
        "type_not_allowed",
        "sniff_mismatch",
        "too_large",
        "size_mismatch",
    ] {
        assert_eq!(
            proxy.metric(
                "mediagate_rejections_total",
                &[("reason", reason), ("service", MAIN)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "forbidden_service"), ("service", "other")]
        ),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "bad_sid"), ("service", "other")]
        ),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "quota_uploads"), ("service", ONE_A_MINUTE)]
        ),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "quota_bytes"), ("service", SMALL_BYTES)]
        ),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(
            "mediagate_rejections_total",
            &[("reason", "quota_concurrency"), ("service", MAIN)]
        ),
        Some(0.0)
    );

    // Accepted upload sizes and the bytes that went through.
    assert_eq!(
        proxy.metric("mediagate_upload_size_bytes_count", &[("service", MAIN)]),
        Some(2.0)
    );
    assert_eq!(
        proxy.metric("mediagate_upload_size_bytes_sum", &[("service", MAIN)]),
        Some(4000.0)
    );
    let upload_bytes_in = proxy
        .metric(
            "mediagate_request_bytes_total",
            &[("route", "upload"), ("service", MAIN)],
        )
        .unwrap();
    assert!(upload_bytes_in >= 4000.0, "{upload_bytes_in}");
    let metadata_out = proxy
        .metric(
            "mediagate_response_bytes_total",
            &[("route", "metadata"), ("service", MAIN)],
        )
        .unwrap();
    assert!(metadata_out > 500.0, "{metadata_out}");
    assert_eq!(
        proxy.metric("mediagate_uploads_in_flight", &[("service", MAIN)]),
        Some(0.0)
    );
    // The cache: each read counted once, by kind and result; what the fills hold.
    for (kind, result, count) in [
        ("metadata", "miss", 2.0),
        ("metadata", "hit", 1.0),
        ("content", "miss", 1.0),
        ("content", "hit", 1.0),
        ("metadata", "bypass", 0.0),
        ("content", "bypass", 0.0),
        ("metadata", "stale", 0.0),
    ] {
        assert_eq!(
            proxy.metric(
                "mediagate_cache_requests_total",
                &[("kind", kind), ("result", result)]
            ),
            Some(count),
            "{kind} {result}"
        );
    }
    let held = |kind| {
        proxy
            .metric("mediagate_cache_bytes", &[("kind", kind)])
            .unwrap()
    };
    assert!(held("content") > 1000.0, "{}", held("content"));
    assert!(held("metadata") > 500.0, "{}", held("metadata"));
    assert_eq!(
        proxy.metric("mediagate_cache_evictions_total", &[("kind", "content")]),
        Some(0.0)
    );
    // Upstream time for every request that reached the origin (hits did not): 2 uploads + 1
    // metadata + 1 content + 1 unknown on MAIN, 1 on ONE_A_MINUTE, 1 on SMALL_BYTES.
    let upstream: f64 = ["upload", "metadata", "content"]
        .iter()
        .map(|route| {
            proxy
                .metric(
                    "mediagate_upstream_duration_seconds_count",
                    &[("route", route)],
                )
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(upstream, 7.0);
    assert_eq!(
        proxy.metric(
            "mediagate_request_duration_seconds_count",
            &[("route", "upload")]
        ),
        Some(13.0)
    );
    // Every family of the contract is exported.
    let text = proxy.metrics_text();
    for family in [
        "mediagate_requests_total",
        "mediagate_request_duration_seconds",
        "mediagate_upstream_duration_seconds",
        "mediagate_request_bytes_total",
        "mediagate_response_bytes_total",
        "mediagate_upload_size_bytes",
        "mediagate_uploads_in_flight",
        "mediagate_rejections_total",
        "mediagate_cache_requests_total",
        "mediagate_cache_bytes",
        "mediagate_cache_evictions_total",
        "mediagate_upstream_errors_total",
        "mediagate_quota_backend_errors_total",
        "mediagate_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }

    // The access log: one JSON line per request, ids unique, no secret anywhere.
    let total = 19;
    let log = proxy.access_log_lines(total);
    let entries: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(entries.len(), total);
    let ids: HashSet<&str> = entries
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), total);
    let sized_entry = entries
        .iter()
        .find(|e| e["request_id"] == "client-chosen-id-42")
        .expect("the client's id");
    assert_eq!(sized_entry["reject"], "size_mismatch");
    assert_eq!(sized_entry["status"], 400);
    let created = entries
        .iter()
        .find(|e| e["status"] == 201 && e["service"] == MAIN)
        .unwrap();
    for field in [
        "ts",
        "method",
        "path",
        "route",
        "media",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "cache",
        "reject",
    ] {
        assert!(created.get(field).is_some(), "{field} missing in {created}");
    }
    let read = entries.iter().find(|e| e["status"] == 200).unwrap();
    assert_eq!(read["media"], sid.as_str());
    let mut caches: Vec<(String, String)> = entries
        .iter()
        .filter(|e| !e["cache"].is_null())
        .map(|e| (e["route"].to_string(), e["cache"].to_string()))
        .collect();
    caches.sort();
    let expected = [
        ("content", "hit"),
        ("content", "miss"),
        ("metadata", "hit"),
        ("metadata", "miss"),
        ("metadata", "miss"),
    ]
    .map(|(route, cache)| (format!("\"{route}\""), format!("\"{cache}\"")));
    assert_eq!(caches, expected);
    for secret in [
        TOKEN,
        AUTH_TOKEN,
        &basic(ACCOUNT, AUTH_TOKEN)[6..],
        "Bearer",
        "Authorization",
    ] {
        assert!(
            !log.contains(secret) && !proxy.log().contains(secret),
            "{secret} logged"
        );
    }
    // The id went upstream too.
    let upstream_ids: HashSet<String> = origin
        .journal()
        .iter()
        .filter_map(|e| e["request_id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.iter().filter(|id| upstream_ids.contains(**id)).count() >= 6);
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind() {
    let down = Proxy::start(ProxyConfig::to(&format!(
        "http://127.0.0.1:{}",
        free_port()
    )));
    let response = client()
        .get(down.url(&format!(
            "/v1/Services/{}/Media/{}",
            new_service(),
            mediagate::api::MediaSid::generate()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.headers().contains_key("x-request-id"));
    down.wait_recorded(1);
    assert_eq!(
        down.metric("mediagate_upstream_errors_total", &[("kind", "connect")]),
        Some(1.0)
    );
    assert_eq!(
        down.metric("mediagate_upstream_errors_total", &[("kind", "timeout")]),
        Some(0.0)
    );
    let log = down.access_log_lines(1);
    let entry: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(entry["upstream_error"], "connect");
    assert_eq!(entry["status"], 502);
}

#[tokio::test]
async fn an_upload_in_flight_shows_in_the_gauge_and_holds_its_slot() {
    let origin = Origin::start();
    let proxy = Proxy::start(config(&origin));
    let auth = format!("Bearer {TOKEN}");
    let head = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/plain"),
        ("Content-Length", "1000"),
    ];
    let path = format!("/v1/Services/{ONE_AT_A_TIME}/Media");
    let mut stream = open_upload(proxy.listen, &path, &head, b"partial ");
    let gauge = || proxy.metric("mediagate_uploads_in_flight", &[("service", ONE_AT_A_TIME)]);
    assert!(wait_for(Duration::from_secs(10), || gauge() == Some(1.0)));
    // Its slot is taken: a second upload of the service is refused, and counted.
    let second = Mix { proxy: &proxy }
        .upload(ONE_AT_A_TIME, "text/plain", b"second".to_vec())
        .await;
    assert_eq!(second.headers()["mediagate-reject"], "quota_concurrency");
    let refused = [("reason", "quota_concurrency"), ("service", ONE_AT_A_TIME)];
    proxy.wait_recorded(1);
    assert_eq!(
        proxy.metric("mediagate_rejections_total", &refused),
        Some(1.0)
    );
    std::io::Write::write_all(&mut stream, &[b'x'; 992]).unwrap();
    assert_eq!(read_answer(&mut stream).0, 201);
    assert!(wait_for(Duration::from_secs(10), || gauge() == Some(0.0)));
}

/// A proxy with no upstream and no grace period, for the access log's last lines.
fn proxy_for_exit(stdout: impl Fn(&std::path::Path) -> Stdio) -> Proxy {
    let mut config = ProxyConfig::to(&format!("http://127.0.0.1:{}", free_port()));
    config.grace_period = "0s";
    Proxy::start_with_stdout(config, stdout)
}

/// Sends `requests` requests the proxy answers itself (a malformed SID: 400), then SIGTERM, and
/// checks that the proxy exits, and cleanly.
async fn answer_then_stop(proxy: &mut Proxy, requests: usize) {
    bad_sid_requests(proxy, requests).await;
    proxy.wait_recorded(requests);
    signal(&proxy.child, nix::sys::signal::Signal::SIGTERM);
    let exit = wait_exit(&mut proxy.child, Duration::from_secs(20)).expect("the proxy exits");
    assert!(exit.success(), "{exit}");
}

/// The access log's writer takes the lines every few milliseconds. The lines of the requests
/// answered just before a SIGTERM are written out as the process ends, not lost with it.
#[tokio::test]
async fn the_last_requests_before_sigterm_are_in_the_access_log() {
    let mut proxy = proxy_for_exit(access_log_file);
    let requests = 20;
    answer_then_stop(&mut proxy, requests).await;
    let log = proxy.access_log();
    let statuses: Vec<u64> = log
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).expect("a JSON line");
            entry["status"].as_u64().expect("a status")
        })
        .collect();
    assert_eq!(statuses, vec![400; requests], "{log}");
}

#[tokio::test]
async fn a_stalled_reader_of_the_access_log_does_not_keep_the_proxy_from_exiting() {
    // Standard output is a pipe nobody reads: once its buffer (64 KiB) is full, every write
    // to it blocks.
    let (_unread, write_end) = nix::unistd::pipe().expect("a pipe");
    let mut proxy =
        proxy_for_exit(|_| Stdio::from(write_end.try_clone().expect("the pipe's write end")));
    // Lines of about 300 bytes: 1,000 of them are several times what the pipe holds.
    answer_then_stop(&mut proxy, 1000).await;
    assert!(
        proxy.log().contains("the last lines are lost"),
        "{}",
        proxy.log()
    );
}

/// Sends `count` requests the proxy answers itself (a malformed SID: 400).
async fn bad_sid_requests(proxy: &Proxy, count: usize) {
    for _ in 0..count {
        let response = client()
            .get(proxy.url("/v1/Services/ISnot-a-sid/Media"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn access_log_lines_standard_output_refuses_are_counted_and_logged_once() {
    // /dev/full refuses every write (ENOSPC), as a full disk does: each batch of lines fails.
    let proxy = Proxy::start_with_stdout(
        ProxyConfig::to(&format!("http://127.0.0.1:{}", free_port())),
        |_| {
            Stdio::from(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full"),
            )
        },
    );
    let dropped = || {
        proxy
            .metric("mediagate_access_log_dropped_total", &[])
            .unwrap_or(0.0)
    };
    // Two rounds: a failed write does not end the log, the next batch is tried (and counted).
    for round in 1..=2 {
        bad_sid_requests(&proxy, 5).await;
        assert!(
            wait_for(Duration::from_secs(10), || dropped() >= (5 * round) as f64),
            "round {round}: {} dropped\n{}",
            dropped(),
            proxy.log()
        );
    }
    assert_eq!(
        proxy
            .log()
            .matches("cannot write to standard output")
            .count(),
        1,
        "{}",
        proxy.log()
    );
}

#[test]
fn a_slow_clients_upload_time_is_not_counted_as_the_upstreams() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let body = png(100_000);
    let length = body.len().to_string();
    let mut stream = open_upload(
        proxy.listen,
        &format!("/v1/Services/{service}/Media"),
        &[("Content-Type", "image/png"), ("Content-Length", &length)],
        &body[..50_000],
    );
    // The client pauses mid-body: the upstream is waiting on the client, not the other way.
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(&service)
        .is_empty()));
    std::thread::sleep(Duration::from_secs(2));
    std::io::Write::write_all(&mut stream, &body[50_000..]).unwrap();
    assert_eq!(read_answer(&mut stream).0, 201);
    proxy.wait_recorded(1);
    let route = [("route", "upload")];
    let request = proxy
        .metric("mediagate_request_duration_seconds_sum", &route)
        .unwrap();
    let upstream = proxy
        .metric("mediagate_upstream_duration_seconds_sum", &route)
        .unwrap();
    // What the upstream did after the last byte (storing it, however slow the disk) is in both
    // figures; the pause before it is in the request's alone.
    assert!(
        request - upstream >= 1.9,
        "the upstream's time was {upstream} s of {request} s"
    );
}
