//! The ledger of a fleet, in the quota backend's Redis: one hash per key, claimed, completed
//! and abandoned by Lua scripts so that two sidecars never both run an upload under one key. A
//! running claim is a lease, renewed while its upload runs: a sidecar that dies frees its keys
//! one lease later, and an upload that runs longer than a lease keeps its key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::{Answer, Claim, Claimed, IdempotencyKey, Lease, Ledger};
use crate::api::ServiceSid;
use crate::redis_link::{bounded, millis, Leases, RedisLink};

/// How often a repeat looks again while the first upload runs on some sidecar.
const POLL: Duration = Duration::from_millis(100);

pub struct RedisLedger {
    redis: Arc<RedisLink>,
    claim: Script,
    complete: Script,
    abandon: Script,
    ttl: Duration,
    /// The keys of the uploads running here, held while their claims live.
    running: Arc<Leases>,
    /// Random per process, so tokens differ across the fleet.
    instance: u64,
    next: AtomicU64,
}

impl RedisLedger {
    pub fn new(url: &str, ttl: Duration, lease: Duration) -> Result<RedisLedger, String> {
        let redis = Arc::new(RedisLink::open(url, "quotas.backend")?);
        let renew = Script::new(include_str!("renew.lua"));
        Ok(RedisLedger {
            running: Leases::new(redis.clone(), renew, lease, "idempotency keys"),
            redis,
            claim: Script::new(include_str!("claim.lua")),
            complete: Script::new(include_str!("complete.lua")),
            abandon: Script::new(include_str!("abandon.lua")),
            ttl,
            instance: rand::random::<u64>() >> 16,
            next: AtomicU64::new(0),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        self.redis.connection().await
    }

    fn token(&self) -> u64 {
        // 48 bits of instance, 16 of sequence: unique enough across a fleet and a process.
        (self.instance << 16) ^ self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The `{…}` hash tag keeps a service's keys in one Redis Cluster slot, like its quotas.
fn redis_key(service: &ServiceSid, key: &IdempotencyKey) -> String {
    format!("mediagate:idempotency:{{{service}}}:{}", key.digest())
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn claim(&self, service: &ServiceSid, key: &IdempotencyKey) -> Result<Claimed, String> {
        let mut connection = self.connection().await?;
        let token = self.token();
        let hash = redis_key(service, key);
        let reply: Vec<Value> = bounded(
            self.claim
                .key(&hash)
                .arg(token.to_string())
                .arg(millis(self.running.lease()))
                .invoke_async(&mut connection),
        )
        .await?;
        parse_claim(&reply, || Claim {
            service: *service,
            key: key.clone(),
            token,
            lease: Lease::Fleet(self.running.hold(token.to_string(), hash)),
        })
    }

    async fn wait(&self, _service: &ServiceSid, _key: &IdempotencyKey) {
        tokio::time::sleep(POLL).await;
    }

    async fn complete(&self, claim: Claim, answer: Answer) -> Result<(), String> {
        let mut connection = self.connection().await?;
        bounded(
            self.complete
                .key(redis_key(&claim.service, &claim.key))
                .arg(claim.token.to_string())
                .arg(answer.status)
                .arg(answer.content_type.as_bytes())
                .arg(answer.body.as_ref())
                .arg(&answer.body_sha256[..])
                .arg(millis(self.ttl))
                .invoke_async::<i64>(&mut connection),
        )
        .await
        .map(drop)
    }

    async fn abandon(&self, claim: Claim) -> Result<(), String> {
        let mut connection = self.connection().await?;
        bounded(
            self.abandon
                .key(redis_key(&claim.service, &claim.key))
                .arg(claim.token.to_string())
                .invoke_async::<i64>(&mut connection),
        )
        .await
        .map(drop)
    }
}

fn parse_claim(reply: &[Value], claim: impl FnOnce() -> Claim) -> Result<Claimed, String> {
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let bad = || "redis: an idempotency reply of an unexpected shape".to_string();
    let state = reply.first().and_then(text).ok_or_else(bad)?;
    match state.as_slice() {
        b"first" => Ok(Claimed::First(claim())),
        b"running" => Ok(Claimed::Running),
        b"done" => {
            let field = |i: usize| reply.get(i).and_then(text).ok_or_else(bad);
            let status = String::from_utf8_lossy(&field(1)?)
                .parse()
                .map_err(|_| bad())?;
            let content_type = String::from_utf8_lossy(&field(2)?).into_owned();
            let body = Bytes::from(field(3)?);
            let body_sha256 = field(4)?.try_into().map_err(|_| bad())?;
            Ok(Claimed::Done(Answer {
                status,
                content_type,
                body,
                body_sha256,
            }))
        }
        _ => Err(bad()),
    }
}
