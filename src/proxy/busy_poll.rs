//! `server.busy_poll`: keep the proxy's worker threads polling for connection events for a
//! short while after the last one, instead of putting them to sleep at once.
//!
//! Why: a sleeping thread is woken by the kernel, and on a virtual machine whose idle cores
//! halt, each such wake-up crosses the hypervisor. Measured on the 2-core VM of the load
//! comparison (`benches/load/wakeup.sh`, a one-byte TCP ping-pong on loopback): 16 µs round trip
//! with both ends on one core, 55-67 µs across the two, 21 µs across them when the receiving end
//! polls instead of sleeping. A proxied upload crosses between cores four times where a direct
//! one may not cross at all.
//!
//! The cost is CPU: while polling, a worker burns its core even with nothing to do, for at most
//! `busy_poll` after each request event. Off (0) by default; HAProxy's `busy-polling` makes the
//! same trade, without the bound.
//!
//! How: pingora builds the runtimes, so there is no hook where a worker parks. Instead as many
//! tasks as there are workers (the runtime spreads them) yield in a loop while the window is open; tokio answers a yielded task by polling
//! the I/O driver without blocking (`epoll_wait` with a zero timeout) before running it again,
//! so connection events are picked up without a wake-up. Once the window closes the task waits
//! on a `Notify` and the worker sleeps as usual.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub struct BusyPoll {
    window: Duration,
    workers: usize,
    /// When the current window closes, in nanoseconds since `epoch`.
    until: AtomicU64,
    epoch: Instant,
    polling: AtomicBool,
    wake: Notify,
    started: OnceLock<()>,
}

impl BusyPoll {
    /// `None` when `window` is zero: nothing to do, and nothing to call on the request path.
    pub fn new(window: Duration, workers: usize) -> Option<Arc<BusyPoll>> {
        (!window.is_zero()).then(|| {
            Arc::new(BusyPoll {
                window,
                workers: workers.max(1),
                until: AtomicU64::new(0),
                epoch: Instant::now(),
                polling: AtomicBool::new(false),
                wake: Notify::new(),
                started: OnceLock::new(),
            })
        })
    }

    /// A request event on a worker: keep polling for `window` from now. The first call starts the
    /// polling tasks, on the runtime it is made from (the proxy's).
    pub fn touch(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            for _ in 0..self.workers {
                tokio::spawn(self.clone().poll_while_open());
            }
        });
        let until = self.now() + self.window.as_nanos() as u64;
        // A racing touch on another worker may store an earlier end: a few µs, harmless.
        self.until.store(until, Ordering::Relaxed);
        if !self.polling.load(Ordering::Relaxed) && !self.polling.swap(true, Ordering::AcqRel) {
            self.wake.notify_waiters();
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    async fn poll_while_open(self: Arc<Self>) {
        loop {
            // Created before the checks below, so a `touch` made after them still wakes it.
            let woken = self.wake.notified();
            if !self.is_open() {
                self.polling.store(false, Ordering::Release);
                // A touch between the check and the store saw `polling` still set.
                if !self.is_open() {
                    woken.await;
                }
            }
            while self.is_open() {
                tokio::task::yield_now().await;
            }
        }
    }

    fn is_open(&self) -> bool {
        self.now() < self.until.load(Ordering::Relaxed)
    }
}
