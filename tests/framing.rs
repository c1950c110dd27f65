//! Request framing the proxy must refuse before anything reaches the upstream: the patterns of
//! request smuggling (both Content-Length and Transfer-Encoding, several Content-Lengths,
//! obsolete line folding, invalid chunk sizes), on every route that takes a body.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::*;

/// Sends raw bytes and reads what comes back until the proxy closes: the first answer's
/// status (0 when the proxy closed without one), and how many answers there were.
fn exchange(proxy: &Proxy, raw: &str) -> (u16, usize) {
    let mut stream = TcpStream::connect(proxy.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(raw.as_bytes());
    let mut answers = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answers);
    let answers = String::from_utf8_lossy(&answers);
    let status = answers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answers.matches("HTTP/1.1 ").count())
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
    // A large body (past what a head may take) that starts with empty lines, as JSON may.
    let big = format!("\n\n{}{body}", " ".repeat(70_000));
    let big_len = big.len();
    let upload = format!("/v1/Services/{service}/Media");
    let png = "\u{89}PNG\r\n\u{1a}\n";
    // Every one is refused (400) before anything reaches the origin: ambiguous lengths, broken
    // or unusual encodings, folded headers, and malformed chunk sizes (the first chunk is read
    // before a connection upstream is chosen).
    let corpus = [
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("GET {media} HTTP/1.1\r\n{host}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("POST {upload} HTTP/1.1\r\n{host}Content-Type: image/png\r\nContent-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{png}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nContent-Length: {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nContent-Length: 5\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}, {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {big_len}, {big_len}\r\n\r\n{big}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: -{len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: +{len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: 0x{len:x}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len} {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: 99999999999999999999999\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Type: application/json\r\n x-folded: yes\r\nContent-Length: {len}\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\n\tfolded\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked, gzip\r\n\r\n{body}"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: xchunked\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding : chunked\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n-{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n+{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n0x{len:x}\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n\r\n{body}\r\n0\r\n\r\n"),
        format!("POST {upload} HTTP/1.1\r\n{host}Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\nq8\r\n{png}\r\n0\r\n\r\n"),
        format!("POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nX-Bad: a\u{0}b\r\n\r\n{body}"),
    ];
    assert!(corpus.len() >= 25);
    let mut not_refused = Vec::new();
    for raw in &corpus {
        let (status, answers) = exchange(&proxy, raw);
        // The head and the start of the body are enough to tell which.
        let shown: String = raw.chars().take(300).collect();
        if status != 400 {
            not_refused.push(format!("{status}: {shown:?}"));
        }
        if answers > 1 {
            not_refused.push(format!("{answers} answers: {shown:?}"));
        }
        if !origin.requests_for(&service).is_empty() {
            not_refused.push(format!("reached the origin: {shown:?}"));
        }
    }
    assert!(
        not_refused.is_empty(),
        "not refused:\n{}",
        not_refused.join("\n")
    );
    assert!(
        origin.requests_for(&service).is_empty(),
        "reached the origin: {:?}",
        origin.requests_for(&service)
    );

    // The connection watcher read each as pingora did: it cut none off.
    let cut_off = proxy.metric(
        "mediagate_clients_refused_total",
        &[("reason", "head_too_large")],
    );
    assert_eq!(cut_off.unwrap_or(0.0), 0.0);

    // The well-framed request goes through.
    let good = format!(
        "POST {set} HTTP/1.1\r\n{host}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(exchange(&proxy, &good), (200, 1));
}

#[test]
fn a_head_with_bare_lf_line_ends_is_read_as_pingora_reads_it() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxyConfig::to(&origin.url));
    let service = new_service();
    // Over `max_head_size` (64 KiB) of body: taken for more head, it would be cut off with 431.
    let mut body = png_bytes(100_000);
    body.iter_mut().skip(16).for_each(|b| *b = b'a');
    let head = format!(
        "POST /v1/Services/{service}/Media HTTP/1.1\nHost: {}\nContent-Type: image/png\nContent-Length: {}\n\n",
        proxy.listen,
        body.len()
    );
    let mut stream = TcpStream::connect(proxy.listen).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(origin.stored_uploads(&service), 1);
}
