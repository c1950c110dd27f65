//! Running servers as child processes (the demo, the tests): tie them to their parent, and know
//! when they are ready.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Exits the process once standard input reaches end-of-file, which happens when the parent that
/// holds the other end of the pipe exits, however it exits. Started by `--exit-with-parent`.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => continue,
            }
        }
    });
}

/// A one-shot HTTP/1.1 exchange over a fresh connection, answering the status and the body.
/// Enough for readiness probes and the demo's own calls; not a general client (no chunked
/// answers, no TLS).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no complete answer"))?;
    let status = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    Ok((status, answer[split + 4..].to_vec()))
}

/// Polls `GET /readyz` on `metrics` until it answers 200. `still_starting` is asked between
/// polls and ends the wait with its error (say, the server process exited).
pub fn wait_ready(
    metrics: SocketAddr,
    deadline: Duration,
    mut still_starting: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Ok((200, _)) = http_request(metrics, "GET", "/readyz", &[], &[]) {
            return Ok(());
        }
        still_starting()?;
        if Instant::now() > give_up {
            return Err(format!("not ready on {metrics} within {deadline:?}"));
        }
        std::thread::sleep(READY_POLL);
    }
}

const READY_POLL: Duration = Duration::from_millis(20);
