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
    let head = [("Content-Type", "image/png"), ("Content-Length", "1000")];
    let mut held = open_upload(
        proxy.listen,
        &format!("/v1/Services/{SERVICE}/Media"),
        &head,
        b"\x89PNG\r\n\x1a\n",
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

    held.write_all(&[7u8; 992]).unwrap();
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
