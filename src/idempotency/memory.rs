//! The ledger of one sidecar: a map of keys, bounded in size. Waiters are woken when the upload
//! they wait for completes or is abandoned; a key whose claim was dropped unsettled is free
//! again at the next claim on it (its waiters look again within `WAIT_SLICE`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Answer, Claim, Claimed, IdempotencyKey, Lease, Ledger};
use crate::api::ServiceSid;

/// The most keys kept; past it, completed keys are dropped oldest first. At about 1 KiB each,
/// 100,000 keys hold some 100 MiB at worst.
const MAX_KEYS: usize = 100_000;
/// A waiter looks again after this long even without a wake-up.
const WAIT_SLICE: Duration = Duration::from_secs(1);

enum Slot {
    Running {
        token: u64,
        done: Arc<Notify>,
        /// The other end of the claim's `Lease::Local`: gone when the claim was dropped.
        claim: Weak<()>,
    },
    Done {
        answer: Answer,
        at: Instant,
    },
}

impl Slot {
    /// Whether an upload holds this key now.
    fn is_running(&self) -> bool {
        matches!(self, Slot::Running { claim, .. } if claim.strong_count() > 0)
    }
}

pub struct MemoryLedger {
    ttl: Duration,
    slots: Mutex<HashMap<(ServiceSid, IdempotencyKey), Slot>>,
    next_token: AtomicU64,
}

impl MemoryLedger {
    pub fn new(ttl: Duration) -> MemoryLedger {
        MemoryLedger {
            ttl,
            slots: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<(ServiceSid, IdempotencyKey), Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more key: expired keys first, then the oldest completed ones.
    fn make_room(&self, slots: &mut HashMap<(ServiceSid, IdempotencyKey), Slot>) {
        if slots.len() < MAX_KEYS {
            return;
        }
        slots.retain(|_, slot| match slot {
            Slot::Done { at, .. } => at.elapsed() < self.ttl,
            Slot::Running { .. } => slot.is_running(),
        });
        if slots.len() < MAX_KEYS {
            return;
        }
        let mut done: Vec<(Instant, (ServiceSid, IdempotencyKey))> = slots
            .iter()
            .filter_map(|(k, slot)| match slot {
                Slot::Done { at, .. } => Some((*at, k.clone())),
                Slot::Running { .. } => None,
            })
            .collect();
        done.sort_by_key(|(at, _)| *at);
        for (_, key) in done.into_iter().take(MAX_KEYS / 10) {
            slots.remove(&key);
        }
    }

    /// Replaces the claim's slot, if it is still the claim's, by `next` (or nothing), under one
    /// lock: no claim can slip in between. Returns the waiters' notifier.
    fn release(&self, claim: &Claim, next: Option<Slot>) -> Option<Arc<Notify>> {
        let mut slots = self.slots();
        let id = (claim.service, claim.key.clone());
        let done = match slots.get(&id) {
            Some(Slot::Running { token, done, .. }) if *token == claim.token => done.clone(),
            _ => return None,
        };
        match next {
            Some(slot) => slots.insert(id, slot),
            None => slots.remove(&id),
        };
        Some(done)
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn claim(&self, service: &ServiceSid, key: &IdempotencyKey) -> Result<Claimed, String> {
        let mut slots = self.slots();
        let id = (*service, key.clone());
        match slots.get(&id) {
            Some(Slot::Done { answer, at }) if at.elapsed() < self.ttl => {
                return Ok(Claimed::Done(answer.clone()))
            }
            Some(slot) if slot.is_running() => return Ok(Claimed::Running),
            Some(Slot::Running { .. }) => {
                log::warn!(
                    "an upload under an Idempotency-Key of {service} ended unsettled; the key is free again"
                );
            }
            _ => {}
        }
        self.make_room(&mut slots);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(());
        slots.insert(
            id,
            Slot::Running {
                token,
                done: Arc::new(Notify::new()),
                claim: Arc::downgrade(&lease),
            },
        );
        Ok(Claimed::First(Claim {
            service: *service,
            key: key.clone(),
            token,
            lease: Lease::Local(lease),
        }))
    }

    async fn wait(&self, service: &ServiceSid, key: &IdempotencyKey) {
        let done = match self.slots().get(&(*service, key.clone())) {
            Some(slot @ Slot::Running { done, .. }) if slot.is_running() => done.clone(),
            _ => return,
        };
        let notified = done.notified();
        tokio::pin!(notified);
        // Registered before looking again, so a completion in between is not missed.
        notified.as_mut().enable();
        if !self
            .slots()
            .get(&(*service, key.clone()))
            .is_some_and(Slot::is_running)
        {
            return;
        }
        let _ = tokio::time::timeout(WAIT_SLICE, notified).await;
    }

    async fn complete(&self, claim: Claim, answer: Answer) -> Result<(), String> {
        let done = Slot::Done {
            answer,
            at: Instant::now(),
        };
        if let Some(waiters) = self.release(&claim, Some(done)) {
            waiters.notify_waiters();
        }
        Ok(())
    }

    async fn abandon(&self, claim: Claim) -> Result<(), String> {
        if let Some(waiters) = self.release(&claim, None) {
            waiters.notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn answer() -> Answer {
        Answer {
            status: 201,
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{\"sid\":\"ME1\"}"),
            body_sha256: [7; 32],
        }
    }

    /// A first claim on `key`, and what a second claim then finds: that it runs.
    async fn running(ledger: &MemoryLedger, service: &ServiceSid, key: &IdempotencyKey) -> Claim {
        let Claimed::First(claim) = ledger.claim(service, key).await.unwrap() else {
            panic!("first claim")
        };
        assert!(matches!(
            ledger.claim(service, key).await.unwrap(),
            Claimed::Running
        ));
        claim
    }

    #[tokio::test]
    async fn first_claims_repeats_wait_then_get_the_answer() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let key = IdempotencyKey::parse(b"k1").unwrap();
        let claim = running(&ledger, &service, &key).await;
        ledger.complete(claim, answer()).await.unwrap();
        match ledger.claim(&service, &key).await.unwrap() {
            Claimed::Done(a) => assert_eq!(a, answer()),
            other => panic!("{other:?}"),
        }
        // Another service's key of the same name is its own.
        let other = ServiceSid::parse("IS00000000000000000000000000000002").unwrap();
        assert!(matches!(
            ledger.claim(&other, &key).await.unwrap(),
            Claimed::First(_)
        ));
    }

    #[tokio::test]
    async fn a_claim_dropped_unsettled_frees_its_key() {
        let ledger = MemoryLedger::new(Duration::from_secs(60));
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let key = IdempotencyKey::parse(b"k3").unwrap();
        let claim = running(&ledger, &service, &key).await;
        // As when a request's context is dropped without `logging` (a panic in a hook).
        drop(claim);
        // A waiter does not wait on it, and the next claim runs.
        tokio::time::timeout(Duration::from_millis(100), ledger.wait(&service, &key))
            .await
            .expect("no wait on a dropped claim");
        let Claimed::First(claim) = ledger.claim(&service, &key).await.unwrap() else {
            panic!("free after its claim was dropped")
        };
        // Settling the new claim works as ever.
        ledger.complete(claim, answer()).await.unwrap();
        assert!(matches!(
            ledger.claim(&service, &key).await.unwrap(),
            Claimed::Done(_)
        ));
    }

    #[tokio::test]
    async fn an_abandoned_key_is_free_and_expired_answers_are_gone() {
        let ledger = MemoryLedger::new(Duration::ZERO);
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let key = IdempotencyKey::parse(b"k2").unwrap();
        let Claimed::First(claim) = ledger.claim(&service, &key).await.unwrap() else {
            panic!()
        };
        ledger.abandon(claim).await.unwrap();
        let Claimed::First(claim) = ledger.claim(&service, &key).await.unwrap() else {
            panic!("free after abandon")
        };
        ledger.complete(claim, answer()).await.unwrap();
        // A TTL of zero keeps nothing.
        assert!(matches!(
            ledger.claim(&service, &key).await.unwrap(),
            Claimed::First(_)
        ));
    }
}
