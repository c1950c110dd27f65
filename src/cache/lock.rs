//! The lock that collapses concurrent misses of one key into one upstream fetch: pingora's
//! `CacheLock`, with one gap closed. pingora looks a key up and then takes its lock; a fill
//! that completes between the two gives the lock back just in time for the late request to take
//! it and fetch again. Here a request that gets the write lock checks the storage once more,
//! and when the entry has just arrived it waits (on a lock already released) and reads it.

use std::time::Duration;

use http::Extensions;
use pingora::cache::lock::{
    CacheKeyLock, CacheLock, LockCore, LockStatus, LockStub, Locked, ReadLock, WritePermit,
};
use pingora::cache::CacheKey;

use super::MemoryStore;

pub struct FillLock {
    inner: CacheLock,
    storage: &'static MemoryStore,
    age: Duration,
}

impl FillLock {
    /// `age`: how long one fill may hold a key before its waiters stop waiting.
    pub fn new(storage: &'static MemoryStore, age: Duration) -> FillLock {
        FillLock {
            inner: CacheLock::new(age),
            storage,
            age,
        }
    }

    /// A read lock whose writer is already done: its holder looks the key up again at once.
    fn already_filled(&self) -> ReadLock {
        let core = LockCore::new_arc(self.age, false, Extensions::new());
        let read = LockStub(core.clone()).read_lock();
        core.unlock(LockStatus::Done);
        read
    }
}

impl CacheKeyLock for FillLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        match self.inner.lock(key, stale_writer) {
            Locked::Write(permit) if !stale_writer && self.storage.holds_fresh(key) => {
                self.inner.release(key, permit, LockStatus::Done);
                Locked::Read(self.already_filled())
            }
            locked => locked,
        }
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.inner.release(key, permit, reason);
    }

    /// A writer that stops filling for a reason of its own leaves the key to the readers
    /// waiting on it. After a HEAD one of them fills it, rather than all going upstream
    /// uncached. Without room for the fill, each goes upstream uncached at once: a fill
    /// started now would most likely find no room either, and they would wait for it in turn.
    fn custom_lock_status(&self, reason: &'static str) -> LockStatus {
        if reason == super::NO_FILL_ROOM {
            LockStatus::GiveUp
        } else {
            LockStatus::TransientError
        }
    }
}
