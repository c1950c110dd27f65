//! Admission cost with the Redis backend: many admissions (each then settled) from concurrent
//! tasks against a real redis-server on loopback, as a fleet's sidecar makes them. Reports
//! admissions per second and the latency of one admission (one Lua script, one round trip).
//!
//! Run: `cargo bench --bench quota_redis`. Under `cargo test` it makes a short pass only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mediagate::api::ServiceSid;
use mediagate::quota::{Limits, Outcome, Quota, RedisQuota};
use support::RedisServer;

const TASKS: usize = 16;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let per_task = if full { 2_000 } else { 20 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(per_task));
}

async fn run(per_task: usize) {
    let redis = RedisServer::start();
    let quota: Arc<dyn Quota> =
        Arc::new(RedisQuota::new(&redis.url(), Duration::from_secs(30)).expect("redis url"));
    let limits = Limits {
        uploads_per_minute: 1 << 40,
        bytes_per_hour: 1 << 50,
        concurrent_uploads: 1 << 20,
    };
    let service = ServiceSid::generate();
    // Warm-up: the connections (admission's, and settling's of its own) and the scripts'
    // first load.
    quota
        .admit(&service, limits, 1)
        .await
        .expect("admit")
        .settle(Outcome::Failed)
        .wait(Duration::from_secs(1))
        .await;

    let started = Instant::now();
    let tasks = (0..TASKS).map(|_| {
        let quota = quota.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let begun = Instant::now();
                let permit = quota.admit(&service, limits, 4096).await.expect("admit");
                latencies.push(begun.elapsed());
                drop(permit.settle(Outcome::Stored { bytes: 4096 }));
            }
            latencies
        })
    });
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!("| Redis admissions ({TASKS} concurrent tasks) | value |");
    println!("| --- | --- |");
    println!(
        "| admissions per second | {:.0} |",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!("| latency p50 | {:?} |", at(0.50));
    println!("| latency p99 | {:?} |", at(0.99));
}
