//! Request framing the proxy must refuse before anything reaches the upstream: the patterns of
//! request smuggling (both Content-Length and Transfer-Encoding, several Content-Lengths,
//! obsolete line folding, invalid chunk sizes), on every route that takes a body.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// Sends raw bytes and reads the answer's status; 0 when the proxy closed without one.
fn exchange(proxy: &Proxy, raw: &str) -> u16 {
    let mut stream = TcpStream::connect(proxy.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(raw.as_bytes());
    let mut reader = std::io::BufReader::new(&mut stream);
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut reader, &mut line);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn smuggling_patterns_are_refused_on_every_route() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    let set = format!("/v1/Services/{service}/MediaSet");
    let media = format!(
        "/v1/Services/{service}/Media/{}",
        mediagate::api::MediaSid::generate()
    );
    let host = format!("Host: {}\r\n", proxy.listen);
    let body = r#"{"command":"get","list":[]}"#;
    let len = body.len();
    // Refused from the head: nothing reaches the origin.
    let refused_at_once = [
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("GET {media} HTTP/1.1\r\n{host}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nContent-Length: {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}, {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Type: application/json\r\n x-folded: yes\r\nContent-Length: {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\n{body}"),
    ];
    for raw in &refused_at_once {
        assert_eq!(exchange(&proxy, raw), 400, "{raw}");
        assert!(
            origin.requests_for(&service).is_empty(),
            "reached the origin: {raw}"
        );
    }
    // Malformed chunk sizes are found while the body streams: the upstream may have the head,
    // but never a complete request.
    let broken_chunks = [
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{body}\r\n0\r\n\r\n"),
    ];
    for raw in &broken_chunks {
        assert_eq!(exchange(&proxy, raw), 400, "{raw}");
    }
    let settled = wait_for(Duration::from_secs(10), || {
        origin
            .requests_for(&service)
            .iter()
            .all(|e| !e["status"].is_null())
    });
    assert!(settled);
    assert!(origin
        .requests_for(&service)
        .iter()
        .all(|e| e["status"] != 200));

    // The well-framed request goes through.
    let good = format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\n\r\n{body}");
    assert_eq!(exchange(&proxy, &good), 200);
}
