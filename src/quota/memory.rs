//! The memory backend: exact for one sidecar. Services are spread over shards, each behind its
//! own lock, so admissions of different services rarely meet; the number of services tracked is
//! bounded, and services with nothing counted are forgotten first.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;

use super::window::Window;
use super::{Limits, Outcome, OverQuota, Permit, Quota, Refused, Settled, HOUR_MS, MINUTE_MS};
use crate::api::{RejectReason, ServiceSid};

const SHARDS: usize = 32;
/// Services tracked per shard at most (65,536 in all).
const SERVICES_PER_SHARD: usize = 2048;
/// A full concurrency limit has no window to wait for: suggest a second.
const CONCURRENCY_RETRY_MS: u64 = 1000;

struct Usage {
    uploads: Window,
    bytes: Window,
    in_flight: u64,
    last_used_ms: u64,
}

impl Usage {
    fn new() -> Usage {
        Usage {
            uploads: Window::new(MINUTE_MS),
            bytes: Window::new(HOUR_MS),
            in_flight: 0,
            last_used_ms: 0,
        }
    }

    fn idle(&self, now_ms: u64) -> bool {
        self.in_flight == 0 && self.uploads.is_empty(now_ms) && self.bytes.is_empty(now_ms)
    }

    /// Checks every limit, then reserves against all of them, or none.
    fn try_reserve(&mut self, limits: Limits, bytes: u64, now_ms: u64) -> Result<(), OverQuota> {
        if limits.concurrent_uploads > 0 && self.in_flight >= limits.concurrent_uploads {
            return Err(OverQuota::new(
                RejectReason::QuotaConcurrency,
                CONCURRENCY_RETRY_MS,
            ));
        }
        let per_minute = limits.uploads_per_minute;
        if per_minute > 0 && self.uploads.total(now_ms) + 1 > per_minute {
            let wait = self.uploads.retry_after_ms(now_ms, 1, per_minute);
            return Err(OverQuota::new(RejectReason::QuotaUploads, wait));
        }
        let per_hour = limits.bytes_per_hour;
        if per_hour > 0 && self.bytes.total(now_ms) + bytes > per_hour {
            let wait = self.bytes.retry_after_ms(now_ms, bytes, per_hour);
            return Err(OverQuota::new(RejectReason::QuotaBytes, wait));
        }
        self.uploads.add(now_ms, 1);
        self.bytes.add(now_ms, bytes);
        self.in_flight += 1;
        self.last_used_ms = now_ms;
        Ok(())
    }

    fn settle(&mut self, at_ms: u64, reserved: u64, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Stored { bytes } if bytes >= reserved => {
                self.bytes.add(at_ms, bytes - reserved)
            }
            Outcome::Stored { bytes } => self.bytes.remove(at_ms, reserved - bytes),
            Outcome::Failed => {
                self.uploads.remove(at_ms, 1);
                self.bytes.remove(at_ms, reserved);
            }
        }
    }
}

type Shard = Mutex<HashMap<ServiceSid, Usage>>;

pub struct MemoryQuota {
    shards: Arc<[Shard]>,
    hasher: RandomState,
    started: Instant,
}

impl Default for MemoryQuota {
    fn default() -> Self {
        MemoryQuota::new()
    }
}

impl MemoryQuota {
    pub fn new() -> MemoryQuota {
        MemoryQuota {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn shard_index(&self, service: &ServiceSid) -> usize {
        (self.hasher.hash_one(service) % SHARDS as u64) as usize
    }

    fn lock(shards: &[Shard], index: usize) -> MutexGuard<'_, HashMap<ServiceSid, Usage>> {
        // The counters stay consistent even if a holder panicked: keep using them.
        shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Room for one more service: forget idle ones, else the least recently used without
    /// uploads in flight (its history is lost, the one way this backend can forget).
    fn make_room(shard: &mut HashMap<ServiceSid, Usage>, now_ms: u64) {
        if shard.len() < SERVICES_PER_SHARD {
            return;
        }
        shard.retain(|_, usage| !usage.idle(now_ms));
        if shard.len() < SERVICES_PER_SHARD {
            return;
        }
        let oldest = shard
            .iter()
            .filter(|(_, usage)| usage.in_flight == 0)
            .min_by_key(|(_, usage)| usage.last_used_ms)
            .map(|(sid, _)| *sid);
        if let Some(sid) = oldest {
            shard.remove(&sid);
        }
    }
}

#[async_trait]
impl Quota for MemoryQuota {
    async fn reserve(
        &self,
        service: &ServiceSid,
        limits: Limits,
        bytes: u64,
    ) -> Result<Permit, Refused> {
        let now_ms = self.now_ms();
        let index = self.shard_index(service);
        {
            let mut shard = MemoryQuota::lock(&self.shards, index);
            if !shard.contains_key(service) {
                MemoryQuota::make_room(&mut shard, now_ms);
            }
            let usage = shard.entry(*service).or_insert_with(Usage::new);
            usage
                .try_reserve(limits, bytes, now_ms)
                .map_err(Refused::Over)?;
        }
        let shards = self.shards.clone();
        let service = *service;
        Ok(Permit::new(Box::new(move |outcome| {
            let mut shard = MemoryQuota::lock(&shards, index);
            if let Some(usage) = shard.get_mut(&service) {
                usage.settle(now_ms, bytes, outcome);
            }
            Settled::done()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u64, per_hour: u64, concurrent: u64) -> Limits {
        Limits {
            uploads_per_minute: per_minute,
            bytes_per_hour: per_hour,
            concurrent_uploads: concurrent,
        }
    }

    fn sid() -> ServiceSid {
        ServiceSid::generate()
    }

    fn reason(result: Result<Permit, Refused>) -> Option<RejectReason> {
        match result {
            Ok(_) => None,
            Err(Refused::Over(over)) => Some(over.reason),
            Err(Refused::Backend(e)) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn uploads_per_minute_is_exact_and_failures_refund() {
        let quota = MemoryQuota::new();
        let s = sid();
        let mut permits = Vec::new();
        for _ in 0..3 {
            permits.push(quota.admit(&s, limits(3, 0, 0), 1).await.unwrap());
        }
        assert_eq!(
            reason(quota.admit(&s, limits(3, 0, 0), 1).await),
            Some(RejectReason::QuotaUploads)
        );
        drop(permits.pop().unwrap().settle(Outcome::Failed));
        assert!(quota.admit(&s, limits(3, 0, 0), 1).await.is_ok());
    }

    #[tokio::test]
    async fn bytes_are_settled_to_what_was_sent() {
        let quota = MemoryQuota::new();
        let s = sid();
        let l = limits(0, 100, 0);
        let settled = quota
            .admit(&s, l, 80)
            .await
            .unwrap()
            .settle(Outcome::Stored { bytes: 30 });
        drop(settled);
        let _held = quota.admit(&s, l, 70).await.unwrap();
        assert_eq!(
            reason(quota.admit(&s, l, 1).await),
            Some(RejectReason::QuotaBytes)
        );
    }

    #[tokio::test]
    async fn a_dropped_permit_gives_its_slot_back() {
        let quota = MemoryQuota::new();
        let s = sid();
        let l = limits(0, 0, 1);
        let held = quota.admit(&s, l, 0).await.unwrap();
        assert_eq!(
            reason(quota.admit(&s, l, 0).await),
            Some(RejectReason::QuotaConcurrency)
        );
        drop(held);
        assert!(quota.admit(&s, l, 0).await.is_ok());
    }

    #[tokio::test]
    async fn services_are_counted_apart_and_unlimited_ones_not_at_all() {
        let quota = MemoryQuota::new();
        let (a, b) = (sid(), sid());
        let _held = quota.admit(&a, limits(1, 0, 0), 0).await.unwrap();
        assert!(quota.admit(&b, limits(1, 0, 0), 0).await.is_ok());
        assert!(quota.admit(&a, limits(0, 0, 0), 0).await.is_ok());
        let tracked: usize = quota.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(tracked, 2);
    }
}
