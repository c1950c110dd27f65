//! Reads through the proxy with every read after the first a cache hit, and uncached (an origin
//! that answers `Cache-Control: no-store`: every read goes upstream, content through the signed
//! redirect as a client would follow it), in one run: metadata requests/s and 1 MiB content
//! MB/s, with concurrent keep-alive clients.
//!
//! Run: `cargo bench --bench cache_hit` (release build). Under `cargo test` it makes one short
//! pass only, to prove it works. The load is generated in this process (reqwest, same
//! machine): the figures compare the two paths, they are not the proxy's ceiling (for that, see
//! the nginx comparison).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use support::*;

const MIB: usize = 1 << 20;

struct Settings {
    duration: Duration,
    clients: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let settings = if full {
        Settings {
            duration: Duration::from_secs(5),
            clients: 32,
        }
    } else {
        Settings {
            duration: Duration::from_millis(200),
            clients: 4,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

/// Reads `path` from `clients` concurrent clients for `duration`: reads and bytes per second.
async fn load(proxy: &Proxy, path: &str, s: &Settings) -> (f64, f64) {
    let url = proxy.url(path);
    let reads = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients = (0..s.clients).map(|_| {
        let (url, reads, bytes) = (url.clone(), reads.clone(), bytes.clone());
        let client = reqwest::Client::new();
        let duration = s.duration;
        async move {
            while started.elapsed() < duration {
                let response = client.get(&url).send().await.expect("read");
                assert_eq!(response.status().as_u16(), 200);
                let body = response.bytes().await.expect("body");
                reads.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }
    });
    join_all(clients).await;
    let secs = started.elapsed().as_secs_f64();
    (
        reads.load(Ordering::Relaxed) as f64 / secs,
        bytes.load(Ordering::Relaxed) as f64 / secs,
    )
}

/// An origin holding one 1 MiB picture: its metadata and content paths.
async fn origin_with_media(args: &[&str]) -> (Origin, String, String) {
    let origin = Origin::start_with(OriginOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..OriginOptions::default()
    });
    let service = new_service();
    let media = origin.upload(&service, &png_bytes(MIB), "image/png").await;
    let sid = media["sid"].as_str().expect("sid");
    let metadata = format!("/v1/Services/{service}/Media/{sid}");
    let content = format!("{metadata}/Content");
    (origin, metadata, content)
}

async fn run(s: Settings) {
    let (origin, metadata, content) = origin_with_media(&[]).await;
    let (no_store, metadata_uncached, content_uncached) =
        origin_with_media(&["--cache-control", "no-store"]).await;
    let cached = Proxy::start(ProxyConfig::to(&origin.url));
    let uncached = Proxy::start(ProxyConfig::to(&no_store.url));
    let mut rows = Vec::new();
    for (what, hit_path, uncached_path) in [
        ("metadata", &metadata, &metadata_uncached),
        ("1 MiB content", &content, &content_uncached),
    ] {
        let (hit_rate, hit_bytes) = load(&cached, hit_path, &s).await;
        let (miss_rate, miss_bytes) = load(&uncached, uncached_path, &s).await;
        rows.push((what, hit_rate, hit_bytes, miss_rate, miss_bytes));
    }

    println!(
        "| reads, {} clients, {:?} each | cache hit | uncached | hit / uncached |",
        s.clients, s.duration
    );
    println!("| --- | --- | --- | --- |");
    for (what, hit_rate, hit_bytes, miss_rate, miss_bytes) in rows {
        if what == "metadata" {
            println!(
                "| {what} (requests/s) | {hit_rate:.0} | {miss_rate:.0} | {:.2} |",
                hit_rate / miss_rate
            );
        } else {
            let (hit, miss) = (hit_bytes / 1e6, miss_bytes / 1e6);
            println!(
                "| {what} (MB/s) | {hit:.0} | {miss:.0} | {:.2} |",
                hit / miss
            );
        }
    }
}
