//! Where Redis reservations are settled: a thread of its own, with its own runtime and its own
//! connection, outside pingora's runtimes.
//!
//! A reservation is settled when its upload ends, and dropping one settles it as failed. Settled
//! on pingora's runtime, the reservations of uploads still running when the grace period ran
//! out were lost: pingora then shuts its runtimes down, which drops those requests, and a
//! settle spawned on a runtime shutting down never runs. Their counts stayed in the fleet's
//! windows (up to `max_size` of `bytes_per_hour`, for an hour) and the client's retry was
//! counted again: a rolling deploy could push services into 429s. Here they are queued to a
//! runtime that outlives pingora's, and the proxy waits for the queue at exit (`flush`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as reply;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::redis::{settle, Reservation};
use super::{Outcome, Settled};
use crate::api::ServiceSid;
use crate::redis_link::RedisLink;

enum Job {
    /// A reservation to settle, and who to tell when its call has ended.
    Settle(ServiceSid, Reservation, Outcome, oneshot::Sender<()>),
    /// Answers once every settle queued before it has ended.
    Flush(reply::Sender<()>),
}

/// The queue to the settling thread.
pub struct Settler {
    jobs: mpsc::UnboundedSender<Job>,
    /// Settles queued and not yet ended.
    pending: Arc<AtomicUsize>,
}

/// What the settling thread settles with.
pub struct Link {
    pub redis: RedisLink,
    pub script: Script,
}

/// How long `flush` waits for settles queued after it found none left.
const LATE_DROPS: Duration = Duration::from_millis(50);

impl Settler {
    /// Starts the settling thread, which lives as long as the process.
    pub fn start(link: Link) -> Result<Settler, String> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("quotas.backend: cannot start the settling runtime: {e}"))?;
        let counted = pending.clone();
        std::thread::Builder::new()
            .name("quota-settle".into())
            .spawn(move || runtime.block_on(serve(queue, Arc::new(link), counted)))
            .map_err(|e| format!("quotas.backend: cannot start the settling thread: {e}"))?;
        Ok(Settler { jobs, pending })
    }

    /// Queues a reservation to settle; never waits (it runs from `Drop`, on any thread). The
    /// answer tells when the settle has reached Redis, for a caller that must not go on before.
    pub fn settle(
        &self,
        service: ServiceSid,
        reservation: Reservation,
        outcome: Outcome,
    ) -> Settled {
        let (ended, settled) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        let job = Job::Settle(service, reservation, outcome, ended);
        if self.jobs.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            log::warn!(
                "quota: the settling thread is gone; an upload's counts stay until their window passes"
            );
        }
        Settled::when(settled)
    }

    /// Waits, up to `within`, for every settle queued so far to end, and for those queued
    /// meanwhile: pingora's runtimes may still be dropping requests (each settling its upload)
    /// after `Server::run` has returned. Answers whether none was left.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let (done, ended) = reply::channel();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.jobs.send(Job::Flush(done)).is_err() || ended.recv_timeout(left).is_err() {
                return false;
            }
            if self.pending.load(Ordering::Acquire) == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(LATE_DROPS.min(left));
                if self.pending.load(Ordering::Acquire) == 0 {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

async fn serve(
    mut queue: mpsc::UnboundedReceiver<Job>,
    link: Arc<Link>,
    pending: Arc<AtomicUsize>,
) {
    let mut running = JoinSet::new();
    while let Some(job) = queue.recv().await {
        while running.try_join_next().is_some() {}
        match job {
            Job::Settle(service, reservation, outcome, ended) => {
                let (link, pending) = (link.clone(), pending.clone());
                running.spawn(async move {
                    if let Err(e) = settle(&link, &service, reservation, outcome).await {
                        crate::metrics::metrics().quota_backend_errors.inc();
                        log::warn!("quota: cannot settle an upload: {e}");
                    }
                    pending.fetch_sub(1, Ordering::AcqRel);
                    let _ = ended.send(());
                });
            }
            Job::Flush(done) => {
                while running.join_next().await.is_some() {}
                let _ = done.send(());
            }
        }
    }
}
