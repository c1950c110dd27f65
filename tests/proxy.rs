//! The sidecar in front of a real origin: routes, credentials, access, upstream failures, TLS,
//! metrics and draining.

mod support;

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::*;

/// One origin (with auth) for the tests that keep to their own service SIDs.
fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(Origin::start)
}

/// One proxy with the default configuration in front of it.
fn proxy() -> &'static Proxy {
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    PROXY.get_or_init(|| Proxy::start(ProxyConfig::to(&origin().url)))
}

fn upload_path(service: &str) -> String {
    format!("/v1/Services/{service}/Media")
}

/// The metadata path of a media nobody uploaded.
fn unknown_media_path(service: &str) -> String {
    format!(
        "{}/{}",
        upload_path(service),
        mediagate::api::MediaSid::generate()
    )
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

/// A media's metadata, read through `proxy`.
async fn get_metadata(proxy: &Proxy, service: &str, sid: &str) -> Value {
    let url = proxy.url(&format!("{}/{sid}", upload_path(service)));
    json(client().get(url).send().await.expect("GET metadata")).await
}

/// Reads a media's bytes through the proxy (which follows the API's redirect itself).
async fn read_content(proxy: &Proxy, service: &str, sid: &str) -> Vec<u8> {
    let response = client()
        .get(proxy.url(&format!("/v1/Services/{service}/Media/{sid}/Content")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn uploads_in_all_three_styles_read_back_through_the_proxy() {
    let proxy = proxy();
    let service = new_service();
    let raw = png_bytes(4096);
    let (b1, form_file) = multipart(&[(
        "file",
        Some("a.jpg"),
        Some("image/jpeg"),
        b"\xff\xd8\xff\xe0 jpeg bytes",
    )]);
    let (b2, form_media) = multipart(&[
        ("Media", None, Some("text/plain"), b"plain words"),
        ("FileName", None, None, b"notes.txt"),
    ]);
    let uploads = [
        (
            String::new(),
            "image/png".to_string(),
            raw.clone(),
            "image/png",
            Value::Null,
        ),
        (
            "?Category=body".into(),
            format!("multipart/form-data; boundary={b1}"),
            form_file,
            "image/jpeg",
            "a.jpg".into(),
        ),
        (
            String::new(),
            format!("multipart/form-data; boundary={b2}"),
            form_media,
            "text/plain",
            "notes.txt".into(),
        ),
    ];
    let expected_bytes: [&[u8]; 3] = [&raw, b"\xff\xd8\xff\xe0 jpeg bytes", b"plain words"];
    let mut sids = Vec::new();
    for ((query, content_type, body, media_type, filename), bytes) in
        uploads.into_iter().zip(expected_bytes)
    {
        let response = client()
            .post(proxy.url(&format!("{}{query}", upload_path(&service))))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created = json(response).await;
        assert_eq!(created["content_type"], media_type);
        assert_eq!(created["filename"], filename);
        let sid = created["sid"].as_str().unwrap().to_string();

        let metadata = get_metadata(proxy, &service, &sid).await;
        assert_eq!(metadata["sid"], sid.as_str());
        assert_eq!(metadata["size"], bytes.len());
        assert!(metadata["links"]["content_direct_temporary"].is_string());
        assert_eq!(read_content(proxy, &service, &sid).await, bytes);
        sids.push(sid);
    }

    let list: Vec<Value> = sids
        .iter()
        .map(|s| serde_json::json!({"media_sid": s}))
        .collect();
    let set = client()
        .post(proxy.url(&format!("/v1/Services/{service}/MediaSet")))
        .json(&serde_json::json!({"command": "get", "list": list}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let records: Vec<Value> = set.json().await.unwrap();
    assert_eq!(records.len(), 3);
}

#[tokio::test]
async fn the_origin_sees_the_injected_credentials_and_never_the_clients() {
    let proxy = proxy();
    let service = new_service();
    let response = client()
        .post(proxy.url(&upload_path(&service)))
        .header(
            "Authorization",
            basic("ACffffffffffffffffffffffffffffffff", "client-secret"),
        )
        .header("X-Twilio-Token", "client-jwt")
        .header("Proxy-Authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    // The origin only admits its own account: a 201 means the proxy's credentials went up.
    assert_eq!(response.status(), StatusCode::CREATED);
    let seen = origin().requests_for(&service);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["auth"], format!("basic:{ACCOUNT}"));
    assert_eq!(seen[0]["twilio_token"], false);
}

#[tokio::test]
async fn bearer_tokens_are_enforced_per_service() {
    let allowed = new_service();
    let other = new_service();
    let proxy = Proxy::start(ProxyConfig::to(&origin().url).with(&format!(
        "access:\n  tokens:\n    - token: all-services\n    - token: one-service\n      services: [{allowed}]\n"
    )));
    let send = |service: &str, token: Option<&str>| {
        let mut request = client()
            .post(proxy.url(&upload_path(service)))
            .header("Content-Type", "text/plain")
            .body("x");
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    for (service, token, status, reason) in [
        (&allowed, None, 401, "unauthorized"),
        (&allowed, Some("not-a-token"), 401, "unauthorized"),
        (&other, Some("one-service"), 403, "forbidden_service"),
    ] {
        let response = send(service, token).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["mediagate-reject"], reason);
        let error = json(response).await;
        assert_eq!(error["status"], status);
        assert!(error["code"].as_u64().is_some() && error["message"].is_string());
    }
    assert!(origin().requests_for(&allowed).is_empty());
    assert!(origin().requests_for(&other).is_empty());

    assert_eq!(
        send(&allowed, Some("one-service")).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(&other, Some("all-services")).await.unwrap().status(),
        StatusCode::CREATED
    );
    // The bearer token is the sidecar's, not the upstream's: it never goes up.
    assert_eq!(
        origin().requests_for(&allowed)[0]["auth"],
        format!("basic:{ACCOUNT}")
    );
}

#[tokio::test]
async fn a_service_override_brings_its_own_credentials() {
    let own = new_service();
    let plain = new_service();
    let proxy = Proxy::start(ProxyConfig::to(&origin().url).with(&format!(
        "services:\n  {own}:\n    credentials: {{username: SK0123456789abcdef0123456789abcdef, password: key-secret}}\n"
    )));
    let upload = |service: &str| {
        client()
            .post(proxy.url(&upload_path(service)))
            .header("Content-Type", "text/plain")
            .body("x")
            .send()
    };
    assert_eq!(upload(&plain).await.unwrap().status(), StatusCode::CREATED);
    // The origin admits one account only, so the override's credentials are refused upstream.
    let refused = upload(&own).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(refused).await["code"], 20003);
    assert_eq!(
        origin().requests_for(&own)[0]["auth"],
        "basic:SK0123456789abcdef0123456789abcdef"
    );
}

#[tokio::test]
async fn bad_sids_and_unknown_paths_never_reach_the_origin() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let media = mediagate::api::MediaSid::generate();
    let cases = [
        (
            "POST",
            "/v1/Services/IS123/Media".to_string(),
            400,
            Some("bad_sid"),
        ),
        (
            "GET",
            format!("/v1/Services/{service}/Media/ME0123"),
            400,
            Some("bad_sid"),
        ),
        (
            "GET",
            format!("/v1/Services/{service}/Media/{service}/Content"),
            400,
            Some("bad_sid"),
        ),
        (
            "GET",
            format!("/v1/Services/{service}/Media/..%2F..%2Fetc"),
            400,
            Some("bad_sid"),
        ),
        ("GET", "/".to_string(), 404, None),
        ("GET", "/_origin/requests".to_string(), 404, None),
        ("GET", format!("/{media}"), 404, None),
        ("GET", "/v1/Accounts".to_string(), 404, None),
        (
            "POST",
            format!("/v1/Services/{service}/Channels"),
            404,
            None,
        ),
        ("GET", format!("/v2/Services/{service}/Media"), 404, None),
        ("GET", format!("/v1/Services/{service}/Media"), 405, None),
        (
            "DELETE",
            format!("/v1/Services/{service}/Media/{media}"),
            405,
            None,
        ),
    ];
    for (method, path, status, reason) in &cases {
        let response = client()
            .request(method.parse().unwrap(), proxy.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), *status, "{method} {path}");
        assert_eq!(
            response
                .headers()
                .get("mediagate-reject")
                .map(|v| v.to_str().unwrap()),
            *reason,
            "{path}"
        );
        assert_eq!(json(response).await["status"], *status);
    }
    assert!(origin.journal().is_empty(), "{:?}", origin.journal());

    let fine = client()
        .get(proxy.url(&format!("/v1/Services/{service}/Media/{media}")))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(fine).await["code"], 4041);
    assert_eq!(origin.journal().len(), 1);
}

#[tokio::test]
async fn an_upstream_that_is_down_gives_502_json() {
    let port = free_port();
    let proxy = Proxy::start(ProxyConfig::to(&format!("http://127.0.0.1:{port}")));
    let response = client()
        .post(proxy.url(&upload_path(&new_service())))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = json(response).await;
    assert_eq!(error["status"], 502);
    assert_eq!(error["code"], 91502);
    proxy.wait_recorded(1);
    assert_eq!(
        proxy.metric("mediagate_upstream_errors_total", &[("kind", "connect")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_gives_504_json() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut config = ProxyConfig::to(&format!("http://127.0.0.1:{port}"));
    config.read_timeout = "300ms";
    let proxy = Proxy::start(config);
    let service = new_service();
    let metadata = unknown_media_path(&service);
    // A content read asks the API for its redirect on a connection of the proxy's own.
    let content = format!("{metadata}/Content");
    for path in [&metadata, &content] {
        let response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{path}");
        let error = json(response).await;
        assert_eq!(error["code"], 91504, "{path}");
    }
    proxy.wait_recorded(2);
    assert_eq!(
        proxy.metric("mediagate_upstream_errors_total", &[("kind", "timeout")]),
        Some(2.0)
    );
    drop(silent);
}

/// A CA and a certificate it signed for localhost and 127.0.0.1, as PEM files under `dir`.
fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let origin = Origin::start_with(OriginOptions {
        auth: true,
        tls: Some((cert, key)),
        ..OriginOptions::default()
    });
    assert!(origin.url.starts_with("https://localhost:"));
    let service = new_service();

    let proxy = Proxy::start(ProxyConfig::to(&origin.url).ca_file(&ca));
    let created = client()
        .post(proxy.url(&upload_path(&service)))
        .header("Content-Type", "text/plain")
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let sid = json(created).await["sid"].as_str().unwrap().to_string();
    let metadata = get_metadata(&proxy, &service, &sid).await;
    assert!(metadata["links"]["content_direct_temporary"]
        .as_str()
        .unwrap()
        .starts_with("https://localhost:"));

    // The same upstream through an IP literal is verified against the IP SAN.
    let by_ip = Proxy::start(
        ProxyConfig::to(&format!("https://127.0.0.1:{}", origin.addr.port())).ca_file(&ca),
    );
    let response = client()
        .get(by_ip.url(&format!("{}/{sid}", upload_path(&service))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Without the CA, the system roots do not trust the test certificate.
    let untrusting = Proxy::start(ProxyConfig::to(&origin.url));
    let refused = client()
        .get(untrusting.url(&format!("{}/{sid}", upload_path(&service))))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    // Ten requests one after the other, each on a new client connection.
    for _ in 0..10 {
        let response = client()
            .get(proxy.url(&unknown_media_path(&service)))
            .header("Connection", "close")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let peers: std::collections::HashSet<String> = origin
        .requests_for(&service)
        .iter()
        .map(|e| e["peer"].as_str().unwrap().to_string())
        .collect();
    // Reuse, not one connection per request (a release racing the next request may open a
    // second one).
    assert!(
        peers.len() <= 2,
        "the proxy opened {} upstream connections for 10 requests",
        peers.len()
    );
}

#[tokio::test]
async fn metrics_count_requests_and_health_answers() {
    let proxy = Proxy::start(ProxyConfig::to(&origin().url));
    let service = new_service();
    for _ in 0..2 {
        let response = client()
            .post(proxy.url(&upload_path(&service)))
            .header("Content-Type", "text/plain")
            .body("m")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let missing = client()
        .get(proxy.url(&unknown_media_path(&service)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    proxy.wait_recorded(3);
    let requests = |labels: &[(&str, &str)]| proxy.metric("mediagate_requests_total", labels);
    assert_eq!(
        requests(&[
            ("route", "upload"),
            ("method", "POST"),
            ("status", "201"),
            ("service", "other")
        ]),
        Some(2.0)
    );
    assert_eq!(
        requests(&[
            ("route", "metadata"),
            ("method", "GET"),
            ("status", "404"),
            ("service", "other")
        ]),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(
            "mediagate_request_duration_seconds_count",
            &[("route", "upload")]
        ),
        Some(2.0)
    );
    assert_eq!(proxy.metric("mediagate_build_info", &[]), Some(1.0));

    for path in ["/healthz", "/readyz"] {
        let (status, body) =
            mediagate::process::http_request(proxy.metrics, "GET", path, &[], &[]).unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(serde_json::from_slice::<Value>(&body).is_ok());
    }
}

#[tokio::test]
async fn a_small_upload_goes_upstream_only_once_its_body_is_whole() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let (held, probe) = (new_service(), new_service());
    let body = png_bytes(8 * 1024);
    let length = body.len().to_string();
    let head = [
        ("Content-Type", "image/png"),
        ("Content-Length", length.as_str()),
    ];
    let mut stream = open_upload(proxy.listen, &upload_path(&held), &head, &body[..1000]);
    // Admitted (counted in flight), its body is being read...
    let in_flight = || proxy.metric("mediagate_uploads_in_flight", &[("service", "other")]);
    assert!(wait_for(Duration::from_secs(10), || in_flight() == Some(1.0)));
    // ...while a whole upload goes up and back, and the origin has not seen the first.
    let mut other = open_upload(proxy.listen, &upload_path(&probe), &head, &body);
    assert_eq!(read_answer(&mut other).0, 201);
    assert!(
        origin.requests_for(&held).is_empty(),
        "a small upload went upstream before its body was whole"
    );

    std::io::Write::write_all(&mut stream, &body[1000..]).unwrap();
    let (status, answer) = read_answer(&mut stream);
    assert_eq!(status, 201, "{answer}");
    assert_eq!(origin.stored_uploads(&held), 1);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish_then_exits_0() {
    let origin = Origin::start();
    let mut config = ProxyConfig::to(&origin.url);
    config.grace_period = "3s";
    let mut proxy = Proxy::start(config);
    let service = new_service();
    let body = png_bytes(STREAMED_UPLOAD);
    let mut stream = open_upload(
        proxy.listen,
        &upload_path(&service),
        &[
            ("Content-Type", "image/png"),
            ("Content-Length", &body.len().to_string()),
        ],
        &body[..1000],
    );
    // The upload is in flight once the origin has its head.
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(&service)
        .is_empty()));

    signal(&proxy.child, nix::sys::signal::Signal::SIGTERM);
    std::io::Write::write_all(&mut stream, &body[1000..]).unwrap();
    let (status, answer) = read_answer(&mut stream);
    assert_eq!(status, 201, "{answer}");

    let exit = wait_exit(&mut proxy.child, Duration::from_secs(15))
        .expect("the proxy exits after its grace period");
    assert!(exit.success(), "{exit}");
}

/// A shutdown waits for the request heads on their way before pingora drops the connections
/// waiting for one: a connection accepted just before, its client still to send (or still
/// sending) its request, gets its answer rather than none at all.
#[test]
fn sigterm_answers_connections_whose_first_request_was_still_on_its_way() {
    use std::io::Write;
    let origin = Origin::start();
    let mut config = ProxyConfig::to(&origin.url);
    // The wait: head_timeout, at most half the grace period (3 s).
    config.grace_period = "6s";
    config.server_extra = "  head_timeout: 5s\n".to_string();
    config.log_level = "info";
    let mut proxy = Proxy::start(config);
    let service = new_service();
    let (status, body) = mediagate::process::http_request(
        proxy.listen,
        "POST",
        &upload_path(&service),
        &[("Content-Type", "image/png")],
        &png_bytes(2048),
    )
    .unwrap();
    assert_eq!(status, 201);
    let media: Value = serde_json::from_slice(&body).unwrap();
    let read = format!(
        "GET {}/{} HTTP/1.1\r\nHost: mediagate\r\n\r\n",
        upload_path(&service),
        media["sid"].as_str().unwrap()
    );

    // (The upload's connection is counted until the proxy has dropped it.)
    let open = || proxy.metric("mediagate_client_connections", &[]);
    assert!(wait_for(Duration::from_secs(10), || open() == Some(0.0)));
    // One connection has sent nothing yet, the other half of its head.
    let mut silent = std::net::TcpStream::connect(proxy.listen).unwrap();
    let mut halfway = std::net::TcpStream::connect(proxy.listen).unwrap();
    let (first_half, second_half) = read.split_at(20);
    halfway.write_all(first_half.as_bytes()).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || open() == Some(2.0)),
        "the proxy did not accept both connections"
    );

    signal(&proxy.child, nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_for(Duration::from_secs(10), || proxy.log().contains(
            "waiting up to 3s for 2 client connection(s) still sending a request head"
        )),
        "the shutdown did not wait for the heads; its log:\n{}",
        proxy.log()
    );
    silent.write_all(read.as_bytes()).unwrap();
    halfway.write_all(second_half.as_bytes()).unwrap();
    for stream in [&mut silent, &mut halfway] {
        let (status, answer) = read_answer(stream);
        assert_eq!(status, 200, "{answer}");
    }

    let exit = wait_exit(&mut proxy.child, Duration::from_secs(20))
        .expect("the proxy exits after its grace period");
    assert!(exit.success(), "{exit}");
    assert!(
        !proxy.log().contains("sent no whole request head"),
        "{}",
        proxy.log()
    );
}

/// CPU time the threads of process `pid` have used so far, from `/proc` (nanoseconds, the
/// first field of each thread's `schedstat`).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let nanos = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split(' ').next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// Uploads 20 small files through `proxy`, 30 ms apart, and answers the CPU time the proxy
/// spent meanwhile.
async fn cpu_time_of_spaced_uploads(proxy: &Proxy, service: &str) -> Duration {
    let before = cpu_time(proxy.child.id());
    for _ in 0..20 {
        let response = client()
            .post(proxy.url(&upload_path(service)))
            .header("Content-Type", "image/png")
            .body(png_bytes(4096))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    cpu_time(proxy.child.id()) - before
}

/// `server.busy_poll`: after each request event the workers poll instead of sleeping, for at
/// most that long. Requests are served as usual, the polling shows as CPU time after each
/// request, it stops once the proxy is idle, and SIGTERM still ends the process.
#[tokio::test]
async fn busy_polling_spends_its_window_after_requests_then_sleeps() {
    let mut config = ProxyConfig::to(&origin().url);
    config.server_extra.push_str("  busy_poll: 10ms\n");
    let mut polling = Proxy::start(config);
    let service = new_service();

    let sleeping = cpu_time_of_spaced_uploads(proxy(), &service).await;
    let busy = cpu_time_of_spaced_uploads(&polling, &service).await;
    // Up to 10 ms of polling on each of the two workers after each of 20 requests: about
    // 400 ms more (594 ms against 47 ms in a quiet run). A quarter of it leaves room for a
    // machine busy with other tests.
    assert!(
        busy >= sleeping + Duration::from_millis(100),
        "{busy:?} of CPU time with busy polling, {sleeping:?} without"
    );

    // Idle: no polling at all.
    let before = cpu_time(polling.child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = cpu_time(polling.child.id()) - before;
    assert!(
        idle < Duration::from_millis(100),
        "{idle:?} of CPU time while idle"
    );

    signal(&polling.child, nix::sys::signal::Signal::SIGTERM);
    let exit = wait_exit(&mut polling.child, Duration::from_secs(15)).expect("the proxy exits");
    assert!(exit.success(), "{exit}");
}

#[test]
fn a_read_with_a_body_is_refused_before_the_upstream() {
    let service = new_service();
    let metadata = unknown_media_path(&service);
    let content = format!("{metadata}/Content");
    for path in [&metadata, &content] {
        let (status, body) =
            mediagate::process::http_request(proxy().listen, "GET", path, &[], b"hello").unwrap();
        assert_eq!(status, 400, "{path}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["code"], 91400, "{path}");
    }
    assert!(origin().requests_for(&service).is_empty());
    // The same reads without a body (Content-Length: 0) go upstream: that media is unknown.
    for path in [&metadata, &content] {
        let (status, _) =
            mediagate::process::http_request(proxy().listen, "GET", path, &[], b"").unwrap();
        assert_eq!(status, 404, "{path}");
    }
}
