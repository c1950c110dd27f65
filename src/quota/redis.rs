//! The Redis backend: one quota for a fleet of sidecars. Every admission is one Lua script, one
//! round trip: it reads the windows, decides, and reserves atomically, so no two sidecars can
//! both take the last unit. Window keys expire on their own. Concurrency slots are leases in a
//! sorted set, renewed while this sidecar holds them: a sidecar that dies gives its slots back
//! one lease later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::settler::{Link, Settler};
use super::window::BUCKETS;
use super::{Limits, Outcome, OverQuota, Permit, Quota, Refused, HOUR_MS, MINUTE_MS};
use crate::api::{RejectReason, ServiceSid};
use crate::redis_link::{bounded, millis, Held, Leases, RedisLink};

pub struct RedisQuota {
    shared: Arc<Shared>,
}

struct Shared {
    redis: Arc<RedisLink>,
    admit: Script,
    /// Settles reservations, on a runtime and a connection of its own (`settler`).
    settler: Arc<Settler>,
    /// The slots this sidecar holds: slot id → its slots key.
    slots: Arc<Leases>,
    next_slot: AtomicU64,
    /// Makes slot ids unique across the fleet.
    instance: String,
}

impl RedisQuota {
    pub fn new(url: &str, lease: Duration) -> Result<RedisQuota, String> {
        let redis = Arc::new(RedisLink::open(url, "quotas.backend")?);
        let renew = Script::new(include_str!("renew.lua"));
        let settler = Settler::start(Link {
            redis: RedisLink::open(url, "quotas.backend")?,
            script: Script::new(include_str!("settle.lua")),
        })?;
        Ok(RedisQuota {
            shared: Arc::new(Shared {
                slots: Leases::new(redis.clone(), renew, lease, "quota slots"),
                redis,
                admit: Script::new(include_str!("admit.lua")),
                settler: Arc::new(settler),
                next_slot: AtomicU64::new(0),
                instance: crate::api::MediaSid::generate().as_str()[2..14].to_string(),
            }),
        })
    }
}

/// The keys of one service; the `{…}` hash tag keeps them in one Redis Cluster slot.
fn keys(service: &ServiceSid) -> [String; 3] {
    ["uploads", "bytes", "slots"].map(|kind| format!("mediagate:quota:{{{service}}}:{kind}"))
}

impl Shared {
    async fn connection(&self) -> Result<ConnectionManager, String> {
        self.redis.connection().await
    }
}

/// Settles one reservation: its counts kept as sent or given back, its slot freed. On the
/// settling thread (`settler`).
pub(super) async fn settle(
    link: &Link,
    service: &ServiceSid,
    reservation: Reservation,
    outcome: Outcome,
) -> Result<(), String> {
    let [uploads, bytes, slots] = keys(service);
    let (stored, sent) = match outcome {
        Outcome::Stored { bytes } => (1, bytes),
        Outcome::Failed => (0, 0),
    };
    let mut connection = link.redis.connection().await?;
    bounded(
        link.script
            .key(uploads)
            .key(bytes)
            .key(slots)
            .arg(stored)
            .arg(reservation.bytes)
            .arg(sent)
            .arg(reservation.upload_bucket)
            .arg(reservation.bytes_bucket)
            .arg(&reservation.slot)
            .invoke_async::<i64>(&mut connection),
    )
    .await
    .map(drop)
}

fn release_slot_later(mut connection: ConnectionManager, key: String, slot: String) {
    tokio::spawn(async move {
        let released: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(&key)
            .arg(&slot)
            .query_async(&mut connection)
            .await;
        if released.is_err() {
            crate::metrics::metrics().quota_backend_errors.inc();
        }
    });
}

/// What one admission took, to settle it later.
pub(super) struct Reservation {
    /// The slot's lease, renewed until the reservation is settled or dropped (held for its
    /// `Drop`).
    _lease: Option<Held>,
    slot: String,
    bytes: u64,
    /// The buckets the upload and its bytes were counted in; -1 where that limit was off, so
    /// nothing was counted (another sidecar's, or a later, count may be there).
    upload_bucket: i64,
    bytes_bucket: i64,
}

#[async_trait]
impl Quota for RedisQuota {
    async fn reserve(
        &self,
        service: &ServiceSid,
        limits: Limits,
        bytes: u64,
    ) -> Result<Permit, Refused> {
        let shared = &self.shared;
        let slot = format!(
            "{}-{}",
            shared.instance,
            shared.next_slot.fetch_add(1, Ordering::Relaxed)
        );
        let [uploads_key, bytes_key, slots_key] = keys(service);
        let mut connection = shared.connection().await.map_err(Refused::Backend)?;
        let answer: (String, u64, i64, i64) = bounded(
            shared
                .admit
                .key(&uploads_key)
                .key(&bytes_key)
                .key(&slots_key)
                .arg(limits.uploads_per_minute)
                .arg(limits.bytes_per_hour)
                .arg(limits.concurrent_uploads)
                .arg(bytes)
                .arg(&slot)
                .arg(millis(shared.slots.lease()))
                .arg(MINUTE_MS / BUCKETS)
                .arg(HOUR_MS / BUCKETS)
                .arg(BUCKETS)
                .invoke_async(&mut connection),
        )
        .await
        .map_err(|e| {
            // The script may have run before the answer was lost: give back the slot it may
            // hold now rather than one lease later. Its counts stay until their window passes,
            // which errs towards refusing, never towards admitting more.
            release_slot_later(connection.clone(), slots_key.clone(), slot.clone());
            Refused::Backend(e)
        })?;
        let (verdict, retry_after_ms, upload_bucket, bytes_bucket) = answer;
        let reason = match verdict.as_str() {
            "ok" => None,
            "quota_concurrency" => Some(RejectReason::QuotaConcurrency),
            "quota_uploads" => Some(RejectReason::QuotaUploads),
            "quota_bytes" => Some(RejectReason::QuotaBytes),
            other => {
                return Err(Refused::Backend(format!(
                    "redis: unexpected answer {other:?}"
                )))
            }
        };
        if let Some(reason) = reason {
            return Err(Refused::Over(OverQuota::new(reason, retry_after_ms)));
        }
        let lease =
            (limits.concurrent_uploads > 0).then(|| shared.slots.hold(slot.clone(), slots_key));
        let reservation = Reservation {
            _lease: lease,
            slot,
            bytes,
            upload_bucket,
            bytes_bucket,
        };
        let settler = shared.settler.clone();
        let service = *service;
        // Settling must not hold up the request: it is queued. A failure is counted, and the
        // slot's lease ends it anyway.
        Ok(Permit::new(Box::new(move |outcome| {
            settler.settle(service, reservation, outcome)
        })))
    }

    fn finish(&self, within: Duration) {
        if !self.shared.settler.flush(within) {
            log::warn!("quota: uploads still settling after {within:?} at exit; their counts stay until their window passes");
        }
    }

    async fn reachable(&self) -> bool {
        match self.shared.connection().await {
            Ok(mut connection) => {
                bounded(redis::cmd("PING").query_async::<String>(&mut connection))
                    .await
                    .is_ok()
            }
            Err(_) => false,
        }
    }
}
