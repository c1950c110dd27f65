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

use std::sync::mpsc as reply;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::redis::{settle, Reservation};
use super::Outcome;
use crate::api::ServiceSid;
use crate::redis_link::RedisLink;

enum Job {
    Settle(ServiceSid, Reservation, Outcome),
    /// Answers once every settle queued before it has ended.
    Flush(reply::Sender<()>),
}

/// The queue to the settling thread.
pub struct Settler {
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the settling thread settles with.
pub struct Link {
    pub redis: RedisLink,
    pub script: Script,
}

impl Settler {
    /// Starts the settling thread, which lives as long as the process.
    pub fn start(link: Link) -> Result<Settler, String> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("quotas.backend: cannot start the settling runtime: {e}"))?;
        std::thread::Builder::new()
            .name("quota-settle".into())
            .spawn(move || runtime.block_on(serve(queue, Arc::new(link))))
            .map_err(|e| format!("quotas.backend: cannot start the settling thread: {e}"))?;
        Ok(Settler { jobs })
    }

    /// Queues a reservation to settle; never waits (it runs from `Drop`, on any thread).
    pub fn settle(&self, service: ServiceSid, reservation: Reservation, outcome: Outcome) {
        if self
            .jobs
            .send(Job::Settle(service, reservation, outcome))
            .is_err()
        {
            log::warn!("quota: the settling thread is gone; an upload's counts stay until their window passes");
        }
    }

    /// Waits, up to `within`, for every settle queued so far to end. Answers whether they did.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, ended) = reply::channel();
        self.jobs.send(Job::Flush(done)).is_ok() && ended.recv_timeout(within).is_ok()
    }
}

async fn serve(mut queue: mpsc::UnboundedReceiver<Job>, link: Arc<Link>) {
    let mut running = JoinSet::new();
    while let Some(job) = queue.recv().await {
        while running.try_join_next().is_some() {}
        match job {
            Job::Settle(service, reservation, outcome) => {
                let link = link.clone();
                running.spawn(async move {
                    if let Err(e) = settle(&link, &service, reservation, outcome).await {
                        crate::metrics::metrics().quota_backend_errors.inc();
                        log::warn!("quota: cannot settle an upload: {e}");
                    }
                });
            }
            Job::Flush(done) => {
                while running.join_next().await.is_some() {}
                let _ = done.send(());
            }
        }
    }
}
