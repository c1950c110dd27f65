//! Hostile and broken clients held off: slow heads, huge heads, too many connections, bodies that
//! barely move; and healthy clients keep their latency while 200 slow connections hang.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// A proxy whose `server:` block also has these (indented) keys.
fn proxy_with(origin: &Origin, server: &str) -> Proxy {
    let mut config = ProxyConfig::to(&origin.url);
    config.server_extra = server.to_string();
    Proxy::start(config)
}

fn refused(proxy: &Proxy, reason: &str) -> f64 {
    proxy
        .metric("mediagate_clients_refused_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

/// Connects to the proxy's port and sends `bytes`, leaving the connection open.
fn connect(proxy: &Proxy, bytes: &[u8]) -> TcpStream {
    connect_to(proxy.listen, bytes)
}

/// Connects to `address` and sends `bytes`, leaving the connection open.
fn connect_to(address: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).expect("send");
    stream
}

/// Opens `n` connections the proxy keeps open and idle. A connection the proxy refused right
/// away (its readiness probe may still have held a place) is answered and closed at once: it is
/// replaced.
fn hold_idle(proxy: &Proxy, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    while held.len() < n {
        let mut stream = connect(proxy, b"");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held.push(stream)
            }
            _ => {}
        }
    }
    held
}

/// Sets a socket's receive buffer, which also turns the kernel's autotuning of it off.
fn small_receive_buffer(stream: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a c_int option value of the size given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
}

/// Writes `bytes` on `stream` every `every`, `times` times, from a thread of its own, until the
/// proxy stops taking them.
fn trickle(
    stream: &TcpStream,
    bytes: &'static [u8],
    every: Duration,
    times: usize,
) -> std::thread::JoinHandle<()> {
    let mut writer = stream.try_clone().expect("a second handle");
    std::thread::spawn(move || {
        for _ in 0..times {
            std::thread::sleep(every);
            if writer.write_all(bytes).is_err() {
                break;
            }
        }
    })
}

/// Reads until the peer closes (or the read times out): what came back.
fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_head_that_takes_too_long_gets_408_even_when_it_trickles() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  head_timeout: 1s\n");
    let started = Instant::now();
    let mut stream = connect(&proxy, b"GET /v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: x\r\n");
    // One header byte every 200 ms: never idle long, never done.
    let trickle = trickle(&stream, b"X", Duration::from_millis(200), 50);
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"code\":91408"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = trickle.join();
    assert!(wait_for(Duration::from_secs(5), || refused(
        &proxy,
        "head_timeout"
    ) == 1.0));
    assert!(origin.journal().is_empty(), "nothing reached the origin");
}

#[test]
fn empty_lines_before_a_head_are_part_of_it_for_its_clock_and_its_size() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  head_timeout: 1s\n  max_head_size: 8KiB\n");
    // Empty lines (which the HTTP parser skips before a request line) every 300 ms: they used
    // to count as a whole head each, so no clock ever ran.
    let started = Instant::now();
    let mut stream = connect(&proxy, b"\r\n");
    let trickle = trickle(&stream, b"\n\n", Duration::from_millis(300), 30);
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = trickle.join();
    // 16 KiB of them, then a request: over the 8 KiB a head may take.
    let mut padded = "\r\n".repeat(8 * 1024).into_bytes();
    padded.extend_from_slice(b"GET /v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_all(&mut connect(&proxy, &padded));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // A few, then the request: served.
    let answer = read_all(&mut connect(&proxy, b"\r\n\r\nGET /v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert_eq!(
        origin.journal().len(),
        1,
        "only the last request reached the origin"
    );
}

#[test]
fn a_kept_alive_connection_idle_past_keepalive_timeout_is_closed() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  keepalive_timeout: 1s\n");
    let request = b"GET /v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut stream = connect(&proxy, request);
    // Requests half a second apart keep it open: the clock runs only while it is idle.
    for _ in 0..3 {
        let answer = read_response(&mut stream);
        assert_eq!(answer.status, 404);
        std::thread::sleep(Duration::from_millis(500));
        stream.write_all(request).expect("still open");
    }
    assert_eq!(read_response(&mut stream).status, 404);
    // Then idle: closed, without an answer, about a second later.
    let idle = Instant::now();
    assert_eq!(read_all(&mut stream), "");
    let idled = idle.elapsed();
    assert!(idled >= Duration::from_millis(500), "{idled:?}");
    assert!(idled < Duration::from_secs(10), "{idled:?}");
    // HTTP/1.0 without `Connection: keep-alive` is not kept alive at all.
    let old = b"GET /v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef HTTP/1.0\r\nHost: x\r\n\r\n";
    let started = Instant::now();
    let answer = read_all(&mut connect(&proxy, old));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // The metrics listener's connections too.
    let mut scrape = connect_to(proxy.metrics, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(read_response(&mut scrape).status, 200);
    let scraped = Instant::now();
    assert_eq!(read_all(&mut scrape), "");
    assert!(
        scraped.elapsed() < Duration::from_secs(10),
        "{:?}",
        scraped.elapsed()
    );
    // And HTTP/1.0 is not kept alive there either (pingora's server application alone keeps it
    // for a minute).
    let started = Instant::now();
    let answer = read_all(&mut connect_to(
        proxy.metrics,
        b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_answer_read_for_longer_than_keepalive_timeout_is_read_whole() {
    let origin = Origin::start();
    let mut config = ProxyConfig::to(&origin.url).with("cache:\n  max_object: 1MiB\n");
    config.server_extra = "  keepalive_timeout: 1s\n".to_string();
    let proxy = Proxy::start(config);
    let service = new_service();
    // More than the sockets between them buffer, streamed (over max_object), read slowly for
    // about 5 s: the connection is not idle while its answer goes out.
    let bytes = png_bytes(16 * 1024 * 1024);
    let media = origin.upload(&service, &bytes, "image/png").await;
    let sid = media["sid"].as_str().expect("a media SID").to_string();
    let path = format!("/v1/Services/{service}/Media/{sid}/Content");
    let listen = proxy.listen;
    let (answer, took) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(listen).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // A small receive buffer (no autotuning): the answer cannot all sit in the kernel.
        small_receive_buffer(&stream, 256 * 1024);
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut chunk = vec![0; 384 * 1024];
        // To the end of the stream: kept alive, the connection closes a second after the
        // answer's end.
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_millis(100));
        }
        (answer, started.elapsed())
    })
    .await
    .expect("the reader");
    assert!(
        took >= Duration::from_secs(2),
        "read in {took:?}: too fast to tell"
    );
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let body_at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert_eq!(answer.len() - body_at, bytes.len(), "the whole body");
    assert!(answer[body_at..] == bytes[..]);
}

#[test]
fn the_metrics_listener_holds_its_clients_to_the_same_limits() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  head_timeout: 1s\n");
    let started = Instant::now();
    let mut stream = connect_to(proxy.metrics, b"GET /metrics HTTP/1.1\r\n");
    // The head never ends: pingora alone would wait for it for ever, a minute per read.
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // And it serves as before.
    let (status, _) =
        mediagate::process::http_request(proxy.metrics, "GET", "/readyz", &[], &[]).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn heads_too_large_or_with_too_many_headers_get_431() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  max_head_size: 8KiB\n  max_headers: 20\n");
    let path =
        "/v1/Services/IS0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef";
    let big = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let answer = read_all(&mut connect(&proxy, big.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(answer.contains("\"code\":91432"), "{answer:?}");
    // Host and 20 more headers are 21: one too many.
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let answer = read_all(&mut connect(&proxy, many.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(wait_for(Duration::from_secs(5), || {
        refused(&proxy, "head_too_large") == 1.0 && refused(&proxy, "too_many_headers") == 1.0
    }));
    // Within the limits (exactly 20 headers), the same request goes through.
    let nineteen: String = (0..18).map(|i| format!("X-H{i}: v\r\n")).collect();
    let fits = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{nineteen}\r\n");
    let answer = read_all(&mut connect(&proxy, fits.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert!(
        origin.journal().len() == 1,
        "only the request within limits reached the origin"
    );
}

#[test]
fn a_chunked_body_ends_at_its_last_chunk_not_at_data_that_looks_like_it() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "");
    let service = new_service();
    let data = b"plain words\r\n0\r\n\r\nand more after what looks like a last chunk";
    let mut request = format!(
        "POST /v1/Services/{service}/Media HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x};note=1\r\n",
        data.len()
    )
    .into_bytes();
    request.extend_from_slice(data);
    request.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    let answer = read_all(&mut connect(&proxy, &request));
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    assert_eq!(refused(&proxy, "head_too_large"), 0.0);
}

#[test]
fn connections_past_the_maximum_get_503_until_one_closes() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  max_connections: 3\n  head_timeout: 30s\n");
    let idle = hold_idle(&proxy, 3);
    let answer = read_all(&mut connect(
        &proxy,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("Retry-After: 1"), "{answer:?}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).expect("the error JSON");
    assert_eq!(json["code"], 91533);
    drop(idle);
    assert!(wait_for(Duration::from_secs(10), || {
        let answer = read_all(&mut connect(
            &proxy,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        answer.starts_with("HTTP/1.1 404")
    }));
    assert!(refused(&proxy, "max_connections") >= 1.0);
}

#[test]
fn a_body_that_barely_moves_is_cut_off() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  min_body_rate: 1KiB\n");
    let service = new_service();
    let head = format!(
        "POST /v1/Services/{service}/Media HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\nstarted"
    );
    let started = Instant::now();
    let mut stream = connect(&proxy, head.as_bytes());
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("too slowly"), "{answer:?}");
    // Judged over 5 s of waiting for the client.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(wait_for(Duration::from_secs(5), || refused(
        &proxy,
        "slow_body"
    ) == 1.0));
    assert!(origin.files_in("content").is_empty());
    // Recorded with the status the client was answered (pingora, which did not write it, has
    // none for it).
    proxy.wait_recorded(1);
    assert_eq!(
        proxy.metric(
            "mediagate_requests_total",
            &[("route", "upload"), ("status", "408")]
        ),
        Some(1.0),
        "{}",
        proxy.metrics_text()
    );
}

/// The median time of `n` small uploads, one after another.
fn median_upload(proxy: &Proxy, service: &str, n: usize) -> Duration {
    let body = png_bytes(4096);
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let (status, _) = mediagate::process::http_request(
                proxy.listen,
                "POST",
                &format!("/v1/Services/{service}/Media"),
                &[("Content-Type", "image/png")],
                &body,
            )
            .expect("upload");
            assert_eq!(status, 201);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn healthy_uploads_keep_their_latency_while_200_slow_connections_hang() {
    let origin = Origin::start();
    let proxy = proxy_with(&origin, "  head_timeout: 60s\n");
    let service = new_service();
    median_upload(&proxy, &service, 5); // warm-up
    let idle = median_upload(&proxy, &service, 30);
    let slow: Vec<TcpStream> = (0..200)
        .map(|_| connect(&proxy, b"POST /v1/Services/IS0123456789abcdef0123456789abcdef/Media HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    let mut writers: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            for writer in &mut writers {
                let _ = writer.write_all(b"X");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let attacked = median_upload(&proxy, &service, 30);
    let ratio = attacked.as_secs_f64() / idle.as_secs_f64();
    assert!(
        ratio < 2.0,
        "median upload {idle:?} idle, {attacked:?} with 200 slow connections ({ratio:.2}x)"
    );
    let _ = trickle.join();
    drop(slow);
}
