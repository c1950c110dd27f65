//! The cache: what is cached (`Kind`), under which key, for how long (`rules`), and where
//! (`storage`, pingora-cache's `Storage` for production, bounded by an LRU eviction manager).
//!
//! Nothing here knows pingora's `Session`; the proxy enables the cache per request and asks
//! these functions. Keys hold the service and media SIDs and the kind, nothing else from the
//! client: access checks run before the cache, and no client credential ever goes upstream (the
//! proxy injects the service's own), so one service's answer is never served to another.

mod lock;
mod predictor;
pub mod rules;
mod storage;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::LazyLock;
use std::time::Duration;

use pingora::cache::eviction::lru::Manager as LruManager;
use pingora::cache::eviction::{CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CompactCacheKey, HashBinary};
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheKey, HttpCache};

use lock::FillLock;
use predictor::TooLarge;
pub use rules::CachePolicy;
pub use storage::{FreshHit, MemoryStore};

/// Why an answer is not cached when fills in progress hold the whole fill bound: its readers
/// waiting on the key's lock are let go upstream at once (`FillLock::custom_lock_status`).
pub const NO_FILL_ROOM: &str = "no room for the fill";

use crate::api::{MediaSid, Route, ServiceSid};

/// The two things the cache holds, each with its own TTL and counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET …/Media/{ME}`: the Media JSON.
    Metadata,
    /// `GET …/Media/{ME}/Content`: the bytes.
    Content,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Metadata, Kind::Content];

    /// The `kind` label of the cache metrics, also the key's user tag.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Metadata => "metadata",
            Kind::Content => "content",
        }
    }

    fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.label() == label)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kind a route's answer is cached as, if it is cacheable at all.
    pub fn of(route: &Route) -> Option<Kind> {
        match route {
            Route::Metadata { .. } => Some(Kind::Metadata),
            Route::Content { .. } => Some(Kind::Content),
            Route::Upload { .. } | Route::MediaSet { .. } => None,
        }
    }
}

/// What the cache did for one request: the `result` label and the `Mediagate-Cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Hit, Outcome::Miss, Outcome::Stale, Outcome::Bypass];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }
}

/// The key of one cached answer.
pub fn key(service: &ServiceSid, media: &MediaSid, kind: Kind) -> CacheKey {
    let primary = Primary::of(service, media, kind);
    let label = kind.label();
    let mut key = CacheKey::new(primary.as_bytes(), label);
    // Otherwise pingora hashes the primary key (BLAKE2b) each time it is asked for it: the
    // storage's lookup, the eviction entry, the lock.
    key.set_primary_bin_override(primary.hash());
    key
}

/// The same key in the form the eviction manager counts it, made without the strings a
/// `CacheKey` owns: for a hit served before pingora-cache (`MemoryStore::fresh_hit`).
pub fn compact_key(service: &ServiceSid, media: &MediaSid, kind: Kind) -> CompactCacheKey {
    CompactCacheKey {
        primary: Primary::of(service, media, kind).hash(),
        variance: None,
        user_tag: kind.label().into(),
    }
}

/// The longest primary key: two SIDs of 34 bytes, two slashes and a kind's label.
const PRIMARY_MAX: usize = 80;

/// A key's primary part, `service/media/kind`, built on the stack. SIDs have a fixed alphabet,
/// so `/` frames them unambiguously.
struct Primary {
    bytes: [u8; PRIMARY_MAX],
    len: usize,
}

impl Primary {
    fn of(service: &ServiceSid, media: &MediaSid, kind: Kind) -> Primary {
        let mut primary = Primary {
            bytes: [0; PRIMARY_MAX],
            len: 0,
        };
        primary.push(service.as_str());
        primary.push("/");
        primary.push(media.as_str());
        primary.push("/");
        primary.push(kind.label());
        primary
    }

    /// Parts have fixed lengths (SIDs are checked, labels are constants): they always fit.
    fn push(&mut self, part: &str) {
        let end = self.len + part.len();
        self.bytes[self.len..end].copy_from_slice(part.as_bytes());
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The 128-bit hash that files an entry: std's keyed SipHash (the HashDoS-resistant one,
    /// under keys drawn at start) twice, over two domains. Keyed, so no client can aim two keys
    /// at one entry; about a third of what BLAKE2b costs. Entries live in this process's
    /// memory only, so the hash never has to agree with another process's.
    fn hash(&self) -> HashBinary {
        static KEYS: LazyLock<RandomState> = LazyLock::new(RandomState::new);
        let half = |domain: u8| {
            let mut hasher = KEYS.build_hasher();
            hasher.write_u8(domain);
            hasher.write(self.as_bytes());
            hasher.finish().to_le_bytes()
        };
        let mut hash = [0; 16];
        hash[..8].copy_from_slice(&half(0));
        hash[8..].copy_from_slice(&half(1));
        hash
    }
}

fn bytes_limit(memory: u64) -> usize {
    usize::try_from(memory).unwrap_or(usize::MAX)
}

/// Sizes the eviction manager's LRU shards.
const LRU_SHARDS: usize = 16;
/// An estimate of the average entry, to size the LRU's index up front.
const TYPICAL_ENTRY: u64 = 16 * 1024;

/// The process-wide parts pingora holds as `'static` references: the storage, the eviction
/// manager that bounds it, and the lock that collapses concurrent misses.
pub struct Cache {
    pub storage: &'static MemoryStore,
    pub eviction: &'static (dyn EvictionManager + Sync),
    pub lock: &'static CacheKeyLockImpl,
    /// The eviction manager as what it is, to change its bound on reload.
    lru: &'static LruManager<LRU_SHARDS>,
    /// The keys whose answers were too large to keep: read past the cache from then on.
    too_large: &'static TooLarge,
}

impl Cache {
    /// Built once at start and never freed: pingora's cache API takes `'static` references.
    /// `memory` bounds the cached bytes; `lock_age` is how long a fill may hold the lock
    /// before waiters stop waiting for it.
    pub fn leak(memory: u64, lock_age: Duration) -> &'static Cache {
        let limit = bytes_limit(memory);
        let items = usize::try_from(memory / TYPICAL_ENTRY).unwrap_or(0).max(64);
        let eviction: &'static LruManager<LRU_SHARDS> =
            Box::leak(Box::new(LruManager::with_capacity(limit, items)));
        // Fills in progress get a bound of their own, as large as the cache's: they are
        // outside the eviction manager's count until they finish.
        let storage: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(limit)));
        storage.counted_by(eviction);
        let lock: &'static FillLock = Box::leak(Box::new(FillLock::new(storage, lock_age)));
        Box::leak(Box::new(Cache {
            storage,
            eviction,
            lock,
            lru: eviction,
            too_large: Box::leak(Box::new(TooLarge::new())),
        }))
    }

    /// Turns caching on for one request, over this storage, eviction and fill lock.
    pub fn enable_on(&'static self, http_cache: &mut HttpCache) {
        http_cache.enable(
            self.storage,
            Some(self.eviction),
            Some(self.too_large),
            Some(self.lock),
            None,
        );
    }

    /// A new bound on the cached bytes (`cache.memory` reloaded). A smaller bound is reached at
    /// once, by evicting the least recently used entries of each shard in turn; fills in
    /// progress keep what they hold, and new ones get room only below the new bound.
    pub fn resize(&self, memory: u64) {
        let limit = bytes_limit(memory);
        self.lru.set_weight_limit(limit);
        self.storage.set_fill_limit(limit);
        let shards = self.lru.shards();
        let (mut shard, mut empty_in_a_row) = (0, 0);
        while self.lru.total_size() > limit && empty_in_a_row < shards {
            match self.lru.peek_lru(shard) {
                Some(entry) => {
                    // The store first: a hit in between would readmit the key to the manager.
                    self.storage.remove(entry.key(), true);
                    self.lru.remove(CacheEntryKeyRef::from(&entry));
                    empty_in_a_row = 0;
                }
                None => empty_in_a_row += 1,
            }
            shard = (shard + 1) % shards;
        }
    }

    /// Drops both kinds cached for one media (`DELETE /cache/{IS}/{ME}`); returns how many
    /// entries were dropped.
    pub fn purge_media(&self, service: &ServiceSid, media: &MediaSid) -> usize {
        Kind::ALL
            .into_iter()
            .filter(|&kind| {
                let compact = key(service, media, kind).to_compact();
                // The store first: a hit in between would readmit the key to the manager.
                let removed = self.storage.remove(&compact, false);
                self.eviction.remove(CacheEntryKeyRef::KeyOnly(&compact));
                removed
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;

    #[test]
    fn keys_differ_by_service_media_and_kind() {
        let a = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let b = ServiceSid::parse("IS00000000000000000000000000000002").unwrap();
        let m = MediaSid::parse("ME00000000000000000000000000000001").unwrap();
        let n = MediaSid::parse("ME00000000000000000000000000000002").unwrap();
        let all = [
            key(&a, &m, Kind::Metadata),
            key(&a, &m, Kind::Content),
            key(&b, &m, Kind::Metadata),
            key(&a, &n, Kind::Metadata),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x.combined_bin(), y.combined_bin());
            }
        }
        assert_eq!(
            key(&a, &m, Kind::Content).combined_bin(),
            key(&a, &m, Kind::Content).combined_bin()
        );
        assert_eq!(key(&a, &m, Kind::Content).user_tag, "content");
    }

    #[test]
    fn the_compact_key_is_the_keys_compact_form() {
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let media = MediaSid::parse("ME00000000000000000000000000000002").unwrap();
        for kind in Kind::ALL {
            let full = key(&service, &media, kind);
            let primary = format!("{}/{}/{}", service.as_str(), media.as_str(), kind.label());
            assert_eq!(full.primary_key_str(), Some(primary.as_str()));
            assert_eq!(compact_key(&service, &media, kind), full.to_compact());
        }
    }
}
