//! `MemoryStore`: pingora-cache's `Storage` for production. Whole answers are held in memory,
//! one contiguous buffer each, so a hit is a reference count and Range is a slice. The bound
//! on memory is the LRU eviction manager's (see `Cache::leak`): pingora admits each finished
//! entry to it with the weight this store reports and purges what it evicts. This store counts
//! the bytes it holds per kind (`mediagate_cache_bytes`) and the entries evicted
//! (`mediagate_cache_evictions_total`).
//!
//! Fills in progress are outside the eviction manager's view until they finish, so the store
//! bounds them itself (`FillBudget`): otherwise concurrent first reads of many large media
//! would each buffer up to `cache.max_object` with nothing to stop them. A fill that finds no
//! room is skipped: its reader is served as before, and nothing is kept. The proxy asks
//! `has_fill_room` with the answer's head first, so that an answer known to be too large is
//! never taken for the cache at all.
//!
//! pingora purges what its eviction manager evicts in a task of its own, some time after the
//! manager chose it, by key: by then the key may be back (filled again, or hit again, which
//! readmits it). Such a purge is skipped, or it would drop a fresh entry the manager counts (its
//! weight held for nothing, the cache kept below its bound until the key aged out). A narrow
//! window stays: a purge that looks between a refill's insert and pingora's admission of it.
//! Closing it needs entry generations (pingora's `CacheEntryId`); its cost is the same
//! under-filling, never more than the bound.
//!
//! pingora's own `MemCache` is documented as test-only: it has no bound and no eviction.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::{CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use pingora_prometheus::prometheus::{IntCounter, IntGauge};

use super::{rules, Kind};
use crate::metrics::metrics;

/// Independent locks, so that concurrent hits on different keys do not contend.
const SHARDS: usize = 16;
/// What an entry costs beyond its body: the header map, the meta and the index.
const ENTRY_OVERHEAD: usize = 256;
/// A buffer grown past its content by more than this share is copied to an exact fit, so the
/// weight reported for eviction is what the entry really holds.
const SLACK_DIVISOR: usize = 8;
/// The most a fill reserves up front from a `Content-Length`; beyond, the buffer grows.
const MAX_PREALLOCATION: usize = 32 * 1024 * 1024;

/// One cached answer.
struct Entry {
    kind: Kind,
    header: ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    body: Bytes,
    /// The weight reported to the eviction manager and counted in `mediagate_cache_bytes`.
    weight: usize,
}

impl Entry {
    fn meta(&self) -> CacheMeta {
        CacheMeta::new(self.fresh_until, self.created, 0, 0, self.header.clone())
    }
}

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>>>;

pub struct MemoryStore {
    shards: Vec<Shard>,
    /// The eviction manager that counts this store's entries (`Cache::leak`).
    eviction: OnceLock<&'static (dyn EvictionManager + Sync)>,
    bytes: [IntGauge; 2],
    evictions: [IntCounter; 2],
    fills: FillBudget,
    fills_skipped: [IntCounter; 2],
    early_hits: [IntCounter; 2],
}

impl MemoryStore {
    /// `fill_limit` bounds the bytes all fills in progress may buffer together.
    pub fn new(fill_limit: usize) -> MemoryStore {
        let m = metrics();
        let by_kind = |kind: Kind| kind.label();
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            eviction: OnceLock::new(),
            bytes: Kind::ALL.map(|k| m.cache_bytes.with_label_values(&[by_kind(k)])),
            evictions: Kind::ALL.map(|k| m.cache_evictions.with_label_values(&[by_kind(k)])),
            fills: FillBudget {
                taken: AtomicUsize::new(0),
                limit: AtomicUsize::new(fill_limit),
                gauge: m.cache_fill_bytes.clone(),
            },
            fills_skipped: Kind::ALL
                .map(|k| m.cache_fills_skipped.with_label_values(&[by_kind(k)])),
            early_hits: Kind::ALL.map(|k| m.cache_early_hits.with_label_values(&[by_kind(k)])),
        }
    }

    /// Ties the store to the eviction manager that counts its entries: entries this store
    /// drops on its own (a revalidation that makes one uncacheable) leave its count too, and
    /// eviction purges of keys it has readmitted are skipped.
    pub fn counted_by(&self, eviction: &'static (dyn EvictionManager + Sync)) {
        let _ = self.eviction.set(eviction);
    }

    /// Whether the eviction manager counts `key` now: after it chose the key for eviction, only
    /// if the key came back (filled or hit again) before the purge ran.
    fn counted(&self, key: &CompactCacheKey) -> bool {
        self.eviction
            .get()
            .is_some_and(|eviction| eviction.peek(&CacheEntryKey::key_only(key.clone())))
    }

    /// A new bound for fills in progress (`cache.memory` reloaded). Fills already holding
    /// more keep it until they finish; new room is given only below the new bound.
    pub fn set_fill_limit(&self, fill_limit: usize) {
        self.fills.limit.store(fill_limit, Ordering::Relaxed);
    }

    /// The bytes fills in progress hold (`mediagate_cache_fill_bytes`).
    pub fn fill_bytes(&self) -> usize {
        self.fills.taken.load(Ordering::Relaxed)
    }

    /// Whether a fill of an answer of `length` bytes would find room now; counts it as
    /// skipped when not. Asked with the answer's head, so that an answer with no room is not
    /// cached from the start and the readers waiting on its key need not wait for it.
    pub fn has_fill_room(&self, kind: Kind, length: usize) -> bool {
        let fits = self.fill_bytes().saturating_add(length) <= self.fills.limit(kind);
        if !fits {
            self.fills_skipped[kind.index()].inc();
        }
        fits
    }

    fn shard(&self, hash: &HashBinary) -> &Shard {
        &self.shards[usize::from(hash[0]) % SHARDS]
    }

    fn get(&self, hash: &HashBinary) -> Option<Arc<Entry>> {
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        shard.get(hash).cloned()
    }

    fn insert(&self, hash: HashBinary, entry: Entry) {
        self.bytes[entry.kind.index()].add(gauge_value(entry.weight));
        let replaced = self
            .shard(&hash)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, Arc::new(entry));
        if let Some(old) = replaced {
            self.bytes[old.kind.index()].sub(gauge_value(old.weight));
        }
    }

    /// Drops the entry under `key`; `evicted` counts it as an eviction. Returns whether there
    /// was one.
    pub fn remove(&self, key: &CompactCacheKey, evicted: bool) -> bool {
        self.remove_hash(&key.combined_bin(), evicted)
    }

    fn remove_hash(&self, hash: &HashBinary, evicted: bool) -> bool {
        let removed = self
            .shard(hash)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        match removed {
            Some(entry) => {
                self.forget(&entry, evicted);
                true
            }
            None => false,
        }
    }

    /// Takes a removed entry out of the counts.
    fn forget(&self, entry: &Entry, evicted: bool) {
        let kind = entry.kind.index();
        self.bytes[kind].sub(gauge_value(entry.weight));
        if evicted {
            self.evictions[kind].inc();
        }
    }

    /// The fresh entry under `key`, for a read answered before pingora-cache's lookup
    /// (`proxy::fresh_hit`), when `servable` takes its head. The hit is counted with the
    /// eviction manager as pingora-cache counts one, so the LRU order is the same whichever
    /// path serves it. `None`: nothing fresh there, or a head `servable` leaves to pingora.
    pub fn fresh_hit(
        &self,
        key: CompactCacheKey,
        servable: impl FnOnce(&ResponseHeader) -> bool,
    ) -> Option<FreshHit> {
        let entry = self.get(&key.combined_bin())?;
        // pingora-cache's test (`CacheMeta::is_fresh`), so both paths agree on the last second.
        let now = SystemTime::now();
        if entry.fresh_until < now || !servable(&entry.header) {
            return None;
        }
        if let Some(eviction) = self.eviction.get() {
            let counted = CacheEntryKey::key_only(key);
            eviction.access(&counted, entry.weight, entry.fresh_until);
        }
        self.early_hits[entry.kind.index()].inc();
        Some(FreshHit {
            header: entry.header.clone(),
            body: entry.body.clone(),
            age: now.duration_since(entry.created).unwrap_or_default(),
        })
    }

    /// Whether a fresh entry is held under `key`.
    pub fn holds_fresh(&self, key: &CacheKey) -> bool {
        self.get(&key.combined_bin())
            .is_some_and(|entry| entry.fresh_until > SystemTime::now())
    }

    /// The bytes held for one kind, as `mediagate_cache_bytes` reports them.
    pub fn bytes(&self, kind: Kind) -> u64 {
        u64::try_from(self.bytes[kind.index()].get()).unwrap_or(0)
    }
}

/// A fresh entry as `MemoryStore::fresh_hit` hands it out: its own head and body (the body a
/// reference count) and how long ago it was stored or last revalidated.
pub struct FreshHit {
    pub header: ResponseHeader,
    pub body: Bytes,
    pub age: std::time::Duration,
}

fn gauge_value(weight: usize) -> i64 {
    i64::try_from(weight).unwrap_or(i64::MAX)
}

/// The room all fills in progress share, in bytes of body buffer.
struct FillBudget {
    taken: AtomicUsize,
    limit: AtomicUsize,
    gauge: IntGauge,
}

/// Content fills may take all but this fraction of the room (a sixteenth): a fill lasts as
/// long as its reader takes to read it, so slow readers of large media could otherwise hold
/// all of it, and no metadata (a kilobyte or two a fill) would be cached meanwhile. (The
/// configuration keeps `cache.max_object` within what content may take.)
const METADATA_SHARE: usize = crate::config::Cache::METADATA_FILL_SHARE as usize;

impl FillBudget {
    /// The most that fills, the one asking among them, may hold together.
    fn limit(&self, kind: Kind) -> usize {
        let limit = self.limit.load(Ordering::Relaxed);
        match kind {
            Kind::Metadata => limit,
            Kind::Content => limit - limit / METADATA_SHARE,
        }
    }

    /// Takes `bytes` of room for a fill of `kind` if they fit under its limit.
    fn try_take(&self, kind: Kind, bytes: usize) -> bool {
        self.take_between(kind, bytes, bytes).is_some()
    }

    /// Takes as much room as is left under `kind`'s limit up to `most`, if that is at least
    /// `least`; answers how much was taken.
    fn take_between(&self, kind: Kind, least: usize, most: usize) -> Option<usize> {
        let limit = self.limit(kind);
        let mut took = 0;
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                took = limit.saturating_sub(taken).min(most);
                (took >= least).then_some(taken + took)
            })
            .ok()?;
        self.gauge.add(gauge_value(took));
        Some(took)
    }

    fn give_back(&self, bytes: usize) {
        self.taken.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.sub(gauge_value(bytes));
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        Ok(self.get(&key.combined_bin()).map(|entry| {
            let hit = Hit::new(entry.clone());
            (entry.meta(), Box::new(hit) as HitHandler)
        }))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let Some(kind) = Kind::from_label(&key.user_tag) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a kind");
        };
        let header = meta.response_header_copy();
        let expected = rules::content_length(&header.headers)
            .unwrap_or(0)
            .min(MAX_PREALLOCATION);
        let mut fill = Box::new(Fill {
            store: self,
            hash: key.combined_bin(),
            kind,
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            header,
            body: BytesMut::new(),
            room: 0,
            skipped: false,
        });
        if self.fills.try_take(kind, expected) {
            fill.room = expected;
            fill.body = BytesMut::with_capacity(expected);
        } else {
            fill.skip();
        }
        Ok(fill)
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let evicted = matches!(purge_type, PurgeType::Eviction);
        let key = target.key();
        if evicted && self.counted(key) {
            return Ok(PurgeOutcome::NotFound);
        }
        Ok(if self.remove(key, evicted) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    /// A revalidation (the upstream's 304) renews an entry: under the same rules as a fill, so
    /// metadata still never outlives the temporary URL in its body. The entry is replaced only
    /// if it is still the one revalidated (a purge in between wins).
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        let Some(old) = self.get(&hash) else {
            return Ok(false);
        };
        let header = meta.response_header_copy();
        let fresh_until =
            rules::fresh_until_with_body(old.kind, &header, meta.fresh_until(), &old.body);
        let mut shard = self.shard(&hash).write().unwrap_or_else(|p| p.into_inner());
        if !shard
            .get(&hash)
            .is_some_and(|current| Arc::ptr_eq(current, &old))
        {
            return Ok(false);
        }
        let Some(fresh_until) = fresh_until else {
            shard.remove(&hash);
            drop(shard);
            self.forget(&old, false);
            if let Some(eviction) = self.eviction.get() {
                eviction.remove(CacheEntryKeyRef::KeyOnly(&key.to_compact()));
            }
            return Ok(false);
        };
        shard.insert(
            hash,
            Arc::new(Entry {
                kind: old.kind,
                header,
                fresh_until,
                created: meta.created(),
                body: old.body.clone(),
                weight: old.weight,
            }),
        );
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads one cached body, whole or one range of it.
struct Hit {
    entry: Arc<Entry>,
    start: usize,
    end: usize,
    done: bool,
}

impl Hit {
    fn new(entry: Arc<Entry>) -> Hit {
        let end = entry.body.len();
        Hit {
            entry,
            start: 0,
            end,
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.entry.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.entry.body.len();
        if start >= len {
            return Error::e_explain(ErrorType::InternalError, "seek past the cached body");
        }
        self.start = start;
        self.end = end.map_or(len, |end| end.min(len));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.entry.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects one answer from the upstream; stored only when it completes.
struct Fill {
    store: &'static MemoryStore,
    hash: HashBinary,
    kind: Kind,
    fresh_until: SystemTime,
    created: SystemTime,
    header: ResponseHeader,
    body: BytesMut,
    /// The room taken from the store's `FillBudget` for `body`; given back when the fill is
    /// stored, skipped or dropped.
    room: usize,
    /// No room was left: the answer still reaches its reader, but is not kept.
    skipped: bool,
}

impl Fill {
    /// Makes room for `more` bytes of body, taking it from the budget; false when there is
    /// none. Room grows twofold, or by what is left of the budget when that is less but
    /// enough: an answer without a `Content-Length` takes the budget (and its buffer is
    /// copied) a logarithmic number of times.
    fn make_room(&mut self, more: usize) -> bool {
        let needed = self.body.len().saturating_add(more);
        if needed <= self.room {
            return true;
        }
        let doubled = needed.max(self.room.saturating_mul(2));
        let Some(took) =
            self.store
                .fills
                .take_between(self.kind, needed - self.room, doubled - self.room)
        else {
            return false;
        };
        let room = self.room + took;
        self.room = room;
        // Grown by hand: `BytesMut::reserve` may double past `room`, beyond what was taken.
        let mut body = BytesMut::with_capacity(room);
        body.extend_from_slice(&self.body);
        self.body = body;
        true
    }

    /// Gives up keeping this answer: frees its buffer and counts it.
    fn skip(&mut self) {
        self.skipped = true;
        self.body = BytesMut::new();
        self.give_back_room();
        self.store.fills_skipped[self.kind.index()].inc();
    }

    fn give_back_room(&mut self) {
        self.store.fills.give_back(std::mem::take(&mut self.room));
    }

    /// The body as it will be held: copied to an exact fit when growing left much spare room.
    fn take_body(&mut self) -> Bytes {
        let body = std::mem::take(&mut self.body);
        if body.capacity() - body.len() > body.len() / SLACK_DIVISOR {
            Bytes::copy_from_slice(&body)
        } else {
            body.freeze()
        }
    }
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.skipped {
            return Ok(());
        }
        if !self.make_room(data.len()) {
            self.skip();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    /// Stores the answer, unless it was skipped or its body says it must not be kept
    /// (metadata whose temporary URL is about to expire): then nothing is stored and the
    /// weight is zero.
    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let body = self.take_body();
        // From here the body is the entry's, counted by the eviction manager.
        self.give_back_room();
        let fresh_until = if self.skipped {
            None
        } else {
            rules::fresh_until_with_body(self.kind, &self.header, self.fresh_until, &body)
        };
        let Some(fresh_until) = fresh_until else {
            // An older entry under the key would now be outside the eviction manager's count.
            self.store.remove_hash(&self.hash, false);
            return Ok(MissFinishType::Created(0));
        };
        let weight = body.len() + header_weight(&self.header) + ENTRY_OVERHEAD;
        self.store.insert(
            self.hash,
            Entry {
                kind: self.kind,
                header: std::mem::replace(&mut self.header, ResponseHeader::build(200, None)?),
                fresh_until,
                created: self.created,
                body,
                weight,
            },
        );
        Ok(MissFinishType::Created(weight))
    }
}

impl Drop for Fill {
    /// An unfinished fill (its reader left, the upstream failed) gives its room back.
    fn drop(&mut self) {
        self.give_back_room();
    }
}

fn header_weight(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MediaSid, ServiceSid};
    use pingora::cache::eviction::lru::Manager as LruManager;
    use pingora::cache::trace::Span;

    fn key(n: u8, kind: Kind) -> CacheKey {
        let service = ServiceSid::parse("IS00000000000000000000000000000001").unwrap();
        let media = MediaSid::parse(&format!("ME{:032x}", n)).unwrap();
        super::super::key(&service, &media, kind)
    }

    fn meta(header: ResponseHeader) -> CacheMeta {
        let now = SystemTime::now();
        CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, header)
    }

    /// A miss handler for `key`, its answer with `length` as `Content-Length` if given.
    async fn miss(
        store: &'static MemoryStore,
        key: &CacheKey,
        length: Option<usize>,
    ) -> MissHandler {
        let mut header = ResponseHeader::build(200, None).unwrap();
        if let Some(length) = length {
            header
                .insert_header("content-length", length.to_string())
                .unwrap();
        }
        store
            .get_miss_handler(key, &meta(header), &Span::inactive().handle())
            .await
            .unwrap()
    }

    /// Writes `body` to a fill in chunks of 1,000 bytes.
    async fn write(miss: &mut MissHandler, body: &[u8]) {
        for chunk in body.chunks(1000) {
            miss.write_body(Bytes::copy_from_slice(chunk), false)
                .await
                .unwrap();
        }
    }

    /// Fills `key` with `body` (with its `Content-Length`); answers the weight stored.
    async fn fill(store: &'static MemoryStore, key: &CacheKey, body: &[u8]) -> usize {
        let mut miss = miss(store, key, Some(body.len())).await;
        write(&mut miss, body).await;
        match miss.finish().await.unwrap() {
            MissFinishType::Created(weight) => weight,
            MissFinishType::Appended(..) => panic!("fills create"),
        }
    }

    async fn read(
        store: &'static MemoryStore,
        key: &CacheKey,
        range: Option<(usize, usize)>,
    ) -> Vec<u8> {
        let (_, mut hit) = store
            .lookup(key, &Span::inactive().handle())
            .await
            .unwrap()
            .expect("cached");
        if let Some((start, end)) = range {
            hit.seek(start, Some(end)).unwrap();
        }
        let mut out = Vec::new();
        while let Some(chunk) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[tokio::test]
    async fn stores_reads_ranges_and_purges_with_exact_byte_counts() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20)));
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let content = key(1, Kind::Content);
        let weight = fill(store, &content, &body).await;
        assert!(weight > body.len());
        assert_eq!(read(store, &content, None).await, body);
        assert_eq!(read(store, &content, Some((10, 20))).await, &body[10..20]);
        let before = store.bytes(Kind::Content);
        assert!(before >= weight as u64);
        let compact = content.to_compact();
        let outcome = store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Eviction,
                &Span::inactive().handle(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert_eq!(store.bytes(Kind::Content), before - weight as u64);
        assert!(store
            .lookup(&content, &Span::inactive().handle())
            .await
            .unwrap()
            .is_none());
    }

    async fn cached(store: &'static MemoryStore, key: &CacheKey) -> bool {
        let span = Span::inactive().handle();
        store.lookup(key, &span).await.unwrap().is_some()
    }

    #[tokio::test]
    async fn fills_in_progress_share_one_bound_and_a_fill_without_room_is_served_not_kept() {
        // The skip counter is process-wide and other tests skip too: the integration test
        // (tests/cache.rs) checks it, these check the store's own state.
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(10_000)));
        let body = vec![7u8; 6000];
        let (first, second) = (key(10, Kind::Content), key(11, Kind::Content));
        let mut a = miss(store, &first, Some(body.len())).await;
        assert_eq!(
            store.fill_bytes(),
            6000,
            "the first fill takes its Content-Length"
        );
        let mut b = miss(store, &second, Some(body.len())).await;
        assert_eq!(
            store.fill_bytes(),
            6000,
            "the second finds no room and takes none"
        );
        write(&mut a, &body).await;
        write(&mut b, &body).await;
        assert!(matches!(a.finish().await.unwrap(), MissFinishType::Created(w) if w > 6000));
        assert!(matches!(
            b.finish().await.unwrap(),
            MissFinishType::Created(0)
        ));
        assert_eq!(store.fill_bytes(), 0, "finished fills give their room back");
        assert!(cached(store, &first).await);
        assert!(!cached(store, &second).await);

        // With the room given back, the next fill of the second key is kept.
        let mut c = miss(store, &second, Some(body.len())).await;
        write(&mut c, &body).await;
        c.finish().await.unwrap();
        assert!(cached(store, &second).await);
    }

    #[tokio::test]
    async fn a_fill_without_content_length_grows_within_the_bound_and_gives_back_on_drop() {
        // Content fills may take 10,000 bytes of it: all but a sixteenth.
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(10_666)));
        let (small, large) = (key(20, Kind::Content), key(21, Kind::Content));
        let mut fits = miss(store, &small, None).await;
        write(&mut fits, &[1u8; 3000]).await;
        let taken = store.fill_bytes();
        assert!((3000..=10_000).contains(&taken), "{taken}");
        drop(fits);
        assert_eq!(
            store.fill_bytes(),
            0,
            "an unfinished fill gives its room back"
        );

        let mut too_large = miss(store, &large, None).await;
        write(&mut too_large, &[2u8; 12_000]).await;
        assert_eq!(store.fill_bytes(), 0, "a skipped fill holds nothing");
        assert!(matches!(
            too_large.finish().await.unwrap(),
            MissFinishType::Created(0)
        ));
        assert!(!cached(store, &large).await);

        // Doubling would pass the bound; what is left is enough: the fill takes it all, and
        // goes on without asking again.
        let mut near_the_bound = miss(store, &large, Some(6000)).await;
        write(&mut near_the_bound, &[3u8; 6000]).await;
        write(&mut near_the_bound, &[3u8; 3000]).await;
        assert_eq!(store.fill_bytes(), 10_000);
        write(&mut near_the_bound, &[3u8; 1000]).await;
        assert_eq!(store.fill_bytes(), 10_000);
        assert!(matches!(
            near_the_bound.finish().await.unwrap(),
            MissFinishType::Created(w) if w > 10_000
        ));
        assert!(cached(store, &large).await);
        assert_eq!(store.fill_bytes(), 0);

        store.set_fill_limit(20_000);
        let mut now_fits = miss(store, &large, None).await;
        write(&mut now_fits, &[2u8; 12_000]).await;
        now_fits.finish().await.unwrap();
        assert!(cached(store, &large).await);
        assert_eq!(store.fill_bytes(), 0);
    }

    #[tokio::test]
    async fn content_fills_leave_a_sixteenth_of_the_room_to_metadata() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(16_000)));
        let _first = miss(store, &key(30, Kind::Content), Some(8000)).await;
        let _second = miss(store, &key(31, Kind::Content), Some(7000)).await;
        assert_eq!(store.fill_bytes(), 15_000);
        assert!(!store.has_fill_room(Kind::Content, 1));
        let _third = miss(store, &key(32, Kind::Content), Some(1)).await;
        assert_eq!(store.fill_bytes(), 15_000, "content has taken its share");
        assert!(store.has_fill_room(Kind::Metadata, 1000));
        let _metadata = miss(store, &key(33, Kind::Metadata), Some(1000)).await;
        assert_eq!(store.fill_bytes(), 16_000);
    }

    /// What pingora does at a fill's end: admit the entry, and purge what that evicts.
    fn admit(lru: &LruManager<1>, key: &CacheKey, weight: usize) -> Vec<CacheEntryKey> {
        let far = SystemTime::now() + std::time::Duration::from_secs(60);
        lru.admit(CacheEntryKey::key_only(key.to_compact()), weight, far)
    }

    async fn purge_evicted(store: &'static MemoryStore, evicted: &[CacheEntryKey]) {
        for entry in evicted {
            let target = PurgeTarget::Exact(entry);
            store
                .purge(target, PurgeType::Eviction, &Span::inactive().handle())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn an_eviction_purge_spares_a_key_filled_again_since_it_was_chosen() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20)));
        let lru: &'static LruManager<1> = Box::leak(Box::new(LruManager::with_capacity(10_000, 8)));
        store.counted_by(lru);
        let (one, two) = (key(1, Kind::Content), key(2, Kind::Content));
        let weight = fill(store, &one, &[1; 6000]).await;
        assert!(admit(lru, &one, weight).is_empty());
        // A second entry pushes the first out of the manager; pingora purges it later, in a
        // task of its own.
        let weight_two = fill(store, &two, &[2; 6000]).await;
        let evicted = admit(lru, &two, weight_two);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].key(), &one.to_compact());
        // Before that purge runs, the first key is filled and admitted again (and the second
        // goes, purged at once).
        let weight = fill(store, &one, &[3; 6000]).await;
        let evicted_two = admit(lru, &one, weight);
        purge_evicted(store, &evicted_two).await;
        // The late purge of the first key's old entry leaves the new one.
        purge_evicted(store, &evicted).await;
        assert_eq!(read(store, &one, Some((0, 1))).await, [3]);
        assert!(store
            .lookup(&two, &Span::inactive().handle())
            .await
            .unwrap()
            .is_none());
        // The manager counts what the store holds: the first key's new entry alone.
        assert_eq!((lru.total_items(), lru.total_size()), (1, weight));
        // A key nobody brought back is purged as before.
        let evicted = admit(lru, &two, weight_two);
        assert_eq!(evicted.len(), 1);
        purge_evicted(store, &evicted).await;
        assert!(store
            .lookup(&one, &Span::inactive().handle())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_hit_served_before_pingora_cache_counts_with_the_eviction_manager() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20)));
        let lru: &'static LruManager<1> = Box::leak(Box::new(LruManager::with_capacity(15_000, 8)));
        store.counted_by(lru);
        let (one, two, three) = (
            key(41, Kind::Content),
            key(42, Kind::Content),
            key(43, Kind::Content),
        );
        for (n, key) in [(1, &one), (2, &two)] {
            let weight = fill(store, key, &[n; 6000]).await;
            assert!(admit(lru, key, weight).is_empty());
        }
        // A head the caller leaves to pingora-cache is not served, and not counted.
        assert!(store.fresh_hit(one.to_compact(), |_| false).is_none());
        let hit = store.fresh_hit(one.to_compact(), |_| true).expect("fresh");
        assert_eq!(hit.body, Bytes::from(vec![1; 6000]));
        assert_eq!(hit.header.status, 200);
        assert!(hit.age < std::time::Duration::from_secs(60));
        // The first key was used last: a third entry pushes out the second.
        let weight = fill(store, &three, &[3; 6000]).await;
        let evicted = admit(lru, &three, weight);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].key(), &two.to_compact());
        let absent = key(44, Kind::Content).to_compact();
        assert!(store.fresh_hit(absent, |_| true).is_none());
    }

    #[tokio::test]
    async fn an_unfinished_fill_stores_nothing() {
        let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(1 << 20)));
        let content = key(2, Kind::Content);
        let mut miss = miss(store, &content, None).await;
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(store
            .lookup(&content, &Span::inactive().handle())
            .await
            .unwrap()
            .is_none());
    }
}
