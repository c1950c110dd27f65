//! Streams large uploads through the proxy to the local origin, with the upload policy off and
//! on, in one run: throughput of each and their ratio, and the proxy's peak RSS for 10 MiB and
//! 100 MiB files (streaming: it must not grow with the file size).
//!
//! Run: `cargo bench --bench upload_stream` (release build). Under `cargo test` it makes one
//! small pass only, to prove it works. The origin's store goes to /dev/shm when there is one, so
//! the disk does not set the pace.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use support::*;

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

struct Settings {
    big: usize,
    small: usize,
    rounds: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = if full {
        Settings {
            big: 100 * MIB,
            small: 10 * MIB,
            rounds: 5,
        }
    } else {
        Settings {
            big: 2 * MIB,
            small: MIB,
            rounds: 1,
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

fn store_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tmpfs dir")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

/// A proxy with the upload policy on (defaults: type allow-list, sniffing, size checks) or off
/// (sniffing off; the size count cannot be turned off).
fn proxy(origin: &Origin, policy: bool) -> Proxy {
    let uploads = if policy {
        "uploads:\n  max_size: 150MiB\n  sniff: true\n"
    } else {
        "uploads:\n  max_size: 150MiB\n  sniff: false\n"
    };
    Proxy::start(ProxyConfig::to(&origin.url).with(uploads))
}

/// Uploads `size` bytes of a PNG-looking body, streamed in 64 KiB chunks; the time it took.
async fn upload(client: &reqwest::Client, proxy: &Proxy, size: usize) -> Duration {
    let mut first = vec![7u8; CHUNK];
    first[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    let first = Bytes::from(first);
    let rest = Bytes::from(vec![7u8; CHUNK]);
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let chunk = if i == 0 { first.clone() } else { rest.clone() };
        let len = CHUNK.min(size - i * CHUNK);
        Ok::<_, std::io::Error>(chunk.slice(..len))
    });
    let service = new_service();
    let started = Instant::now();
    let response = client
        .post(proxy.url(&format!("/v1/Services/{service}/Media")))
        .header("Content-Type", "image/png")
        .header("Content-Length", size.to_string())
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    assert_eq!(
        response.status().as_u16(),
        201,
        "{:?}",
        response.text().await
    );
    started.elapsed()
}

fn peak_rss_kib(proxy: &Proxy) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mib_per_s(size: usize, took: Duration) -> f64 {
    size as f64 / MIB as f64 / took.as_secs_f64()
}

async fn run(s: Settings) {
    let store = store_dir();
    let origin = Origin::start_in(store.path().join("store"));
    let client = reqwest::Client::new();

    // Throughput: the two proxies take turns, so drift hits both alike.
    let off = proxy(&origin, false);
    let on = proxy(&origin, true);
    let (mut off_rates, mut on_rates) = (Vec::new(), Vec::new());
    upload(&client, &off, s.big).await; // warm-up: connections, page cache
    upload(&client, &on, s.big).await;
    for _ in 0..s.rounds {
        off_rates.push(mib_per_s(s.big, upload(&client, &off, s.big).await));
        on_rates.push(mib_per_s(s.big, upload(&client, &on, s.big).await));
    }
    let (off_rate, on_rate) = (median(off_rates), median(on_rates));
    drop((off, on));

    // Memory: fresh proxies, one per file size, policy on.
    let mut rss = Vec::new();
    for size in [s.small, s.big] {
        let fresh = proxy(&origin, true);
        for _ in 0..s.rounds.max(2) {
            upload(&client, &fresh, size).await;
        }
        rss.push((size, peak_rss_kib(&fresh)));
    }

    println!("| measure | policy off | policy on | on / off |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {} MiB uploads, median of {} (MiB/s) | {off_rate:.0} | {on_rate:.0} | {:.3} |",
        s.big / MIB,
        s.rounds,
        on_rate / off_rate
    );
    for (size, kib) in &rss {
        println!(
            "| proxy peak RSS after {} MiB uploads (MiB) | | {:.1} | |",
            size / MIB,
            *kib as f64 / 1024.0
        );
    }
}
