//! SIGHUP reloads the configuration without dropping a connection; a configuration that fails
//! validation is refused and the running one stays.

mod support;

use std::io::Write;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const SERVICE: &str = "ISaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A proxy configuration that allows these upload types.
fn allowing(origin: &Origin, types: &str) -> ProxyConfig {
    let mut config = ProxyConfig::to(&origin.url).with(&format!(
        "uploads:\n  allowed_types: [{types}]\nservices:\n  {SERVICE}: {{}}\n"
    ));
    config.log_level = "info";
    config
}

fn upload_text(proxy: &Proxy) -> u16 {
    let (status, _) = mediagate::process::http_request(
        proxy.listen,
        "POST",
        &format!("/v1/Services/{SERVICE}/Media"),
        &[("Content-Type", "text/plain")],
        b"plain words",
    )
    .expect("upload");
    status
}

#[test]
fn sighup_applies_a_new_policy_and_keeps_connections() {
    let origin = Origin::start();
    let mut proxy = Proxy::start(allowing(&origin, "image/png"));
    assert_eq!(upload_text(&proxy), 415);

    // An upload in flight across the reload finishes on its connection.
    let body = png_bytes(STREAMED_UPLOAD);
    let length = body.len().to_string();
    let head = [("Content-Type", "image/png"), ("Content-Length", &length)];
    let mut held = open_upload(
        proxy.listen,
        &format!("/v1/Services/{SERVICE}/Media"),
        &head,
        &body[..1000],
    );
    assert!(wait_for(Duration::from_secs(10), || !origin
        .requests_for(SERVICE)
        .is_empty()));

    proxy.rewrite_config(&allowing(&origin, "image/png, text/plain"));
    signal(&proxy.child, Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || upload_text(&proxy) == 201),
        "{}",
        proxy.log()
    );

    held.write_all(&body[1000..]).unwrap();
    assert_eq!(read_answer(&mut held).0, 201);
    let counted = wait_for(Duration::from_secs(10), || {
        proxy.metric("mediagate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    });
    assert!(counted);
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the proxy"
    );
}

#[test]
fn a_configuration_that_fails_validation_is_refused_and_the_old_one_stays() {
    let origin = Origin::start();
    let proxy = Proxy::start(allowing(&origin, "image/png"));
    proxy.write_config_text("server:\n  listn: 127.0.0.1:1\n");
    signal(&proxy.child, Signal::SIGHUP);
    let refused = wait_for(Duration::from_secs(10), || {
        proxy.metric("mediagate_config_reloads_total", &[("result", "error")]) == Some(1.0)
    });
    assert!(refused, "{}", proxy.log());
    assert!(
        proxy.log().contains("configuration reload refused"),
        "{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("server.listn"),
        "the log names the bad key: {}",
        proxy.log()
    );
    // Still the old policy, still serving.
    assert_eq!(upload_text(&proxy), 415);
}

#[tokio::test]
async fn sighup_applies_new_cache_settings_and_a_new_memory_bound() {
    let origin = Origin::start();
    let mut config = ProxyConfig::to(&origin.url);
    config.log_level = "info";
    let proxy = Proxy::start(config);
    let service = new_service();
    let mut contents = Vec::new();
    for i in 0..4u8 {
        let mut bytes = png_bytes(600 * 1024);
        bytes[100] = i;
        let media = origin.upload(&service, &bytes, "image/png").await;
        contents.push(format!(
            "/v1/Services/{service}/Media/{}/Content",
            media["sid"].as_str().unwrap()
        ));
    }
    let read = |path: String| {
        let url = proxy.url(&path);
        async move {
            let response = client().get(url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let cache = response
                .headers()
                .get("mediagate-cache")
                .map(|v| v.to_str().unwrap().to_string());
            // Read to the end: a client that leaves early ends the fill.
            response.bytes().await.unwrap();
            cache
        }
    };
    for path in &contents {
        assert_eq!(read(path.clone()).await.as_deref(), Some("miss"));
    }
    assert_eq!(read(contents[0].clone()).await.as_deref(), Some("hit"));
    proxy.wait_recorded(contents.len() + 1);
    let held = || {
        proxy
            .metric("mediagate_cache_bytes", &[("kind", "content")])
            .unwrap()
    };
    assert!(held() > 2.0 * 1024.0 * 1024.0, "{} bytes held", held());

    let mut smaller = ProxyConfig::to(&origin.url)
        .with("cache:\n  memory: 1MiB\n  max_object: 960KiB\n  response_header: false\n");
    smaller.log_level = "info";
    proxy.rewrite_config(&smaller);
    signal(&proxy.child, Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || {
            proxy.metric("mediagate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
        }),
        "{}",
        proxy.log()
    );
    // The cache is within the new bound at once, and stays so as entries come in; the header
    // is gone.
    assert!(held() <= 1024.0 * 1024.0, "{} bytes held", held());
    for path in &contents {
        assert_eq!(read(path.clone()).await, None);
    }
    assert!(
        wait_for(Duration::from_secs(5), || held() <= 1024.0 * 1024.0),
        "{} bytes held",
        held()
    );
}

/// Cached heads keep `Mediagate-Cache: hit` when the header is on: an entry kept under one
/// setting and read under the other must still say what the setting in force says.
#[tokio::test]
async fn the_cache_header_follows_a_reload_for_entries_already_kept() {
    let origin = Origin::start();
    let header_on = |on: bool| {
        let mut config =
            ProxyConfig::to(&origin.url).with(&format!("cache:\n  response_header: {on}\n"));
        config.log_level = "info";
        config
    };
    let proxy = Proxy::start(header_on(true));
    let service = new_service();
    let mut paths = Vec::new();
    for i in 0..2u8 {
        let mut bytes = png_bytes(1024);
        bytes[100] = i;
        let media = origin.upload(&service, &bytes, "image/png").await;
        paths.push(format!(
            "/v1/Services/{service}/Media/{}",
            media["sid"].as_str().unwrap()
        ));
    }
    let read = |path: &String| {
        let url = proxy.url(path);
        async move {
            let response = client().get(url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response
                .headers()
                .get("mediagate-cache")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    let reload = |config: ProxyConfig, count: f64| {
        proxy.rewrite_config(&config);
        signal(&proxy.child, Signal::SIGHUP);
        assert!(
            wait_for(Duration::from_secs(10), || {
                proxy.metric("mediagate_config_reloads_total", &[("result", "ok")]) == Some(count)
            }),
            "{}",
            proxy.log()
        );
    };
    assert_eq!(read(&paths[0]).await.as_deref(), Some("miss"));
    assert_eq!(read(&paths[0]).await.as_deref(), Some("hit"));

    reload(header_on(false), 1.0);
    // Kept with the header: a hit without it now.
    assert_eq!(read(&paths[0]).await, None);
    assert_eq!(read(&paths[1]).await, None);
    assert_eq!(read(&paths[1]).await, None);

    reload(header_on(true), 2.0);
    // Kept without the header: a hit says so all the same.
    assert_eq!(read(&paths[1]).await.as_deref(), Some("hit"));
    assert_eq!(read(&paths[0]).await.as_deref(), Some("hit"));
}

#[test]
fn sighup_with_a_changed_quota_applies_to_the_next_upload() {
    let origin = Origin::start();
    let quota = |n: u32| {
        let mut config = ProxyConfig::to(&origin.url).with(&format!(
            "uploads:\n  allowed_types: [text/plain]\nquotas:\n  uploads_per_minute: {n}\nservices:\n  {SERVICE}: {{}}\n"
        ));
        config.log_level = "info";
        config
    };
    let proxy = Proxy::start(quota(1));
    assert_eq!(upload_text(&proxy), 201);
    assert_eq!(upload_text(&proxy), 429);
    proxy.rewrite_config(&quota(3));
    signal(&proxy.child, Signal::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(10), || {
            proxy.metric("mediagate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
        }),
        "{}",
        proxy.log()
    );
    // The count so far (1) stays: two more fit under the new limit of 3, not a third.
    assert_eq!(upload_text(&proxy), 201);
    assert_eq!(upload_text(&proxy), 201);
    assert_eq!(upload_text(&proxy), 429);
}
