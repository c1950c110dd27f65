//! Binary upgrades: a new process started with `--upgrade` takes the running proxy's listening
//! sockets over `server.upgrade_sock` when the running one gets SIGQUIT, and the old one drains.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mediagate::process::http_request;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

fn upload_path(service: &str) -> String {
    format!("/v1/Services/{service}/Media")
}

/// Uploads a small PNG through the proxy at `addr` (a fresh connection) and answers its SID.
fn upload(addr: SocketAddr, service: &str) -> Result<String, String> {
    let (status, body) = http_request(
        addr,
        "POST",
        &upload_path(service),
        &[("Content-Type", "image/png")],
        &png_bytes(2048),
    )
    .map_err(|e| format!("upload: {e}"))?;
    if status != 201 {
        return Err(format!(
            "upload: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let media: Value = serde_json::from_slice(&body).map_err(|e| format!("upload: {e}"))?;
    Ok(media["sid"].as_str().unwrap_or_default().to_string())
}

/// Reads a media's metadata through the proxy at `addr` (a fresh connection).
fn read_metadata(addr: SocketAddr, service: &str, sid: &str, id: &str) -> Result<(), String> {
    let path = format!("{}/{sid}", upload_path(service));
    match http_request(addr, "GET", &path, &[("X-Request-Id", id)], &[]) {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!("read: {status} {}", String::from_utf8_lossy(&body))),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Clients uploading and reading in a loop, each request on a new connection, until stopped:
/// every connection refused, reset or wrongly answered is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<usize>>,
}

impl Traffic {
    fn start(addr: SocketAddr, service: &str, sid: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, failures) = (stop.clone(), failures.clone());
                let (service, sid) = (service.to_string(), sid.to_string());
                thread::spawn(move || {
                    let mut done = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("traffic-{client}-{done}");
                        let result = if done % 2 == 0 {
                            read_metadata(addr, &service, &sid, &id)
                        } else {
                            upload(addr, &service).map(drop)
                        };
                        match result {
                            Ok(()) => done += 1,
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                    done
                })
            })
            .collect();
        Traffic {
            stop,
            failures,
            threads,
        }
    }

    /// Stops the clients; answers how many requests succeeded and the failures.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let done = self.threads.into_iter().map(|t| t.join().unwrap()).sum();
        let failures = self.failures.lock().unwrap().clone();
        (done, failures)
    }
}

#[test]
fn sigquit_hands_the_listeners_to_the_upgraded_process_without_refusing_a_request() {
    let origin = Origin::start();
    let mut config = ProxyConfig::to(&origin.url);
    config.grace_period = "3s";
    let mut old = Proxy::start(config);
    let service = new_service();
    let sid = upload(old.listen, &service).expect("an upload through the old process");

    // An upload in flight on the old process, to finish after the hand-over.
    let body = png_bytes(STREAMED_UPLOAD);
    let mut in_flight = open_upload(
        old.listen,
        &upload_path(&service),
        &[
            ("Content-Type", "image/png"),
            ("Content-Length", &body.len().to_string()),
        ],
        &body[..1000],
    );
    assert!(wait_for(Duration::from_secs(10), || origin
        .requests_for(&service)
        .iter()
        .filter(|r| r["method"] == "POST")
        .count()
        == 2));

    let mut new = old.start_successor();
    let traffic = Traffic::start(old.listen, &service, &sid, 2);
    signal(&old.child, Signal::SIGQUIT);

    // The new process serves on the same port while the old one still holds its connection.
    assert!(
        wait_for(Duration::from_secs(15), || new
            .access_log()
            .contains("traffic-")),
        "the new process answered nothing; its log:\n{}",
        new.log()
    );
    assert!(new
        .log()
        .contains("upgrade: listening sockets received from the running proxy"));
    std::io::Write::write_all(&mut in_flight, &body[1000..]).unwrap();
    let (status, answer) = read_answer(&mut in_flight);
    assert_eq!(status, 201, "the in-flight upload: {answer}");

    let exit = wait_exit(&mut old.child, Duration::from_secs(30))
        .expect("the old process exits once drained");
    assert!(exit.success(), "{exit}; its log:\n{}", old.log());
    let (done, failures) = traffic.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the hand-over: {failures:?}",
        failures.len(),
        done + failures.len()
    );
    assert!(done > 0);

    // Afterwards: the new process alone, on both ports.
    assert!(new.child.try_wait().unwrap().is_none(), "{}", new.log());
    read_metadata(old.listen, &service, &sid, "after-the-upgrade").unwrap();
    assert!(wait_for(Duration::from_secs(10), || new
        .access_log()
        .contains("\"request_id\":\"after-the-upgrade\"")));
    let (status, _) = http_request(old.metrics, "GET", "/readyz", &[], &[]).unwrap();
    assert_eq!(status, 200);
    let (status, metrics) = http_request(old.metrics, "GET", "/metrics", &[], &[]).unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&metrics).contains("mediagate_requests_total{"));

    // And it stops as any proxy does.
    signal(&new.child, Signal::SIGTERM);
    let exit = wait_exit(&mut new.child, Duration::from_secs(15)).expect("the new process exits");
    assert!(exit.success(), "{exit}");
}

#[test]
fn an_upgrade_with_nothing_to_take_over_gives_up() {
    // Nobody sends sockets: pingora stops waiting after its fixed retries and exits 1, and the
    // ports were never bound.
    let origin = Origin::start();
    let old = Proxy::start(ProxyConfig::to(&origin.url));
    let mut new = old.start_successor();
    let exit = wait_exit(&mut new.child, Duration::from_secs(30)).expect("the waiting ends");
    assert!(!exit.success(), "{exit}");
    assert!(new.log().contains("Bootstrap failed"), "{}", new.log());
    // The running proxy was never disturbed.
    let (status, _) = http_request(old.metrics, "GET", "/readyz", &[], &[]).unwrap();
    assert_eq!(status, 200);
}
