//! Idempotent uploads. A client that sends `Idempotency-Key: <opaque>` with an upload and sends
//! it again (its own retry after a timeout) gets the first upload's answer instead of creating a
//! second Media: for `uploads.idempotency_ttl` (24 h), per service. A repeat that arrives while
//! the first is still running waits for it; a repeat with a different body is refused (422).
//!
//! The ledger of keys is in memory, or in Redis when the quota backend is Redis, so that a fleet
//! of sidecars shares it (a client's retry may land on another sidecar). It knows nothing of
//! pingora: the proxy claims a key, and completes or abandons its claim when the upload ends.

mod memory;
mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use memory::MemoryLedger;
pub use redis::RedisLedger;

use crate::api::ServiceSid;
use crate::config::{Config, QuotaBackend};
use crate::redis_link::Held;

/// The longest key accepted (as IETF's draft suggests, keys are opaque but short).
pub const MAX_KEY_LEN: usize = 255;
/// The largest answer kept for replay: the Media JSON is well under 2 KiB.
pub const MAX_ANSWER: usize = 64 * 1024;

/// A key as the client sent it, checked: 1 to 255 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &[u8]) -> Option<IdempotencyKey> {
        let ok = (1..=MAX_KEY_LEN).contains(&value.len())
            && value.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        ok.then(|| IdempotencyKey(String::from_utf8_lossy(value).into_owned()))
    }

    /// A fixed-size name for storage: the key's SHA-256 (keys are opaque, never logged).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// The answer of a completed upload, and the fingerprint of the body it stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
    pub body_sha256: [u8; 32],
}

/// What a claim on a key found.
#[derive(Debug)]
pub enum Claimed {
    /// Nobody had it: this upload runs, and completes or abandons the claim.
    First(Claim),
    /// An upload under this key completed: its answer.
    Done(Answer),
    /// An upload under this key is running: wait, then claim again.
    Running,
}

/// The right to run the upload under one key, until completed or abandoned.
#[derive(Debug)]
pub struct Claim {
    pub service: ServiceSid,
    pub key: IdempotencyKey,
    /// Tells this claim from a later one on the same key (after an abandon).
    pub token: u64,
    /// What holds the key while the upload runs. Dropped with the claim on whatever path drops
    /// it (a request that ends without reaching `logging`, say), so that no key stays held by
    /// an upload that is gone: its repeats would be told 409 until the sidecar restarts.
    pub lease: Lease,
}

/// A running claim's hold on its key.
#[derive(Debug)]
pub enum Lease {
    /// In this sidecar's ledger: the key's slot holds the other end, and sees the claim gone.
    Local(Arc<()>),
    /// In Redis: renewed until dropped, then the key is freed one `quotas.slot_lease` later.
    Fleet(Held),
}

#[async_trait]
pub trait Ledger: Send + Sync {
    async fn claim(&self, service: &ServiceSid, key: &IdempotencyKey) -> Result<Claimed, String>;

    /// Returns when the running upload under `key` may have ended (or after a while).
    async fn wait(&self, service: &ServiceSid, key: &IdempotencyKey);

    /// The upload succeeded: repeats get `answer` until the TTL passes.
    async fn complete(&self, claim: Claim, answer: Answer) -> Result<(), String>;

    /// The upload failed: the key is free again, for the client's retry.
    async fn abandon(&self, claim: Claim) -> Result<(), String>;
}

/// The ledger for this configuration: Redis with a Redis quota backend, else memory.
pub fn ledger(config: &Config) -> Result<Arc<dyn Ledger>, String> {
    let ttl = config.uploads.idempotency_ttl.get();
    Ok(match &config.quotas.backend {
        QuotaBackend::Memory => Arc::new(MemoryLedger::new(ttl)),
        // A running upload's key is held like a concurrency slot: renewed while it runs, freed
        // one `quotas.slot_lease` after its sidecar dies.
        QuotaBackend::Redis(url) => {
            Arc::new(RedisLedger::new(url, ttl, config.quotas.slot_lease.get())?)
        }
    })
}

/// Fingerprints an upload's body as it streams.
#[derive(Default)]
pub struct BodyHasher(Sha256);

impl BodyHasher {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::parse(b"retry-7f3a").is_some());
        assert!(IdempotencyKey::parse(b"a b").is_some());
        assert!(IdempotencyKey::parse(b"").is_none());
        assert!(IdempotencyKey::parse(&[b'k'; 256]).is_none());
        assert!(IdempotencyKey::parse(b"tab\there").is_none());
        assert!(IdempotencyKey::parse("caf\u{e9}".as_bytes()).is_none());
        let digest = IdempotencyKey::parse(b"k").unwrap().digest();
        assert_eq!(digest.len(), 64);
    }
}
