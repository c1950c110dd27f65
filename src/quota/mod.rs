//! Admission: per-service quotas on uploads per minute, bytes per hour and uploads in flight.
//!
//! A `Quota` backend reserves one upload, its declared bytes and a concurrency slot before an
//! upload goes upstream, and hands back a `Permit`. The permit settles the reservation when the
//! upload ends: to the bytes actually sent when it was stored, refunded when it failed. A permit
//! dropped without being settled (a panic, a client gone, any path the proxy did not foresee)
//! refunds and releases its slot, so capacity is never lost.
//!
//! Backends: `memory` (this sidecar alone) and `redis` (a fleet sharing one Redis). Both use
//! sliding windows of fixed buckets (see `window`), never fixed resets.

mod memory;
mod redis;
mod settler;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

pub use self::memory::MemoryQuota;
pub use self::redis::RedisQuota;

use crate::api::{RejectReason, ServiceSid};
use crate::config::{Config, QuotaBackend, Quotas};

pub const MINUTE_MS: u64 = 60_000;
pub const HOUR_MS: u64 = 3_600_000;

/// One service's limits; 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub uploads_per_minute: u64,
    pub bytes_per_hour: u64,
    pub concurrent_uploads: u64,
}

impl Limits {
    pub fn new(quotas: &Quotas) -> Limits {
        Limits {
            uploads_per_minute: quotas.uploads_per_minute,
            bytes_per_hour: quotas.bytes_per_hour.bytes(),
            concurrent_uploads: quotas.concurrent_uploads,
        }
    }

    /// The bytes an upload reserves: its declared size, or without one the most it may be,
    /// `max_size`, though never more than `bytes_per_hour`: a reservation over the hour's limit
    /// could never be admitted, however long the client waited. `Err` with that limit for an
    /// upload declared larger than it.
    pub fn bytes_to_reserve(&self, declared: Option<u64>, max_size: u64) -> Result<u64, u64> {
        let per_hour = self.bytes_per_hour;
        match declared {
            Some(size) if per_hour > 0 && size > per_hour => Err(per_hour),
            Some(size) => Ok(size),
            None if per_hour > 0 => Ok(max_size.min(per_hour)),
            None => Ok(max_size),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.uploads_per_minute == 0 && self.bytes_per_hour == 0 && self.concurrent_uploads == 0
    }
}

/// Every service's limits: the defaults and each listed service's own.
#[derive(Debug)]
pub struct LimitBook {
    default: Limits,
    per_service: HashMap<ServiceSid, Limits>,
}

impl LimitBook {
    pub fn new(config: &Config) -> LimitBook {
        LimitBook {
            default: Limits::new(&config.quotas),
            per_service: config
                .services
                .keys()
                .map(|sid| (*sid, Limits::new(&config.quotas_for(sid))))
                .collect(),
        }
    }

    pub fn for_service(&self, service: &ServiceSid) -> Limits {
        self.per_service
            .get(service)
            .copied()
            .unwrap_or(self.default)
    }
}

/// An upload over its service's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverQuota {
    pub reason: RejectReason,
    /// Whole seconds until enough quota is back for this upload.
    pub retry_after: u64,
}

impl OverQuota {
    fn new(reason: RejectReason, retry_after_ms: u64) -> OverQuota {
        OverQuota {
            reason,
            retry_after: retry_after_ms.div_ceil(1000).max(1),
        }
    }

    pub fn message(&self) -> String {
        let what = match self.reason {
            RejectReason::QuotaUploads => "uploads per minute",
            RejectReason::QuotaBytes => "bytes per hour",
            RejectReason::QuotaConcurrency => "uploads in flight",
            _ => "quota",
        };
        format!(
            "this service's {what} are used up; retry in {} s",
            self.retry_after
        )
    }
}

/// Why admission could not be decided.
#[derive(Debug)]
pub enum Refused {
    Over(OverQuota),
    /// The backend could not be asked; `quotas.on_backend_error` decides.
    Backend(String),
}

/// How an upload ended, for settling its reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream stored it: count the bytes actually sent.
    Stored { bytes: u64 },
    /// Refused upstream, failed, or abandoned: give everything back.
    Failed,
}

type Settle = Box<dyn FnOnce(Outcome) -> Settled + Send + Sync>;

/// When a settle has reached the backend: done already in memory; with Redis, when its call
/// has ended (answered or failed).
#[must_use = "a settle may be awaited, or dropped to let it run on its own"]
pub struct Settled(Option<oneshot::Receiver<()>>);

impl Settled {
    pub fn done() -> Settled {
        Settled(None)
    }

    pub(crate) fn when(ended: oneshot::Receiver<()>) -> Settled {
        Settled(Some(ended))
    }

    /// Waits until the settle has reached the backend, or `within` has passed.
    pub async fn wait(self, within: Duration) {
        if let Some(ended) = self.0 {
            let _ = tokio::time::timeout(within, ended).await;
        }
    }
}

/// A reservation. Settle it once the upload's fate is known; dropping it counts as `Failed`.
pub struct Permit {
    settle: Option<Settle>,
}

impl Permit {
    /// A permit that reserved nothing (no limits, or the backend was down and allowed it).
    pub fn free() -> Permit {
        Permit { settle: None }
    }

    fn new(settle: Settle) -> Permit {
        Permit {
            settle: Some(settle),
        }
    }

    pub fn settle(mut self, outcome: Outcome) -> Settled {
        match self.settle.take() {
            Some(settle) => settle(outcome),
            None => Settled::done(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            drop(settle(Outcome::Failed));
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.settle.is_some() {
            "Permit(reserved)"
        } else {
            "Permit(free)"
        })
    }
}

#[async_trait]
pub trait Quota: Send + Sync {
    /// Reserves one upload of `bytes` (0 when unknown) and a concurrency slot for `service`.
    /// A service without limits reserves nothing.
    async fn admit(
        &self,
        service: &ServiceSid,
        limits: Limits,
        bytes: u64,
    ) -> Result<Permit, Refused> {
        if limits.unlimited() {
            return Ok(Permit::free());
        }
        self.reserve(service, limits, bytes).await
    }

    /// The backend's reservation, for limits of which at least one is set.
    async fn reserve(
        &self,
        service: &ServiceSid,
        limits: Limits,
        bytes: u64,
    ) -> Result<Permit, Refused>;

    /// Whether the backend answers (for readiness).
    async fn reachable(&self) -> bool {
        true
    }

    /// At exit, once pingora has stopped: waits up to `within` for the settling of uploads
    /// that ended (or were cut off by the end of the grace period) to reach the backend.
    fn finish(&self, _within: Duration) {}
}

/// The backend `quotas.backend` names.
pub fn backend(config: &Config) -> Result<Arc<dyn Quota>, String> {
    Ok(match &config.quotas.backend {
        QuotaBackend::Memory => Arc::new(MemoryQuota::new()),
        QuotaBackend::Redis(url) => Arc::new(RedisQuota::new(url, config.quotas.slot_lease.get())?),
    })
}
