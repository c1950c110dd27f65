//! The local Media API on its own: the contract of spec/media-api.md and a durable store.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::*;

/// One origin for the tests that only add media under their own service SIDs.
fn shared() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(Origin::start)
}

fn media_url(origin: &Origin, service: &str) -> String {
    format!("{}/v1/Services/{service}/Media", origin.url)
}

/// POSTs an upload with the origin's credentials and expects 201 and the Media JSON.
async fn create(origin: &Origin, url: String, content_type: &str, body: Vec<u8>) -> Value {
    let response = client()
        .post(url)
        .header("Authorization", origin.basic_auth())
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("media JSON")
}

fn multipart_type(boundary: &str) -> String {
    format!("multipart/form-data; boundary={boundary}")
}

/// GETs a Media API path with the origin's credentials and answers the JSON.
async fn get_json(origin: &Origin, path: &str) -> Value {
    client()
        .get(format!("{}{path}", origin.url))
        .header("Authorization", origin.basic_auth())
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

fn is_sid(value: &Value, prefix: &str) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 34
            && s.starts_with(prefix)
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `2022-03-14T13:10:38.897143+00:00`: microseconds and an offset.
fn is_iso8601_micros(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.6f%:z").is_ok()
            && s.split('.')
                .nth(1)
                .is_some_and(|frac| frac.len() == "897143+00:00".len())
    })
}

#[tokio::test]
async fn a_raw_upload_answers_201_with_every_field_of_the_media_json() {
    let origin = shared();
    let service = new_service();
    let bytes = png_bytes(2048);
    let response = client()
        .post(format!("{}?Filename=cat.png", media_url(origin, &service)))
        .header("Authorization", origin.basic_auth())
        .header("Content-Type", "image/png")
        .header("Content-Size", bytes.len().to_string())
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let media: Value = response.json().await.unwrap();
    let sid = media["sid"].as_str().unwrap();
    assert!(is_sid(&media["sid"], "ME"), "{media}");
    assert_eq!(media["service_sid"], service.as_str());
    assert_eq!(media["account_sid"], ACCOUNT);
    for date in ["date_created", "date_upload_updated", "date_updated"] {
        assert!(is_iso8601_micros(&media[date]), "{date}: {}", media[date]);
    }
    assert_eq!(media["channel_sid"], Value::Null);
    assert_eq!(media["message_sid"], Value::Null);
    assert_eq!(media["author"], "system");
    assert_eq!(media["category"], "media");
    assert_eq!(media["size"], 2048);
    assert_eq!(media["content_type"], "image/png");
    assert_eq!(media["filename"], "cat.png");
    assert_eq!(media["url"], format!("/v1/Services/{service}/Media/{sid}"));
    assert_eq!(media["is_multipart_upstream"], false);
    assert_eq!(
        media["links"]["content"],
        format!("/v1/Services/{service}/Media/{sid}/Content")
    );
    // The create answer leaves the temporary URL out; GET has it.
    assert!(media["links"].get("content_direct_temporary").is_none());
}

#[tokio::test]
async fn multipart_uploads_take_type_filename_and_category_from_the_form() {
    let origin = shared();
    let service = new_service();
    // Style 2: a part named `file` with its own filename and type, ?Category= in the query.
    let (boundary, body) = multipart(&[(
        "file",
        Some("dog.jpg"),
        Some("image/jpeg"),
        b"\xff\xd8\xff\xe0jpeg",
    )]);
    let url = format!("{}?Category=body", media_url(origin, &service));
    let media = create(origin, url, &multipart_type(&boundary), body).await;
    assert_eq!(media["content_type"], "image/jpeg");
    assert_eq!(media["filename"], "dog.jpg");
    assert_eq!(media["category"], "body");
    assert_eq!(media["size"], 8);

    // Style 3: a part named `Media` and a `FileName` text field (after the file, even).
    let (boundary, body) = multipart(&[
        ("Media", None, Some("application/pdf"), b"%PDF-1.7 tiny"),
        ("FileName", None, None, b"report.pdf"),
    ]);
    let url = media_url(origin, &service);
    let media = create(origin, url, &multipart_type(&boundary), body).await;
    assert_eq!(media["content_type"], "application/pdf");
    assert_eq!(media["filename"], "report.pdf");
    assert_eq!(media["category"], "media");
}

#[tokio::test]
async fn untyped_raw_uploads_and_missing_filenames() {
    let origin = shared();
    let service = new_service();
    // curl's default form type means "not given".
    let media = origin
        .upload(&service, b"hello", "application/x-www-form-urlencoded")
        .await;
    assert_eq!(media["content_type"], "application/octet-stream");
    assert_eq!(media["filename"], Value::Null);
}

#[tokio::test]
async fn credentials_are_checked() {
    let origin = shared();
    let url = media_url(origin, &new_service());
    for auth in [
        None,
        Some(basic(ACCOUNT, "wrong")),
        Some(basic("ACffffffffffffffffffffffffffffffff", AUTH_TOKEN)),
    ] {
        let mut request = client().post(&url).body("x");
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["status"], 401);
        assert_eq!(error["code"], 20003);
        assert!(error["message"].is_string() && error["more_info"].is_string());
    }
}

#[tokio::test]
async fn malformed_sids_unknown_media_and_oversized_uploads_get_the_error_json() {
    let origin = shared();
    let service = new_service();
    let get = |path: String| {
        client()
            .get(format!("{}{path}", origin.url))
            .header("Authorization", origin.basic_auth())
            .send()
    };
    let response = get(format!("/v1/Services/{service}/Media/MEnothex"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        (error["code"].as_u64(), error["message"].as_str()),
        (Some(4000), Some("Invalid URI parameter: Sid"))
    );

    let unknown = mediagate::api::MediaSid::generate();
    let response = get(format!("/v1/Services/{service}/Media/{unknown}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        (error["code"].as_u64(), error["message"].as_str()),
        (Some(4041), Some("Media not found"))
    );

    // A media of another service is as unknown as a missing one.
    let media = origin.upload(&service, b"mine", "text/plain").await;
    let other = new_service();
    let response = get(format!(
        "/v1/Services/{other}/Media/{}",
        media["sid"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Over 150 MB is refused from the declared length, before the body is sent.
    let mut stream = open_upload(
        origin.addr,
        &format!("/v1/Services/{service}/Media"),
        &[
            ("Authorization", &origin.basic_auth()),
            ("Content-Type", "video/mp4"),
            ("Content-Length", "157286401"),
        ],
        b"",
    );
    let (status, body) = read_answer(&mut stream);
    assert_eq!(status, 413, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 413);
}

#[tokio::test]
async fn content_redirects_to_a_signed_url_that_serves_bytes_ranges_and_etags() {
    let origin = shared();
    let service = new_service();
    let bytes = png_bytes(1000);
    let media = origin.upload(&service, &bytes, "image/png").await;
    let sid = media["sid"].as_str().unwrap();
    let content = client()
        .get(format!(
            "{}/v1/Services/{service}/Media/{sid}/Content",
            origin.url
        ))
        .header("Authorization", origin.basic_auth())
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), StatusCode::FOUND);
    let location = content.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/{sid}?Expires=", origin.url)),
        "{location}"
    );

    // No credentials needed at the signed URL.
    let whole = client().get(&location).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    assert_eq!(whole.headers()["etag"], etag.as_str());
    assert_eq!(whole.headers()["content-type"], "image/png");
    assert_eq!(whole.headers()["content-length"], "1000");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let part = client()
        .get(&location)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    let tail = client()
        .get(&location)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &bytes[995..]);

    let beyond = client()
        .get(&location)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()["content-range"], "bytes */1000");

    let cached = client()
        .get(&location)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // The metadata carries a temporary URL of its own that works the same way.
    let metadata = get_json(origin, &format!("/v1/Services/{service}/Media/{sid}")).await;
    let temporary = metadata["links"]["content_direct_temporary"]
        .as_str()
        .unwrap();
    assert!(temporary.contains("Key-Pair-Id="), "{temporary}");
    assert_eq!(
        client()
            .get(temporary)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        bytes.as_slice()
    );
}

#[tokio::test]
async fn forged_and_expired_signatures_are_refused() {
    let origin = shared();
    let media = origin
        .upload(&new_service(), b"secret picture", "image/png")
        .await;
    let sid = media["sid"].as_str().unwrap();
    let signer = mediagate::origin::Signer::load_or_create(&origin.data).unwrap();
    let now = mediagate::origin::now_epoch();
    let url = |expires: u64, signature: &str| {
        format!(
            "{}/{sid}?Expires={expires}&Signature={signature}",
            origin.url
        )
    };

    let valid = url(now + 60, &signer.signature_for(sid, now + 60));
    assert_eq!(
        client().get(&valid).send().await.unwrap().status(),
        StatusCode::OK
    );

    let forged = url(now + 60, &"0".repeat(64));
    let stretched = url(now + 6000, &signer.signature_for(sid, now + 60));
    let expired = url(now - 1, &signer.signature_for(sid, now - 1));
    for refused in [forged, stretched, expired, format!("{}/{sid}", origin.url)] {
        let response = client().get(&refused).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{refused}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["status"], 403);
    }
}

#[tokio::test]
async fn media_set_answers_the_known_media_of_the_service() {
    let origin = shared();
    let service = new_service();
    let a = origin.upload(&service, b"a", "text/plain").await;
    let b = origin.upload(&service, b"bb", "text/plain").await;
    let unknown = mediagate::api::MediaSid::generate().to_string();
    let list: Vec<Value> = [&a["sid"], &b["sid"], &Value::from(unknown)]
        .iter()
        .map(|sid| serde_json::json!({"media_sid": sid}))
        .collect();
    let response = client()
        .post(format!("{}/v1/Services/{service}/MediaSet", origin.url))
        .header("Authorization", origin.basic_auth())
        .json(&serde_json::json!({"command": "get", "list": list}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let records: Vec<Value> = response.json().await.unwrap();
    let sids: Vec<&str> = records
        .iter()
        .map(|r| r["media_record"]["sid"].as_str().unwrap())
        .collect();
    assert_eq!(
        sids,
        [a["sid"].as_str().unwrap(), b["sid"].as_str().unwrap()]
    );
    assert!(records[1]["media_record"]["links"]["content_direct_temporary"].is_string());

    let bad = client()
        .post(format!("{}/v1/Services/{service}/MediaSet", origin.url))
        .header("Authorization", origin.basic_auth())
        .json(&serde_json::json!({"command": "delete", "list": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn acknowledged_media_survive_kill_9_and_restart() {
    let mut origin = Origin::start();
    let service = new_service();
    let first = png_bytes(10_000);
    let second = b"second file".to_vec();
    let a = origin.upload(&service, &first, "image/png").await;
    let b = origin.upload(&service, &second, "text/plain").await;

    origin.crash_and_restart();

    for (media, bytes) in [(&a, &first), (&b, &second)] {
        let sid = media["sid"].as_str().unwrap();
        let metadata = get_json(&origin, &format!("/v1/Services/{service}/Media/{sid}")).await;
        assert_eq!(metadata["size"], bytes.len());
        let temporary = metadata["links"]["content_direct_temporary"]
            .as_str()
            .unwrap();
        let body = client()
            .get(temporary)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.as_ref(), bytes.as_slice());
    }
}

#[tokio::test]
async fn identical_bytes_are_stored_once() {
    let origin = Origin::start();
    let service = new_service();
    let a = origin.upload(&service, b"same bytes", "text/plain").await;
    let b = origin.upload(&service, b"same bytes", "text/plain").await;
    assert_ne!(a["sid"], b["sid"]);
    assert_eq!(origin.files_in("content").len(), 1);
}

/// Waits until the origin has finished with every request for `service` it received.
fn settled(origin: &Origin, service: &str, expected: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let done = wait_for(Duration::from_secs(10), || {
        entries = origin.requests_for(service);
        entries.len() == expected && entries.iter().all(|e| !e["status"].is_null())
    });
    assert!(done, "requests did not finish: {entries:?}");
    entries
}

#[tokio::test]
async fn short_aborted_or_over_long_bodies_store_nothing() {
    let origin = Origin::start();
    let service = new_service();
    let path = format!("/v1/Services/{service}/Media");
    let auth = origin.basic_auth();

    // Declared 100 000 bytes, sent 1000, connection closed.
    let stream = open_upload(
        origin.addr,
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "image/png"),
            ("Content-Length", "100000"),
        ],
        &png_bytes(1000),
    );
    drop(stream);

    // A multipart upload cut off in the middle of its file part.
    let (boundary, body) =
        multipart(&[("file", Some("x.png"), Some("image/png"), &png_bytes(5000))]);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let mut stream = open_upload(
        origin.addr,
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", &content_type),
            ("Content-Length", &body.len().to_string()),
        ],
        &body[..2000],
    );
    stream.flush().unwrap();
    drop(stream);

    // Complete requests whose body disagrees with Content-Size: short and over-long.
    for (declared, sent) in [(5000usize, 4000usize), (100, 4000)] {
        let response = client()
            .post(origin.url.clone() + &path)
            .header("Authorization", &auth)
            .header("Content-Type", "image/png")
            .header("Content-Size", declared.to_string())
            .body(png_bytes(sent))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    let entries = settled(&origin, &service, 4);
    assert!(entries.iter().all(|e| e["status"] != 201), "{entries:?}");
    nothing_stored(&origin);
}

// ---------------------------------------------------------------------------------------------
// The finer points of the protocol

#[tokio::test]
async fn method_not_allowed_says_what_is_and_ranges_and_etags_follow_rfc_9110() {
    let origin = shared();
    let service = new_service();
    let bytes = png_bytes(100);
    let media = origin.upload(&service, &bytes, "image/png").await;
    let sid = media["sid"].as_str().expect("sid");

    for (method, path, allow) in [
        (
            reqwest::Method::DELETE,
            format!("/v1/Services/{service}/Media"),
            "POST",
        ),
        (
            reqwest::Method::POST,
            format!("/v1/Services/{service}/Media/{sid}"),
            "GET, HEAD",
        ),
        (reqwest::Method::PUT, format!("/{sid}"), "GET, HEAD"),
    ] {
        let response = client()
            .request(method, format!("{}{path}", origin.url))
            .header("Authorization", origin.basic_auth())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{path}"
        );
    }

    let metadata = get_json(origin, &format!("/v1/Services/{service}/Media/{sid}")).await;
    let temporary = metadata["links"]["content_direct_temporary"]
        .as_str()
        .expect("temporary URL");
    let get =
        |name: &'static str, value: String| client().get(temporary).header(name, value).send();
    // Not valid ranges: ignored, the whole content.
    for invalid in ["bytes=-x", "bytes=-", "bytes=+1-5"] {
        let response = get("Range", invalid.to_string()).await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{invalid}");
        assert_eq!(
            response.bytes().await.expect("body").as_ref(),
            bytes.as_slice()
        );
    }
    // A valid range that selects nothing.
    let response = get("Range", "bytes=-0".to_string()).await.expect("GET");
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A weak validator matches the strong ETag (the weak comparison).
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    let response = get("If-None-Match", format!("W/{etag}"))
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn empty_filenames_are_null() {
    let origin = shared();
    let service = new_service();
    let response = client()
        .post(format!("{}?Filename=", media_url(origin, &service)))
        .header("Authorization", origin.basic_auth())
        .header("Content-Type", "image/png")
        .body(png_bytes(100))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    let media: Value = response.json().await.expect("media JSON");
    assert_eq!(media["filename"], Value::Null);

    let (boundary, body) = multipart(&[
        ("Media", None, Some("application/pdf"), b"%PDF-1.7 tiny"),
        ("FileName", None, None, b""),
    ]);
    let url = media_url(origin, &service);
    let media = create(origin, url, &multipart_type(&boundary), body).await;
    assert_eq!(media["filename"], Value::Null);

    // Every source empty: still null. An empty one gives way to the next source.
    for (query, expected) in [("", Value::Null), ("q.png", Value::from("q.png"))] {
        let (boundary, body) = multipart(&[
            ("file", Some(""), Some("image/png"), &png_bytes(10)),
            ("FileName", None, None, b""),
        ]);
        let url = format!("{}?Filename={query}", media_url(origin, &service));
        let media = create(origin, url, &multipart_type(&boundary), body).await;
        assert_eq!(media["filename"], expected, "?Filename={query}");
    }
}

// ---------------------------------------------------------------------------------------------
// Clients that stop sending

/// An origin in this test process, with timeouts short enough to wait for, on a listener bound
/// before it starts (so it is ready at once).
struct QuickOrigin {
    addr: SocketAddr,
    data: PathBuf,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl QuickOrigin {
    fn start(timeouts: mediagate::origin::Timeouts) -> QuickOrigin {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("store");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };
        let options = mediagate::origin::OriginOptions {
            listen: addr,
            data: data.clone(),
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some(AUTH_TOKEN.into()),
            tls: None,
            url_ttl_secs: 300,
            cache_control: None,
        };
        runtime.spawn(async move {
            if let Err(e) = mediagate::origin::run_on(listener, options, timeouts).await {
                panic!("the origin stopped: {e}");
            }
        });
        QuickOrigin {
            addr,
            data,
            _runtime: runtime,
            _dir: dir,
        }
    }

    fn files_in(&self, sub: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.data.join(sub))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

const QUICK: mediagate::origin::Timeouts = mediagate::origin::Timeouts {
    header_read: Duration::from_secs(1),
    body_idle: Duration::from_secs(1),
};

#[test]
fn a_request_head_that_stops_coming_is_given_up() {
    let origin = QuickOrigin::start(QUICK);
    let mut stream = TcpStream::connect(origin.addr).expect("connect");
    let head = format!(
        "POST /v1/Services/{}/Media HTTP/1.1\r\nHost: x\r\n",
        new_service()
    );
    stream
        .write_all(head.as_bytes())
        .expect("send part of a head");
    // Without a header timeout the origin waits for the rest for ever; this read would then
    // fail after 30 s instead of seeing the connection closed.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the origin closes the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[test]
fn a_request_body_that_stops_coming_is_given_up_and_its_staging_file_removed() {
    let origin = QuickOrigin::start(QUICK);
    let service = new_service();
    let mut stream = open_upload(
        origin.addr,
        &format!("/v1/Services/{service}/Media"),
        &[
            ("Authorization", &basic(ACCOUNT, AUTH_TOKEN)),
            ("Content-Type", "image/png"),
            ("Content-Length", "100000"),
        ],
        &png_bytes(1000),
    );
    // Without an idle timeout on bodies no answer ever comes (read_response gives up at 30 s).
    let response = read_response(&mut stream);
    assert_eq!(response.status, 408, "{}", response.body);
    let error: Value = serde_json::from_str(&response.body).expect("error JSON");
    assert_eq!(error["code"], 91408);
    assert!(
        origin.files_in("tmp").is_empty(),
        "{:?}",
        origin.files_in("tmp")
    );
    assert!(origin.files_in("content").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Hostile and broken multipart bodies

/// Sends `body` on `stream` from a thread of its own, ignoring write errors: the origin may
/// answer and close before it has read it all. The connection stays open (a body that does not
/// complete its request stays unfinished) for as long as the caller keeps `stream`.
fn send_in_background(stream: &TcpStream, body: Vec<u8>) {
    let mut writer = stream.try_clone().expect("clone the connection");
    writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
}

/// `body` as HTTP/1.1 chunks of 64 KiB, without the last chunk: a body that has not ended.
fn chunks_of(body: &[u8]) -> Vec<u8> {
    let mut framed = Vec::new();
    for chunk in body.chunks(64 * 1024) {
        framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
    }
    framed
}

/// Asserts that the origin stored nothing, neither content nor a staging file left behind.
fn nothing_stored(origin: &Origin) {
    assert!(
        origin.files_in("content").is_empty(),
        "{:?}",
        origin.files_in("content")
    );
    assert!(
        origin.files_in("tmp").is_empty(),
        "{:?}",
        origin.files_in("tmp")
    );
}

/// A chunked multipart upload whose body starts with `prefix`, followed by `filler` repeated
/// to 1 MiB, and never ends: answered (400) long before the origin could have it all.
fn refused_before_the_end(prefix: &[u8], filler: &[u8]) {
    let origin = Origin::start();
    let service = new_service();
    let stream = open_upload(
        origin.addr,
        &format!("/v1/Services/{service}/Media"),
        &[
            ("Authorization", &origin.basic_auth()),
            ("Content-Type", &multipart_type("B0undary")),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    let mut body = prefix.to_vec();
    while body.len() < 1 << 20 {
        body.extend_from_slice(filler);
    }
    send_in_background(&stream, chunks_of(&body));
    // Without a bound the origin keeps buffering and waits for the rest: no answer ever.
    let entries = settled(&origin, &service, 1);
    assert_eq!(entries[0]["status"], 400, "{entries:?}");
    nothing_stored(&origin);
    drop(stream);
}

#[test]
fn a_multipart_body_without_a_boundary_is_refused_early() {
    refused_before_the_end(b"", &[b'x'; 4096]);
}

#[test]
fn a_multipart_part_head_without_an_end_is_refused_early() {
    refused_before_the_end(
        b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"",
        b"\r\nX-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
}

#[tokio::test]
async fn a_multipart_body_is_stored_only_once_it_has_ended_cleanly() {
    let origin = Origin::start();
    let service = new_service();
    let path = format!("/v1/Services/{service}/Media");
    let auth = origin.basic_auth();
    let (boundary, mut form) =
        multipart(&[("file", Some("x.png"), Some("image/png"), &png_bytes(3000))]);
    // The form ends right after its closing delimiter, before its CRLF.
    form.truncate(form.len() - 2);
    assert!(form.ends_with(format!("--{boundary}--").as_bytes()));
    let content_type = multipart_type(&boundary);
    // An epilogue the origin reads past (under its 64 KiB bound): with one, a body cut off at
    // its end is cut off well after the form, where the parser no longer reads.
    let mut with_epilogue = form.clone();
    with_epilogue.extend_from_slice(&vec![b'e'; 40 * 1024]);

    // Content-Length promises 100 bytes more than come: the client stops sending and leaves
    // its write side.
    for sent in [&form, &with_epilogue] {
        let mut stream = open_upload(
            origin.addr,
            &path,
            &[
                ("Authorization", &auth),
                ("Content-Type", &content_type),
                ("Content-Length", &(sent.len() + 100).to_string()),
            ],
            sent,
        );
        stream
            .shutdown(Shutdown::Write)
            .expect("shut down the write side");
        let (status, body) = read_answer(&mut stream);
        assert_eq!(status, 400, "{body}");
    }

    // Chunked: the form, the epilogue, then a chunk size that is not one (hex digits only).
    let mut framed = chunks_of(&with_epilogue);
    framed.extend_from_slice(b"zz\r\n");
    let stream = open_upload(
        origin.addr,
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", &content_type),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    send_in_background(&stream, framed);

    // An epilogue over 64 KiB, the length right.
    let mut long = form.clone();
    long.extend_from_slice(&vec![b'e'; 100 * 1024]);
    let long_stream = open_upload(
        origin.addr,
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", &content_type),
            ("Content-Length", &long.len().to_string()),
        ],
        b"",
    );
    send_in_background(&long_stream, long);

    let entries = settled(&origin, &service, 4);
    assert!(entries.iter().all(|e| e["status"] == 400), "{entries:?}");
    nothing_stored(&origin);
    drop((stream, long_stream));

    // The same form and epilogue, the body complete: stored.
    let media = create(
        &origin,
        origin.url.clone() + &path,
        &content_type,
        with_epilogue,
    )
    .await;
    assert_eq!(media["size"], 3000);
}
